"""Where the released models' image encoders get their weights: a local copy in an encoder directory, the Hugging
Face cache (filled by `preload_from_hub` on a Space, or by an earlier download), or the hub.

An encoder directory holds one subfolder per encoder, named as `EncoderSource.folder` (`StreetCLIP`,
`dinov2-reg`), each with the files the hub repository holds; set it with `set_encoder_dir(path)` (the app's and
the CLI's `--encoder-dir`) or the environment variable GEODEMO_ENCODER_DIR.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

ENCODER_DIR_ENV = "GEODEMO_ENCODER_DIR"
DEFAULT_ENCODER_DIR = "encoders"
"""The folder name the download commands in geodemo's messages and docs use."""


@dataclass(frozen=True)
class EncoderSource:
    """A released encoder's files: its hub repository, the `config` files it needs, one of `weights` (the first
    found is read; the first is the one downloaded), and its subfolder in an encoder directory."""

    label: str
    repo_id: str
    config: tuple[str, ...]
    weights: tuple[str, ...]
    folder: str

    @property
    def files(self) -> tuple[str, ...]:
        """The files a download fetches: the config files and the first weights file."""
        return (*self.config, self.weights[0])

    def holds(self, folder: Path) -> bool:
        """Whether a folder holds this encoder: every config file and one of the weights files."""
        return all((folder / f).is_file() for f in self.config) and any((folder / w).is_file() for w in self.weights)


ENCODER_SOURCES: dict[str, EncoderSource] = {
    # geolocal/StreetCLIP was saved by transformers in 2023: pytorch_model.bin for certain, model.safetensors read too
    "street_clip": EncoderSource("StreetCLIP", "geolocal/StreetCLIP", ("config.json",),
                                 ("pytorch_model.bin", "model.safetensors"), "StreetCLIP"),
    "dinov2_vitl14_reg": EncoderSource("DINOv2-reg", "timm/vit_large_patch14_reg4_dinov2.lvd142m", (),
                                       ("model.safetensors",), "dinov2-reg"),
}
"""The released models' encoders by registry name."""

_encoder_dir: Path | None = None


def set_encoder_dir(folder: str | Path | None) -> None:
    """Read the released encoders from subfolders of `folder` (see the module docstring); None: back to
    GEODEMO_ENCODER_DIR / the cache / the hub. Encoders already built are rebuilt on next use."""
    global _encoder_dir
    if folder is not None and not Path(folder).is_dir():
        raise ValueError(f"encoder directory {str(folder)!r}: no such folder (it should hold "
                         f"{' and / or '.join(s.folder for s in ENCODER_SOURCES.values())} subfolders)")
    _encoder_dir = Path(folder) if folder is not None else None
    from geodemo.encoders import forget_built

    forget_built(*ENCODER_SOURCES)


def encoder_dir() -> Path | None:
    """The encoder directory in force: set_encoder_dir's, else GEODEMO_ENCODER_DIR's, else None."""
    if _encoder_dir is not None:
        return _encoder_dir
    env = os.environ.get(ENCODER_DIR_ENV)
    return Path(env) if env else None


def local_copy(name: str) -> Path | None:
    """The encoder directory's subfolder holding encoder `name`, None when there is none."""
    root, source = encoder_dir(), ENCODER_SOURCES[name]
    if root is None or not (root / source.folder).is_dir():
        return None
    return root / source.folder


def cached_copy(name: str) -> Path | None:
    """The Hugging Face cache's snapshot holding encoder `name`'s files (any one weights file), else None."""
    from geodemo.hub import cached

    source = ENCODER_SOURCES[name]
    for weights in source.weights:
        folder = cached(source.repo_id, (*source.config, weights))
        if folder is not None:
            return folder
    return None


def ready_offline(name: str) -> bool:
    """Whether encoder `name` can be built without the network (a local copy or the cache holds its files)."""
    folder = local_copy(name)
    return (folder is not None and ENCODER_SOURCES[name].holds(folder)) or cached_copy(name) is not None


def encoder_files(name: str) -> Path:
    """A folder holding encoder `name`'s files: the encoder directory's copy, else the cached snapshot, else
    downloaded (the first weights file; the next one when the repository lacks it). Raises
    geodemo.hub.HubUnavailableError with one sentence saying how to get a local copy."""
    from geodemo.hub import MissingFilesError, download, encoder_advice

    source = ENCODER_SOURCES[name]
    folder = local_copy(name)
    if folder is not None:
        if not source.holds(folder):
            raise FileNotFoundError(f"{folder} should hold {' + '.join(source.config + source.weights[:1])} "
                                    f"of {source.repo_id} ({source.label})")
        return folder
    folder = cached_copy(name)
    if folder is not None:
        return folder
    *preferred, last = source.weights
    for weights in preferred:
        try:
            return download(source.repo_id, files=(*source.config, weights), advice=encoder_advice(name))
        except MissingFilesError:
            pass
    return download(source.repo_id, files=(*source.config, last), advice=encoder_advice(name))
