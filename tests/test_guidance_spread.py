"""The spread measures against written-out references, and the guidance hint read from a measured table."""

import math

import numpy as np
import torch

from geodemo.guidance_spread import distinct_positions, guidance_hint, read_table, reading, spread_km


def test_distinct_positions_count_points_apart_by_more_than_the_rounding():
    points = np.array([[10.0, 20.0], [10.0, 20.0], [10.0002, 20.0001], [10.002, 20.0], [-0.0, 0.0], [0.0, -0.0]])
    assert distinct_positions(points) == 3  # the first three round alike, -0.0 equals 0.0
    assert distinct_positions(torch.randn(128, 2, dtype=torch.float64) * 30) == 128


def test_spread_is_the_median_distance_to_the_mean_direction():
    g = np.random.default_rng(0)
    latlon = np.stack((30 + 5 * g.standard_normal(41), 31 + 5 * g.standard_normal(41)), -1)
    lat, lon = np.radians(latlon).T
    xyz = np.stack((np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)), -1)
    mean = xyz.sum(0) / np.linalg.norm(xyz.sum(0))
    reference = sorted(6371.0088 * math.acos(min(1.0, float(p @ mean))) for p in xyz)[20]  # the median of 41
    assert abs(spread_km(latlon) - reference) < 1e-3 * reference
    assert spread_km([[5.0, 5.0]] * 10) < 1e-6


def test_the_reading_says_where_samples_collapse_and_where_they_spread_again():
    rows = [{"guidance": 0, "distinct": [128, 128], "spread_km": [80, 120]},
            {"guidance": 1, "distinct": [20, 40], "spread_km": [0.1, 2]},
            {"guidance": 2, "distinct": [1, 2], "spread_km": [0, 0]},
            {"guidance": 8, "distinct": [1, 128], "spread_km": [0, 600]}]
    assert reading(rows) == "from w = 2 all samples fall on one point; at w = 8 they spread again"
    assert reading(rows[:2]) == "larger w draws the samples closer together"
    typical = [{"guidance": 1, "distinct": [128] * 3, "spread_km": [4, 6, 50]},  # the largest shrinks, the median grows
               {"guidance": 8, "distinct": [128] * 3, "spread_km": [15, 20, 40]}]
    assert reading(typical) == "at w = 8 they spread again"


def test_the_hint_is_built_from_the_table_and_says_when_it_has_none():
    table = {"setup": {"samples": 128, "steps": 32, "seed": 0, "views": 10},
             "models": {"m": {"process": "flow_r3", "rows": [
                 {"guidance": 0, "distinct": [128, 128], "spread_km": [80.0, 120.0]},
                 {"guidance": 4, "distinct": [5, 114], "spread_km": [1.0, 158.0]}]}}}
    hint = guidance_hint("m", table)
    assert "| 0 | 128 | 100 km / 120 km |" in hint and "| 4 | 5-114 | 80 km / 158 km |" in hint
    assert "10 example views, 128 samples, 32 steps" in hint
    assert "not been measured" in guidance_hint("other", table)


def test_the_shipped_table_covers_every_shipped_model():
    from geodemo.registry import shipped_models

    table = read_table()
    assert set(shipped_models()) <= set(table["models"])
    for entry in table["models"].values():
        assert [r["guidance"] for r in entry["rows"]][0] == 0
        assert all(len(r["distinct"]) == table["setup"]["views"] for r in entry["rows"])
