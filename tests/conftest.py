import math

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
