"""The authors' released PLONK checkpoints on the Hugging Face hub, and downloading hub folders.

`official_model(name)` says what a released model is (data set, encoder, process, schedule) from
its hub id or from the name of a local copy; `download(repo_id)` returns a local folder holding
its files, from the cache when present, else through huggingface_hub (cache, resume, progress).
No network is touched at import time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from geodemo.checkpoint import CONFIG_FILE, WEIGHTS_FILE, CheckpointError

AUTHOR = "nicolas-dufour"
HUB_TIMEOUT_S = 10.0
"""Seconds to wait for the hub's answer before calling it unreachable (one attempt, no retry loop)."""

PLONK_SCHEDULE = {"kind": "sigmoid", "start": -7.0, "end": 3.0, "tau": 1.0}
"""The schedule of every released model: sigmoid, start -7, end 3, tau 1."""

_DATASETS = {
    # name in the hub id: (data set, image encoder, network width)
    "YFCC": ("YFCC100M (MP-16 train, YFCC4k test)", "dinov2_vitl14_reg", 512),
    "OSV_5M": ("OSV-5M", "street_clip", 512),
    "iNaturalist": ("iNaturalist 2021 (with GPS)", "dinov2_vitl14_reg", 256),
}
_ALIASES = {"iNat": "iNaturalist", "OSV5M": "OSV_5M"}
_VARIANTS = {"": "rfm_s2", "_diffusion": "diffusion_r3", "_flow": "flow_r3"}
_NAME = re.compile(
    rf"^(?:models--{AUTHOR}--)?PLONK_(?P<data>{'|'.join(sorted(_DATASETS) + sorted(_ALIASES))})"
    r"(?P<variant>_diffusion|_flow)?$"
)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class OfficialModel:
    """What geodemo needs to know about one released checkpoint beyond its config.json."""

    hub_id: str
    dataset: str
    encoder: str
    process: str
    dim: int
    schedule: dict = field(default_factory=lambda: dict(PLONK_SCHEDULE))


def official_model(name_or_path: str | Path) -> OfficialModel | None:
    """The released model named by a hub id ('nicolas-dufour/PLONK_OSV_5M_diffusion'), a folder named
    after one ('PLONK_YFCC', a huggingface cache 'models--nicolas-dufour--PLONK_YFCC/snapshots/...'),
    or None. The README spelling 'PLONK_iNat' is accepted for 'PLONK_iNaturalist'."""
    parts = Path(str(name_or_path)).parts
    # the name itself, or a huggingface cache snapshot: .../models--nicolas-dufour--PLONK_X/snapshots/<hash>
    candidates = parts[-1:] + (parts[-3:-2] if len(parts) >= 3 and parts[-2] == "snapshots" else ())
    for part in candidates:
        match = _NAME.match(part)
        if match:
            data = _ALIASES.get(match["data"], match["data"])
            variant = match["variant"] or ""
            dataset, encoder, dim = _DATASETS[data]
            return OfficialModel(f"{AUTHOR}/PLONK_{data}{variant}", dataset, encoder, _VARIANTS[variant], dim)
    return None


def official_models() -> list[OfficialModel]:
    """Every released id the authors' code names (the _flow variants are not confirmed on the hub)."""
    return [official_model(f"PLONK_{data}{variant}") for variant in _VARIANTS for data in _DATASETS]


def is_hub_id(name: str) -> bool:
    """'owner/name' as the hub spells repository ids."""
    return bool(_HUB_ID.match(str(name)))


class HubUnavailableError(CheckpointError):
    """A hub model that cannot be fetched: its message is one sentence saying what to do."""


class MissingFilesError(HubUnavailableError):
    """The hub repository exists but lacks some requested files."""


def download_command(repo_id: str, files: tuple[str, ...] = (CONFIG_FILE, WEIGHTS_FILE)) -> str:
    """The shell command that fetches a model into a folder named after it (huggingface_hub's `hf` CLI)."""
    return f"hf download {repo_id} {' '.join(files)} --local-dir {repo_id.split('/')[-1]}"


def _unreachable(repo_id: str, why: str, files: tuple[str, ...], use: str) -> HubUnavailableError:
    local = repo_id.split("/")[-1]
    return HubUnavailableError(
        f"Cannot load {repo_id!r}: {why} and it is not in the local Hugging Face cache; on a connected machine run "
        f"`{download_command(repo_id, files)}`, copy that folder here and pass its path: {use.format(folder=repr(local))}."
    )


def download(repo_id: str, files: tuple[str, ...] = (CONFIG_FILE, WEIGHTS_FILE), cache_dir: str | Path | None = None,
             revision: str | None = None, timeout: float = HUB_TIMEOUT_S, use: str = "geodemo.load({folder})") -> Path:
    """Local folder holding `files` of a hub repository: the cached snapshot if complete, else downloaded.

    Offline (HF_HUB_OFFLINE=1) or when the hub does not answer within `timeout` seconds, raises
    HubUnavailableError with one sentence (ending with `use`, how to pass the local copy); a repository or
    file that does not exist says so.
    """
    import httpx2
    from huggingface_hub import HfApi, is_offline_mode, snapshot_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    patterns = list(files)
    try:
        cached = Path(snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, allow_patterns=patterns,
                                        local_files_only=True))
        if all(any(cached.glob(f)) for f in files):
            return cached
    except (LocalEntryNotFoundError, EntryNotFoundError, OSError):
        pass
    if is_offline_mode():
        raise _unreachable(repo_id, "the Hugging Face hub is switched off here (HF_HUB_OFFLINE=1)", files, use)
    try:
        info = HfApi().model_info(repo_id, revision=revision, timeout=timeout)
    except RepositoryNotFoundError:
        raise HubUnavailableError(
            f"Cannot load {repo_id!r}: no such model on the Hugging Face hub (or it is private); "
            f"check the id (released models: {', '.join(m.hub_id for m in official_models()[:6])}) or pass a local folder."
        ) from None
    except (httpx2.TransportError, HfHubHTTPError, OSError) as err:
        raise _unreachable(repo_id, f"the Hugging Face hub is unreachable ({type(err).__name__})", files, use) from None
    present = {s.rfilename for s in info.siblings or []}
    missing = [f for f in patterns if not any(Path(p).match(f) for p in present)]
    if missing:
        raise MissingFilesError(f"Cannot load {repo_id!r}: the hub repository has no {missing} (it holds {sorted(present)}).")
    try:
        return Path(snapshot_download(repo_id, revision=info.sha, cache_dir=cache_dir, allow_patterns=patterns,
                                      etag_timeout=timeout))
    except (httpx2.TransportError, HfHubHTTPError, OSError) as err:
        raise HubUnavailableError(
            f"Downloading {repo_id!r} stopped ({type(err).__name__}: {' '.join(str(err).split())[:200]}); "
            "run the same call again to resume where it stopped."
        ) from None


def resolve(repo_id: str, cache_dir: str | Path | None = None, timeout: float = HUB_TIMEOUT_S) -> Path:
    """Local folder of a model hub id (config.json + model.safetensors); README's 'PLONK_iNat' is mapped."""
    official = official_model(repo_id)
    if official is not None and repo_id.split("/")[0] == AUTHOR:
        repo_id = official.hub_id
    return download(repo_id, cache_dir=cache_dir, timeout=timeout)
