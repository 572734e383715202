"""training/earth_views.sh end to end at toy size: every stage runs and leaves what the next one and the model card
read (the GPU run uses the same script with real sizes)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from geodemo.checkpoint import read_info
from geodemo.encoders.efficientnet import load_backbone

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_every_stage_of_the_recipe_runs_at_toy_size(tiny_mosaics, tmp_path):
    runs, data = tmp_path / "runs", tmp_path / "data"
    toy = {"MOSAICS": str(tiny_mosaics), "DATA": str(data), "RUNS": str(runs), "PYTHON": sys.executable,
           "FOLD_FAMILIES": "fb", "FOLD_SIZES": "16x1", "FOLD_VIEWS": "48", "FOLD_STEPS": "3", "HELDOUT_VIEWS": "48",
           "TRAIN_VIEWS": "48", "FINAL_STEPS": "3", "ENCODER_SECONDS": "600",
           "ENCODER_ARGS": "--steps 2 --batch-size 4 --size 32 --cells 64",
           "TRAIN_ARGS": "--dim 16 --depth 1 --batch-size 16 --warmup-steps 1 --num-workers 0",
           "EVAL_ARGS": "--likelihood-images 2 --localizability-samples 2 --normalisation-views 1 "
                        "--normalisation-points 64 --no-prior --ode-method rk4 --ode-steps 4 --device cpu"}
    env = {**os.environ, **toy, "PYTHONPATH": str(REPO)}
    done = subprocess.run(["bash", "training/earth_views.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for stage in ("folds", "fold evaluation", "encoder", "data", "final models", "evaluate", "evaluated"):
        assert f" {stage}" in done.stdout, stage
    summary = json.loads((runs / "folds" / "summary.json").read_text())
    assert {r["mosaic"] for r in summary["folds"]} == {"b"}  # the held-out family's mosaic only
    assert sorted(r["process"] for r in summary["folds"]) == ["diffusion_r3", "flow_r3", "rfm_s2"]  # one per process
    assert load_backbone(runs / "folds" / "fb" / "encoder" / "model.safetensors")[1:] == (32, 2)
    assert sorted(p.name for p in (data / "folds" / "fb" / "train").iterdir()) == ["a"]
    assert load_backbone(runs / "earth-encoder" / "model.safetensors")[1:] == (32, 2)
    for name, process in (("earth-rfm", "rfm_s2"), ("earth-flow", "flow_r3"), ("earth-diffusion", "diffusion_r3")):
        info = read_info(runs / name / "model")
        assert (info.process, info.encoder, info.network.cond_dim) == (process, "earth_lite0_grid2", 5120)
        assert info.metadata["evaluation"]["heldout_views"] == 96  # 48 clean views of each of the two mosaics
    assert "cp " in done.stdout and "assets/earth-encoder/" in done.stdout
