"""training/calibration.py on a world whose calibration is known: the model's density is vMF(kappa) around the
truth's centre, the truths are drawn from vMF(kappa / T0). The truth's level under p_T is then uniform exactly at
T = T0 (p_T0 = vMF(kappa / T0) is the truths' own law), so the fitted temperature must come out near T0 and the
tempered coverage near nominal."""

import json
import math
import shutil

import pytest
import torch

from geodemo.checkpoint import read_info
from geodemo.paths import ASSETS_DIR
from geodemo.sphere import latlon_to_xyz, sample_vmf, vmf_log_density, xyz_to_latlon
from training.calibration import (NOMINAL, ViewLevels, binomial_interval, coverage, fit_temperature,
                                  record_calibration, summarise)

KAPPA = 60.0
CENTRE = latlon_to_xyz(torch.tensor([10.0, 20.0], dtype=torch.float64))


def world(views: int, truth_temperature: float, own: int = 128, seed: int = 0) -> ViewLevels:
    """Per view: log p of `own` draws of the model vMF(KAPPA) and of one truth drawn from vMF(KAPPA / T0)."""
    gen = torch.Generator().manual_seed(seed)
    samples = sample_vmf(CENTRE, KAPPA, views * own, gen).reshape(views, own, 3)
    truths = sample_vmf(CENTRE, KAPPA / truth_temperature, views, gen)
    return ViewLevels(vmf_log_density(samples, CENTRE, KAPPA), vmf_log_density(truths, CENTRE, KAPPA))


@pytest.mark.parametrize("truth_temperature", [1.0, 2.0, 0.7])
def test_the_fitted_temperature_recovers_the_truths_spread(truth_temperature):
    fit, test = world(600, truth_temperature, seed=1), world(600, truth_temperature, seed=2)
    fitted = fit_temperature(fit)
    assert fitted == pytest.approx(truth_temperature, rel=0.15)
    before, after = summarise(test), summarise(test, fitted)
    n = before["views"]
    for m, observed in zip(NOMINAL, after["observed"]):
        assert abs(observed - m) < 4 * math.sqrt(m * (1 - m) / n) + 0.03, (m, observed)
    if truth_temperature > 1:  # the model is overconfident: its 90% region holds the truth far less than 90%
        assert before["coverage90"] < 0.8 and after["coverage90"] > before["coverage90"]
    assert sum(after["pit_histogram"]) == n


def test_coverage_counts_levels_below_the_mass_and_the_wilson_interval():
    levels = torch.tensor([0.05, 0.2, 0.45, 0.5, 0.85, 0.95], dtype=torch.float64)
    assert coverage(levels, (0.1, 0.5, 0.9)) == [1 / 6, 3 / 6, 5 / 6]
    low, high = binomial_interval(0.5, 100)
    assert (low, high) == pytest.approx((0.4038, 0.5962), abs=1e-4)  # Wilson 95%: 0.5 +- 0.0962 at n = 100
    assert binomial_interval(0.0, 50)[0] == pytest.approx(0.0, abs=1e-12)


def test_a_recorded_temperature_is_what_the_model_folder_reads(tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(ASSETS_DIR / "earth-rfm", folder)
    test = world(200, 2.0, seed=3)
    rows = {"test, w = 0": summarise(test), "test, w = 0, temperature": summarise(test, 1.93)}
    record_calibration(folder, {"temperature": 1.93, "rows": rows, "plan": {"mosaics": "all"},
                                "fit_views_measured": 120})
    assert read_info(folder).region_temperature == 1.93
    stored = json.loads((folder / "config.json").read_text())["geodemo"]["calibration"]
    assert stored["test_coverage"]["90%"] == [round(rows[k]["coverage90"], 4) for k in rows]


def test_the_view_sets_embeddings_are_cached_per_encoder_weights(tmp_path, monkeypatch):
    """Retrained Earth-encoder weights name another embedding file (the old one would silently feed the new
    models stale embeddings); the meta file (latlon, land) does not depend on the weights."""
    import training.calibration as calibration

    weights = tmp_path / "earth-encoder" / "model.safetensors"
    weights.parent.mkdir()
    monkeypatch.setattr(calibration, "ASSETS_DIR", tmp_path)
    paths = []
    for content in (b"old weights", b"new weights"):
        weights.write_bytes(content)
        paths.append((calibration.views_path("test", "all", 540, "earth_lite0_grid2"),
                      calibration.views_path("test", "all", 540, "earth_lite0_grid2", meta=True)))
    assert paths[0][0] != paths[1][0] and paths[0][1] == paths[1][1]
    assert calibration.views_path("test", "all", 540, "efficientnet_lite0").name == "test-all-540-efficientnet_lite0.pt"


def test_split_fit_views_gives_two_disjoint_halves_that_cover_the_measured_views():
    from training.calibration import ViewLevels, split_fit_views

    levels = ViewLevels(torch.arange(10.0).reshape(5, 2), torch.arange(5.0), torch.zeros(5, 3))
    index = torch.tensor([3, 8, 11, 20, 41])
    (fit, fit_index), (test, test_index) = split_fit_views((levels, index))
    assert fit_index.tolist() == [3, 11, 41] and test_index.tolist() == [8, 20]
    assert fit.truth_log_density.tolist() == [0.0, 2.0, 4.0] and test.sample_log_density.tolist() == [[2.0, 3.0],
                                                                                                      [6.0, 7.0]]
    assert test.uniform_log_density.shape == (2, 3)
