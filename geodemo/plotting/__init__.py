"""Figures: an animated 3D globe of the denoising trajectories (plotly) and a log-density map (cartopy).

Both draw the Earth from data shipped in assets/map/: no CDN, no map tiles, no download.
"""

from geodemo.plotting.density_map import density_map_figure, render_png
from geodemo.plotting.globe import globe_figure

__all__ = ["density_map_figure", "globe_figure", "render_png"]
