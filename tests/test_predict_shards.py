"""geodemo predict-shards: same results on 1 or 2 ranks (torchrun, gloo), at any batch size, after a kill and resume."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import geodemo
from geodemo.batch_predict import (Settings, World, key_noise, list_inputs, predict_embeddings, predict_shards,
                                   tar_samples)
from geodemo.checkpoint import read_info
from training.shards import write_shards

ROOT = Path(__file__).resolve().parents[1]
INFO = read_info(ROOT / "assets" / "earth-rfm")
KEY, DIM = INFO.encoder, INFO.network.cond_dim  # the default model's embedding
ARGS = ["--samples", "8", "--scored", "4", "--ode-method", "rk4", "--ode-steps", "4", "--batch-size", "3",
        "--device", "cpu"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


@pytest.fixture(scope="module")
def pipe():
    return geodemo.load("default", device="cpu")


def make_shards(folder: Path, shards: int, per_shard: int, dim: int = DIM) -> Path:
    rng = np.random.default_rng(0)
    n = shards * per_shard
    emb = (rng.normal(size=(n, dim)) / np.sqrt(dim)).astype(np.float32)
    latlon = np.c_[rng.uniform(-60, 60, n), rng.uniform(-180, 180, n)]
    write_shards(folder, emb, latlon, KEY, samples_per_shard=per_shard)
    return folder


def results(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(folder.glob("*.csv"))}


def cli(*args: str, ranks: int = 1) -> subprocess.CompletedProcess:
    launcher = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={ranks}", "--standalone"] \
        if ranks > 1 else [sys.executable]
    return subprocess.run([*launcher, "-m", "geodemo", "predict-shards", *args], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Six shards of five images and their single-process results."""
    root = tmp_path_factory.mktemp("shards")
    shards = make_shards(root / "in", shards=6, per_shard=5)
    done = cli(str(shards), "--output", str(root / "one"), *ARGS)
    assert done.returncode == 0, done.stderr[-2000:]
    return shards, results(root / "one")


@pytest.mark.slow
def test_two_ranks_under_torchrun_give_the_single_process_results(reference, tmp_path):
    shards, expected = reference
    done = cli(str(shards), "--output", str(tmp_path), *ARGS, ranks=2)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "rank 1/2" in done.stderr and "rank 0/2" in done.stderr  # both ranks worked
    assert results(tmp_path) == expected
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["complete"] and [r["rank"] for r in manifest["last_run"]["ranks"]] == [0, 1]
    assert sum(r["images"] for r in manifest["last_run"]["ranks"]) == 30
    rows = list(csv.DictReader(io.StringIO(expected["000000.csv"])))
    assert len(rows) == 5 and all(r["error"] == "" and r["true_lat"] and float(r["error_km"]) >= 0 for r in rows)


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_same_results(reference, tmp_path):
    shards, expected = reference
    launch = [sys.executable, "-m", "geodemo", "predict-shards", str(shards), "--output", str(tmp_path), *ARGS]
    proc = subprocess.Popen(launch, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not list(tmp_path.glob("*.csv")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = len(list(tmp_path.glob("*.csv")))
    assert 1 <= finished < 6, f"the kill should land mid-run ({finished} of 6 shards done)"
    assert not (tmp_path / "manifest.json").exists()
    done = cli(str(shards), "--output", str(tmp_path), *ARGS)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"{6 - finished} of the {6 - finished} shards still to do ({finished} of 6 already done)" in done.stderr
    assert results(tmp_path) == expected
    assert json.loads((tmp_path / "manifest.json").read_text())["complete"]


def test_each_image_has_its_own_noise_whatever_its_batch(pipe):
    keys = [f"img{i}" for i in range(6)]
    whole = key_noise(pipe, keys, 5, seed=3)
    assert torch.equal(key_noise(pipe, keys[::-1], 5, seed=3), whole.flip(0))
    assert torch.equal(key_noise(pipe, keys[2:3], 5, seed=3), whole[2:3])
    assert not torch.equal(key_noise(pipe, keys, 5, seed=4), whole)
    assert len({tuple(row[0].tolist()) for row in whole}) == 6


def test_results_do_not_depend_on_batch_size_or_neighbours(pipe):
    rng = np.random.default_rng(1)
    emb = torch.from_numpy((rng.normal(size=(5, DIM)) / np.sqrt(DIM)).astype(np.float32))
    keys = [f"k{i}" for i in range(5)]
    settings = Settings(model="default", num_samples=6, steps=8, scored=3, ode_method="rk4", ode_steps=4)
    full = predict_embeddings(pipe, emb, keys, settings, batch_size=5)
    pairs = predict_embeddings(pipe, emb, keys, settings, batch_size=2)
    alone = predict_embeddings(pipe, emb[3:4], keys[3:4], settings, batch_size=1)
    for name in ("samples", "best", "log_density", "localizability"):
        torch.testing.assert_close(pairs[name], full[name], atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(alone[name], full[name][3:4], atol=1e-4, rtol=1e-5)
    assert torch.isfinite(full["log_density"]).all()
    assert (full["log_density"] >= full["localizability"]).all()  # the best of the scored samples


def test_image_folder_with_a_bad_file_and_exif_free_truth_from_csv(pipe, tmp_path):
    images = tmp_path / "photos"
    images.mkdir()
    for i in range(3):
        Image.new("RGB", (64, 48), (40 * i, 120, 200)).save(images / f"p{i}.jpg")
    (images / "broken.jpg").write_bytes(b"not a jpeg")
    table = tmp_path / "photos.csv"
    table.write_text("image,latitude,longitude\nphotos/p0.jpg,48.85,2.35\nphotos/broken.jpg,,\nphotos/p2.jpg,,\n")
    settings = Settings(model="default", num_samples=4, steps=4, scored=0)
    shards = list_inputs(str(table), images_per_shard=2)
    assert [s.name for s in shards] == ["images-000000", "images-000001"]
    predict_shards(pipe, shards, tmp_path / "out", settings, World(), batch_size=2)
    rows = [r for s in shards for r in csv.DictReader(open(tmp_path / "out" / f"{s.name}.csv"))]
    assert [r["key"] for r in rows] == ["photos/p0.jpg", "photos/broken.jpg", "photos/p2.jpg"]
    assert rows[0]["true_lat"] == "48.850000" and rows[2]["true_lat"] == ""
    assert "broken.jpg" in rows[1]["error"] and rows[1]["best_lat"] == ""
    assert rows[0]["log_density"] == "nan"  # --scored 0: no ODE, the densest sample is the best guess
    assert [s.name for s in list_inputs(str(images))] == ["images-000000"]


def test_a_second_run_with_other_settings_is_refused(pipe, tmp_path):
    shards = list_inputs(str(make_shards(tmp_path / "in", shards=1, per_shard=2)))
    settings = Settings(model="default", num_samples=2, steps=2, scored=0)
    predict_shards(pipe, shards, tmp_path / "out", settings, World())
    with pytest.raises(ValueError, match="other settings .*num_samples"):
        predict_shards(pipe, shards, tmp_path / "out", Settings(model="default", num_samples=3, steps=2, scored=0),
                       World())


def test_tar_reader_matches_webdataset_grouping(tmp_path):
    make_shards(tmp_path, shards=1, per_shard=3, dim=4)
    samples = list(tar_samples(str(tmp_path / "000000.tar")))
    assert [k for k, _ in samples] == ["000000000", "000000001", "000000002"]
    assert all(sorted(m) == [f"{KEY}.npy", "json"] for _, m in samples)
    assert list_inputs(str(tmp_path / "{000000..000000}.tar"))[0].tar == str(tmp_path / "000000.tar")


@pytest.mark.slow
def test_evaluate_on_two_ranks_prints_the_single_process_table(reference, tmp_path):
    shards, _ = reference
    args = ["training/evaluate.py", str(ROOT / "assets" / "earth-rfm"), str(shards), "--steps", "4",
            "--samples-per-image", "2", "--likelihood-images", "17", "--localizability-samples", "2",
            "--ode-method", "rk4", "--ode-steps", "4", "--prdc-images", "20", "--batch-size", "4", "--device", "cpu"]
    one = subprocess.run([sys.executable, *args, "--output", str(tmp_path / "one.json")], cwd=ROOT, env=ENV,
                         capture_output=True, text=True, timeout=300)
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone", *args,
                          "--output", str(tmp_path / "two.json")], cwd=ROOT, env=ENV, capture_output=True, text=True,
                         timeout=300)
    assert one.returncode == 0 and two.returncode == 0, one.stderr[-2000:] + two.stderr[-2000:]
    first, second = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert second.pop("ranks") == 2 and first.pop("ranks") == 1
    assert first["images"] == 30 and first["likelihood_images"] == 17 and first.keys() == second.keys()
    for key, value in first.items():  # batches cross shards differently: equal up to float rounding
        assert second[key] == (pytest.approx(value, rel=1e-6, abs=1e-9) if isinstance(value, float) else value), key
    assert "GeoScore" in two.stdout and "NLL" in two.stdout
