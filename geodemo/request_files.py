"""The app's temporary folder, bounded: per-request downloads and Gradio's cache of uploads and served files.

The folder belongs to one app (Gradio's GRADIO_TEMP_DIR; by default <system temp>/geodemo-app). Each request's
downloads go into a fresh sub-folder of it, so Gradio serves them without copying. Pruning (by the request that
finds one due, and by a background thread, once per prune_every_s) keeps it bounded: files older than max_age_s
go, then the oldest files while the total exceeds max_bytes (a file younger than keep_fresh_s stays: its request
may still be fetching it), then the empty folders left behind; Gradio is told to forget what went. The files
Gradio must keep (example thumbnails, components' initial values) stay. Footprint bound: max_bytes + the kept
files + what the app wrote in the last max(keep_fresh_s, prune_every_s).

Gradio's own delete_cache is not used: its scheduled task iterates sets that requests add to, and dies on the
first "Set changed size during iteration" (seen under load), after which nothing would be removed.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

log = logging.getLogger(__name__)
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
    """How long a file may stay and how many bytes the folder may hold; how often it is pruned; how long a new
    file is spared by the size rule. Seconds and bytes."""

    max_age_s: float = 3600.0
    max_bytes: int = 512 * 2**20
    prune_every_s: float = 60.0
    keep_fresh_s: float = 60.0


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

    keep: the paths never to remove (asked at each prune); forget: told the paths removed (Gradio's bookkeeping).
    Thread-safe: one prune at a time; a request that finds a prune running does not wait for it.
    """

    def __init__(self, root: str | Path, bounds: TempBounds = TempBounds(), keep: Callable[[], Iterable[str]] = tuple,
                 forget: Callable[[set[str]], None] = lambda paths: None):
        self.root = Path(root).resolve()
        self.bounds = bounds
        self.keep = keep
        self.forget = forget
        self._pruning = threading.Lock()
        self._last_prune = -float("inf")
        self._stop = threading.Event()
        self._starting = threading.Lock()
        self._pruner: threading.Thread | None = None

    def write(self, files: dict[str, str]) -> list[Path]:
        """Write {file name: text} into a fresh folder for one request (pruning first when one is due)."""
        self._start_pruner()
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
        """Remove what is older than max_age_s, then the oldest files (not fresh ones) down to max_bytes, then
        empty folders. Returns the footprint left, or None when another prune was running."""
        if not self._pruning.acquire(blocking=False):
            return None
        try:
            self._last_prune = time.monotonic()
            now = time.time() if now is None else now
            kept = {str(Path(p).resolve()) for p in self.keep()}
            files = sorted(_files(self.root), key=lambda f: f.changed)
            total = sum(f.size for f in files)
            left, removed = [], set()
            for f in files:
                age = now - f.changed
                expired = age > self.bounds.max_age_s or (total > self.bounds.max_bytes
                                                          and age > self.bounds.keep_fresh_s)
                if f.path not in kept and expired and _unlink(f.path):
                    total -= f.size
                    removed.add(f.path)
                else:
                    left.append(f)
            if removed:
                self.forget(removed)
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
        """When the app stops: stop pruning, remove every file but the kept ones, and every empty folder."""
        self._stop.set()
        kept = {str(Path(p).resolve()) for p in self.keep()}
        removed = {f.path for f in _files(self.root) if f.path not in kept and _unlink(f.path)}
        self.forget(removed)
        _remove_empty_folders(self.root, older_than=float("inf"))

    def _start_pruner(self) -> None:
        """Prune in the background too, so that the folder shrinks when no request comes (uploads alone)."""
        with self._starting:
            if self._pruner is None and self.bounds.prune_every_s > 0 and not self._stop.is_set():
                self._pruner = threading.Thread(target=self._prune_until_stopped, name="geodemo-temp-pruner",
                                                daemon=True)
                self._pruner.start()

    def _prune_until_stopped(self) -> None:
        while not self._stop.wait(self.bounds.prune_every_s):
            try:
                self.prune()
            except Exception:  # noqa: BLE001 - the pruner outlives any one failure; the next round retries
                log.exception("pruning %s failed", self.root)


def _unlink(path: str) -> bool:
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return True
    except OSError:
        return False
