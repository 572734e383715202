"""Reading and writing checkpoints in the hub format: a folder with config.json + model.safetensors.

config.json holds the network fields {cond_dim, depth, dim, expansion, input_dim} (the authors'
format) and, for geodemo's own checkpoints, a "geodemo" entry naming process, schedule and encoder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from geodemo.network import GeoDenoiser, NetworkConfig

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


class CheckpointError(ValueError):
    """A checkpoint folder that cannot be read as a geodemo/PLONK model; the message says why."""


@dataclass
class CheckpointInfo:
    """What a checkpoint says about itself besides the weights."""

    network: NetworkConfig
    process: str | None = None
    schedule: dict | None = None
    encoder: str | None = None
    metadata: dict = field(default_factory=dict)


def save_checkpoint(folder: str | Path, network: GeoDenoiser, process: str, schedule: dict, encoder: str | None,
                    metadata: dict | None = None, half: bool = False) -> Path:
    """Write config.json + model.safetensors (optionally fp16 weights) into folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = network.config.to_dict()
    config["geodemo"] = {"process": process, "schedule": schedule, "encoder": encoder, **(metadata or {})}
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True))
    state = {k: (v.half() if half and v.is_floating_point() else v).detach().cpu().contiguous()
             for k, v in network.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_FILE))
    return folder


def read_info(folder: str | Path) -> CheckpointInfo:
    """Parse config.json of a checkpoint folder."""
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{folder} has no {CONFIG_FILE}: a model folder needs {CONFIG_FILE} and {WEIGHTS_FILE}")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} is not valid JSON ({err})") from None
    missing = [k for k in ("dim", "depth", "cond_dim") if k not in config]
    if not isinstance(config, dict) or missing:
        raise CheckpointError(f"{path} is not a PLONK network config (missing {missing or 'fields'})")
    extra = dict(config.get("geodemo") or {})
    return CheckpointInfo(
        network=NetworkConfig.from_dict(config),
        process=extra.pop("process", None),
        schedule=extra.pop("schedule", None),
        encoder=extra.pop("encoder", None),
        metadata=extra,
    )


def load_network(folder: str | Path, info: CheckpointInfo | None = None) -> GeoDenoiser:
    """Build the network from config.json and load model.safetensors, checking every name and shape."""
    info = info or read_info(folder)
    path = Path(folder) / WEIGHTS_FILE
    if not path.is_file():
        raise CheckpointError(f"{folder} has no {WEIGHTS_FILE}")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} is not a readable safetensors file ({err})") from None
    network = GeoDenoiser(info.network)
    expected = network.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{path} does not match the network in {CONFIG_FILE}: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    wrong = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items() if state[k].shape != v.shape]
    if wrong:
        raise CheckpointError(f"{path} has tensors of the wrong shape: {wrong[:3]}")
    network.load_state_dict({k: v.float() for k, v in state.items()})
    return network.eval().requires_grad_(False)
