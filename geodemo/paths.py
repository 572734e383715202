"""Where geodemo's shipped files live: `assets/` beside the package in a checkout, `geodemo/assets` once installed.

pyproject.toml installs the checkout's `assets/` folder as the package data `geodemo.assets`, so the same names
resolve from a clone (`python app.py`) and from `pip install .` run in any directory.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


def _assets_dir() -> Path:
    checkout = _PACKAGE_DIR.parent / "assets"
    installed = _PACKAGE_DIR / "assets"
    return checkout if (checkout / "examples").is_dir() else installed


ASSETS_DIR = _assets_dir()
"""The shipped models, example views and offline map data."""
EXAMPLES_DIR = ASSETS_DIR / "examples"
MAP_DIR = ASSETS_DIR / "map"
