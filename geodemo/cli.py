"""Command line: `geodemo predict IMG [IMG ...] --model NAME --samples N --steps S --guidance W --seed K
--format json|csv|geojson` (also `python -m geodemo ...`).

Prints, per image, the best guess (highest-likelihood sample and its nearest place), the samples' summary
(top modes, countries) and the localizability. A bad file gets its own error record and the batch goes on;
the exit status is 1 when any image failed, 2 when the model cannot be loaded.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Sequence, TextIO

from geodemo.batch_predict import add_predict_shards_parser
from geodemo.encoders.sources import ENCODER_DIR_ENV, set_encoder_dir
from geodemo.hub import LocalCopyUse, set_local_copy_use
from geodemo.images import ImageError
from geodemo.service import (LIMITS, SCORED_SAMPLES, ModelCache, ModelUnavailable, catalogue_name, check_request,
                             locate, make_catalogue)
from geodemo.summary import geojson_features, sample_rows, to_csv

log = logging.getLogger("geodemo.cli")
LOCAL_COPIES = LocalCopyUse(model="geodemo predict IMAGE --model {model}",
                            encoders="geodemo predict IMAGE --encoder-dir {encoders} (and your --model)",
                            both="geodemo predict IMAGE --model {model} --encoder-dir {encoders}")
"""How the hub's messages tell a command-line user to pass local copies of a model and its encoder."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="geodemo", description="Generative visual geolocation (PLONK).")
    commands = parser.add_subparsers(dest="command", required=True)
    predict = commands.add_parser("predict", help="sample locations for images and summarise them")
    predict.add_argument("images", nargs="+", help="image files")
    predict.add_argument("--model", default="default", help="shipped model name, hub id or model folder")
    predict.add_argument("--encoder-dir", default=os.environ.get(ENCODER_DIR_ENV),
                         help="folder holding local copies of the released models' image encoders in subfolders "
                              "StreetCLIP and dinov2-reg (default: $GEODEMO_ENCODER_DIR; else the Hugging Face cache)")
    predict.add_argument("--samples", type=int, default=128, help=f"samples per image {LIMITS['num_samples']}")
    predict.add_argument("--steps", type=int, default=32, help=f"sampler steps {LIMITS['steps']}")
    predict.add_argument("--guidance", type=float, default=2.0, help=f"guidance scale {LIMITS['guidance']}")
    predict.add_argument("--seed", type=int, default=0)
    predict.add_argument("--format", choices=("json", "csv", "geojson"), default="json")
    predict.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    predict.add_argument("--scored", type=int, default=SCORED_SAMPLES,
                         help="how many samples get an exact log-density (the best guess is the best of them)")
    predict.add_argument("--no-likelihood", action="store_true",
                         help="skip the log-densities: faster, the best guess is then the densest sample")
    add_predict_shards_parser(commands)
    return parser


def predict_one(pipe, path: str, request, scored: int) -> tuple[dict, list[dict], list[dict]]:
    """Summary record, sample rows and GeoJSON features of one image; raises ImageError / ValueError."""
    stages = locate(pipe, path, request, likelihood="samples" if scored > 0 else "none", scored=scored)
    final = next(stage for stage in stages if stage.final)
    rows = sample_rows(final.samples, final.sample_log_density)
    return ({"image": path, "ok": True, **final.summary.to_dict()}, rows,
            geojson_features(rows, final.summary, image=path))


def run_predict(args: argparse.Namespace, out: TextIO) -> int:
    try:
        request = check_request(args.samples, args.steps, args.guidance, args.seed)
        set_encoder_dir(args.encoder_dir)
        pipe = ModelCache(make_catalogue(args.model), device=args.device).get(catalogue_name(args.model))
    except (ModelUnavailable, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    failures = 0
    features, header_written = [], False
    for path in args.images:
        try:
            record, rows, image_features = predict_one(pipe, path, request, 0 if args.no_likelihood else args.scored)
        except (ImageError, ValueError, OSError) as err:
            failures += 1
            print(f"error: {path}: {err}", file=sys.stderr)
            record, rows, image_features = {"image": path, "ok": False, "error": str(err)}, [], []
        features += image_features
        if args.format == "json":
            out.write(json.dumps(record) + "\n")
        elif args.format == "csv" and rows:
            text = to_csv([{"image": path, **r} for r in rows])
            out.write(text if not header_written else text.split("\n", 1)[1])
            header_written = True
        out.flush()
    if args.format == "geojson":
        out.write(json.dumps({"type": "FeatureCollection", "features": features}) + "\n")
    return 1 if failures else 0


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    logging.basicConfig(level=logging.WARNING)
    args = build_parser().parse_args(argv)
    if args.command == "predict-shards":
        return args.run(args, out or sys.stdout)
    previous = set_local_copy_use(LOCAL_COPIES)
    try:
        return run_predict(args, out or sys.stdout)
    finally:
        set_local_copy_use(previous)
