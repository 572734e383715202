"""`python -m geodemo predict`: a batch with one bad file reports it and still answers for the others."""

import csv
import io
import json

import pytest

from app_fixtures import build_test_model, write_test_image
from geodemo.cli import main


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_test_model(tmp_path_factory.mktemp("models") / "cli-model")


def test_batch_with_a_bad_file(model, tmp_path, capsys):
    good = write_test_image(tmp_path / "good.jpg")
    other = write_test_image(tmp_path / "other.jpg", colour=(200, 180, 40))
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    out = io.StringIO()
    code = main(["predict", str(good), str(bad), str(other), "--model", str(model), "--samples", "16",
                 "--steps", "4", "--guidance", "1.5", "--seed", "3", "--format", "json"], out=out)
    assert code == 1
    records = [json.loads(line) for line in out.getvalue().splitlines()]  # JSON Lines: one object per image
    assert [r["ok"] for r in records] == [True, False, True]
    err = capsys.readouterr().err
    assert "not an image" in records[1]["error"]
    assert err.count("\n") == 1 and "bad.jpg" in err and "Traceback" not in err  # one line, no traceback
    best = records[0]
    assert -90 <= best["best_guess"][0] <= 90 and -180 <= best["best_guess"][1] <= 180
    assert best["best_guess_rule"] == "highest likelihood" and best["localizability"] is not None
    assert best["num_samples"] == 16 and best["best_guess_place"]["name"] and best["sample_guidance"] == 1.5
    again = io.StringIO()
    main(["predict", str(good), "--model", str(model), "--samples", "16", "--steps", "4", "--guidance", "1.5",
          "--seed", "3"], out=again)
    assert json.loads(again.getvalue())["best_guess"] == best["best_guess"]  # seeded


def test_every_format_carries_an_error_record_and_the_best_guess(model, tmp_path, capsys):
    images = [str(write_test_image(tmp_path / f"{i}.jpg", colour=(40 * i, 100, 90))) for i in range(2)]
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    batch = [images[0], str(bad), images[1]]
    options = ["--model", str(model), "--samples", "8", "--steps", "3", "--no-likelihood"]
    out = io.StringIO()
    assert main(["predict", *batch, *options, "--format", "csv"], out=out) == 1
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert [r["kind"] for r in rows] == ["sample"] * 8 + ["best_guess"] + ["error"] + ["sample"] * 8 + ["best_guess"]
    assert [r["image"] for r in rows if r["kind"] == "error"] == [str(bad)] and rows[9]["error"]
    assert all(-90 <= float(r["lat"]) <= 90 for r in rows if r["kind"] == "sample")
    assert {r["guidance"] for r in rows if r["kind"] == "sample"} == {"0.0"}  # the default: w = 0
    assert rows[8]["guidance"] == "2.0"  # the best guess is the guided point estimate
    out = io.StringIO()
    assert main(["predict", *batch, *options, "--format", "geojson"], out=out) == 1
    features = json.loads(out.getvalue())["features"]
    kinds = [f["properties"]["kind"] for f in features]
    assert kinds == ["sample"] * 8 + ["best_guess", "error"] + ["sample"] * 8 + ["best_guess"]
    failed = features[9]
    assert failed["geometry"] is None and failed["properties"]["image"] == str(bad) and failed["properties"]["error"]
    assert all(f["properties"]["image"] == images[0] for f in features[:9])
    csv_best = next(r for r in rows if r["kind"] == "best_guess")
    geo_best = features[8]["geometry"]["coordinates"]
    assert [float(csv_best["lon"]), float(csv_best["lat"])] == geo_best  # one best guess in every format
    assert capsys.readouterr().err.count("\n") == 2  # one line per run, no traceback


def test_bad_arguments_and_unknown_model(tmp_path, capsys):
    image = str(write_test_image(tmp_path / "x.jpg"))
    assert main(["predict", image, "--model", "no-such-model"]) == 2
    assert "'no-such-model': not a model" in capsys.readouterr().err
    assert main(["predict", image, "--model", str(tmp_path / "nonexistent")]) == 2  # never a silent default
    assert "no such folder" in capsys.readouterr().err
    assert main(["predict", image, "--steps", "100000"]) == 2
    assert "steps must be between 1 and 250" in capsys.readouterr().err
