"""What the speed benchmarks share: random weights in the hub format, the authors' pipeline built on them, timing.

Both implementations load the same folder (config.json + model.safetensors): ours with geodemo.checkpoint,
diff-plonk 0.4 with its own `Plonk.from_pretrained`. diff-plonk's `PlonkPipeline.__init__` downloads an
image encoder, so `authors_pipeline` fills the same attributes as that constructor and replaces only the
encoder by a function returning a fixed embedding; sampling and likelihood then run the authors' own code.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
import time
import types
from pathlib import Path
from typing import Callable

import torch

from geodemo.checkpoint import load_network, save_checkpoint
from geodemo.network import GeoDenoiser, NetworkConfig
from geodemo.schedules import SigmoidSchedule, schedule_to_config

SIZES = {"yfcc": NetworkConfig(dim=512, depth=12), "inat": NetworkConfig(dim=256, depth=12),
         "embedded": NetworkConfig(dim=128, depth=4, cond_dim=5120)}
"""dim 512 / depth 12 (PLONK YFCC and OSV-5M), dim 256 / depth 12 (iNaturalist), the shipped embedded models (dim 128 /
depth 4 on the 5120-d Earth encoder since 2026-12-07)."""


def random_hub_folder(folder: Path, config: NetworkConfig, seed: int = 0) -> Path:
    """A hub-format folder with every weight random (the zero-initialised layers too), like a trained net."""
    torch.manual_seed(seed)
    network = GeoDenoiser(config)
    with torch.no_grad():
        for param in network.parameters():
            std = 1 / math.sqrt(param.shape[-1]) if param.dim() > 1 else 0.05
            param.normal_(0, std)
    return save_checkpoint(folder, network, "rfm_s2", schedule_to_config(SigmoidSchedule()), None)


def our_network(folder: Path, device: str) -> GeoDenoiser:
    return load_network(folder).to(device).eval().requires_grad_(False)


def _without_unused_imports() -> None:
    """diff-plonk's pipe module imports transformers' CLIP classes for its StreetCLIP encoder at import time;
    where transformers is absent, stand-ins let the module import (the encoder is never called here)."""
    try:
        import transformers  # noqa: F401
    except ImportError:
        stub = types.ModuleType("transformers")
        stub.CLIPProcessor = stub.CLIPVisionModel = None
        sys.modules["transformers"] = stub


def authors_pipeline(folder: Path, emb: torch.Tensor, device: str):
    """diff-plonk's PlonkPipeline on the hub folder, its encoder replaced by `emb` (1, C)."""
    _without_unused_imports()
    from plonk.models.pretrained_models import Plonk
    from plonk.models.postprocessing import CartesiantoGPS
    from plonk.models.preconditioning import DDPMPrecond
    from plonk.models.samplers.riemannian_flow_sampler import riemannian_flow_sampler
    from plonk.pipe import PlonkPipeline, scheduler_fn
    from plonk.utils.manifolds import Sphere

    config = json.loads((folder / "config.json").read_text())
    pipe = PlonkPipeline.__new__(PlonkPipeline)
    pipe.network = Plonk(**{k: config[k] for k in ("input_dim", "dim", "depth", "expansion", "cond_dim")})
    pipe.network.load_state_dict(_read_weights(folder), strict=True)
    pipe.network = pipe.network.to(device).requires_grad_(False).eval()
    pipe.scheduler = scheduler_fn("sigmoid", -7, 3, 1.0)
    pipe.cond_preprocessing = lambda batch: {**batch, "emb": emb.to(device)}
    pipe.postprocessing = CartesiantoGPS().to(device)
    pipe.sampler = riemannian_flow_sampler
    pipe.model_path = str(folder)
    pipe.preconditioning = DDPMPrecond()
    pipe.device = torch.device(device)
    pipe.manifold = Sphere()
    pipe.input_dim = 3
    return pipe


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    return load_file(str(folder / "model.safetensors"))


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def median_time(fn: Callable[[], object], device: str, repeats: int, warmup: int = 1) -> tuple[float, list[float]]:
    """Median wall-clock seconds of fn over `repeats` runs after `warmup` runs (device synchronised)."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def matmul_rate(device: str, dtype: torch.dtype, n: int = 4096, repeats: int = 5) -> float:
    """Measured FLOP/s of an n x n x n product in dtype on random data (median of repeats)."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    seconds, _ = median_time(lambda: a @ b, device, repeats, warmup=2)
    return 2 * n**3 / seconds


def point_flops(config: NetworkConfig) -> float:
    """FLOPs of the per-point part of one network pass (matmuls only): input, 2 MLP layers per block, output."""
    d, e = config.dim, config.expansion
    return 2 * (config.input_dim * d + config.depth * 2 * d * d * e + d * config.input_dim)


def describe_device(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU, {torch.get_num_threads()} torch threads"
