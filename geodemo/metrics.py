"""Geolocation metrics of the PLONK paper (distances, GeoScore, accuracies, NLL, PRDC) and the samples' kernel
density."""

from __future__ import annotations

import torch

from geodemo.sphere import haversine_km

ACCURACY_THRESHOLDS_KM = (1.0, 25.0, 200.0, 750.0, 2500.0)
GEOSCORE_SCALE_KM = 1492.7
KDE_BANDWIDTH_KM = 250.0


def geoscore(distance_km: torch.Tensor) -> torch.Tensor:
    """OSV-5M GeoScore per prediction: 5000 exp(-d / 1492.7), at most 5000."""
    return 5000.0 * torch.exp(-distance_km / GEOSCORE_SCALE_KM)


def accuracy_within(distance_km: torch.Tensor, thresholds_km: tuple[float, ...] = ACCURACY_THRESHOLDS_KM) -> dict[str, float]:
    """Fraction of predictions with error <= each threshold, keyed 'acc@{km}km'."""
    return {f"acc@{t:g}km": float((distance_km <= t).double().mean()) for t in thresholds_km}


def distance_metrics(pred_latlon: torch.Tensor, true_latlon: torch.Tensor) -> dict[str, float]:
    """GeoScore, mean and median haversine error (km) and accuracies of (N, 2) degree predictions."""
    d = haversine_km(pred_latlon.double(), true_latlon.double())
    return {
        "geoscore": float(geoscore(d).mean()),
        "mean_km": float(d.mean()),
        "median_km": float(d.median()),
        **accuracy_within(d),
    }


def negative_log_likelihood(log_density: torch.Tensor) -> float:
    """NLL = -mean log p(y_true | c), in nats per steradian."""
    return float(-log_density.double().mean())


def pairwise_haversine_km(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, M) great-circle distances between (N, 2) and (M, 2) degree arrays."""
    return haversine_km(a.double().unsqueeze(1), b.double().unsqueeze(0))


def prdc(real_latlon: torch.Tensor, fake_latlon: torch.Tensor, k: int = 3) -> dict[str, float]:
    """Precision, recall, density, coverage (Naeem et al. 2020) with haversine distance.

    r_i = distance of real i to its k-th nearest real neighbour, f_j likewise among fakes;
    precision = mean_j [exists i: d(j, i) <= r_i], recall = mean_i [exists j: d(i, j) <= f_j],
    density = mean_j sum_i [d(j, i) <= r_i] / k, coverage = mean_i [min_j d(i, j) <= r_i].
    """
    if real_latlon.shape[0] <= k or fake_latlon.shape[0] <= k:
        raise ValueError(f"PRDC with k={k} needs more than {k} real and fake points")
    real_real = pairwise_haversine_km(real_latlon, real_latlon)
    fake_fake = pairwise_haversine_km(fake_latlon, fake_latlon)
    real_fake = pairwise_haversine_km(real_latlon, fake_latlon)
    real_radius = real_real.kthvalue(k + 1, dim=1).values
    fake_radius = fake_fake.kthvalue(k + 1, dim=1).values
    inside_real = real_fake <= real_radius.unsqueeze(1)
    inside_fake = real_fake <= fake_radius.unsqueeze(0)
    return {
        "precision": float(inside_real.any(dim=0).double().mean()),
        "recall": float(inside_fake.any(dim=1).double().mean()),
        "density": float(inside_real.double().sum(dim=0).mean() / k),
        "coverage": float((real_fake.min(dim=1).values <= real_radius).double().mean()),
    }


def kde_scores(samples: torch.Tensor, bandwidth_km: float = KDE_BANDWIDTH_KM) -> torch.Tensor:
    """(N,) kernel density of each of the (N, 2) degree samples among all: sum_j exp(-d_ij^2 / (2 h^2)), d in km."""
    d = pairwise_haversine_km(samples, samples)
    return torch.exp(-0.5 * (d / bandwidth_km) ** 2).sum(dim=1)
