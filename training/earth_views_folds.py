"""Leave-one-mosaic-out summary: the held-out-mosaic table of the fold models and the encoder feature that wins.

A fold model is trained on every mosaic outside one family and evaluated (training/earth_views_eval.py) on
the views of each mosaic of that family; its evaluation lands in <runs>/<family>__<embedding key>[__<process>]/
eval-<mosaic>.json, its process is read from model/config.json. The winning embedding key has the smallest median
error of the default process (RFM) on held-out land views (>= 20% land), averaged over the folds; ties go to the
higher acc@750km.

    python -m training.earth_views_folds runs/folds --output runs/folds/summary.json     # table + winner
    python -m training.earth_views_folds runs/folds --print-best                         # the winner alone
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from geodemo.checkpoint import CONFIG_FILE, read_info
from geodemo.registry import DEFAULT_PROCESS
from training.earth_views_eval import METRIC_COLUMNS, markdown_header, metric_cells

LAND, OCEAN, COAST = "views with >= 20% land", "open-ocean views (< 1% land)", "coastline views (20-80% land)"


def read_folds(root: str | Path) -> list[dict]:
    """One record per (fold model, held-out mosaic): family, key, process, mosaic and the evaluation rows."""
    records = []
    for path in sorted(Path(root).glob("*__*/eval-*.json")):
        family, key = path.parent.name.split("__")[:2]
        model = path.parent / "model"
        process = (read_info(model).process if (model / CONFIG_FILE).is_file() else None) or DEFAULT_PROCESS
        for result in json.loads(path.read_text()):
            records.append({"family": family, "key": key, "process": process, "mosaic": path.stem[len("eval-"):],
                            "rows": result["rows"], "views": result["views"]})
    if not records:
        raise FileNotFoundError(f"no fold evaluations (<family>__<key>/eval-<mosaic>.json) under {root}")
    return records


def best_key(records: list[dict]) -> str:
    """The embedding key with the smallest mean (over folds) of the default process's held-out land views' median km."""
    default = [r for r in records if r["process"] == DEFAULT_PROCESS] or records
    scores = {}
    for key in sorted({r["key"] for r in default}):
        mine = [r["rows"][LAND] for r in default if r["key"] == key]
        scores[key] = (statistics.mean(m["median_km"] for m in mine), -statistics.mean(m["acc@750km"] for m in mine))
    return min(scores, key=scores.get)


def markdown(records: list[dict]) -> str:
    """A row per (fold, encoder feature, process, held-out mosaic, subset) with earth_views_eval's metric columns."""
    lines = [markdown_header("held-out family", "encoder feature", "process", "held-out mosaic", "views",
                             *METRIC_COLUMNS)]
    for r in records:
        for subset in (LAND, COAST, OCEAN):
            lines.append(f"| {r['family']} | {r['key']} | {r['process']} | {r['mosaic']} | {subset} | "
                         f"{metric_cells(r['rows'][subset])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Leave-one-mosaic-out table and the winning encoder feature.")
    parser.add_argument("root", help="folder of <family>__<key>/eval-<mosaic>.json")
    parser.add_argument("--output", help="JSON file for every record and the winner")
    parser.add_argument("--print-best", action="store_true", help="print only the winning embedding key")
    args = parser.parse_args(argv)
    records = read_folds(args.root)
    best = best_key(records)
    if args.output:
        Path(args.output).write_text(json.dumps({"best_key": best, "folds": records}, indent=1))
    if args.print_best:
        print(best)
        return
    print(markdown(records))
    print(f"best encoder feature (median km on held-out land views, mean over folds): {best}")


if __name__ == "__main__":
    main()
