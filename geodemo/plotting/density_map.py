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

COLORMAP = "magma"
DYNAMIC_RANGE_NATS = 12.0
"""The colour bar spans [max - 12, max] nats: the ocean floor of a peaked density would hide the peak."""
RASTER_DEG = 1.0


def density_map_figure(cells: DensityCells | None = None, samples_latlon=None,
                       truth: tuple[float, float] | None = None, best_guess: tuple[float, float] | None = None,
                       title: str = "", projection: str = "equal_earth", raster_deg: float = RASTER_DEG,
                       size: tuple[float, float] = (10.0, 5.6), dpi: int = 100) -> Figure:
    """World map of log p with a labelled colour bar, coastlines, borders, samples, best guess and truth."""
    use_shipped_cartopy_data()
    proj = {"equal_earth": ccrs.EqualEarth(), "robinson": ccrs.Robinson()}[projection]
    fig = Figure(figsize=size, dpi=dpi, facecolor="white")
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.02, 0.2, 0.96, 0.73), projection=proj)
    ax.set_global()
    plate = ccrs.PlateCarree()
    if cells is not None:
        lats, lons, image = cells.rasterize(raster_deg)
        top = float(np.nanmax(image))
        lat_edges = np.concatenate(([-90.0], (lats[:-1] + lats[1:]) / 2, [90.0]))
        lon_edges = np.concatenate(([-180.0], (lons[:-1] + lons[1:]) / 2, [180.0]))
        mesh = ax.pcolormesh(lon_edges, lat_edges, np.ma.masked_invalid(image), transform=plate, cmap=COLORMAP,
                             vmin=top - DYNAMIC_RANGE_NATS, vmax=top, shading="flat", rasterized=True)
        cax = fig.add_axes((0.2, 0.11, 0.6, 0.03))
        bar = fig.colorbar(mesh, cax=cax, orientation="horizontal", extend="min")
        bar.set_label("log density  log p(location | image)  [nats per steradian]")
    ax.coastlines(resolution="110m", linewidth=0.6, color="#d0d0d0" if cells is not None else "#404040")
    ax.add_feature(cfeature.BORDERS, linewidth=0.35, edgecolor="#a0a0a0" if cells is not None else "#808080")
    ax.gridlines(linewidth=0.3, color="#888888", alpha=0.5)
    if samples_latlon is not None:
        pts = np.asarray(samples_latlon, dtype=np.float64).reshape(-1, 2)
        ax.scatter(pts[:, 1], pts[:, 0], s=6, c="#32d7ff", edgecolors="black", linewidths=0.25, transform=plate,
                   label=f"samples ({len(pts)})", zorder=5)
    if best_guess is not None:
        ax.scatter([best_guess[1]], [best_guess[0]], s=140, marker="*", c="#32d7ff", edgecolors="black",
                   linewidths=0.8, transform=plate, label="best guess", zorder=6)
    if truth is not None:
        ax.scatter([truth[1]], [truth[0]], s=180, marker="*", c="#ffd60a", edgecolors="black", linewidths=0.8,
                   transform=plate, label="true location", zorder=7)
    if samples_latlon is not None or best_guess is not None or truth is not None:
        ax.legend(loc="lower left", fontsize=8, framealpha=0.85)
    ax.set_title(title or "log p(location | image)", fontsize=11)
    return fig


def render_png(fig: Figure) -> Image.Image:
    """Rasterise a matplotlib Figure to an RGB PIL image."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=fig.dpi, facecolor=fig.get_facecolor())
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")

