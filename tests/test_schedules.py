import math

import pytest
import torch

from geodemo.schedules import (CosineSchedule, LinearSchedule, SigmoidSchedule, schedule_from_config,
                               schedule_to_config)

SCHEDULES = [SigmoidSchedule(), SigmoidSchedule(start=-3, end=3, tau=0.7), CosineSchedule(), LinearSchedule()]


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: s.kind)
def test_derivative_matches_finite_differences(schedule):
    t = torch.linspace(0.02, 0.98, 97, dtype=torch.float64)
    h = 1e-6
    numeric = (schedule.gamma(t + h) - schedule.gamma(t - h)) / (2 * h)
    assert torch.allclose(schedule.dgamma(t), numeric, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: s.kind)
def test_endpoints_and_monotonicity(schedule):
    t = torch.linspace(0, 1, 1001, dtype=torch.float64)
    g = schedule.gamma(t)
    assert g[0].item() == pytest.approx(1.0)
    assert g[-1].item() == pytest.approx(schedule.clip_min, abs=1e-9)
    assert (g[1:] <= g[:-1]).all()


def test_sigmoid_matches_the_paper_formula():
    s = SigmoidSchedule()
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    for t in (0.1, 0.5, 0.7, 0.9):
        expected = (sig(3) - sig(-7 + 10 * t)) / (sig(3) - sig(-7))
        assert s.gamma(torch.tensor(t, dtype=torch.float64)).item() == pytest.approx(expected, rel=1e-12)


def test_config_round_trip():
    for s in SCHEDULES:
        assert schedule_from_config(schedule_to_config(s)) == s
    assert schedule_from_config(None) == SigmoidSchedule()
    with pytest.raises(ValueError):
        schedule_from_config({"kind": "quadratic"})
