"""Log-density map: log p(location | image) on an equal-area world map (cartopy, offline Natural Earth data).

Drawn with matplotlib's object API (no pyplot state), so concurrent requests never share a figure.
"""

from __future__ import annotations

import io

import cartopy.crs as ccrs
import cartopy.feature as cfeature
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from geodemo.adaptive_density import DensityCells
from geodemo.plotting.basemap import use_shipped_cartopy_data
from geodemo.plotting.globe import END_COLOR, GUESS_COLOR, REGION_COLOR, REGION_STYLES, TRUTH_COLOR
from geodemo.regions import level_image

COLORMAP = "magma"
DYNAMIC_RANGE_NATS = 12.0
"""The colour bar spans [max - 12, max] nats: the ocean floor of a peaked density would hide the peak."""
RASTER_DEG = 1.0
WORLD_MERIDIANS = (-120, -60, 0, 60, 120)
"""The world map's meridians: cartopy's own choice less the +-180 ones, which lie on the map's edge under its outline
(the same pixels) and cost cartopy ~70 ms each to project along the cut."""


def mass_window(cells: DensityCells, fraction: float = 0.9, min_span_deg: float = 12.0,
                max_span_deg: float = 90.0) -> tuple[float, float, float, float] | None:
    """(lat0, lat1, lon0, lon1) box around the cells holding `fraction` of the mass, with a margin and at least
    min_span_deg wide; None when that mass is spread over more than max_span_deg (the world map says it all)."""
    b = cells.bounds[cells.holding(fraction)].numpy()
    lat0, lat1, lon0, lon1 = b[:, 0].min(), b[:, 1].max(), b[:, 2].min(), b[:, 3].max()
    if max(lat1 - lat0, lon1 - lon0) > max_span_deg:
        return None
    lat_c, lon_c = (lat0 + lat1) / 2, (lon0 + lon1) / 2
    half = max(min_span_deg, 1.3 * (lat1 - lat0), 1.3 * (lon1 - lon0) / 1.5) / 2
    return (max(-90.0, lat_c - half), min(90.0, lat_c + half), max(-180.0, lon_c - 1.5 * half),
            min(180.0, lon_c + 1.5 * half))


def density_map_figure(cells: DensityCells | None = None, samples_latlon=None,
                       truth: tuple[float, float] | None = None, best_guess: tuple[float, float] | None = None,
                       title: str = "", projection: str = "equal_earth", raster_deg: float = RASTER_DEG,
                       size: tuple[float, float] = (12.0, 5.2), dpi: int = 100,
                       best_guess_label: str = "best guess", region_temperature: float = 1.0) -> Figure:
    """World map of log p with a labelled colour bar, coastlines, borders, samples, best guess, truth and the
    outlines of the 50% / 90% highest-density regions of p_T (T = region_temperature, the model's calibration);
    beside it, a close-up of the region holding 90% of the mass when that region is small."""
    use_shipped_cartopy_data()
    proj = {"equal_earth": ccrs.EqualEarth(), "robinson": ccrs.Robinson()}[projection]
    fig = Figure(figsize=size, dpi=dpi, facecolor="white")
    FigureCanvasAgg(fig)
    window = mass_window(cells) if cells is not None else None
    world = fig.add_axes((0.01, 0.2, 0.57, 0.72) if window else (0.02, 0.2, 0.96, 0.72), projection=proj)
    world.set_global()
    panels = [(world, None)]
    if window:
        panels.append((fig.add_axes((0.645, 0.2, 0.335, 0.72), projection=ccrs.PlateCarree()), window))
    for ax, extent in panels:
        mesh = _draw_panel(ax, cells, samples_latlon, truth, best_guess, raster_deg, extent, best_guess_label,
                           region_temperature)
    if cells is not None:
        cax = fig.add_axes((0.2, 0.1, 0.6, 0.03))
        bar = fig.colorbar(mesh, cax=cax, orientation="horizontal", extend="min")
        bar.set_label("log density  log p(location | image)  [nats per steradian]")
    if samples_latlon is not None or best_guess is not None or truth is not None:
        world.legend(loc="lower left", fontsize=8, framealpha=0.85)
    world.set_title(title or "log p(location | image)", fontsize=10)
    if window:
        panels[1][0].set_title("close-up: the region holding 90% of the mass", fontsize=10)
    return fig


def _draw_panel(ax, cells, samples_latlon, truth, best_guess, raster_deg, extent, best_guess_label="best guess",
                region_temperature: float = 1.0):
    """Density (fixed colour range), coastlines, borders and points on one map axes; returns the mesh."""
    plate = ccrs.PlateCarree()
    mesh = None
    if cells is not None:
        res = raster_deg if extent is None else max(0.02, (extent[1] - extent[0]) / 150)
        lat0, lat1, lon0, lon1 = extent or (-90.0, 90.0, -180.0, 180.0)
        _, _, image = cells.rasterize(res, extent)
        top = float(cells.log_density.max())
        lat_edges = np.linspace(lat0, lat1, image.shape[0] + 1)
        lon_edges = np.linspace(lon0, lon1, image.shape[1] + 1)
        mesh = ax.pcolormesh(lon_edges, lat_edges, np.ma.masked_invalid(image), transform=plate, cmap=COLORMAP,
                             vmin=top - DYNAMIC_RANGE_NATS, vmax=top, shading="flat", rasterized=True)
        draw_regions(ax, cells, res, extent, region_temperature)
    if extent is not None:
        ax.set_extent((extent[2], extent[3], extent[0], extent[1]), crs=plate)
    ax.coastlines(resolution="110m", linewidth=0.6, color="#d0d0d0" if cells is not None else "#404040")
    ax.add_feature(cfeature.BORDERS.with_scale("110m"), linewidth=0.35,  # shipped scale: never a download
                   edgecolor="#a0a0a0" if cells is not None else "#808080")
    grid = ax.gridlines(linewidth=0.3, color="#888888", alpha=0.5, draw_labels=extent is not None,
                        xlocs=WORLD_MERIDIANS if extent is None else None)
    if extent is not None:
        grid.top_labels = grid.right_labels = False
    if samples_latlon is not None:
        pts = np.asarray(samples_latlon, dtype=np.float64).reshape(-1, 2)
        ax.scatter(pts[:, 1], pts[:, 0], s=6, c=END_COLOR, edgecolors="black", linewidths=0.3, transform=plate,
                   label=f"samples ({len(pts)})", zorder=5)
    if best_guess is not None:  # open markers: the samples under them stay visible
        ax.scatter([best_guess[1]], [best_guess[0]], s=110, marker="D", facecolors="none", edgecolors=GUESS_COLOR,
                   linewidths=2.0, transform=plate, label=best_guess_label, zorder=6)
    if truth is not None:
        ax.scatter([truth[1]], [truth[0]], s=150, marker="o", facecolors="none", edgecolors=TRUTH_COLOR,
                   linewidths=2.0, transform=plate, label="true location", zorder=7)
    return mesh


def draw_regions(ax, cells: DensityCells, resolution_deg: float,
                 extent: tuple[float, float, float, float] | None = None, temperature: float = 1.0) -> None:
    """Outline the 50% (solid) and 90% (dashed) highest-density regions of p_T: the contours at m of each pixel's
    level (the mass of the cells denser than the pixel's cell, geodemo.regions.level_image)."""
    lats, lons, levels = level_image(cells, resolution_deg, extent, temperature)
    for mass, dash, width in REGION_STYLES:
        style = {"dash": "dashed"}.get(dash, dash)  # plotly's name -> matplotlib's
        if levels.min() < mass < levels.max():
            ax.contour(lons, lats, levels, levels=[mass], colors=REGION_COLOR, linestyles=style, linewidths=width,
                       transform=ccrs.PlateCarree(), zorder=4)
        ax.plot([], [], color=REGION_COLOR, linestyle=style, linewidth=width,
                label=f"{mass:.0%} credible region")


def render_png(fig: Figure) -> Image.Image:
    """Rasterise a matplotlib Figure to an RGB PIL image."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=fig.dpi, facecolor=fig.get_facecolor())
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")

