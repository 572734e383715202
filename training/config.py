"""The training configuration: one flat dataclass, read from YAML and/or `--field value` flags.

Precedence: dataclass defaults < YAML file (`--config run.yaml`) < command-line flags. Every run writes
the fully resolved configuration to `<output_dir>/train_config.yaml`.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

RESOLVED_CONFIG_FILE = "train_config.yaml"


def _plonk_schedule() -> dict:
    return {"kind": "sigmoid", "start": -7.0, "end": 3.0, "tau": 1.0, "clip_min": 1e-9}


@dataclass
class TrainConfig:
    """Everything a training run depends on. Defaults are PLONK_OSV_5M's recipe (see training/README.md)."""

    # data
    train_shards: str = ""
    """Folder of .tar shards, a brace pattern (`data/{000000..000499}.tar`) or a comma-separated list of those."""
    embedding_key: str = "street_clip"
    """Name of the embedding inside each sample: the member `<key>.npy`."""
    data_mode: str = "memory"
    """"memory": each rank loads its shards once (onto the training device) and samples batches there;
    "stream": shards are read in windows of `stream_window_shards`, prefetched by `num_workers` threads."""
    stream_window_shards: int = 8
    num_workers: int = 4
    # model
    process: str = "rfm_s2"
    schedule: dict = field(default_factory=_plonk_schedule)
    dim: int = 512
    depth: int = 12
    expansion: int = 4
    cond_dim: int | None = None
    """Embedding width; None takes it from the shards."""
    encoder: str | None = None
    """Encoder name written into the checkpoint (None: the embedding key)."""
    train_data: str = ""
    """Free text naming the training data, written into the checkpoint's metadata."""
    # optimisation
    batch_size: int = 1024
    """Global batch: split evenly over the ranks."""
    total_steps: int = 1_000_000
    warmup_steps: int = 500
    lr: float = 8e-4
    min_lr_ratio: float = 0.0
    """Cosine decays the learning rate to lr * min_lr_ratio at total_steps."""
    optimizer: str = "lamb"
    """"lamb" (timm.optim.Lamb, as the authors) or "adamw" (torch.optim.AdamW, fused on GPU)."""
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    """Max global gradient norm; 0 disables clipping (non-finite steps are still skipped)."""
    ema_decay: float = 0.999
    ema_warmup: bool = True
    """Use decay min(ema_decay, (1 + n) / (10 + n)) at update n, so early EMA weights are not stuck at init."""
    guidance_dropout: float = 0.1
    """Probability of replacing an embedding by zeros (the unconditional model for guidance)."""
    precision: str = "auto"
    """"auto" (bf16 autocast on GPU, fp32 on CPU), "bf16" or "fp32"."""
    compile: bool = False
    """torch.compile the network (GPU: fewer kernel launches for small networks)."""
    seed: int = 0
    # bookkeeping
    output_dir: str = "runs/plonk"
    checkpoint_every: int = 5000
    log_every: int = 100
    stop_at_step: int | None = None
    """Stop (after checkpointing) at this step without finishing the schedule: for pre-emptible jobs."""
    resume: bool = True
    """Continue from <output_dir>/last.pt when it exists."""
    export_half: bool = False
    progress: bool = True
    audit: bool = False
    """Write the sample ids each rank saw and a hash of its final weights (used by the tests)."""
    device: str = "auto"

    def validate(self) -> None:
        """Raise ValueError naming the first bad field."""
        if not self.train_shards:
            raise ValueError("train_shards is required (a folder of .tar shards or a pattern)")
        choices = {"data_mode": ("memory", "stream"), "optimizer": ("lamb", "adamw"),
                   "precision": ("auto", "bf16", "fp32"), "process": ("rfm_s2", "flow_r3", "diffusion_r3")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        positive = ("batch_size", "total_steps", "dim", "depth", "expansion", "checkpoint_every", "log_every",
                    "stream_window_shards")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.guidance_dropout < 1:
            raise ValueError(f"guidance_dropout must be in [0, 1), got {self.guidance_dropout}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.warmup_steps < 0 or self.warmup_steps > self.total_steps:
            raise ValueError(f"warmup_steps must be in [0, total_steps], got {self.warmup_steps}")

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["betas"] = list(self.betas)
        return out

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / RESOLVED_CONFIG_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))
        return path


def _unwrap_optional(hint) -> tuple[object, bool]:
    """(T, True) for `T | None`, (hint, False) otherwise."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        return next(a for a in args if a is not type(None)), True
    return hint, False


def _coerce(name: str, value, hint) -> object:
    """Check/convert a YAML-parsed value to the field's declared type; ValueError names the field."""
    hint, optional = _unwrap_optional(hint)
    if value is None:
        if optional:
            return None
        raise ValueError(f"{name} may not be empty")
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                raise ValueError(f"{name} must be a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{name} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        return str(value)
    if hint is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{name} must be a mapping such as {{kind: sigmoid}}, got {value!r}")
        return value
    if typing.get_origin(hint) is tuple:
        size = len(typing.get_args(hint))
        if not isinstance(value, (list, tuple)) or len(value) != size:
            raise ValueError(f"{name} must be a list of {size} numbers, got {value!r}")
        return tuple(float(v) for v in value)
    raise TypeError(f"no conversion for field {name} of type {hint}")


def config_from_dict(values: dict, base: TrainConfig | None = None) -> TrainConfig:
    """A TrainConfig with `values` (already parsed) applied over `base`; unknown keys are errors."""
    hints = typing.get_type_hints(TrainConfig)
    base = base or TrainConfig()
    unknown = sorted(set(values) - set(hints))
    if unknown:
        raise ValueError(f"unknown config fields {unknown}; known: {sorted(hints)}")
    updates = {k: _coerce(k, v, hints[k]) for k, v in values.items()}
    return dataclasses.replace(base, **updates)


def load_config(path: str | Path) -> TrainConfig:
    values = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(values, dict):
        raise ValueError(f"{path} must hold a mapping of config fields")
    return config_from_dict(values)


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    """`--config run.yaml` plus one `--field value` flag per TrainConfig field (values parsed as YAML)."""
    parser = argparse.ArgumentParser(description="Train a PLONK denoiser on embedding shards.")
    parser.add_argument("--config", help="YAML file of TrainConfig fields")
    for f in dataclasses.fields(TrainConfig):
        parser.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, default=None, metavar="VALUE",
                            help=f"(default: {f.default if f.default is not dataclasses.MISSING else f.default_factory()})")
    args = vars(parser.parse_args(argv))
    config_path = args.pop("config")
    config = load_config(config_path) if config_path else TrainConfig()
    hints = typing.get_type_hints(TrainConfig)
    overrides = {k: (v if _unwrap_optional(hints[k])[0] is str and v != "null" else yaml.safe_load(v))
                 for k, v in args.items() if v is not None}
    config = config_from_dict(overrides, base=config)
    config.validate()
    return config
