import math

import pytest
import torch

from geodemo.sphere import EARTH_RADIUS_KM, angle_between, latlon_to_xyz, xyz_to_latlon
from training.earth_views import (NO_AUGMENTATION, Augmentation, ViewSampling, _sample_texture, augment, blue_marble,
                                  land_fraction, random_view_params, render_views, view_directions)


@pytest.mark.parametrize("projection, radius_to_angle", [("orthographic", math.asin), ("gnomonic", math.atan)])
def test_view_geometry_matches_the_projection_formula(projection, radius_to_angle):
    lat, lon, width, size = torch.tensor([37.0, -81.0]), torch.tensor([-122.0, 178.0]), torch.tensor([4800.0, 900.0]), 9
    rays = view_directions(lat, lon, width, size, projection, dtype=torch.float64)
    centre = latlon_to_xyz(torch.stack((lat, lon), -1).double())
    assert torch.allclose(rays.norm(dim=-1), torch.ones(()).double())
    assert torch.allclose(rays[:, 4, 4], centre, atol=1e-12)
    offsets = (torch.arange(size, dtype=torch.float64) + 0.5) / size - 0.5
    plane_radius = (offsets.view(1, -1) ** 2 + offsets.view(-1, 1) ** 2).sqrt() * (width / EARTH_RADIUS_KM).double().view(-1, 1, 1)
    expected = plane_radius.clone().apply_(radius_to_angle)
    got = angle_between(rays, centre.view(-1, 1, 1, 3))
    assert torch.allclose(got, expected, atol=1e-12)
    fast = view_directions(lat, lon, width, size, projection)
    assert (angle_between(fast.double(), rays) * EARTH_RADIUS_KM).max() < 0.005  # float32 geometry: < 5 m


def test_views_are_north_up_and_east_right_and_rotate_counter_clockwise():
    rays = view_directions(10.0, 20.0, 2000.0, 5, dtype=torch.float64)
    latlon = xyz_to_latlon(rays[0])
    assert latlon[0, 2, 0] > latlon[2, 2, 0] > latlon[4, 2, 0]  # latitude falls down the image
    assert latlon[2, 0, 1] < latlon[2, 2, 1] < latlon[2, 4, 1]  # longitude grows to the right
    turned = view_directions(10.0, 20.0, 2000.0, 5, rotation_deg=90.0, dtype=torch.float64)
    assert torch.allclose(turned[0, 0, 2], rays[0, 2, 0], atol=1e-12)  # top of the turned view = west edge


def test_lookup_wraps_across_the_date_line():
    texture = blue_marble()
    row = texture.shape[1] // 2
    lat = 90.0 - (row + 0.5) * 180.0 / texture.shape[1]
    points = latlon_to_xyz(torch.tensor([[[[lat, 180.0], [lat, -180.0]]]], dtype=torch.float64)).float()
    got = _sample_texture("image", points, torch.zeros(1, dtype=torch.long))[0, :, 0]
    expected = (texture[:, row, 0] + texture[:, row, -1]) / 2
    assert torch.allclose(got, expected.view(3, 1).expand(3, 2), atol=1e-4)
    east, west = render_views(-16.0, [180.0, -180.0], 1500.0, size=32)
    assert torch.allclose(east, west, atol=1e-4)


def test_land_fraction_and_colours_of_known_places():
    lat = torch.tensor([-90.0, 0.0, 23.0, 90.0])
    lon = torch.tensor([0.0, -140.0, 12.0, 0.0])
    land = land_fraction(lat, lon, 1000.0, size=32)
    assert land[0] > 0.99 and land[1] < 0.01 and land[2] > 0.99 and land[3] < 0.05
    views = render_views(lat[1:3], lon[1:3], 1000.0, size=32)
    ocean, desert = views.mean(dim=(2, 3))
    assert ocean[2] > ocean[0] and desert[0] > desert[2]
    assert torch.isfinite(render_views(lat, lon, 5000.0, size=16)).all()


def test_wide_small_views_are_antialiased():
    big = render_views(5.0, 10.0, 5000.0, size=128)
    small = render_views(5.0, 10.0, 5000.0, size=16)
    reference = torch.nn.functional.avg_pool2d(big, 8)
    assert (small - reference).abs().mean() < 0.02


def test_augment_is_seeded_bounded_and_changes_views():
    views = render_views([30.0, -20.0], [31.0, 140.0], 2000.0, size=48)
    a = augment(views, torch.Generator().manual_seed(3))
    b = augment(views, torch.Generator().manual_seed(3))
    c = augment(views, torch.Generator().manual_seed(4))
    assert a.shape == views.shape and torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1
    assert torch.equal(augment(views, torch.Generator().manual_seed(3), NO_AUGMENTATION), views)
    everything = Augmentation(**{name: (1.0, value[1]) for name, value in Augmentation().__dict__.items()})
    assert (augment(views, torch.Generator().manual_seed(5), everything) - views).abs().mean() > 0.02


def test_random_view_params_are_uniform_on_the_sphere_and_in_range():
    sampling = ViewSampling(width_km=(1000.0, 4000.0), max_rotation_deg=10.0)
    p = random_view_params(20000, torch.Generator().manual_seed(0), sampling)
    z = torch.sin(torch.deg2rad(p["lat"]))
    assert abs(float(z.mean())) < 0.02 and abs(float((z**2).mean()) - 1 / 3) < 0.01  # uniform: z ~ U(-1, 1)
    assert p["width_km"].min() >= 1000 and p["width_km"].max() <= 4000
    assert abs(float(torch.log(p["width_km"]).mean()) - math.log(2000.0)) < 0.02
    assert p["rotation_deg"].abs().max() <= 10


def test_bad_view_requests_raise_clear_errors():
    with pytest.raises(ValueError, match="latitudes"):
        render_views(95.0, 0.0, 1000.0, size=8)
    with pytest.raises(ValueError, match="width"):
        render_views(0.0, 0.0, 10.0, size=8)
    with pytest.raises(ValueError, match="projection"):
        render_views(0.0, 0.0, 1000.0, size=8, projection="mercator")
