"""Offline places, country odds, best guess, modes, error against the truth and the exports."""

import csv
import io
import json
import math

import numpy as np
import torch

from geodemo.adaptive_density import progressive_density
from geodemo.places import countries, country_names, nearest_places
from geodemo.metrics import kde_scores
from geodemo.likelihood import CheckReport
from geodemo.summary import (check_sentence, country_odds_from_cells, export_rows, find_modes, integral_sentence, mass_near,
                             summarize, to_csv, to_geojson)
from geodemo.sphere import latlon_to_xyz, sample_vmf, vmf_log_density, xyz_to_latlon


def test_nearest_place_and_country_offline():
    pts = np.array([[48.8566, 2.3522], [45.764, 4.8357], [-33.87, 151.21], [0.0, -140.0], [-80.0, 0.0]])
    places = nearest_places(pts)
    assert [p.name for p in places[:3]] == ["Paris", "Lyon", "Sydney"]
    assert places[0].country == "France" and places[0].distance_km < 5
    assert places[3].distance_km > 1000 and "km from" in places[3].label()
    assert country_names(pts) == ["France", "France", "Australia", "open water", "Antarctica"]


def vmf_at(lat, lon, kappa):
    """(M, 2) degrees -> the vMF(mu = (lat, lon), kappa) log-density (geodemo.sphere.vmf_log_density)."""
    mu = latlon_to_xyz(torch.tensor([lat, lon], dtype=torch.float64))
    return lambda latlon: vmf_log_density(latlon_to_xyz(latlon.double()), mu, kappa)


def vmf_samples(lat, lon, kappa, n, seed=0):
    """n exact vMF draws (geodemo.sphere.sample_vmf) as (n, 2) degrees."""
    mu = latlon_to_xyz(torch.tensor([lat, lon], dtype=torch.float64))
    return xyz_to_latlon(sample_vmf(mu, kappa, n, torch.Generator().manual_seed(seed)))


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
    assert summary.best_guess_rule == "highest likelihood" and not summary.provisional
    assert summary.best_guess == tuple(samples[int(logp.argmax())].tolist())
    assert summary.error_km < 30 and summary.geoscore > 4900
    assert summary.modes[0].place.name == "Lyon" and summary.modes[1].place.country == "Japan"
    assert summary.modes[0].holds_best_guess and not summary.modes[1].holds_best_guess
    assert {c.country for c in summary.countries[:2]} == {"France", "Japan"}
    assert "Lyon" in summary.to_markdown()
    rows = export_rows(samples, logp, summary, point_guidance=2.0)
    parsed = list(csv.DictReader(io.StringIO(to_csv(rows))))
    assert [r["kind"] for r in parsed] == ["sample"] * 100 + ["best_guess", "true_location"]
    assert float(parsed[0]["lat"]) == round(float(samples[0, 0]), 6)
    best = parsed[100]
    assert (float(best["lat"]), float(best["lon"])) == tuple(round(v, 6) for v in summary.best_guess)
    assert float(best["guidance"]) == 2.0 and float(best["error_km"]) == round(summary.error_km, 1)
    collection = json.loads(to_geojson(rows))
    kinds = [f["properties"]["kind"] for f in collection["features"]]
    assert kinds.count("sample") == 100 and kinds[-2:] == ["best_guess", "true_location"]
    assert collection["features"][0]["geometry"]["coordinates"] == [rows[0]["lon"], rows[0]["lat"]]


def test_the_best_guess_comes_from_the_guided_pool_and_is_provisional_until_scored():
    """The drawn samples show the distribution; the best guess is chosen among the guided samples: their densest
    point before the log-densities are known, their highest log-density afterwards."""
    g = torch.Generator().manual_seed(1)
    samples = (torch.tensor([30.0, 31.0]) + torch.randn(200, 2, generator=g) * 3).double()
    guided = torch.tensor([[10.0, 10.0], [30.2, 31.1], [30.25, 31.12], [30.21, 31.09], [-20.0, 150.0]],
                          dtype=torch.float64)
    early = summarize(samples, guided=guided, sample_guidance=0.0, point_guidance=2.0)
    assert early.provisional and early.best_guess_rule == "densest point"
    assert early.best_guess == tuple(guided[int(kde_scores(guided).argmax())].tolist())
    assert "provisional" in early.to_markdown() and "5 guided samples (w = 2)" in early.to_markdown()
    assert "(the likelihood ranking follows)" in early.to_markdown()
    unscored = summarize(samples, guided=guided, sample_guidance=0.0, point_guidance=2.0, scores_follow=False)
    assert "(no log-densities computed)" in unscored.to_markdown() and "follows" not in unscored.to_markdown()
    logp = torch.tensor([-5.0, 1.0, 0.5, 0.7, 3.0], dtype=torch.float64)  # the isolated last one is most likely
    scored = torch.zeros(10, dtype=torch.float64)
    late = summarize(samples, scored, guided=guided, guided_log_density=logp, sample_guidance=0.0,
                     point_guidance=2.0, truth=(-20.0, 150.0))
    assert late.best_guess == (-20.0, 150.0) and late.best_log_density == 3.0 and late.error_km == 0
    assert late.num_scored == 10 and late.localizability == 0.0
    assert "highest log-density (w = 0) of 5 guided samples (w = 2)" in late.to_markdown()
    assert "200 samples drawn at w = 0" in late.to_markdown()


def test_modes_are_sorted_by_probability_and_tiny_shares_are_not_listed():
    """Mode masses from the density can order the modes differently from the sample counts: the list follows
    the mass, and shares that would print as 0% (modes) or 0.0% (countries) are left out."""
    g = torch.Generator().manual_seed(2)
    lyon = torch.tensor([45.76, 4.84]) + torch.randn(70, 2, generator=g) * 0.3
    tokyo = torch.tensor([35.68, 139.69]) + torch.randn(30, 2, generator=g) * 0.3
    samples = torch.cat((lyon, tokyo)).double()

    def two_peaks(latlon):  # Tokyo holds 80% of the mass although it has fewer samples
        return torch.logsumexp(torch.stack((vmf_at(45.76, 4.84, 800.0)(latlon) + math.log(0.2),
                                            vmf_at(35.68, 139.69, 800.0)(latlon) + math.log(0.8))), 0)

    cells = list(progressive_density(two_peaks, coarse_deg=15.0, levels=4, samples=samples))[-1]
    summary = summarize(samples, cells=cells)
    shares = [m.probability for m in summary.modes]
    assert shares == sorted(shares, reverse=True) and summary.modes[0].place.country == "Japan"
    inside = 1 - math.exp(-800.0 * (1 - math.cos(500 / 6371.0)))  # vMF mass within 500 km of its centre
    assert abs(shares[0] - 0.8 * inside) < 0.03 and abs(shares[1] - 0.2 * inside) < 0.03
    assert all(c.probability >= 0.0005 for c in summary.countries)
    assert "0.0%" not in summary.to_markdown() and " — 0%" not in summary.to_markdown()


def test_mode_masses_of_overlapping_discs_count_each_place_once():
    """Two modes 400 km apart: their 500 km discs overlap, and each place counts for its nearer mode only, so the
    masses add up to less than the two discs' masses (and to at most the map's), the mode nearer the peak the more."""
    cells = list(progressive_density(vmf_at(0.0, 0.0, 400.0), coarse_deg=10.0, levels=4))[-1]
    west, east = [0.0, -1.3], [0.0, 2.3]  # 400 km apart, the density's peak 145 km from the west mode
    shares = mass_near(cells, torch.tensor([west, east], dtype=torch.float64), 500.0)
    alone = [mass_near(cells, torch.tensor([centre], dtype=torch.float64), 500.0)[0] for centre in (west, east)]
    assert shares[0] <= alone[0] and shares[1] <= alone[1] and shares[0] > shares[1] > 0
    assert sum(shares) < sum(alone) - 0.05 and sum(shares) <= cells.total_mass() + 1e-9


def test_the_map_accuracy_says_what_the_checks_measured():
    settled = check_sentence(CheckReport(gap=0.012, settled=True, steps=32, radial_nodes=4, checks=3))
    assert "(32 RK4 steps, 4 radial nodes) agreed within 0.01 nats" in settled and "twice the steps and nodes" in settled
    assert settled.endswith("at each of its 3 checks so far.")
    stopped = check_sentence(CheckReport(gap=0.47, settled=False, steps=64, checks=5, unsettled=2))
    assert stopped.startswith("Map accuracy: not verified at 2 of 5 checks so far.") and "(64 RK4 steps)" in stopped
    assert "up to 0.47 nats" in stopped and "with half the steps;" in stopped and "nodes" not in stopped
    cells = next(progressive_density(lambda latlon: -latlon[:, 0].abs(), coarse_deg=30.0))
    samples = torch.tensor([[10.0, 20.0], [12.0, 21.0]], dtype=torch.float64)
    shown = summarize(samples, cells=cells, map_check=CheckReport(gap=0.02, steps=32, checks=1)).to_markdown()
    assert "Map accuracy: near the peak, the map's solve (32 RK4 steps) agreed within 0.02 nats" in shown
    assert "Map accuracy" not in summarize(samples, cells=cells).to_markdown()
    assert summarize(samples, map_check=CheckReport(steps=32)).map_check is None  # no map, no map accuracy


def test_the_integral_is_shown_as_a_number_only_near_one():
    assert integral_sentence(0.993).endswith("0.993 (a density integrates to 1).")
    far = integral_sentence(0.90)
    assert "0.90, not 1" in far and "too coarse to integrate this density exactly" in far
