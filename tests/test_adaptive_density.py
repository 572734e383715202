"""Progressive density: a von Mises-Fisher density (known in closed form) is integrated to 1 and refined
only around its peak."""

import math

import torch

from geodemo.adaptive_density import DensityCells, cells_containing, coarse_cells, progressive_density, split_cells
from geodemo.grids import cell_solid_angle
from geodemo.sphere import angle_between, latlon_to_xyz, vmf_log_density

PEAK = (45.76, 4.83)


def von_mises_fisher(kappa: float):
    """latlon (M, 2) -> log vMF(PEAK, kappa) in nats per steradian."""
    mu = latlon_to_xyz(torch.tensor(PEAK, dtype=torch.float64))
    return lambda latlon: vmf_log_density(latlon_to_xyz(latlon.double()), mu, kappa)


def test_coarse_cells_tile_the_sphere():
    bounds = coarse_cells(15.0)
    assert torch.isclose(cell_solid_angle(bounds).sum(), torch.tensor(4 * math.pi, dtype=torch.float64))
    assert torch.isclose(cell_solid_angle(split_cells(bounds)).sum(), torch.tensor(4 * math.pi, dtype=torch.float64))


def test_the_cells_holding_a_fraction_are_the_fewest_heaviest():
    shares = torch.tensor([0.05, 0.3, 0.15, 0.5], dtype=torch.float64)
    bounds = torch.tensor([[0.0, 10.0, 10.0 * k, 10.0 * (k + 1)] for k in range(4)], dtype=torch.float64)
    cells = DensityCells(bounds, (shares / cell_solid_angle(bounds)).log(), torch.zeros(4, dtype=torch.long))
    assert cells.holding(0.4).tolist() == [3]
    assert cells.holding(0.79).tolist() == [3, 1]
    assert cells.holding(0.81).tolist() == [3, 1, 2]
    assert cells.holding(0.999).tolist() == [3, 1, 2, 0]


def test_mass_is_one_and_refinement_stays_near_the_peak():
    calls = []
    vmf = von_mises_fisher(60.0)

    def counting(latlon):
        calls.append(len(latlon))
        return vmf(latlon)

    stages = list(progressive_density(counting, coarse_deg=15.0, levels=3, mass_fraction=0.99, max_cells_per_level=128))
    assert len(stages) == 4
    finest = stages[-1]
    assert abs(finest.total_mass() - 1.0) < 0.015
    assert finest.evaluations == sum(calls) < 1500  # a uniform grid at the finest size would need ~24,000
    far = angle_between(latlon_to_xyz(finest.centres), latlon_to_xyz(torch.tensor(PEAK, dtype=torch.float64)).expand(len(finest.centres), 3))
    assert finest.level[far > math.radians(60)].max() == 0  # nothing refined far from the peak
    assert finest.level[far < math.radians(5)].min() == 3
    near = finest.mass_within(torch.tensor([PEAK], dtype=torch.float64), radius_km=1000.0)
    exact = 1 - math.exp(-60.0 * (1 - math.cos(1000.0 / 6371.0)))  # vMF mass of a spherical cap (sinh ~ e^k / 2)
    assert abs(float(near[0]) - exact) < 0.05


def test_samples_force_refinement_of_their_cells():
    flat = lambda latlon: torch.full((len(latlon),), -math.log(4 * math.pi), dtype=torch.float64)
    sample = torch.tensor([[-60.0, 100.0]], dtype=torch.float64)
    stages = list(progressive_density(flat, coarse_deg=30.0, levels=1, mass_fraction=0.0, samples=sample))
    refined = stages[-1].level == 1
    assert int(refined.sum()) >= 4 and cells_containing(stages[-1].bounds[refined], sample).any()


def test_a_peak_between_cell_centres_is_found_through_the_samples():
    """A vMF peak far narrower than the coarse cells, whose far field reads too high (as a screened solve does): the
    capped refinement follows the cells holding the samples, not the inflated far cells, and reaches the peak."""
    sharp = von_mises_fisher(20000.0)
    peak = latlon_to_xyz(torch.tensor(PEAK, dtype=torch.float64))

    def screened(latlon):
        logp = sharp(latlon)
        far = angle_between(latlon_to_xyz(latlon.double()), peak.expand(len(latlon), 3)) > math.radians(30)
        return torch.where(far, torch.full_like(logp, -40.0), logp)

    samples = torch.tensor(PEAK, dtype=torch.float64) + 0.05 * torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    stages = list(progressive_density(screened, coarse_deg=20.0, levels=5, samples=samples, max_cells_per_level=8))
    assert stages[0].total_mass() < 0.01  # no coarse centre sees the peak
    assert abs(stages[-1].total_mass() - 1.0) < 0.2 and stages[-1].level.max() == 5


def test_rasterize_covers_the_globe():
    stages = list(progressive_density(von_mises_fisher(20.0), coarse_deg=30.0, levels=1))
    lats, lons, image = stages[-1].rasterize(2.0)
    assert image.shape == (90, 180) and not torch.isnan(torch.from_numpy(image)).any()


def test_neighbours_catch_a_peak_narrower_than_the_cells():
    """A 140 km-wide peak on a 20-degree grid: refining the cells around the sample's cell recovers the mass."""
    narrow = von_mises_fisher(2000.0)
    sample = torch.tensor([PEAK], dtype=torch.float64)
    totals = {}
    for neighbours in (True, False):
        stages = progressive_density(narrow, coarse_deg=20.0, levels=5, max_cells_per_level=24, samples=sample,
                                     neighbours=neighbours)
        totals[neighbours] = list(stages)[-1].total_mass()
    assert abs(totals[True] - 1) < 0.02 and abs(totals[False] - 1) > 0.05
