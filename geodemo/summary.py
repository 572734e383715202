"""What a person wants from N samples (and, when computed, the density): one best guess, the main modes,
the country odds, how localizable the image is, the error against the truth, and files to download.

Definitions:
  best guess     = the sample of highest log p(sample | image) (PLONK's answer to "one prediction"), among the
                   first K samples when only those were scored (the samples are i.i.d., so any K are a fair draw);
                   before the likelihood is known, the sample of highest kernel density among the samples.
  mode mass      = probability within `radius_km` of the mode: density mass of the cells whose centre is
                   inside, or the share of samples inside when no density is available.
  country odds   = integral of the density over each country (cells split into sub-cells, each looked up
                   in the shipped country raster), or the share of samples per country.
  localizability = mean over the scored samples of log p(sample | image) (a negative-entropy estimate, nats/sr).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from geodemo.adaptive_density import DensityCells
from geodemo.metrics import geoscore, kde_scores, pairwise_haversine_km
from geodemo.places import OCEAN, Place, countries, country_index, nearest_places
from geodemo.sphere import haversine_km

MODE_RADIUS_KM = 500.0


@dataclass
class Peak:
    """A mode of the distribution: a local peak of the samples at (lat, lon) with the probability near it."""

    lat: float
    lon: float
    place: Place
    probability: float


@dataclass
class CountryOdds:
    country: str
    probability: float


@dataclass
class Summary:
    """Everything shown beside the maps; `source` says whether numbers come from the density or the samples."""

    best_guess: tuple[float, float]
    best_guess_place: Place
    best_guess_rule: str
    best_log_density: float | None
    modes: list[Peak]
    countries: list[CountryOdds]
    source: str
    num_samples: int
    num_scored: int = 0
    """How many samples (the first ones) have a computed log-density; the best guess is the best of them."""
    localizability: float | None = None
    density_integral: float | None = None
    truth: tuple[float, float] | None = None
    truth_source: str = ""
    truth_place: Place | None = None
    error_km: float | None = None
    geoscore: float | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def to_markdown(self) -> str:
        """A short report for people."""
        lat, lon = self.best_guess
        lines = [f"### Best guess: {self.best_guess_place.label()}", "",
                 f"{_format_latlon(lat, lon)} — {self.best_guess_rule} of "
                 f"{self.num_scored or self.num_samples} samples (of {self.num_samples} drawn)", ""]
        if self.truth is not None:
            lines.append(f"**True location ({self.truth_source or 'given'}):** "
                         f"{self.truth_place.label() if self.truth_place else ''} "
                         f"{_format_latlon(*self.truth)} — error **{self.error_km:,.0f} km**, "
                         f"GeoScore **{self.geoscore:,.0f}** / 5000")
            lines.append("")
        if self.localizability is not None:
            lines.append(f"**Localizability:** {self.localizability:.2f} nats/sr "
                         "(mean log-density of the samples; higher = more certain)")
            lines.append("")
        lines.append(f"**Top modes** (probability within {MODE_RADIUS_KM:.0f} km, from the {self.source}):")
        lines += [f"{i}. {m.place.label()} — {m.probability:.0%}" for i, m in enumerate(self.modes, 1)]
        lines.append("")
        lines.append(f"**Countries** (from the {self.source}):")
        lines += [f"- {c.country}: {c.probability:.1%}" for c in self.countries]
        if self.density_integral is not None:
            lines.append("")
            lines.append(f"Integral of the density over the sphere: {self.density_integral:.3f}")
        lines += [f"> {note}" for note in self.notes]
        return "\n".join(lines)


def _format_latlon(lat: float, lon: float) -> str:
    return f"{abs(lat):.3f}°{'N' if lat >= 0 else 'S'}, {abs(lon):.3f}°{'E' if lon >= 0 else 'W'}"


def find_modes(samples: torch.Tensor, radius_km: float = MODE_RADIUS_KM, max_modes: int = 3,
               min_share: float = 0.02) -> list[tuple[int, float]]:
    """Greedy mode search: repeatedly take the unassigned sample of highest kernel density and assign every
    unassigned sample within radius_km to it. Returns (sample index, share of samples) per mode."""
    n = samples.shape[0]
    scores = kde_scores(samples)
    d = pairwise_haversine_km(samples, samples)
    free = torch.ones(n, dtype=torch.bool)
    modes = []
    while len(modes) < max_modes and free.any():
        centre = int(torch.where(free, scores, torch.tensor(-1.0, dtype=scores.dtype)).argmax())
        members = free & (d[centre] <= radius_km)
        share = float(members.sum()) / n
        if share < min_share:
            break
        modes.append((centre, share))
        free &= ~members
    return modes


def country_odds_from_cells(cells: DensityCells, subdivisions: int = 6) -> np.ndarray:
    """(C,) probability per country index: each cell's mass shared among its subdivisions^2 equal-area
    sub-cells, each assigned to the country containing its centre."""
    table = countries()
    s = subdivisions
    frac = (np.arange(s) + 0.5) / s
    b = cells.bounds.numpy()
    sin0, sin1 = np.sin(np.radians(b[:, 0])), np.sin(np.radians(b[:, 1]))
    lat = np.degrees(np.arcsin(sin0[:, None] + (sin1 - sin0)[:, None] * frac[None]))  # equal-area rows
    lon = b[:, 2, None] + (b[:, 3] - b[:, 2])[:, None] * frac[None]
    pts = np.stack(np.broadcast_arrays(lat[:, :, None], lon[:, None, :]), axis=-1)  # (K, s, s, 2)
    idx = country_index(pts).reshape(len(b), -1)
    weights = np.repeat(cells.probabilities().numpy()[:, None] / (s * s), s * s, axis=1)
    return np.bincount(idx.ravel(), weights=weights.ravel(), minlength=len(table.names))


def country_odds_from_samples(samples: torch.Tensor) -> np.ndarray:
    """(C,) share of the samples falling in each country index."""
    idx = country_index(samples.numpy())
    return np.bincount(idx, minlength=len(countries().names)) / max(1, len(idx))


def summarize(samples: torch.Tensor, sample_log_density: torch.Tensor | None = None,
              cells: DensityCells | None = None, truth: tuple[float, float] | None = None,
              truth_source: str = "EXIF GPS", max_modes: int = 3, top_countries: int = 5,
              radius_km: float = MODE_RADIUS_KM) -> Summary:
    """Summary of (N, 2) degree samples of one image, using the log-densities (K,) of the first K <= N samples
    and the density cells when given."""
    samples = torch.as_tensor(samples, dtype=torch.float64).reshape(-1, 2)
    if samples.shape[0] == 0:
        raise ValueError("no samples to summarise")
    if sample_log_density is not None:
        sample_log_density = torch.as_tensor(sample_log_density, dtype=torch.float64).reshape(-1)
        if not 0 < len(sample_log_density) <= len(samples):
            raise ValueError(f"got {len(sample_log_density)} log-densities for {len(samples)} samples")
        best = int(sample_log_density.argmax())
        rule, best_logp = "highest likelihood", float(sample_log_density[best])
    else:
        best = int(kde_scores(samples).argmax())
        rule, best_logp = "densest point", None
    mode_list = find_modes(samples, radius_km, max_modes)
    centres = samples[[i for i, _ in mode_list]]
    if cells is not None:
        shares = cells.mass_within(centres, radius_km).tolist()
        odds, source = country_odds_from_cells(cells), "density"
    else:
        shares = [share for _, share in mode_list]
        odds, source = country_odds_from_samples(samples), "samples"
    places = nearest_places(torch.cat((samples[best:best + 1], centres)))
    names = countries().names
    order = np.argsort(odds)[::-1][:top_countries]
    summary = Summary(
        best_guess=(float(samples[best, 0]), float(samples[best, 1])),
        best_guess_place=places[0],
        best_guess_rule=rule,
        best_log_density=best_logp,
        modes=[Peak(float(c[0]), float(c[1]), p, float(s)) for c, p, s in zip(centres, places[1:], shares)],
        countries=[CountryOdds(names[i] if names[i] != OCEAN else "Open water (no country)", float(odds[i]))
                   for i in order if odds[i] > 0],
        source=source,
        num_samples=int(samples.shape[0]),
        num_scored=len(sample_log_density) if sample_log_density is not None else 0,
        localizability=float(sample_log_density.mean()) if sample_log_density is not None else None,
        density_integral=cells.total_mass() if cells is not None else None,
    )
    if truth is not None:
        true = torch.tensor(truth, dtype=torch.float64)
        summary.truth = (float(truth[0]), float(truth[1]))
        summary.truth_source = truth_source
        summary.truth_place = nearest_places(true[None])[0]
        summary.error_km = float(haversine_km(samples[best], true))
        summary.geoscore = float(geoscore(torch.tensor(summary.error_km)))
    return summary


SAMPLE_FIELDS = ("sample", "lat", "lon", "log_density", "place", "country", "distance_to_place_km")


def sample_rows(samples: torch.Tensor, sample_log_density: torch.Tensor | None = None) -> list[dict]:
    """One dict per sample: index, lat, lon, log p (nats/sr; empty past the K scored ones), place and country."""
    samples = torch.as_tensor(samples, dtype=torch.float64).reshape(-1, 2)
    places = nearest_places(samples)
    country = country_index(samples.numpy())
    names = countries().names
    logp = sample_log_density.tolist() if sample_log_density is not None else []
    logp = logp + [None] * (len(samples) - len(logp))
    return [{"sample": i, "lat": round(float(lat), 6), "lon": round(float(lon), 6),
             "log_density": None if lp is None else round(float(lp), 4), "place": p.name,
             "country": names[c], "distance_to_place_km": round(p.distance_km, 1)}
            for i, ((lat, lon), lp, p, c) in enumerate(zip(samples.tolist(), logp, places, country))]


def to_csv(rows: list[dict]) -> str:
    """CSV text of sample_rows (header included)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0].keys()) if rows else list(SAMPLE_FIELDS),
                            lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def geojson_features(rows: list[dict], summary: Summary | None = None, **properties) -> list[dict]:
    """GeoJSON Point features [lon, lat] of the samples, the best guess and the truth; `properties` are added
    to each (e.g. the image's name when several images share one collection)."""
    def point(lat: float, lon: float, props: dict) -> dict:
        return {"type": "Feature", "geometry": {"type": "Point", "coordinates": [lon, lat]},
                "properties": {**properties, **props}}

    features = [point(r["lat"], r["lon"], {k: v for k, v in r.items() if k not in ("lat", "lon")} | {"kind": "sample"})
                for r in rows]
    if summary is not None:
        features.append(point(*summary.best_guess, {"kind": "best_guess", "place": summary.best_guess_place.label(),
                                                    "rule": summary.best_guess_rule}))
        if summary.truth is not None:
            features.append(point(*summary.truth, {"kind": "true_location", "error_km": summary.error_km,
                                                   "geoscore": summary.geoscore}))
    return features


def to_geojson(rows: list[dict], summary: Summary | None = None) -> str:
    """GeoJSON FeatureCollection of the samples, the best guess and the truth (geojson_features)."""
    return json.dumps({"type": "FeatureCollection", "features": geojson_features(rows, summary)})
