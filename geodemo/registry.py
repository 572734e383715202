"""What a model name means: a shipped model, a registered name, a local folder or a hub id, with its process,
schedule and image encoder. The one place that turns a name into a model folder.

Lookup order: a local folder wins; then the shipped and registered names ("default" = "earth-rfm",
"earth-flow", "earth-diffusion", and whatever `register_model` added); then hub ids ('owner/name'). Process,
schedule and encoder come from the folder's config.json "geodemo" entry, else, for the authors' released
models, from the hub id or the folder's name (`geodemo.hub.official_model`), else the Riemannian flow.
Nothing here downloads until `ModelEntry.local_folder()` is called for a hub model.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Callable, Literal

from geodemo import hub
from geodemo.checkpoint import CONFIG_FILE, CheckpointError, CheckpointInfo, read_info
from geodemo.hub import OfficialModel
from geodemo.paths import ASSETS_DIR

SHIPPED_MODELS: dict[str, str] = {
    "earth-rfm": "earth-rfm",
    "earth-flow": "earth-flow",
    "earth-diffusion": "earth-diffusion",
}
"""Name -> folder under assets/ (config.json + model.safetensors), shipped inside geodemo (no download)."""
ALIASES: dict[str, str] = {"default": "earth-rfm"}
DEFAULT_PROCESS = "rfm_s2"
"""The process of a checkpoint that names none and is not a released model: PLONK's main model."""

FolderOrResolver = str | Path | Callable[[], str | Path]
_REGISTERED: dict[str, FolderOrResolver] = {}
Kind = Literal["folder", "shipped", "registered", "hub"]


@dataclass(frozen=True)
class ModelEntry:
    """One resolved name: `kind` says where the weights are; `folder` is known without a download except for
    hub models (and registered resolvers, which run on first use)."""

    name: str
    kind: Kind
    folder: Path | None = None
    hub_id: str | None = None
    resolver: Callable[[], str | Path] | None = None

    @cached_property
    def official(self) -> OfficialModel | None:
        """The released PLONK model this is (by hub id or folder name), None for geodemo's own."""
        return hub.official_model(self.hub_id or self.name) or (hub.official_model(self.folder.resolve())
                                                                if self.folder else None)

    def local_folder(self) -> Path:
        """The folder holding config.json + model.safetensors; downloads (or finds cached) hub models."""
        if self.folder is not None:
            return self.folder
        if self.resolver is not None:
            return Path(self.resolver())
        return hub.resolve(self.hub_id)

    def info(self) -> CheckpointInfo | None:
        """config.json of a local model; None for a hub model not yet downloaded."""
        return read_info(self.folder) if self.folder is not None else None

    def process(self, info: CheckpointInfo | None = None) -> str:
        """The process name: config.json's, else the released model's, else the Riemannian flow."""
        info = info or self.info()
        return (info.process if info else None) or (self.official.process if self.official else DEFAULT_PROCESS)

    def schedule(self, info: CheckpointInfo | None = None) -> dict | None:
        info = info or self.info()
        return (info.schedule if info else None) or (self.official.schedule if self.official else None)

    def encoder(self, info: CheckpointInfo | None = None) -> str | None:
        info = info or self.info()
        return (info.encoder if info else None) or (self.official.encoder if self.official else None)

    @property
    def display_name(self) -> str:
        """The released hub id for official weights loaded by id, else the name as given."""
        return self.official.hub_id if self.official and self.kind == "hub" else self.name


def shipped_folder(name: str) -> Path | None:
    """The assets/ folder of a shipped model name or alias, None for any other string."""
    name = ALIASES.get(name, name)
    return ASSETS_DIR / SHIPPED_MODELS[name] if name in SHIPPED_MODELS else None


def shipped_models() -> dict[str, Path]:
    """Shipped models present on disk, by name; an alias ("default") replaces the name it points to."""
    found: dict[Path, str] = {}
    for name in sorted([*SHIPPED_MODELS, *ALIASES], key=lambda n: (n not in ALIASES, n)):
        folder = shipped_folder(name)
        if (folder / CONFIG_FILE).is_file() and folder not in found:
            found[folder] = name
    return {name: folder for folder, name in found.items()}


def register_model(name: str, folder_or_resolver: FolderOrResolver) -> None:
    """Make lookup(name) open a folder, or the folder a resolver returns when first asked (downloads,
    unpacking). Local folders named `name` still win; shipped names cannot be replaced."""
    if shipped_folder(name) is not None:
        raise ValueError(f"{name!r} is a shipped model name; register under another name")
    _REGISTERED[name] = folder_or_resolver


def known_names() -> list[str]:
    """Every name lookup resolves without a path or hub id: shipped models, aliases, registered names."""
    return sorted([*SHIPPED_MODELS, *ALIASES, *_REGISTERED])


def lookup(name_or_path: str | Path) -> ModelEntry:
    """What a name means, without downloading. Raises CheckpointError naming the accepted forms."""
    name = str(name_or_path)
    path = Path(name)
    if path.is_dir():
        return ModelEntry(name, "folder", folder=path)
    if shipped_folder(name) is not None:
        return ModelEntry(name, "shipped", folder=shipped_folder(name))
    if name in _REGISTERED:
        target = _REGISTERED[name]
        return (ModelEntry(name, "registered", resolver=target) if callable(target)
                else ModelEntry(name, "registered", folder=Path(target)))
    if hub.is_hub_id(name) and not path.exists():
        return ModelEntry(name, "hub", hub_id=name)
    what = "no such folder" if path.is_absolute() or name.startswith(".") else "not a model"
    raise CheckpointError(
        f"{name!r}: {what}; a model is a folder with {CONFIG_FILE} + model.safetensors, a shipped or registered "
        f"name ({', '.join(known_names())}) or a hub id such as 'nicolas-dufour/PLONK_YFCC'"
    )
