"""What a person wants from a request's samples (and, when computed, the density): one best guess, the main
modes, the country odds, how localizable the image is, the error against the truth, and files to download.

Definitions (one home; the globe, the map, the summary, the CSV, the GeoJSON and the CLI all show this point):
  best guess     = THE answer of a request: among the guided samples (drawn at the point-estimate guidance,
                   w = 2 as PLONK evaluates point estimates), the one of highest log p(sample | image) under the
                   model's own density (w = 0, PLONK's NLL). Until those log-densities are known the best guess is
                   provisional: the guided sample of highest kernel density among the guided samples. Without
                   guided samples the pool is the drawn samples (the first K when only those were scored).
  mode mass      = probability within `radius_km` of the mode, each place counted for its nearest mode only (so
                   the masses never add up to more than 1): density mass of the map's sub-cells whose centre is
                   inside, or the share of samples find_modes gives it when no density is available. Sorted by mass.
  country odds   = integral of the density over each country (cells split into sub-cells, each looked up
                   in the shipped country raster), or the share of samples per country.
  localizability = mean over the scored drawn samples of log p(sample | image) (a negative-entropy estimate,
                   nats/sr, when the samples are the model's own, w = 0).
  m% region      = the smallest part of the map holding m% of the probability (geodemo.regions.credible_region):
                   its area, its separate areas, and whether the truth lies inside.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from geodemo.adaptive_density import DensityCells
from geodemo.likelihood import CheckReport
from geodemo.metrics import geoscore, kde_scores, pairwise_haversine_km
from geodemo.places import OCEAN, Place, countries, country_index, nearest_places
from geodemo.regions import credible_region
from geodemo.sphere import EARTH_RADIUS_KM, angle_between, haversine_km, latlon_to_xyz

MODE_RADIUS_KM = 500.0
INTEGRAL_TOLERANCE = 0.02
"""The map's integral of the density is shown as a plain number when within 2% of 1, else with what it means."""
SHOWN_MODE_SHARE = 0.005
"""Modes below half a percent (0% when printed) are not listed."""
SHOWN_COUNTRY_SHARE = 0.0005
"""Countries below 0.05% (0.0% when printed) are not listed."""


@dataclass
class Peak:
    """A mode of the distribution: a local peak of the samples at (lat, lon) with the probability near it."""

    lat: float
    lon: float
    place: Place
    probability: float
    holds_best_guess: bool = False


@dataclass
class RegionSummary:
    """The highest-density region holding `mass` of the map's probability."""

    mass: float
    area_km2: float
    components: int
    holds_truth: bool | None = None

    def sentence(self) -> str:
        """E.g. "90% region: 1.2 million km², 2 separate areas (holds the true location)"."""
        area = (f"{self.area_km2 / 1e6:.1f} million km²" if self.area_km2 >= 1e6 else
                f"{float(f'{self.area_km2:.2g}'):,.0f} km²")  # two significant digits: a map's cells are coarse
        parts = "1 area" if self.components == 1 else f"{self.components} separate areas"
        truth = {None: "", True: " (holds the true location)", False: " (the true location lies outside)"}
        return f"**{self.mass:.0%} region:** {area}, {parts}{truth[self.holds_truth]}"


def region_summaries(cells: DensityCells, truth: tuple[float, float] | None = None,
                     masses: tuple[float, ...] = (0.5, 0.9), temperature: float = 1.0) -> list[RegionSummary]:
    """The map's 50% and 90% highest-density regions of p_T (the model's calibration temperature T, 1 = none): area,
    separate areas, the truth inside or not."""
    regions = [credible_region(cells, m, temperature) for m in masses]
    inside = [bool(r.contains(torch.tensor([truth]))[0]) if truth is not None else None for r in regions]
    return [RegionSummary(r.mass, r.area_km2, r.components, i) for r, i in zip(regions, inside)]


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
    """"highest likelihood" (final) or "densest point" (provisional, before the log-densities are known)."""
    best_guess_pool: str
    """Where the best guess was chosen from, for people: e.g. "32 guided samples (w = 2)"."""
    best_log_density: float | None
    modes: list[Peak]
    countries: list[CountryOdds]
    source: str
    num_samples: int
    sample_guidance: float | None = None
    """The guidance w the drawn samples came from (None: not said)."""
    num_scored: int = 0
    """How many of the drawn samples (the first ones) have a computed log-density."""
    localizability: float | None = None
    density_integral: float | None = None
    truth: tuple[float, float] | None = None
    truth_source: str = ""
    truth_place: Place | None = None
    error_km: float | None = None
    geoscore: float | None = None
    notes: list[str] = field(default_factory=list)
    regions: list[RegionSummary] = field(default_factory=list)
    """The map's 50% / 90% highest-density regions (empty without a map)."""
    region_temperature: float = 1.0
    """The calibration temperature T the regions were drawn with: they are those of p^(1/T) (1 = of p)."""
    map_check: CheckReport | None = None
    """What the map's step-doubling checks found (None: no map, or no check ran)."""
    scores_follow: bool = True
    """While the best guess is provisional: whether this request's log-densities are still to come (False: it
    computes none, so the densest guided sample stays the answer)."""

    @property
    def provisional(self) -> bool:
        """True while the best guess waits for the log-densities (the densest guided sample stands in)."""
        return self.best_guess_rule != "highest likelihood"

    def pending_note(self) -> str:
        """What becomes of a provisional best guess, said after it."""
        return " (the likelihood ranking follows)" if self.scores_follow else " (no log-densities computed)"

    def to_dict(self) -> dict:
        return asdict(self)

    def to_markdown(self) -> str:
        """A short report for people."""
        lat, lon = self.best_guess
        drawn = f"{self.num_samples} samples" + ("" if self.sample_guidance is None else
                                                 f" drawn at w = {self.sample_guidance:g}")
        rule = ("provisional: the densest of " if self.provisional else "highest log-density (w = 0) of ")
        lines = [f"### Best guess: {self.best_guess_place.label()}", "",
                 f"{_format_latlon(lat, lon)} — {rule}{self.best_guess_pool}"
                 + (self.pending_note() if self.provisional else "") + f". Distribution: {drawn}.", ""]
        if self.truth is not None:
            lines.append(f"**True location ({self.truth_source or 'given'}):** "
                         f"{self.truth_place.label() if self.truth_place else ''} "
                         f"{_format_latlon(*self.truth)} — error **{self.error_km:,.0f} km**, "
                         f"GeoScore **{self.geoscore:,.0f}** / 5000")
            lines.append("")
        if self.localizability is not None:
            lines.append(f"**Localizability:** {self.localizability:.2f} nats/sr "
                         f"(mean log-density of {self.num_scored} drawn samples; higher = more certain)")
            lines.append("")
        if self.regions:
            lines += [r.sentence() + "  " for r in self.regions]
            if self.region_temperature != 1:
                lines.append(f"(regions of the density at calibration temperature T = {self.region_temperature:.2f}, "
                             "fitted on held-out views so that they hold the truth as often as they say)")
            lines.append("")
        lines.append(f"**Top modes** (probability within {MODE_RADIUS_KM:.0f} km, each place counted for its nearest "
                     f"mode, from the {self.source}):")
        lines += [f"{i}. {m.place.label()} — {m.probability:.0%}" + (" (holds the best guess)" if m.holds_best_guess
                                                                      else "") for i, m in enumerate(self.modes, 1)]
        lines.append("")
        lines.append(f"**Countries** (from the {self.source}):")
        lines += [f"- {c.country}: {c.probability:.1%}" for c in self.countries]
        if self.density_integral is not None:
            lines += ["", integral_sentence(self.density_integral)]
        if self.map_check is not None and self.map_check.steps:
            lines += ["", check_sentence(self.map_check)]
        lines += [f"> {note}" for note in self.notes]
        return "\n".join(lines)


def integral_sentence(integral: float) -> str:
    """The map's integral of exp(log p) over the sphere, said so that a number far from 1 is not misread."""
    if abs(integral - 1) <= INTEGRAL_TOLERANCE:
        return f"Integral of the density over the sphere on the map's grid: {integral:.3f} (a density integrates to 1)."
    return (f"The map's grid sums the density to {integral:.2f}, not 1: its cells (and the fast ODE solve) are too "
            "coarse to integrate this density exactly, so the percentages above are shares of that sum.")


def check_sentence(check: CheckReport) -> str:
    """The map's accuracy near its peak as its step-doubling checks measured it, said plainly."""
    settings = f"{check.steps} RK4 steps" + (f", {check.radial_nodes} radial nodes" if check.radial_nodes else "")
    halved = "half the steps" + (" or nodes" if check.radial_nodes else "")
    counted = f"{check.checks} check{'s' if check.checks != 1 else ''} so far"
    if check.settled:
        finer = "twice the steps" + (" and nodes" if check.radial_nodes else "")
        every = "at its check" if check.checks == 1 else f"at each of its {check.checks} checks"
        return (f"Map accuracy: near the peak, the map's solve ({settings}) agreed within {check.gap:.2f} nats with "
                f"a solve of {finer} {every} so far.")
    return (f"Map accuracy: not verified at {check.unsettled} of {counted}. The step-doubling check stopped at this "
            f"device's bound ({settings}), where the solve still differed by up to {check.gap:.2f} nats near the peak "
            f"from a solve with {halved}; the map shows the finer one, whose own error was not measured.")


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


def sub_cells(cells: DensityCells, subdivisions: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """The map's cells cut into subdivisions^2 equal-area sub-cells each: (centres (M, 2) degrees, share of the
    total mass (M,)), the density taken constant over each cell as the map draws it."""
    s = subdivisions
    frac = (np.arange(s) + 0.5) / s
    b = cells.bounds.numpy()
    sin0, sin1 = np.sin(np.radians(b[:, 0])), np.sin(np.radians(b[:, 1]))
    lat = np.degrees(np.arcsin(sin0[:, None] + (sin1 - sin0)[:, None] * frac[None]))  # equal-area rows
    lon = b[:, 2, None] + (b[:, 3] - b[:, 2])[:, None] * frac[None]
    pts = np.stack(np.broadcast_arrays(lat[:, :, None], lon[:, None, :]), axis=-1).reshape(-1, 2)
    weights = np.repeat(cells.probabilities().numpy() / (s * s), s * s)
    return pts, weights


def country_odds_from_cells(cells: DensityCells, subdivisions: int = 8) -> np.ndarray:
    """(C,) probability per country index: each sub-cell's mass (sub_cells) to the country containing its centre."""
    pts, weights = sub_cells(cells, subdivisions)
    return np.bincount(country_index(pts), weights=weights, minlength=len(countries().names))


def mass_near(cells: DensityCells, centres: torch.Tensor, radius_km: float, subdivisions: int = 8) -> list[float]:
    """Share of the map's mass within radius_km of each (C, 2) centre, summed over sub-cells (sub_cells), each
    sub-cell counted for its nearest centre only: disjoint shares, which add up to at most 1."""
    pts, weights = sub_cells(cells, subdivisions)
    angle = angle_between(latlon_to_xyz(torch.as_tensor(centres, dtype=torch.float64)).unsqueeze(1),
                          latlon_to_xyz(torch.from_numpy(pts)).unsqueeze(0))
    nearest = angle.argmin(dim=0) == torch.arange(len(angle)).unsqueeze(1)
    return (((angle * EARTH_RADIUS_KM <= radius_km) & nearest).double() @ torch.from_numpy(weights)).tolist()


def country_odds_from_samples(samples: torch.Tensor) -> np.ndarray:
    """(C,) share of the samples falling in each country index."""
    idx = country_index(samples.numpy())
    return np.bincount(idx, minlength=len(countries().names)) / max(1, len(idx))


def choose_best_guess(pool: torch.Tensor, pool_log_density: torch.Tensor | None) -> tuple[int, str, float | None]:
    """THE best-guess rule (module docstring): (index into pool (G, 2) degrees, rule, its log p). The highest
    log p among the pool's first len(pool_log_density) points when known ("highest likelihood"), else the
    point of highest kernel density among the pool ("densest point", provisional)."""
    if pool_log_density is not None:
        logp = torch.as_tensor(pool_log_density, dtype=torch.float64).reshape(-1)
        if not 0 < len(logp) <= len(pool):
            raise ValueError(f"got {len(logp)} log-densities for {len(pool)} candidates")
        best = int(logp.argmax())
        return best, "highest likelihood", float(logp[best])
    return int(kde_scores(pool).argmax()), "densest point", None


def summarize(samples: torch.Tensor, sample_log_density: torch.Tensor | None = None,
              cells: DensityCells | None = None, truth: tuple[float, float] | None = None,
              truth_source: str = "EXIF GPS", max_modes: int = 3, top_countries: int = 5,
              radius_km: float = MODE_RADIUS_KM, guided: torch.Tensor | None = None,
              guided_log_density: torch.Tensor | None = None, sample_guidance: float | None = None,
              point_guidance: float | None = None, region_temperature: float = 1.0,
              map_check: CheckReport | None = None, scores_follow: bool = True) -> Summary:
    """Summary of (N, 2) degree samples of one image, using the log-densities (K,) of the first K <= N samples
    and the density cells when given. guided: (G, 2) degrees drawn at point_guidance, the best guess's pool
    (with guided_log_density (G,) once known); without it the pool is the drawn samples. region_temperature: the
    model's calibration T (GeoPipeline.region_temperature) for the credible regions. scores_follow: whether
    log-densities are still to come for a provisional best guess (Summary.scores_follow)."""
    samples = torch.as_tensor(samples, dtype=torch.float64).reshape(-1, 2)
    if samples.shape[0] == 0:
        raise ValueError("no samples to summarise")
    if sample_log_density is not None:
        sample_log_density = torch.as_tensor(sample_log_density, dtype=torch.float64).reshape(-1)
        if not 0 < len(sample_log_density) <= len(samples):
            raise ValueError(f"got {len(sample_log_density)} log-densities for {len(samples)} samples")
    if guided is not None:
        pool, pool_logp = torch.as_tensor(guided, dtype=torch.float64).reshape(-1, 2), guided_log_density
        pool_name = f"{len(pool)} guided samples" + ("" if point_guidance is None else f" (w = {point_guidance:g})")
    else:
        pool, pool_logp = samples, sample_log_density
        scored = len(sample_log_density) if sample_log_density is not None else len(samples)
        pool_name = f"{scored} samples" if scored == len(samples) else f"the first {scored} samples (scored)"
    best, rule, best_logp = choose_best_guess(pool, pool_logp)
    best_point = pool[best]
    mode_list = find_modes(samples, radius_km, max_modes)
    centres = samples[[i for i, _ in mode_list]]
    if cells is not None:
        shares = mass_near(cells, centres, radius_km) if len(centres) else []
        odds, source = country_odds_from_cells(cells), "density"
    else:
        shares = [share for _, share in mode_list]
        odds, source = country_odds_from_samples(samples), "samples"
    places = nearest_places(torch.cat((best_point[None], centres)))
    distance = haversine_km(centres, best_point[None].expand_as(centres))
    holder = int(distance.argmin()) if len(centres) and float(distance.min()) <= radius_km else -1
    modes = sorted((Peak(float(c[0]), float(c[1]), p, float(s), holds_best_guess=i == holder)
                    for i, (c, p, s) in enumerate(zip(centres, places[1:], shares))), key=lambda m: -m.probability)
    names = countries().names
    order = np.argsort(odds)[::-1][:top_countries]
    summary = Summary(
        best_guess=(float(best_point[0]), float(best_point[1])),
        best_guess_place=places[0],
        best_guess_rule=rule,
        best_guess_pool=pool_name,
        best_log_density=best_logp,
        modes=[m for m in modes if m.probability >= SHOWN_MODE_SHARE],
        countries=[CountryOdds(names[i] if names[i] != OCEAN else "Open water (no country)", float(odds[i]))
                   for i in order if odds[i] >= SHOWN_COUNTRY_SHARE],
        source=source,
        num_samples=int(samples.shape[0]),
        sample_guidance=sample_guidance,
        num_scored=len(sample_log_density) if sample_log_density is not None else 0,
        localizability=float(sample_log_density.mean()) if sample_log_density is not None else None,
        density_integral=cells.total_mass() if cells is not None else None,
        regions=region_summaries(cells, truth, temperature=region_temperature) if cells is not None else [],
        region_temperature=region_temperature,
        map_check=map_check if cells is not None else None,
        scores_follow=scores_follow,
    )
    if truth is not None:
        true = torch.tensor(truth, dtype=torch.float64)
        summary.truth = (float(truth[0]), float(truth[1]))
        summary.truth_source = truth_source
        summary.truth_place = nearest_places(true[None])[0]
        summary.error_km = float(haversine_km(best_point, true))
        summary.geoscore = float(geoscore(torch.tensor(summary.error_km)))
    return summary


EXPORT_FIELDS = ("kind", "sample", "lat", "lon", "guidance", "log_density", "place", "country",
                 "distance_to_place_km", "error_km")
"""Columns of the CSV (and properties of the GeoJSON points): kind is sample, best_guess or true_location;
guidance the w the point was drawn at; error_km the best guess's distance to the true location."""


def sample_rows(samples: torch.Tensor, sample_log_density: torch.Tensor | None = None,
                guidance: float | None = None) -> list[dict]:
    """One dict per sample: index, lat, lon, the guidance it was drawn at, log p (nats/sr; empty past the K
    scored ones), place and country."""
    samples = torch.as_tensor(samples, dtype=torch.float64).reshape(-1, 2)
    logp = sample_log_density.tolist() if sample_log_density is not None else []
    logp = logp + [None] * (len(samples) - len(logp))
    return [_point_row("sample", lat, lon, place, name, sample=i, guidance=guidance, log_density=lp)
            for i, ((lat, lon), lp, place, name) in enumerate(zip(samples.tolist(), logp, nearest_places(samples),
                                                                    _country_names(samples)))]


def export_rows(samples: torch.Tensor, sample_log_density: torch.Tensor | None, summary: Summary,
                point_guidance: float | None = None) -> list[dict]:
    """The rows of a request's download: its samples (sample_rows), then its best guess and its true location
    (when known), so that a file holds the same answer as the summary."""
    rows = sample_rows(samples, sample_log_density, summary.sample_guidance)
    point = torch.tensor([summary.best_guess], dtype=torch.float64)
    rows.append(_point_row("best_guess", *summary.best_guess, summary.best_guess_place, _country_names(point)[0],
                           guidance=point_guidance, log_density=summary.best_log_density, error_km=summary.error_km))
    if summary.truth is not None:
        truth = torch.tensor([summary.truth], dtype=torch.float64)
        rows.append(_point_row("true_location", *summary.truth, summary.truth_place, _country_names(truth)[0]))
    return rows


def _country_names(latlon: torch.Tensor) -> list[str]:
    names = countries().names
    return [names[i] for i in country_index(latlon.numpy())]


def _point_row(kind: str, lat: float, lon: float, place: Place | None, country: str, sample: int | None = None,
               guidance: float | None = None, log_density: float | None = None, error_km: float | None = None) -> dict:
    return {"kind": kind, "sample": sample, "lat": round(float(lat), 6), "lon": round(float(lon), 6),
            "guidance": guidance, "log_density": None if log_density is None else round(float(log_density), 4),
            "place": place.name if place else None, "country": country,
            "distance_to_place_km": round(place.distance_km, 1) if place else None,
            "error_km": None if error_km is None else round(error_km, 1)}


def error_row(message: str) -> dict:
    """The record of a file that could not be answered, for tables that list every input."""
    return {"kind": "error", "error": message}


def to_csv(rows: list[dict], fields: tuple[str, ...] = EXPORT_FIELDS, header: bool = True) -> str:
    """CSV text of rows with these columns (a row's missing columns are left empty)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(fields), lineterminator="\n", restval="")
    if header:
        writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def geojson_features(rows: list[dict], **properties) -> list[dict]:
    """GeoJSON features of export rows: Points [lon, lat] with the other columns as properties, an error row as
    a feature without geometry; `properties` are added to each (e.g. the image's name)."""
    def feature(row: dict) -> dict:
        geometry = ({"type": "Point", "coordinates": [row["lon"], row["lat"]]} if row.get("lat") is not None
                    else None)
        return {"type": "Feature", "geometry": geometry,
                "properties": {**properties, **{k: v for k, v in row.items() if k not in ("lat", "lon")}}}

    return [feature(r) for r in rows]


def to_geojson(rows: list[dict], **properties) -> str:
    """GeoJSON FeatureCollection of export rows (geojson_features)."""
    return json.dumps({"type": "FeatureCollection", "features": geojson_features(rows, **properties)})
