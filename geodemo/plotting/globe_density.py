"""The log-density draped over the 3D globe: each vertex of the Earth mesh takes its Natural Earth colour mixed
with the density's colour (the density map's colour map and range), so the Earth stays visible beneath it.

The density comes as adaptive cells (geodemo.adaptive_density.DensityCells); a vertex takes the value of the cell
containing it (rasterised at 1 degree).
"""

from __future__ import annotations

import matplotlib
import numpy as np
import plotly.graph_objects as go
import torch

from geodemo.adaptive_density import DensityCells
from geodemo.plotting.density_map import COLORMAP, DYNAMIC_RANGE_NATS
from geodemo.sphere import xyz_to_latlon

LOOKUP_DEG = 1.0
MIN_MIX = 0.3
"""Share of the density's colour where the density is lowest; it grows to 1 at the top of the range."""


def vertex_latlon(mesh: go.Mesh3d) -> np.ndarray:
    """(V, 2) degrees of a mesh's vertices (their directions)."""
    xyz = torch.from_numpy(np.stack((mesh.x, mesh.y, mesh.z), axis=-1).astype(np.float64))
    return xyz_to_latlon(xyz).numpy()


def log_density_at(cells: DensityCells, latlon: np.ndarray, resolution_deg: float = LOOKUP_DEG) -> np.ndarray:
    """(V,) log p of the cell containing each of the (V, 2) degree points (via a raster resolution_deg apart)."""
    lats, lons, image = cells.rasterize(resolution_deg)
    rows = np.clip(np.floor((latlon[:, 0] + 90) / 180 * len(lats)).astype(int), 0, len(lats) - 1)
    cols = np.clip(np.floor((latlon[:, 1] + 180) / 360 * len(lons)).astype(int), 0, len(lons) - 1)
    values = image[rows, cols]
    return np.where(np.isfinite(values), values, np.nanmin(image))


def hex_to_rgb(colors) -> np.ndarray:
    """(V, 3) floats in [0, 1] of '#rrggbb' strings."""
    raw = bytes.fromhex("".join(c[1:7] for c in colors))
    return np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3) / 255.0


def rgb_to_hex(rgb: np.ndarray) -> list[str]:
    values = np.clip(np.round(rgb * 255), 0, 255).astype(np.uint8)
    return ["#" + row.tobytes().hex() for row in values]


def drape_colors(earth_rgb: np.ndarray, log_p: np.ndarray, vmin: float, vmax: float) -> list[str]:
    """Vertex colours: (1 - m) earth + m cmap(a), a = (log p - vmin) / (vmax - vmin) clipped to [0, 1] and
    m = MIN_MIX + (1 - MIN_MIX) a: low density shades the Earth, high density glows."""
    a = np.clip((log_p - vmin) / max(vmax - vmin, 1e-9), 0, 1)[:, None]
    mix = MIN_MIX + (1 - MIN_MIX) * a
    density_rgb = matplotlib.colormaps[COLORMAP](a[:, 0])[:, :3]
    return rgb_to_hex((1 - mix) * earth_rgb + mix * density_rgb)


def density_range(cells: list[DensityCells]) -> tuple[float, float]:
    """(vmin, vmax) shared by several densities: [max - DYNAMIC_RANGE_NATS, max], as the density map."""
    top = max(float(c.log_density.max()) for c in cells)
    return top - DYNAMIC_RANGE_NATS, top


def colorbar_trace(vmin: float, vmax: float, title: str = "log p [nats/sr]") -> go.Scatter3d:
    """An invisible trace that carries the density's colour bar."""
    return go.Scatter3d(x=[None], y=[None], z=[None], mode="markers", hoverinfo="skip", showlegend=False,
                        name="log-density scale",
                        marker={"color": [vmin], "cmin": vmin, "cmax": vmax, "colorscale": COLORMAP.capitalize(),
                                "showscale": True, "colorbar": {"title": {"text": title, "font": {"color": "white"}},
                                                                "tickfont": {"color": "white"}, "len": 0.5,
                                                                "thickness": 12, "x": 0.98}})


def earth_trace(fig: go.Figure) -> int:
    """Index of the Earth mesh in a globe figure."""
    for i, trace in enumerate(fig.data):
        if trace.name == "Earth":
            return i
    raise ValueError("the figure has no Earth mesh to drape")


def drape_density(fig: go.Figure, cells: DensityCells, vmin: float | None = None, vmax: float | None = None,
                  title: str = "log p [nats/sr]") -> go.Figure:
    """Drape log p over the Earth of a globe figure (geodemo.plotting.globe.globe_figure) and add its colour bar;
    the range defaults to density_range([cells]). Changes and returns fig."""
    if vmin is None or vmax is None:
        vmin, vmax = density_range([cells])
    index = earth_trace(fig)
    mesh = fig.data[index]
    mesh.vertexcolor = drape_colors(hex_to_rgb(mesh.vertexcolor), log_density_at(cells, vertex_latlon(mesh)), vmin,
                                    vmax)
    fig.add_trace(colorbar_trace(vmin, vmax, title))
    return fig
