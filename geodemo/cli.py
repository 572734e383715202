"""Command line: `geodemo predict IMG [IMG ...] --model NAME --samples N --steps S --guidance W --seed K
--format json|csv|geojson` (also `python -m geodemo ...`).

Per image: the samples (drawn at --guidance, default 0: the model's own distribution), the best guess (the guided
w = 2 point estimate of highest likelihood, geodemo.summary), its nearest place, the top modes, the countries and
the localizability. Formats: json = JSON Lines (one object per image and line); csv = one row per sample, best
guess and true location, with an `image` column; geojson = one FeatureCollection of the same points. A file that
cannot be read gets an error record in every format (and one line on stderr) and the batch goes on; the exit
status is 1 when any image failed, 2 when the request or the model is wrong.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Sequence, TextIO

from geodemo.batch_predict import add_predict_shards_parser
from geodemo.encoders.sources import ENCODER_DIR_ENV, set_encoder_dir
from geodemo.hub import LocalCopyUse, set_local_copy_use
from geodemo.images import ImageError
from geodemo.service import (DEFAULTS, LIMITS, POINT_GUIDANCE, SCORED_SAMPLES, ModelCache, ModelUnavailable,
                             catalogue_name, check_request, locate, make_catalogue)
from geodemo.summary import EXPORT_FIELDS, error_row, export_rows, geojson_features, to_csv

CSV_FIELDS = ("image", *EXPORT_FIELDS, "error")
LOCAL_COPIES = LocalCopyUse(model="geodemo predict IMAGE --model {model}",
                            encoders="geodemo predict IMAGE --encoder-dir {encoders} (and your --model)",
                            both="geodemo predict IMAGE --model {model} --encoder-dir {encoders}")
"""How the hub's messages tell a CLI user to pass local copies of a model and its encoder."""


def build_parser() -> argparse.ArgumentParser:
    """The `geodemo` parser: one sub-command per task, each with `run(args, out) -> exit status` as its default."""
    parser = argparse.ArgumentParser(prog="geodemo", description="Generative visual geolocation (PLONK).")
    commands = parser.add_subparsers(dest="command", required=True)
    predict = commands.add_parser("predict", help="sample locations for images and summarise them")
    predict.add_argument("images", nargs="+", help="image files")
    predict.add_argument("--model", default="default", help="shipped model name, hub id or model folder")
    predict.add_argument("--encoder-dir", default=os.environ.get(ENCODER_DIR_ENV),
                         help="folder holding local copies of the released models' image encoders in subfolders "
                              "StreetCLIP and dinov2-reg (default: $GEODEMO_ENCODER_DIR; else the Hugging Face cache)")
    predict.add_argument("--samples", type=int, default=DEFAULTS["num_samples"],
                         help=f"samples per image {LIMITS['num_samples']}")
    predict.add_argument("--steps", type=int, default=DEFAULTS["steps"], help=f"sampler steps {LIMITS['steps']}")
    predict.add_argument("--guidance", type=float, default=DEFAULTS["guidance"],
                         help=f"guidance scale w of the samples {LIMITS['guidance']} (default 0: the model's own "
                              f"distribution; the best guess is the guided w = {POINT_GUIDANCE:g} point estimate "
                              "whatever this is)")
    predict.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    predict.add_argument("--format", choices=("json", "csv", "geojson"), default="json",
                         help="json: JSON Lines, one object per image; csv: one row per point; geojson: one "
                              "FeatureCollection")
    predict.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    predict.add_argument("--scored", type=int, default=SCORED_SAMPLES,
                         help="how many of the samples get an exact log-density (localizability, log_density column)")
    predict.add_argument("--no-likelihood", action="store_true",
                         help="skip the log-densities: faster; the best guess is then provisional (the densest "
                              "guided sample)")
    predict.set_defaults(run=run_predict)
    add_predict_shards_parser(commands)
    return parser


def predict_one(pipe, path: str, request, scored: int, likelihood: bool = True) -> tuple[dict, list[dict]]:
    """Summary record and export rows (samples, best guess, truth) of one image; raises ImageError / ValueError."""
    stages = locate(pipe, path, request, likelihood="samples" if likelihood else "none", scored=scored)
    final = next(stage for stage in stages if stage.final)
    rows = export_rows(final.samples, final.sample_log_density, final.summary, point_guidance=POINT_GUIDANCE)
    return {"image": path, "ok": True, **final.summary.to_dict()}, rows


def run_predict(args: argparse.Namespace, out: TextIO) -> int:
    try:
        set_encoder_dir(args.encoder_dir)
        request = check_request(args.samples, args.steps, args.guidance, args.seed)
        pipe = ModelCache(make_catalogue(args.model), device=args.device).get(catalogue_name(args.model))
    except (ModelUnavailable, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    failures, features = 0, []
    for index, path in enumerate(args.images):
        try:
            record, rows = predict_one(pipe, path, request, args.scored, likelihood=not args.no_likelihood)
        except (ImageError, ValueError, OSError) as err:
            failures += 1
            print(f"error: {path}: {err}", file=sys.stderr)
            record, rows = {"image": path, "ok": False, "error": str(err)}, [error_row(str(err))]
        if args.format == "json":
            out.write(json.dumps(record) + "\n")
        elif args.format == "csv":
            out.write(to_csv([{"image": path, **row} for row in rows], CSV_FIELDS, header=index == 0))
        else:
            features += geojson_features(rows, image=path)
        out.flush()
    if args.format == "geojson":
        out.write(json.dumps({"type": "FeatureCollection", "features": features}) + "\n")
    return 1 if failures else 0


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    args = build_parser().parse_args(argv)
    previous = set_local_copy_use(LOCAL_COPIES)  # hub messages name this command's flags, for this call only
    try:
        return args.run(args, out or sys.stdout)
    finally:
        set_local_copy_use(previous)
