"""The front door: `load(name_or_path)` -> GeoPipeline (encoder -> embedding -> sampler / density)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image

from geodemo.checkpoint import CheckpointError, load_network, read_info
from geodemo.embedded import embedded_model_path
from geodemo.encoders import Encoder, get_encoder
from geodemo.grids import latlon_grid
from geodemo.likelihood import log_density
from geodemo.network import GeoDenoiser
from geodemo.processes import Process, process_from_name
from geodemo.sampling import sample
from geodemo.schedules import Schedule, schedule_from_config
from geodemo.sphere import latlon_to_xyz, xyz_to_latlon


@dataclass
class Prediction:
    """Samples per image: latlon (B, N, 2) degrees; trajectories (B, steps + 1, N, 2) degrees and
    trajectories_xyz (B, steps + 1, N, 3) raw states in R^3 when asked for."""

    latlon: torch.Tensor
    trajectories: torch.Tensor | None = None
    trajectories_xyz: torch.Tensor | None = None


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class GeoPipeline:
    """A denoiser with its process, schedule and (optional) image encoder."""

    def __init__(self, network: GeoDenoiser, process: Process, schedule: Schedule, encoder: Encoder | str | None = None,
                 device: torch.device | str | None = None, name: str = ""):
        self.device = torch.device(device) if device is not None else default_device()
        self.network = network.to(self.device).eval().requires_grad_(False)
        self.process = process
        self.schedule = schedule
        self._encoder = encoder
        self.name = name

    @property
    def encoder(self) -> Encoder:
        """The image encoder, built on first use."""
        if self._encoder is None:
            raise ValueError(f"model {self.name!r} has no image encoder: pass embeddings=... instead of images")
        if isinstance(self._encoder, str):
            self._encoder = get_encoder(self._encoder)
        return self._encoder

    def embed(self, images: Sequence[Image.Image] | Image.Image) -> torch.Tensor:
        """(B, cond_dim) embeddings of RGB images."""
        if isinstance(images, Image.Image):
            images = [images]
        return self.encoder.embed(list(images), device=self.device).float()

    def _embeddings(self, images, embeddings) -> torch.Tensor:
        if (images is None) == (embeddings is None):
            raise ValueError("pass exactly one of images=... or embeddings=...")
        emb = self.embed(images) if images is not None else torch.as_tensor(embeddings, dtype=torch.float32)
        if emb.dim() == 1:
            emb = emb.unsqueeze(0)
        expected = self.network.config.cond_dim
        if emb.dim() != 2 or emb.shape[1] != expected:
            raise ValueError(f"embeddings must have shape (B, {expected}), got {tuple(emb.shape)}")
        if not torch.isfinite(emb).all():
            raise ValueError("embeddings contain NaN or infinite values")
        return emb.to(self.device)

    def predict(self, images=None, embeddings=None, num_samples: int = 64, steps: int = 32, guidance: float = 0.0,
                seed: int | torch.Generator | None = None, trajectories: bool = False,
                initial_noise: torch.Tensor | None = None) -> Prediction:
        """Sample num_samples locations per image by the process's deterministic sampler."""
        emb = self._embeddings(images, embeddings)
        out = sample(self.network, self.process, self.schedule, emb, num_samples=num_samples, steps=steps,
                     guidance=guidance, seed=seed, initial_noise=initial_noise, trajectory=trajectories)
        latlon = xyz_to_latlon(out.xyz).cpu()
        if out.trajectory is None:
            return Prediction(latlon=latlon)
        traj = out.trajectory.cpu()
        return Prediction(latlon=latlon, trajectories=xyz_to_latlon(traj), trajectories_xyz=traj)

    def log_density(self, latlon, images=None, embeddings=None, guidance: float = 0.0, **ode_options) -> torch.Tensor:
        """log p(latlon | image) in nats per steradian, (B, M). latlon: (M, 2) shared or (B, M, 2) degrees."""
        emb = self._embeddings(images, embeddings)
        points = torch.as_tensor(latlon, dtype=torch.float64)
        if points.shape[-1] != 2 or points.dim() not in (2, 3):
            raise ValueError(f"latlon must have shape (M, 2) or (B, M, 2), got {tuple(points.shape)}")
        if not torch.isfinite(points).all():
            raise ValueError("latlon contains NaN or infinite coordinates")
        if points.dim() == 2:
            points = points.unsqueeze(0).expand(emb.shape[0], -1, -1)
        xyz = latlon_to_xyz(points).to(device=self.device, dtype=torch.float32)
        logp = log_density(self.network, self.process, self.schedule, emb, xyz, guidance=guidance, **ode_options)
        return logp.double().cpu()

    def density_grid(self, image_or_embedding, resolution_deg: float = 5.0, guidance: float = 0.0,
                     **ode_options) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(lats (H,), lons (W,), log p (H, W)) over a regular grid of cell centres for one image."""
        grid = latlon_grid(resolution_deg)
        kwargs = {"embeddings": image_or_embedding} if isinstance(image_or_embedding, torch.Tensor) else {"images": image_or_embedding}
        logp = self.log_density(grid.latlon, guidance=guidance, **kwargs, **ode_options)
        return grid.lats, grid.lons, logp[0].reshape(grid.shape)

    def localizability(self, images=None, embeddings=None, num_samples: int = 256, sample_steps: int = 32,
                       seed: int | None = 0, **ode_options) -> torch.Tensor:
        """Negative entropy estimate (B,): mean over the model's own samples (drawn with sample_steps sampler
        steps, guidance 0) of log p(sample | c), in nats per steradian; ode_options go to log_density."""
        emb = self._embeddings(images, embeddings)
        samples = self.predict(embeddings=emb, num_samples=num_samples, steps=sample_steps, seed=seed).latlon
        return self.log_density(samples, embeddings=emb, **ode_options).mean(dim=1)


def load(name_or_path: str | Path, device: torch.device | str | None = None) -> GeoPipeline:
    """Load a model from a local folder holding config.json + model.safetensors (the hub format),
    or a model shipped in assets/ by name ("default", "earth-flow", ...: geodemo.embedded)."""
    folder = embedded_model_path(str(name_or_path)) or Path(name_or_path)
    if not folder.is_dir():
        raise CheckpointError(f"{name_or_path!r} is not a model folder (config.json + model.safetensors)")
    info = read_info(folder)
    network = load_network(folder, info)
    process = process_from_name(info.process or "rfm_s2")
    schedule = schedule_from_config(info.schedule)
    return GeoPipeline(network, process, schedule, encoder=info.encoder, device=device, name=str(name_or_path))
