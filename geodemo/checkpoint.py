"""Reading and writing checkpoints in the hub format: a folder with config.json + model.safetensors.

config.json holds the network fields {cond_dim, depth, dim, expansion, input_dim} (the authors'
format) and, for geodemo's own checkpoints, a "geodemo" entry naming process, schedule and encoder.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

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

    @property
    def region_temperature(self) -> float:
        """The post-hoc temperature T of the credible regions, config.json's geodemo.calibration.temperature (1
        when absent): the regions drawn and stated are those of p_T = p^(1/T) / Z_T, T fitted on held-out views by
        training/calibration.py. CheckpointError unless it is a positive number."""
        calibration = self.metadata.get("calibration") or {}
        temperature = calibration.get("temperature", 1.0) if isinstance(calibration, dict) else None
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 < temperature < math.inf:
            raise CheckpointError(f"{CONFIG_FILE}'s geodemo.calibration.temperature must be a positive number, "
                                  f"got {temperature!r}")
        return float(temperature)


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
    """Parse config.json of a checkpoint folder; CheckpointError (one sentence) when it is missing or damaged."""
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{folder} has no {CONFIG_FILE}: a model folder needs {CONFIG_FILE} and {WEIGHTS_FILE}")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as err:
        raise CheckpointError(f"{path} is damaged: it is not readable JSON ({_first_line(err)})") from None
    missing = [k for k in ("dim", "depth", "cond_dim") if k not in config] if isinstance(config, dict) else ["fields"]
    if missing:
        raise CheckpointError(f"{path} is not a PLONK network config (missing {', '.join(missing)})")
    sizes = {k: config[k] for k in NetworkConfig.__dataclass_fields__ if k in config}
    wrong = [f"{k}={v!r}" for k, v in sizes.items() if isinstance(v, bool) or not isinstance(v, int) or v < 1]
    if wrong:
        raise CheckpointError(f"{path} is damaged: network sizes must be positive whole numbers ({', '.join(wrong)})")
    extra = config.get("geodemo") if isinstance(config.get("geodemo"), dict) else {}
    extra = dict(extra)
    return CheckpointInfo(
        network=NetworkConfig.from_dict(config),
        process=extra.pop("process", None),
        schedule=extra.pop("schedule", None),
        encoder=extra.pop("encoder", None),
        metadata=extra,
    )


def load_network(folder: str | Path, info: CheckpointInfo | None = None) -> GeoDenoiser:
    """Build the network from config.json and load model.safetensors, checking every name and shape before any
    weight is allocated, and that every weight is finite. A damaged or truncated file is a one-sentence
    CheckpointError."""
    info = info or read_info(folder)
    path = Path(folder) / WEIGHTS_FILE
    if not path.is_file():
        raise CheckpointError(f"{folder} has no {WEIGHTS_FILE}")
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in GeoDenoiser(info.network).state_dict().items()}
    try:
        with safe_open(str(path), framework="pt") as weights:
            found = {k: tuple(weights.get_slice(k).get_shape()) for k in weights.keys()}
            _check_layout(path, expected, found)
            state = {k: weights.get_tensor(k) for k in expected}
    except CheckpointError:
        raise
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{path} is damaged or truncated: it is not a readable safetensors file "
                              f"({_first_line(err)})") from None
    broken = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if broken:
        raise CheckpointError(f"{path} is damaged: {', '.join(broken[:3])} hold non-finite values")
    network = GeoDenoiser(info.network)
    network.load_state_dict({k: v.float() for k, v in state.items()})
    return network.eval().requires_grad_(False)


def _check_layout(path: Path, expected: dict[str, tuple], found: dict[str, tuple]) -> None:
    """The file's tensor names and shapes against the network that config.json describes."""
    missing, unexpected = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{path} does not match the network in {CONFIG_FILE}: "
                              f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    wrong = [f"{k} {found[k]} != {shape}" for k, shape in expected.items() if found[k] != shape]
    if wrong:
        raise CheckpointError(f"{path} has tensors of the wrong shape: {', '.join(wrong[:3])}")


def _first_line(err: Exception) -> str:
    """An exception's message on one line, without a trailing period (it sits inside a sentence)."""
    return (" ".join(str(err).split()) or type(err).__name__).rstrip(".")
