"""Offline places, country odds, best guess, modes, error against the truth and the exports."""

import csv
import io
import json
import math

import numpy as np
import torch

from geodemo.adaptive_density import progressive_density
from geodemo.places import countries, country_names, nearest_places
from geodemo.summary import country_odds_from_cells, find_modes, sample_rows, summarize, to_csv, to_geojson
from geodemo.sphere import latlon_to_xyz


def test_nearest_place_and_country_offline():
    pts = np.array([[48.8566, 2.3522], [45.764, 4.8357], [-33.87, 151.21], [0.0, -140.0], [-80.0, 0.0]])
    places = nearest_places(pts)
    assert [p.name for p in places[:3]] == ["Paris", "Lyon", "Sydney"]
    assert places[0].country == "France" and places[0].distance_km < 5
    assert places[3].distance_km > 1000 and "km from" in places[3].label()
    assert country_names(pts) == ["France", "France", "Australia", "open water", "Antarctica"]


def vmf_at(lat, lon, kappa):
    mu = latlon_to_xyz(torch.tensor([lat, lon], dtype=torch.float64))
    return lambda latlon: kappa * (latlon_to_xyz(latlon.double()) @ mu) + math.log(kappa / (2 * math.pi)) - kappa


def vmf_samples(lat, lon, kappa, n, seed=0):
    """Exact vMF samples: cos(angle) w = 1 + log(u + (1 - u) e^(-2 kappa)) / kappa, uniform azimuth, around mu."""
    g = torch.Generator().manual_seed(seed)
    u, phi = torch.rand(n, generator=g, dtype=torch.float64), torch.rand(n, generator=g, dtype=torch.float64) * 2 * math.pi
    w = 1 + torch.log(u + (1 - u) * math.exp(-2 * kappa)) / kappa
    r = torch.sqrt((1 - w**2).clamp_min(0))
    local = torch.stack((r * phi.cos(), r * phi.sin(), w), -1)  # around the north pole
    mu = latlon_to_xyz(torch.tensor([lat, lon], dtype=torch.float64))
    e1 = torch.linalg.cross(torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64), mu)
    e1 = e1 / e1.norm()
    e2 = torch.linalg.cross(mu, e1)
    xyz = local[:, :1] * e1 + local[:, 1:2] * e2 + local[:, 2:] * mu
    return torch.rad2deg(torch.stack((torch.asin(xyz[:, 2]), torch.atan2(xyz[:, 1], xyz[:, 0])), -1))


def test_country_odds_integrate_the_density_over_countries():
    """Integrating the density over the country raster agrees with Monte Carlo on exact samples."""
    cells = list(progressive_density(vmf_at(46.5, 2.5, 400.0), coarse_deg=15.0, levels=4, mass_fraction=0.99))[-1]
    odds = country_odds_from_cells(cells)
    assert abs(odds.sum() - 1) < 1e-9
    table = countries()
    names = country_names(vmf_samples(46.5, 2.5, 400.0, 20000))
    for country in ("France", "Switzerland", "open water"):
        assert abs(odds[table.names.index(country)] - names.count(country) / len(names)) < 0.03, country
    assert table.names[int(np.argmax(odds))] == "France"


def test_summary_best_guess_modes_truth_and_exports():
    g = torch.Generator().manual_seed(0)
    lyon = torch.tensor([45.76, 4.84]) + torch.randn(60, 2, generator=g) * 0.5
    tokyo = torch.tensor([35.68, 139.69]) + torch.randn(40, 2, generator=g) * 0.5
    samples = torch.cat((lyon, tokyo)).double()
    modes = find_modes(samples)
    assert [round(share, 2) for _, share in modes[:2]] == [0.6, 0.4]
    logp = -((samples - torch.tensor([45.76, 4.84], dtype=torch.float64)) ** 2).sum(-1)
    summary = summarize(samples, logp, truth=(45.76, 4.84))
    assert summary.best_guess_rule == "highest likelihood"
    assert summary.best_guess == tuple(samples[int(logp.argmax())].tolist())
    assert summary.error_km < 30 and summary.geoscore > 4900
    assert summary.modes[0].place.name == "Lyon" and summary.modes[1].place.country == "Japan"
    assert {c.country for c in summary.countries[:2]} == {"France", "Japan"}
    assert "Lyon" in summary.to_markdown()
    rows = sample_rows(samples, logp)
    parsed = list(csv.DictReader(io.StringIO(to_csv(rows))))
    assert len(parsed) == 100 and float(parsed[0]["lat"]) == round(float(samples[0, 0]), 6)
    collection = json.loads(to_geojson(rows, summary))
    kinds = [f["properties"]["kind"] for f in collection["features"]]
    assert kinds.count("sample") == 100 and "best_guess" in kinds and "true_location" in kinds
    assert collection["features"][0]["geometry"]["coordinates"] == [rows[0]["lon"], rows[0]["lat"]]
