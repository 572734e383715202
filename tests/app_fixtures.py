"""Test-only helpers: a small random-weight model saved in the hub format, with a tiny deterministic encoder.

Not a real geolocator: it exists so that the app, the CLI and the plots can be exercised offline.
"""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from geodemo.checkpoint import save_checkpoint
from geodemo.encoders import available_encoders, register_encoder
from geodemo.service import make_catalogue
from geodemo.network import GeoDenoiser, NetworkConfig
from geodemo.schedules import SigmoidSchedule, schedule_to_config

TEST_ENCODER = "test-colour-grid"
EMBED_DIM = 48


class ColourGridEncoder:
    """Embedding = fixed random projection of the mean colours of a 4 x 4 grid of the image (deterministic)."""

    name = TEST_ENCODER
    dim = EMBED_DIM

    def __init__(self):
        self.projection = torch.randn(48, EMBED_DIM, generator=torch.Generator().manual_seed(7)) / 4

    def embed(self, images, device="cpu") -> torch.Tensor:
        grids = [np.asarray(im.convert("RGB").resize((4, 4), Image.Resampling.BOX), dtype=np.float32) / 255.0
                 for im in images]
        features = torch.from_numpy(np.stack(grids).reshape(len(grids), -1) - 0.5)
        return (features @ self.projection).to(device)


def register_test_encoder() -> None:
    if TEST_ENCODER not in available_encoders():
        register_encoder(TEST_ENCODER, ColourGridEncoder)


def build_test_model(folder: Path, process: str = "rfm_s2", dim: int = 64, depth: int = 2, seed: int = 0) -> Path:
    """Save a random-weight GeoDenoiser (all layers non-zero) with the test encoder into folder."""
    register_test_encoder()
    torch.manual_seed(seed)
    network = GeoDenoiser(NetworkConfig(dim=dim, depth=depth, cond_dim=EMBED_DIM))
    with torch.no_grad():
        for block in network.blocks:
            block.mlp[3].weight.normal_(0, 0.05)
        network.final_linear.weight.normal_(0, 0.05)  # a field smooth enough for RK4 at 32 steps (the map check)
    return save_checkpoint(folder, network, process, schedule_to_config(SigmoidSchedule()), TEST_ENCODER,
                           metadata={"description": "random weights, for tests only"})


def write_test_image(path: Path, size=(96, 64), colour=(40, 120, 200)) -> Path:
    """A small real JPEG with a gradient, so encoders see structure."""
    x = np.linspace(0, 1, size[0])[None, :, None]
    y = np.linspace(0, 1, size[1])[:, None, None]
    pixels = np.clip(np.array(colour)[None, None] * (0.5 + 0.5 * x) + 60 * y, 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, quality=90)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_app(model_folder: Path | None, map_options: dict):
    """Start the real app (app.py) on a free localhost port in this process; returns (url, demo).
    model_folder None: the shipped models only."""
    import app

    catalogue = make_catalogue(str(model_folder) if model_folder else None)
    demo = app.build_demo(catalogue, device="cpu", map_options=map_options)
    port = free_port()
    demo.queue(default_concurrency_limit=2).launch(server_name="127.0.0.1", server_port=port,
                                                   prevent_thread_lock=True, quiet=True)
    return f"http://127.0.0.1:{port}/", demo
