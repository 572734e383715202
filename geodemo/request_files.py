"""The app's temporary folder, bounded: per-request downloads and Gradio's cache of uploads and served files.

The folder belongs to one app (Gradio's GRADIO_TEMP_DIR; by default <system temp>/geodemo-app). Each request's
downloads go into a fresh sub-folder of it, so Gradio serves them without copying. Two cleaners keep it bounded:
Gradio's own (Blocks(delete_cache=(prune_every_s, max_age_s))) removes the files it tracks once older than
max_age_s; `RequestFiles.prune` (run by a request at most once per prune_every_s) removes whatever is older than
max_age_s + prune_every_s (what Gradio no longer tracks, e.g. left by an earlier run), then the oldest files while
the total exceeds max_bytes, then the empty folders left behind. The files Gradio must keep (example thumbnails,
components' initial values) stay. Footprint bound: max_bytes + the kept files + what is written between two
prunes.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

APP_FOLDER = "geodemo-app"
"""The app's folder under the system's temporary directory when the operator names none."""
REQUEST_PREFIX = "request-"
EMPTY_FOLDER_GRACE_S = 60.0
"""An empty folder is removed only after this long: Gradio creates a folder just before it writes into it."""


def use_own_temp_dir(folder: str | Path | None = None) -> Path:
    """Give the app its own temporary folder before its Blocks are built (Gradio reads GRADIO_TEMP_DIR then):
    `folder` when given, else GRADIO_TEMP_DIR when the operator set it, else <system temp>/geodemo-app."""
    chosen = folder or os.environ.get("GRADIO_TEMP_DIR") or Path(tempfile.gettempdir()) / APP_FOLDER
    os.environ["GRADIO_TEMP_DIR"] = str(Path(chosen).resolve())
    return Path(os.environ["GRADIO_TEMP_DIR"])


@dataclass(frozen=True)
class TempBounds:
    """How long a file may stay (seconds), how many bytes the folder may hold, how often it is pruned."""

    max_age_s: float = 3600.0
    max_bytes: int = 512 * 2**20
    prune_every_s: float = 60.0


@dataclass(frozen=True)
class Footprint:
    """Files and bytes under the folder (the kept files included)."""

    files: int
    bytes: int


@dataclass(frozen=True)
class _File:
    path: str
    size: int
    changed: float


def _files(root: Path) -> list[_File]:
    """Every regular file under root (links are not followed), with size and last modification."""
    found, folders = [], [str(root)]
    while folders:
        try:
            entries = list(os.scandir(folders.pop()))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    folders.append(entry.path)
                elif entry.is_file(follow_symlinks=False):
                    info = entry.stat(follow_symlinks=False)
                    found.append(_File(entry.path, info.st_size, info.st_mtime))
            except OSError:
                continue
    return found


def _remove_empty_folders(root: Path, older_than: float) -> None:
    """Remove the folders under root (deepest first) that are empty and unchanged since `older_than`."""
    for folder, _, _ in sorted(os.walk(root), key=lambda walked: -walked[0].count(os.sep)):
        if folder == str(root):
            continue
        try:
            if os.stat(folder).st_mtime < older_than:
                os.rmdir(folder)
        except OSError:  # not empty, or gone already
            continue


class RequestFiles:
    """Writes each request's files into a fresh folder under `root` and keeps `root` within `bounds`.

    keep: returns the paths that must never be removed (asked at each prune). Thread-safe: one prune at a time;
    a request that finds a prune running does not wait for it.
    """

    def __init__(self, root: str | Path, bounds: TempBounds = TempBounds(), keep: Callable[[], Iterable[str]] = tuple):
        self.root = Path(root).resolve()
        self.bounds = bounds
        self.keep = keep
        self._pruning = threading.Lock()
        self._last_prune = -float("inf")

    def write(self, files: dict[str, str]) -> list[Path]:
        """Write {file name: text} into a fresh folder for one request (pruning first when one is due)."""
        if time.monotonic() - self._last_prune >= self.bounds.prune_every_s:
            self.prune()
        self.root.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix=REQUEST_PREFIX, dir=self.root))
        paths = []
        for name, text in files.items():
            path = folder / Path(name).name
            path.write_text(text)
            paths.append(path)
        return paths

    def prune(self, now: float | None = None) -> Footprint | None:
        """Remove what is older than max_age_s + prune_every_s (Gradio had its turn), then the oldest files down
        to max_bytes, then empty folders. Returns the footprint left, or None when another prune was running."""
        if not self._pruning.acquire(blocking=False):
            return None
        try:
            self._last_prune = time.monotonic()
            now = time.time() if now is None else now
            kept = {str(Path(p).resolve()) for p in self.keep()}
            files = sorted(_files(self.root), key=lambda f: f.changed)
            total = sum(f.size for f in files)
            left = []
            for f in files:
                too_old = now - f.changed > self.bounds.max_age_s + self.bounds.prune_every_s
                if f.path not in kept and (too_old or total > self.bounds.max_bytes) and _unlink(f.path):
                    total -= f.size
                else:
                    left.append(f)
            _remove_empty_folders(self.root, older_than=now - EMPTY_FOLDER_GRACE_S)
            return Footprint(len(left), sum(f.size for f in left))
        finally:
            self._pruning.release()

    def holds(self, path: str | Path) -> bool:
        """Whether path (links resolved) lies inside the folder."""
        try:
            return Path(path).resolve().is_relative_to(self.root)
        except (OSError, ValueError):
            return False

    def footprint(self) -> Footprint:
        files = _files(self.root)
        return Footprint(len(files), sum(f.size for f in files))

    def clear(self) -> None:
        """Remove every request folder (when the app stops; Gradio removes its own cached files itself)."""
        for folder in self.root.glob(f"{REQUEST_PREFIX}*"):
            shutil.rmtree(folder, ignore_errors=True)


def _unlink(path: str) -> bool:
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return True
    except OSError:
        return False
