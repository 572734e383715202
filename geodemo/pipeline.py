"""The front door: `load(name_or_path)` -> GeoPipeline (encoder -> embedding -> sampler / density)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image

from geodemo.checkpoint import load_network, read_info
from geodemo.encoders import Encoder, get_encoder
from geodemo.grids import latlon_grid
from geodemo.likelihood import Accuracy, log_density
from geodemo.network import GeoDenoiser
from geodemo.processes import Process, process_from_name
from geodemo.registry import lookup
from geodemo.sampling import SamplePrecision, make_generator, sample
from geodemo.schedules import Schedule, schedule_from_config
from geodemo.sphere import latlon_to_xyz, xyz_to_latlon


@dataclass
class Prediction:
    """Samples per image: latlon (B, N, 2) degrees; trajectories (B, steps + 1, N, 2) degrees and
    trajectories_xyz (B, steps + 1, N, 3) raw states in R^3 when asked for."""

    latlon: torch.Tensor
    trajectories: torch.Tensor | None = None
    trajectories_xyz: torch.Tensor | None = None


@dataclass
class BestGuess:
    """One answer per image: latlon (B, 2) degrees = the sample of highest log p(sample | image) among
    samples (B, N, 2); sample_log_density (B, N) nats per steradian, log_density (B,) the winner's."""

    latlon: torch.Tensor
    log_density: torch.Tensor
    samples: torch.Tensor
    sample_log_density: torch.Tensor


MAX_POINTS_PER_CHUNK = 262_144
"""Network evaluations (points x guidance passes) per sampler call in batch inference: ~2.4 GB of
activations at dim 512 in fp32; lower it on small GPUs."""


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class GeoPipeline:
    """A denoiser with its process, schedule and (optional) image encoder."""

    def __init__(self, network: GeoDenoiser, process: Process, schedule: Schedule, encoder: Encoder | str | None = None,
                 device: torch.device | str | None = None, name: str = "", region_temperature: float = 1.0):
        """region_temperature: the model's calibration T of its credible regions (CheckpointInfo.region_temperature);
        it reshapes only the regions the app draws and states (geodemo.regions.temper), never samples or log p."""
        self.region_temperature = region_temperature
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
                initial_noise: torch.Tensor | None = None, precision: SamplePrecision = "auto") -> Prediction:
        """Sample num_samples locations per image by the process's deterministic sampler. precision="auto" is the
        fastest arithmetic within 0.01 degrees of the exact float32 path (bf16x3 matmuls in a CUDA graph on a GPU,
        float32 on a CPU); precision="float32" is that exact path (geodemo.sampling.SamplePrecision)."""
        emb = self._embeddings(images, embeddings)
        out = sample(self.network, self.process, self.schedule, emb, num_samples=num_samples, steps=steps,
                     guidance=guidance, seed=seed, initial_noise=initial_noise, trajectories=trajectories,
                     precision=precision)
        latlon = xyz_to_latlon(out.xyz).cpu()
        if out.trajectories is None:
            return Prediction(latlon=latlon)
        traj = out.trajectories.cpu()
        return Prediction(latlon=latlon, trajectories=xyz_to_latlon(traj), trajectories_xyz=traj)

    def predict_batch(self, images=None, embeddings=None, num_samples: int = 64, steps: int = 32,
                      guidance: float = 0.0, seed: int | torch.Generator | None = None,
                      max_points: int = MAX_POINTS_PER_CHUNK, image_batch: int = 32) -> Prediction:
        """predict() for many images x many samples, in chunks of at most max_points network evaluations.

        All initial noise is drawn first (on the CPU, from seed), so the samples do not depend on the chunking;
        images are embedded image_batch at a time. Returns latlon (B, N, 2) degrees on the CPU.
        """
        if images is not None and embeddings is None:
            images = [images] if isinstance(images, Image.Image) else list(images)
            if not images:
                raise ValueError("no images given")
            emb = torch.cat([self._embeddings(images[i:i + image_batch], None) for i in range(0, len(images), image_batch)])
        else:
            emb = self._embeddings(images, embeddings)
        if num_samples < 1:
            raise ValueError(f"num_samples must be at least 1, got {num_samples}")
        noise = self.process.initial_noise((emb.shape[0], num_samples), generator=make_generator(seed))
        points = max(1, max_points // (1 if guidance == 0 else 2))  # points per sampler call
        sample_chunk = min(num_samples, points)
        image_chunk = max(1, points // num_samples)
        rows = []
        for i in range(0, emb.shape[0], image_chunk):
            parts = []
            for j in range(0, num_samples, sample_chunk):
                chunk_noise = noise[i:i + image_chunk, j:j + sample_chunk]
                parts.append(sample(self.network, self.process, self.schedule, emb[i:i + image_chunk],
                                    num_samples=chunk_noise.shape[1], steps=steps, guidance=guidance,
                                    initial_noise=chunk_noise).xyz)
            rows.append(xyz_to_latlon(torch.cat(parts, dim=1)).cpu())
        return Prediction(latlon=torch.cat(rows))

    def best_guess(self, images=None, embeddings=None, num_samples: int = 64, steps: int = 32, guidance: float = 2.0,
                   seed: int | torch.Generator | None = 0, density_guidance: float = 0.0,
                   max_points: int = MAX_POINTS_PER_CHUNK, ode_options: dict | None = None) -> BestGuess:
        """The highest-likelihood sample among num_samples per image (the authors' one-prediction answer).

        Samples are drawn with `steps` sampler steps and `guidance` (PLONK evaluates point estimates at
        w = 2) and ranked by log p(sample | image) at `density_guidance` (0: the model's own density, as its NLL);
        ode_options (method, steps, atol, ...) go to log_density.
        """
        emb = self._embeddings(images, embeddings)
        samples = self.predict_batch(embeddings=emb, num_samples=num_samples, steps=steps, guidance=guidance,
                                     seed=seed, max_points=max_points).latlon
        logp = self.log_density(samples, embeddings=emb, guidance=density_guidance, **(ode_options or {}))
        best = logp.argmax(dim=1)
        rows = torch.arange(samples.shape[0])
        return BestGuess(latlon=samples[rows, best], log_density=logp[rows, best], samples=samples,
                         sample_log_density=logp)

    def densest_sample(self, images=None, embeddings=None, num_samples: int = 256, steps: int = 32,
                       guidance: float = 0.0, seed: int | torch.Generator | None = 0, bandwidth_km: float | None = None,
                       max_points: int = MAX_POINTS_PER_CHUNK) -> torch.Tensor:
        """(B, 2) degrees: per image, the sample of highest kernel density among its samples (no ODE)."""
        samples = self.predict_batch(images, embeddings, num_samples=num_samples, steps=steps, guidance=guidance,
                                     seed=seed, max_points=max_points).latlon
        return densest_samples(samples, bandwidth_km)

    def log_density(self, latlon, images=None, embeddings=None, guidance: float = 0.0, accuracy: Accuracy = "default",
                    **ode_options) -> torch.Tensor:
        """log p(latlon | image) in nats per steradian, (B, M). latlon: (M, 2) shared or (B, M, 2) degrees.
        accuracy: "default" (at least as accurate as the authors' solver) or "map" (fast: ~0.05 nats where log p is
        within 10 nats of its maximum, measured at samples of the shipped models' example views: up to 0.059 nats;
        pass report=CheckReport() to learn what its check found); ode_options override the preset
        (geodemo.likelihood.log_density)."""
        emb = self._embeddings(images, embeddings)
        points = torch.as_tensor(latlon, dtype=torch.float64)
        if points.shape[-1] != 2 or points.dim() not in (2, 3):
            raise ValueError(f"latlon must have shape (M, 2) or (B, M, 2), got {tuple(points.shape)}")
        if not torch.isfinite(points).all():
            raise ValueError("latlon contains NaN or infinite coordinates")
        if points.dim() == 2:
            points = points.unsqueeze(0).expand(emb.shape[0], -1, -1)
        xyz = latlon_to_xyz(points).to(device=self.device, dtype=torch.float32)
        logp = log_density(self.network, self.process, self.schedule, emb, xyz, guidance=guidance, accuracy=accuracy,
                           **ode_options)
        return logp.double().cpu()

    def density_grid(self, image_or_embedding, resolution_deg: float = 5.0, guidance: float = 0.0,
                     accuracy: Accuracy = "default", anchors: int = 64, **ode_options
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(lats (H,), lons (W,), log p (H, W)) over a regular grid of cell centres for one image, all points in one
        solve per chunk; accuracy / ode_options as in log_density ("map" for drawing). With "map", `anchors` of the
        model's own samples (w = 0, seed 0) ride along in the solve, so that "near the maximum" is measured from the
        density's peak, which a coarse grid misses on a sharp density: the grid's points more than 15 nats below it
        are then only screened (they read too high, geodemo.likelihood.ODEOptions.screen_steps)."""
        grid = latlon_grid(resolution_deg)
        tensor = isinstance(image_or_embedding, torch.Tensor)
        emb = self._embeddings(None if tensor else image_or_embedding, image_or_embedding if tensor else None)[:1]
        points = grid.latlon
        if accuracy == "map" and anchors > 0:
            samples = self.predict(embeddings=emb, num_samples=anchors, guidance=0.0, seed=0).latlon[0]
            points = torch.cat((points, samples.to(points.dtype)))
        logp = self.log_density(points, embeddings=emb, guidance=guidance, accuracy=accuracy, **ode_options)
        return grid.lats, grid.lons, logp[0, :len(grid.latlon)].reshape(grid.shape)

    def localizability(self, images=None, embeddings=None, num_samples: int = 256, steps: int = 32,
                       seed: int | None = 0, ode_options: dict | None = None) -> torch.Tensor:
        """Negative entropy estimate (B,): mean over the model's own samples (drawn with `steps` sampler
        steps, guidance 0) of log p(sample | c), in nats per steradian; ode_options go to log_density."""
        emb = self._embeddings(images, embeddings)
        samples = self.predict(embeddings=emb, num_samples=num_samples, steps=steps, seed=seed).latlon
        return self.log_density(samples, embeddings=emb, **(ode_options or {})).mean(dim=1)


def densest_samples(samples: torch.Tensor, bandwidth_km: float | None = None) -> torch.Tensor:
    """(B, 2): for each image the sample of samples (B, N, 2) degrees with the highest Gaussian kernel density
    (haversine distance, bandwidth_km; geodemo.metrics.kde_scores) among that image's samples."""
    from geodemo.metrics import KDE_BANDWIDTH_KM, kde_scores

    h = KDE_BANDWIDTH_KM if bandwidth_km is None else bandwidth_km
    return torch.stack([s[kde_scores(s, h).argmax()] for s in samples]) if len(samples) else samples[:, 0]


def load(name_or_path: str | Path, device: torch.device | str | None = None, *, process: str | None = None,
         encoder: str | None = None) -> GeoPipeline:
    """Load a model by anything geodemo.registry.lookup resolves: a local folder holding config.json +
    model.safetensors (the hub format), a shipped or registered name ("default", "earth-flow", ...) or a hub id
    such as nicolas-dufour/PLONK_OSV_5M. `process` / `encoder` override what the registry says."""
    entry = lookup(name_or_path)
    folder = entry.local_folder()
    info = read_info(folder)
    network = load_network(folder, info)
    return GeoPipeline(network, process_from_name(process or entry.process(info)),
                       schedule_from_config(entry.schedule(info)), encoder=encoder or entry.encoder(info),
                       device=device, name=entry.display_name, region_temperature=info.region_temperature)
