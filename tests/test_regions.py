"""Credible (highest-density) regions, checked on the toy world's von Mises-Fisher densities.

For vMF(mu, kappa) the region holding mass m is the cap of angle a around mu with
  m = (1 - exp(-kappa (1 - cos a))) / (1 - exp(-2 kappa)),   area = 2 pi (1 - cos a) R^2,
and p_T = p^(1/T) / Z_T of vMF(kappa) is vMF(kappa / T).
"""

import math
from functools import lru_cache

import pytest
import torch

from geodemo.adaptive_density import DensityCells, progressive_density
from geodemo.regions import (connected_components, credible_region, density_levels, point_levels, sample_levels,
                             sample_region_area_km2, temper)
from geodemo.sphere import EARTH_RADIUS_KM, latlon_to_xyz, sample_vmf, vmf_log_density, xyz_to_latlon

TOKYO, SYDNEY, DATE_LINE, NORTH_POLE = (35.68, 139.69), (-33.87, 151.21), (-17.0, 180.0), (90.0, 0.0)
KAPPA = 60.0


def cap_area_km2(kappa: float, mass: float) -> float:
    """Area of the vMF cap holding `mass`: 1 - cos a = -log(1 - m (1 - e^{-2 kappa})) / kappa."""
    one_minus_cos = -math.log1p(mass * math.expm1(-2 * kappa)) / kappa
    return 2 * math.pi * one_minus_cos * EARTH_RADIUS_KM**2


def cap_mass(kappa: float, angle_rad: float) -> float:
    """Mass of vMF(kappa) within angle_rad of its mean: (1 - exp(-kappa (1 - cos a))) / (1 - exp(-2 kappa))."""
    return math.expm1(-kappa * (1 - math.cos(angle_rad))) / math.expm1(-2 * kappa)


def mixture_log_density(parts: tuple[tuple[float, tuple[float, float], float], ...], latlon: torch.Tensor) -> torch.Tensor:
    """log sum_j w_j vMF(x; mu_j, kappa_j), nats per steradian, of (M, 2) degree points."""
    xyz = latlon_to_xyz(latlon.double())
    terms = [math.log(w) + vmf_log_density(xyz, latlon_to_xyz(torch.tensor(c, dtype=torch.float64)), k)
             for w, c, k in parts]
    return torch.logsumexp(torch.stack(terms), dim=0)


@lru_cache(maxsize=None)
def map_of(parts: tuple[tuple[float, tuple[float, float], float], ...]) -> DensityCells:
    """The app's adaptive map of the exact density: 10-degree grid refined four times where 99.5% of the mass is (0.6-degree cells)."""
    *_, cells = progressive_density(lambda latlon: mixture_log_density(parts, latlon), coarse_deg=10.0, levels=4,
                                    mass_fraction=0.995, max_cells_per_level=3000)
    return cells


def draws(parts, n: int, seed: int = 0) -> torch.Tensor:
    """(n, 2) degree draws from the mixture."""
    gen = torch.Generator().manual_seed(seed)
    weights = torch.tensor([w for w, _, _ in parts])
    counts = torch.multinomial(weights, n, replacement=True, generator=gen).bincount(minlength=len(parts))
    xyz = torch.cat([sample_vmf(latlon_to_xyz(torch.tensor(c, dtype=torch.float64)), k, int(m), gen)
                     for (_, c, k), m in zip(parts, counts)])
    return xyz_to_latlon(xyz)


ONE = ((1.0, TOKYO, KAPPA),)
TWO = ((0.5, TOKYO, KAPPA), (0.5, SYDNEY, KAPPA))


@pytest.mark.parametrize("mass", [0.5, 0.9])
def test_regions_of_the_true_density_cover_its_samples_at_their_mass(mass):
    for parts in (ONE, TWO):
        region = credible_region(map_of(parts), mass)
        assert mass <= region.held < mass + 0.01  # the last cell is taken whole, and it is small
        n = 10000
        covered = float(region.contains(draws(parts, n, seed=1)).double().mean())
        sampling_error = math.sqrt(mass * (1 - mass) / n)
        assert abs(covered - mass) < 4 * sampling_error + (region.held - mass) + 0.005, (parts, mass, covered)


@pytest.mark.parametrize("mass", [0.5, 0.9])
def test_region_area_is_the_vmf_cap_area(mass):
    region = credible_region(map_of(ONE), mass)
    assert region.area_km2 == pytest.approx(cap_area_km2(KAPPA, mass), rel=0.03)
    assert region.components == 1
    two = credible_region(map_of(TWO), mass)  # two far-apart caps of half the weight each
    assert two.components == 2
    per_cap = cap_area_km2(KAPPA, mass)  # each cap holds `mass` of its own half
    assert two.area_km2 == pytest.approx(2 * per_cap, rel=0.03)


def test_a_tempered_vmf_is_the_vmf_of_kappa_over_t():
    cells = map_of(ONE)
    for t in (0.5, 2.0):
        hot = temper(cells, t)
        assert hot.total_mass() == pytest.approx(1.0, abs=1e-12)
        region = credible_region(hot, 0.9)
        assert region.area_km2 == pytest.approx(cap_area_km2(KAPPA / t, 0.9), rel=0.06)
    assert torch.allclose(temper(cells, 1.0).log_density, cells.log_density - math.log(cells.total_mass()))
    with pytest.raises(ValueError, match="temperature"):
        temper(cells, 0.0)


def test_levels_of_draws_from_the_density_are_uniform_and_agree():
    cells = map_of(TWO)
    points = draws(TWO, 4000, seed=2)
    by_cell = point_levels(cells, points)
    exact = density_levels(cells, mixture_log_density(TWO, points))
    deciles = torch.quantile(by_cell, torch.linspace(0.1, 0.9, 9, dtype=torch.float64))
    assert torch.allclose(deciles, torch.linspace(0.1, 0.9, 9, dtype=torch.float64), atol=0.03)
    gap = (by_cell - exact).abs()  # a cell's level vs the level of the exact log p somewhere inside it
    assert gap.mean() < 0.01 and gap.max() < 0.05
    for mass in (0.5, 0.9):
        assert torch.equal(credible_region(cells, mass).contains(points), by_cell < mass)
    own = mixture_log_density(TWO, draws(TWO, 2000, seed=3))
    assert (sample_levels(own, mixture_log_density(TWO, points[:200])) - exact[:200]).abs().max() < 0.05


def test_monte_carlo_levels_and_areas_from_draws_match_the_vmf_caps():
    """From draws of vMF(kappa) and their log p: the region areas of p and of p_T = vMF(kappa / T), and the
    level of points, which for vMF(kappa') is the cap mass inside the point's angle."""
    own = draws(ONE, 20000, seed=4)
    own_logp = mixture_log_density(ONE, own)
    points = draws(ONE, 300, seed=5)
    angle = torch.acos((latlon_to_xyz(points) * latlon_to_xyz(torch.tensor(TOKYO, dtype=torch.float64))).sum(-1)
                       .clamp(-1, 1))
    for t in (1.0, 1.5, 0.7):
        for mass in (0.5, 0.9):
            area = float(sample_region_area_km2(own_logp, mass, temperature=t))
            assert area == pytest.approx(cap_area_km2(KAPPA / t, mass), rel=0.05), (t, mass)
        levels = sample_levels(own_logp, mixture_log_density(ONE, points), temperature=t)
        exact = torch.tensor([cap_mass(KAPPA / t, float(a)) for a in angle], dtype=torch.float64)
        assert (levels - exact).abs().max() < 0.03, t
    with pytest.raises(ValueError, match="temperature"):
        sample_levels(own_logp, own_logp[:3], temperature=-1.0)


def test_density_levels_against_a_slow_float64_sum():
    cells = map_of(TWO)
    probabilities = cells.probabilities()
    values = torch.tensor([-30.0, -3.0, 0.5, 2.0, 3.1, float(cells.log_density.max()) + 1.0], dtype=torch.float64)
    slow = torch.tensor([sum(float(p) for p, lp in zip(probabilities, cells.log_density) if lp > v) for v in values],
                        dtype=torch.float64)
    assert torch.allclose(density_levels(cells, values), slow, atol=1e-12)
    assert float(density_levels(cells, values)[-1]) == 0.0


def cells(*boxes: tuple[float, float, float, float]) -> torch.Tensor:
    return torch.tensor(boxes, dtype=torch.float64)


def test_separate_areas_count_corners_the_date_line_and_the_poles():
    assert connected_components(cells((0, 1, 0, 1), (1, 2, 1, 2))).tolist() == [0, 0]  # a shared corner
    assert connected_components(cells((0, 1, 0, 1), (0, 1, 1.5, 2))).max() == 1  # a gap
    assert connected_components(cells((0, 1, 179, 180), (0, 1, -180, -179))).max() == 0  # across the date line
    assert connected_components(cells((89, 90, 0, 10), (89, 90, 170, 180))).max() == 0  # at the north pole
    assert connected_components(cells((-90, -89, 0, 10), (89, 90, 0, 10))).max() == 1
    chain = cells((0, 1, 0, 1), (5, 6, 5, 6), (1, 2, 1, 2), (4, 5, 4, 5), (2, 3, 2, 3), (3, 4, 3, 4))
    assert connected_components(chain).tolist() == [0] * 6  # joined only through later cells
    for centre in (DATE_LINE, NORTH_POLE):
        region = credible_region(map_of(((1.0, centre, KAPPA),)), 0.9)
        assert region.components == 1, centre
        assert region.area_km2 == pytest.approx(cap_area_km2(KAPPA, 0.9), rel=0.03)


def test_bad_masses_are_refused_in_one_sentence():
    for mass in (0.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match="credible mass"):
            credible_region(map_of(ONE), mass)


def test_the_summary_states_the_regions_and_the_truth_inside():
    from geodemo.summary import summarize

    cells = map_of(TWO)
    summary = summarize(draws(TWO, 64, seed=6), cells=cells, truth=TOKYO)
    assert [(r.mass, r.components, r.holds_truth) for r in summary.regions] == [(0.5, 2, True), (0.9, 2, True)]
    assert summary.regions[1].area_km2 == pytest.approx(2 * cap_area_km2(KAPPA, 0.9), rel=0.03)
    text = summary.to_markdown()
    area = summary.regions[1].area_km2 / 1e6
    assert f"**90% region:** {area:.1f} million km², 2 separate areas (holds the true location)" in text
    far = summarize(draws(TWO, 64, seed=6), cells=cells, truth=(0.0, -30.0))
    assert "(the true location lies outside)" in far.to_markdown()
    assert summarize(draws(TWO, 64, seed=6)).regions == []  # no map, no region


def test_the_globe_outlines_lie_on_the_cap_edge():
    from geodemo.plotting.globe import globe_figure, region_outlines

    cells = map_of(ONE)
    centre = latlon_to_xyz(torch.tensor(TOKYO, dtype=torch.float64))
    for mass in (0.5, 0.9):
        cap = math.acos(1 + math.log1p(mass * math.expm1(-2 * KAPPA)) / KAPPA)
        lines = region_outlines(cells, mass)
        assert len(lines) == 1  # one closed outline
        angle = torch.acos((latlon_to_xyz(torch.from_numpy(lines[0])) * centre).sum(-1).clamp(-1, 1))
        assert (angle - cap).abs().max() < math.radians(1.0), mass  # within a cell or two of the cap's edge
    names = [trace.name for trace in globe_figure(samples_latlon=draws(ONE, 16), cells=cells).data]
    assert "50% credible region" in names and "90% credible region" in names


def test_the_calibration_temperature_widens_the_stated_and_drawn_regions():
    """At T the regions are those of p^(1/T): for vMF(kappa) the caps of vMF(kappa / T), in the summary's
    sentence, the markdown's note and the globe's outline."""
    from geodemo.plotting.globe import region_outlines
    from geodemo.summary import summarize

    cells, t = map_of(ONE), 2.0
    hot = summarize(draws(ONE, 64, seed=7), cells=cells, truth=TOKYO, region_temperature=t)
    assert hot.regions[1].area_km2 == pytest.approx(cap_area_km2(KAPPA / t, 0.9), rel=0.06)
    assert hot.regions[0].area_km2 == pytest.approx(cap_area_km2(KAPPA / t, 0.5), rel=0.06)
    assert "calibration temperature T = 2.00" in hot.to_markdown()
    assert "calibration temperature" not in summarize(draws(ONE, 64, seed=7), cells=cells).to_markdown()
    centre = latlon_to_xyz(torch.tensor(TOKYO, dtype=torch.float64))
    cap = math.acos(1 + math.log1p(0.9 * math.expm1(-2 * KAPPA / t)) / (KAPPA / t))
    (line,) = region_outlines(cells, 0.9, temperature=t)
    angle = torch.acos((latlon_to_xyz(torch.from_numpy(line)) * centre).sum(-1).clamp(-1, 1))
    assert (angle - cap).abs().max() < math.radians(1.0)


def calibrated_copy(folder, temperature) -> "Path":
    """A copy of the shipped default model whose config.json holds geodemo.calibration.temperature."""
    import json
    import shutil

    from geodemo.paths import ASSETS_DIR

    shutil.copytree(ASSETS_DIR / "earth-rfm", folder)
    config = json.loads((folder / "config.json").read_text())
    config["geodemo"]["calibration"] = {"temperature": temperature}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_the_model_folder_sets_the_temperature(tmp_path):
    """config.json's geodemo.calibration.temperature becomes GeoPipeline.region_temperature (1 without one); a bad
    value is refused in one sentence."""
    import geodemo
    from geodemo.checkpoint import CheckpointError
    from geodemo.pipeline import GeoPipeline

    assert geodemo.load(calibrated_copy(tmp_path / "warm", 1.7), device="cpu").region_temperature == 1.7
    bare = geodemo.load(tmp_path / "warm", device="cpu")
    assert GeoPipeline(bare.network, bare.process, bare.schedule).region_temperature == 1.0
    for bad in (-1, 0, "hot", True):
        with pytest.raises(CheckpointError, match="temperature must be a positive number"):
            geodemo.load(calibrated_copy(tmp_path / f"bad-{bad}", bad), device="cpu")


@pytest.mark.slow
def test_a_request_states_the_regions_at_the_models_temperature(tmp_path):
    """service.locate hands the model's temperature to the summary: at T = 8 the 50% region of the shipped model's
    peaked density spreads over several times the area of the untempered one."""
    import geodemo
    from geodemo.paths import ASSETS_DIR
    from geodemo.service import check_request, locate
    from geodemo.summary import region_summaries

    pipe = geodemo.load(calibrated_copy(tmp_path / "hot", 8.0), device="cpu")
    request = check_request(num_samples=16, steps=8, guidance=0.0, seed=0)
    stage = list(locate(pipe, ASSETS_DIR / "examples" / "sahara_desert.jpg", request, scored=0,
                        map_options={"coarse_deg": 30.0, "levels": 0}, candidates=0))[-1]
    assert stage.summary.region_temperature == 8.0
    assert stage.summary.regions == region_summaries(stage.cells, stage.summary.truth, temperature=8.0)
    assert stage.summary.regions[0].area_km2 > 3 * region_summaries(stage.cells)[0].area_km2
