import math

import pytest
import torch

from geodemo.metrics import accuracy_within, distance_metrics, geoscore, kde_scores, negative_log_likelihood, prdc
from geodemo.sphere import haversine_km


def slow_prdc(real: torch.Tensor, fake: torch.Tensor, k: int) -> dict[str, float]:
    """Naeem et al. 2020, written with explicit loops over points."""
    d = lambda a, b: haversine_km(a.double(), b.double()).item()  # noqa: E731
    def radius(points, i):
        return sorted(d(points[i], points[j]) for j in range(len(points)) if j != i)[k - 1]
    r_real = [radius(real, i) for i in range(len(real))]
    r_fake = [radius(fake, j) for j in range(len(fake))]
    precision = sum(any(d(fake[j], real[i]) <= r_real[i] for i in range(len(real))) for j in range(len(fake))) / len(fake)
    recall = sum(any(d(real[i], fake[j]) <= r_fake[j] for j in range(len(fake))) for i in range(len(real))) / len(real)
    density = sum(d(fake[j], real[i]) <= r_real[i] for j in range(len(fake)) for i in range(len(real))) / (k * len(fake))
    coverage = sum(min(d(real[i], fake[j]) for j in range(len(fake))) <= r_real[i] for i in range(len(real))) / len(real)
    return {"precision": precision, "recall": recall, "density": density, "coverage": coverage}


def random_latlon(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.stack((torch.rand(n, generator=g) * 120 - 60, torch.rand(n, generator=g) * 360 - 180), dim=-1)


def test_prdc_matches_the_slow_definition():
    real, fake = random_latlon(40, 0), random_latlon(30, 1) * 0.7
    fast = prdc(real, fake, k=3)
    slow = slow_prdc(real, fake, k=3)
    for key in slow:
        assert fast[key] == pytest.approx(slow[key], abs=1e-12), key


def test_prdc_of_identical_sets():
    real = random_latlon(50, 2)
    result = prdc(real, real.clone(), k=3)
    assert result["precision"] == 1.0 and result["recall"] == 1.0 and result["coverage"] == 1.0
    with pytest.raises(ValueError):
        prdc(real[:3], real[:3], k=3)


def test_geoscore_and_accuracies():
    assert geoscore(torch.tensor(0.0)).item() == 5000.0
    assert geoscore(torch.tensor(1492.7)).item() == pytest.approx(5000 / math.e)
    acc = accuracy_within(torch.tensor([0.5, 20.0, 300.0, 800.0, 3000.0]))
    assert acc == {"acc@1km": 0.2, "acc@25km": 0.4, "acc@200km": 0.4, "acc@750km": 0.6, "acc@2500km": 0.8}


def test_distance_metrics_and_nll():
    true = torch.tensor([[48.8566, 2.3522], [0.0, 0.0]])
    pred = torch.tensor([[40.7128, -74.0060], [0.0, 0.0]])
    m = distance_metrics(pred, true)
    assert m["mean_km"] == pytest.approx(5837 / 2, abs=3)
    assert m["geoscore"] == pytest.approx((5000 + 5000 * math.exp(-5837 / 1492.7)) / 2, rel=1e-3)
    assert negative_log_likelihood(torch.tensor([-1.0, -3.0])) == 2.0


def test_kde_scores_sum_gaussian_kernels_of_great_circle_distance():
    """Two samples one degree apart on the equator (6371 pi / 180 km) and one on the far side of the globe."""
    samples = torch.tensor([[0.0, 10.0], [0.0, 11.0], [0.0, -170.0]])
    near = math.exp(-0.5 * (6371.0 * math.pi / 180 / 300.0) ** 2)
    assert torch.allclose(kde_scores(samples, 300.0), torch.tensor([1 + near, 1 + near, 1.0], dtype=torch.float64))
