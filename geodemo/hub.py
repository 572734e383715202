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
    """A hub model that cannot be fetched: its message is one sentence saying what to do; `reason` says why in a
    few words."""

    def __init__(self, message: str, reason: str = ""):
        super().__init__(message)
        self.reason = reason


class MissingFilesError(HubUnavailableError):
    """The hub repository exists but lacks some requested files."""


def download_command(repo_id: str, files: tuple[str, ...] = (CONFIG_FILE, WEIGHTS_FILE), local_dir: str | None = None) -> str:
    """The shell command that fetches a model into a folder named after it (huggingface_hub's `hf` CLI)."""
    return f"hf download {repo_id} {' '.join(files)} --local-dir {local_dir or repo_id.split('/')[-1]}"


@dataclass(frozen=True)
class LocalCopyUse:
    """How a person passes local copies, in the words of the entry point in use (the API, the app, the CLI):
    templates with {model} (a model folder) and {encoders} (an encoder directory, geodemo.encoders.sources)."""

    model: str
    encoders: str
    both: str


API_USE = LocalCopyUse(model="geodemo.load('{model}')",
                       encoders="geodemo.encoders.set_encoder_dir('{encoders}') before geodemo.load",
                       both="geodemo.encoders.set_encoder_dir('{encoders}') and geodemo.load('{model}')")
_local_copy_use = API_USE


def set_local_copy_use(use: LocalCopyUse) -> LocalCopyUse:
    """Make hub messages say how to pass local copies in `use`'s words (the app and the CLI name their flags);
    returns the previous setting."""
    global _local_copy_use
    previous, _local_copy_use = _local_copy_use, use
    return previous


def _encoder_command(name: str) -> str:
    from geodemo.encoders.sources import DEFAULT_ENCODER_DIR, ENCODER_SOURCES

    source = ENCODER_SOURCES[name]
    return download_command(source.repo_id, source.files, f"{DEFAULT_ENCODER_DIR}/{source.folder}")


def model_advice(repo_id: str, files: tuple[str, ...] = (CONFIG_FILE, WEIGHTS_FILE)) -> str:
    """What to run on a connected machine for a hub model, and how to pass the copies: for a released model
    its image encoder's download too."""
    from geodemo.encoders.sources import DEFAULT_ENCODER_DIR, ENCODER_SOURCES

    local, use = repo_id.split("/")[-1], _local_copy_use
    official = official_model(repo_id)
    if official is None or official.encoder not in ENCODER_SOURCES:
        return (f"on a connected machine run `{download_command(repo_id, files)}`, copy that folder here and pass its "
                f"path: {use.model.format(model=local)}")
    label = ENCODER_SOURCES[official.encoder].label
    return (f"on a connected machine run `{download_command(repo_id, files)}` and, for its image encoder "
            f"({label}), `{_encoder_command(official.encoder)}`, copy both folders here and pass them: "
            f"{use.both.format(model=local, encoders=DEFAULT_ENCODER_DIR)}")


def encoder_advice(name: str) -> str:
    """What to run on a connected machine for a released image encoder, and how to pass the copy."""
    from geodemo.encoders.sources import DEFAULT_ENCODER_DIR

    return (f"on a connected machine run `{_encoder_command(name)}`, copy the folder {DEFAULT_ENCODER_DIR!r} here "
            f"and pass it: {_local_copy_use.encoders.format(encoders=DEFAULT_ENCODER_DIR)}")


def cached(repo_id: str, files: tuple[str, ...], cache_dir: str | Path | None = None,
           revision: str | None = None) -> Path | None:
    """The Hugging Face cache's snapshot of a repository (the revision `main` points to, as preload_from_hub and
    every download leave it) when it holds every one of `files`, else None. Never touches the network."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    try:
        folder = Path(snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, allow_patterns=list(files),
                                        local_files_only=True))
    except (LocalEntryNotFoundError, EntryNotFoundError, OSError):
        return None
    return folder if all(any(folder.glob(f)) for f in files) else None


def _model_info(repo_id: str, revision: str | None, timeout: float, advice: str):
    """The hub's answer about a repository, or HubUnavailableError (offline, unreachable, no such model)."""
    import httpx2
    from huggingface_hub import HfApi, is_offline_mode
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    def unreachable(why: str) -> HubUnavailableError:
        return HubUnavailableError(f"Cannot load {repo_id!r}: {why} and it is not in the local Hugging Face cache; "
                                   f"{advice}.", reason=why)

    if is_offline_mode():
        raise unreachable("the Hugging Face hub is switched off here (HF_HUB_OFFLINE=1)")
    try:
        return HfApi().model_info(repo_id, revision=revision, timeout=timeout)
    except RepositoryNotFoundError:
        raise HubUnavailableError(
            f"Cannot load {repo_id!r}: no such model on the Hugging Face hub (or it is private); "
            f"check the id (released models: {', '.join(m.hub_id for m in official_models()[:6])}) or pass a local folder.",
            reason=f"the Hugging Face hub has no model {repo_id!r}") from None
    except (httpx2.TransportError, HfHubHTTPError, OSError) as err:
        raise unreachable(f"the Hugging Face hub is unreachable ({type(err).__name__})") from None


def unreachable_reason(repo_id: str, timeout: float = HUB_TIMEOUT_S) -> str | None:
    """None when the hub answers about `repo_id` within `timeout` seconds, else why not, in a few words."""
    try:
        _model_info(repo_id, None, timeout, advice="")
    except HubUnavailableError as err:
        return err.reason
    return None


def download(repo_id: str, files: tuple[str, ...] = (CONFIG_FILE, WEIGHTS_FILE), cache_dir: str | Path | None = None,
             revision: str | None = None, timeout: float = HUB_TIMEOUT_S, advice: str | None = None) -> Path:
    """Local folder holding `files` of a hub repository: the cached snapshot if complete, else downloaded.

    Offline (HF_HUB_OFFLINE=1) or when the hub does not answer within `timeout` seconds, raises
    HubUnavailableError with one sentence ending with `advice` (default: model_advice, how to fetch and pass
    local copies); a repository or file that does not exist says so.
    """
    import httpx2
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError

    found = cached(repo_id, files, cache_dir=cache_dir, revision=revision)
    if found is not None:
        return found
    info = _model_info(repo_id, revision, timeout, advice or model_advice(repo_id, files))
    present = {s.rfilename for s in info.siblings or []}
    missing = [f for f in files if not any(Path(p).match(f) for p in present)]
    if missing:
        raise MissingFilesError(f"Cannot load {repo_id!r}: the hub repository has no {missing} (it holds {sorted(present)}).")
    try:
        return Path(snapshot_download(repo_id, revision=info.sha, cache_dir=cache_dir, allow_patterns=list(files),
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
