"""geodemo.calibration: the floored density's levels (Monte Carlo) and cells against slow float64 references."""

import math

import pytest
import torch

from geodemo.adaptive_density import DensityCells
from geodemo.calibration import Calibration, calibrate_cells, floored_levels
from geodemo.regions import credible_region


def reference_level(samples, value, uniform, temperature, floor):
    """Loop over the points: weighted share of samples denser (weights p^(1/T - 1)), ties half; uniform share."""
    weights = [math.exp((1 / temperature - 1) * s) for s in samples]
    total = sum(weights)
    tempered = sum(w * (1.0 if s > value else 0.5 if s == value else 0.0) for w, s in zip(weights, samples)) / total
    area = sum(1.0 if u > value else 0.5 if u == value else 0.0 for u in uniform) / len(uniform)
    return (1 - floor) * tempered + floor * area


def test_floored_levels_match_a_loop():
    g = torch.Generator().manual_seed(0)
    samples, uniform = torch.randn(3, 50, generator=g, dtype=torch.float64), torch.randn(3, 40, generator=g) - 2
    values = torch.tensor([0.3, -5.0, 1.0], dtype=torch.float64)
    got = floored_levels(samples, values, uniform.double(), Calibration(1.7, 0.1))
    want = [reference_level(samples[i].tolist(), float(values[i]), uniform[i].double().tolist(), 1.7, 0.1)
            for i in range(3)]
    assert torch.allclose(got, torch.tensor(want, dtype=torch.float64), atol=1e-12)
    assert float(got[1]) > 0.9 * (1 - 0.1)  # a truth below every sample: its level is held down only by the floor


def test_floor_needs_uniform_points_and_a_valid_range():
    with pytest.raises(ValueError):
        floored_levels(torch.zeros(2, 5), torch.zeros(2), None, Calibration(1.0, 0.1))
    for bad in (-0.1, 1.0, float("nan")):
        with pytest.raises(ValueError):
            Calibration(1.0, bad)


def test_calibrated_cells_are_the_mixture():
    bounds = torch.tensor([[-90.0, 0.0, -180.0, 180.0], [0.0, 90.0, -180.0, 180.0]], dtype=torch.float64)
    hemisphere = 2 * math.pi
    cells = DensityCells(bounds, torch.log(torch.tensor([0.2, 1.8], dtype=torch.float64) / hemisphere),
                         torch.zeros(2, dtype=torch.long), 2)
    out = calibrate_cells(cells, Calibration(2.0, 0.25))
    pt = torch.sqrt(torch.tensor([0.2, 1.8], dtype=torch.float64))
    pt = pt / pt.sum() / hemisphere  # p^(1/2) normalised over the two halves
    want = 0.75 * pt + 0.25 / (4 * math.pi)
    assert torch.allclose(out.log_density.exp(), want, atol=1e-12)
    assert abs(float(out.probabilities().sum()) - 1) < 1e-12
    assert credible_region(out, 0.5).inside.tolist() == [False, True]
