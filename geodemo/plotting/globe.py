"""Animated 3D globe of the denoising trajectories (plotly, rendered by the bundled plotly.js: no CDN, no tiles).

The sphere carries Natural Earth colours and coastlines from assets/map/. Trajectories are drawn in R^3
as the sampler really moves: RFM points slide on the unit sphere; R^3 diffusion and flow points start as
Gaussian noise in space and converge onto the sphere. Frames x points sent to the browser are capped.
Each frame is labelled (step, t, noise level) on the slider; the last frame moves the camera onto the region
holding the samples; the best guess and the true location are open markers that leave the samples visible, and
every marker can be hidden from the legend.
"""

from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go
import torch

import contourpy

from geodemo.adaptive_density import DensityCells
from geodemo.plotting.basemap import coastlines, earth_colors
from geodemo.regions import credible_region, level_image
from geodemo.sphere import angle_between, latlon_to_xyz

MAX_FRAMES = 33
MAX_POINTS = 256
SPACE_COLOR = "#0b1020"
LEGEND_COLOR = "rgba(11, 16, 32, 0.7)"
"""The legend's and colour bar's box: the space colour, translucent, so that white text reads over a zoomed-in globe."""
START_COLOR = "#8d99ae"
END_COLOR = "#ff2d55"
"""The samples' colour: the moving points take it in the last frame."""
TIME_COLORSCALE = [[0.0, START_COLOR], [0.5, "#b65cff"], [1.0, END_COLOR]]
"""Progress from noise (0) to sample (1), for the paths and the moving points."""
TRUTH_COLOR = "#ffd60a"
GUESS_COLOR = "#32d7ff"
REGION_STYLES = ((0.5, "solid", 1.6), (0.9, "dash", 1.1))
"""The highest-density regions outlined on the globe and the map: (mass, dash, line width in points)."""
REGION_COLOR = "#7df9ff"
REGION_PIXELS = 400
"""The outlines are contours of a level image this many pixels across the 90% region's box."""
SPEEDS = (0.25, 0.5, 1.0, 2.0, 4.0)
"""Playback speeds offered, as multiples of the figure's frame_ms."""
SCENE_HALF_WIDTH = 0.5
"""plotly's scene cube, in camera units, spans [-0.5, 0.5] over an axis range [-reach, reach]."""
VIEW_TAN = math.tan(math.radians(18.0))
"""The final view frames the samples' region within 18 degrees of the view axis (plotly's field of view is 45)."""


def frame_indices(num_states: int, max_frames: int = MAX_FRAMES) -> np.ndarray:
    """At most max_frames indices into num_states states, evenly spaced, always the first and the last."""
    if num_states <= max_frames:
        return np.arange(num_states)
    return np.unique(np.round(np.linspace(0, num_states - 1, max_frames)).astype(int))


def sphere_mesh(step_deg: float = 4.0, radius: float = 1.0) -> go.Mesh3d:
    """The Earth as a triangulated lat/lon sphere with one Natural Earth colour per vertex."""
    lats = np.arange(-90, 90 + step_deg / 2, step_deg)
    lons = np.arange(-180, 180 + step_deg / 2, step_deg)
    lat, lon = np.meshgrid(lats, lons, indexing="ij")
    xyz = (latlon_to_xyz(torch.from_numpy(np.stack((lat, lon), -1))).numpy().reshape(-1, 3) * radius).astype(np.float32)
    colors = earth_colors()
    h, w, _ = colors.shape
    rows = np.clip(((90 - lat) / 180 * h).astype(int), 0, h - 1)
    cols = np.clip(((lon + 180) / 360 * w).astype(int), 0, w - 1)
    rgb = colors[rows, cols].reshape(-1, 3)
    n_lat, n_lon = lat.shape
    idx = np.arange(n_lat * n_lon).reshape(n_lat, n_lon)
    a, b, c, d = idx[:-1, :-1], idx[:-1, 1:], idx[1:, :-1], idx[1:, 1:]
    i = np.concatenate((a.ravel(), b.ravel())).astype(np.uint16)
    j = np.concatenate((b.ravel(), d.ravel())).astype(np.uint16)
    k = np.concatenate((c.ravel(), c.ravel())).astype(np.uint16)
    return go.Mesh3d(x=xyz[:, 0], y=xyz[:, 1], z=xyz[:, 2], i=i, j=j, k=k,
                     vertexcolor=[f"#{r:02x}{g:02x}{bl:02x}" for r, g, bl in rgb], flatshading=False,
                     lighting={"ambient": 0.85, "diffuse": 0.35, "specular": 0.05}, hoverinfo="skip",
                     name="Earth", showlegend=False)


def coastline_trace(radius: float = 1.004) -> go.Scatter3d:
    """Coastlines as one polyline trace, parts separated by gaps."""
    parts = []
    for line in coastlines():
        xyz = latlon_to_xyz(torch.from_numpy(line[:, ::-1].copy())).numpy() * radius
        parts += [xyz, np.full((1, 3), np.nan)]
    xyz = (np.concatenate(parts) if parts else np.zeros((0, 3))).astype(np.float32)
    return go.Scatter3d(x=xyz[:, 0], y=xyz[:, 1], z=xyz[:, 2], mode="lines",
                        line={"color": "rgba(255,255,255,0.55)", "width": 1.5}, hoverinfo="skip",
                        name="coastlines", showlegend=False)


def _points(xyz: np.ndarray, name: str, visible: bool | str = True, **marker) -> go.Scatter3d:
    return go.Scatter3d(x=xyz[:, 0], y=xyz[:, 1], z=xyz[:, 2], mode="markers", name=name, marker=marker,
                        visible=visible)


def _latlon_xyz(latlon, radius: float = 1.0) -> np.ndarray:
    return latlon_to_xyz(torch.as_tensor(np.asarray(latlon, dtype=np.float64)).reshape(-1, 2)).numpy() * radius


def _direction(samples_latlon, centre: tuple[float, float] | None) -> torch.Tensor:
    """The unit vector the camera looks along: the centre (the best guess) when given, else the samples' mean
    direction, else lat 20, lon 0."""
    if centre is not None:
        return latlon_to_xyz(torch.tensor(centre, dtype=torch.float64))
    if samples_latlon is not None and len(samples_latlon):
        mean = latlon_to_xyz(torch.as_tensor(np.asarray(samples_latlon, dtype=np.float64))).mean(0)
        if mean.norm() > 1e-3:
            return mean / mean.norm()
    return latlon_to_xyz(torch.tensor([20.0, 0.0], dtype=torch.float64))


def region_radius_deg(samples_latlon, centre: tuple[float, float] | None, fraction: float = 0.8) -> float:
    """Angular radius (degrees) of the cap around the camera's direction (_direction) holding `fraction` of the
    samples: the region the last frame shows."""
    if samples_latlon is None or not len(samples_latlon):
        return 90.0
    direction = _direction(samples_latlon, centre)
    xyz = latlon_to_xyz(torch.as_tensor(np.asarray(samples_latlon, dtype=np.float64)).reshape(-1, 2))
    return float(torch.quantile(angle_between(xyz, direction[None]), fraction).rad2deg())


def camera_eye(samples_latlon, centre: tuple[float, float] | None, reach: float, zoom: bool) -> dict:
    """plotly camera eye looking at the centre: from afar (the whole hemisphere), or (zoom) from the distance D at
    which the region holding the samples (region_radius_deg, at least 4 degrees) fills the view,
    D = cos(a) + sin(a) / tan(view) in Earth radii, scaled to camera units."""
    overview = 3.9
    if zoom and samples_latlon is not None and len(samples_latlon):
        a = math.radians(min(90.0, max(4.0, region_radius_deg(samples_latlon, centre))))
        distance = min(overview, math.cos(a) + math.sin(a) / VIEW_TAN)
    else:
        distance = overview
    x, y, z = (_direction(samples_latlon, centre) * distance * SCENE_HALF_WIDTH / reach).tolist()
    return {"x": x, "y": y, "z": z}


def region_outlines(cells: DensityCells, mass: float, temperature: float = 1.0) -> list[np.ndarray]:
    """Polylines (n, 2) of (lat, lon) degrees around the highest-density region of p_T holding `mass`: contours
    at `mass` of the pixel levels (geodemo.regions.level_image) over the box of the widest drawn region."""
    box = credible_region(cells, max(m for m, _, _ in REGION_STYLES), temperature).bounds
    margin = float((box[:, 1] - box[:, 0]).min())
    window = (max(-90.0, float(box[:, 0].min()) - margin), min(90.0, float(box[:, 1].max()) + margin),
              max(-180.0, float(box[:, 2].min()) - margin), min(180.0, float(box[:, 3].max()) + margin))
    lats, lons, levels = level_image(cells, max(window[1] - window[0], window[3] - window[2]) / REGION_PIXELS, window,
                                     temperature)
    if not levels.min() < mass < levels.max():
        return []
    lines = contourpy.contour_generator(lons, lats, levels).lines(mass)
    return [line[:, ::-1].copy() for line in lines]


def region_traces(cells: DensityCells, radius: float = 1.006, temperature: float = 1.0) -> list[go.Scatter3d]:
    """One line trace per region of REGION_STYLES (the 50% and 90% highest-density regions of p_T) on the sphere."""
    traces = []
    for mass, dash, width in REGION_STYLES:
        parts = [np.concatenate((_latlon_xyz(line, radius), np.full((1, 3), np.nan))) for line in
                 region_outlines(cells, mass, temperature)]
        xyz = np.concatenate(parts) if parts else np.zeros((0, 3))
        traces.append(go.Scatter3d(x=xyz[:, 0], y=xyz[:, 1], z=xyz[:, 2], mode="lines", hoverinfo="skip",
                                   line={"color": REGION_COLOR, "width": 2.5 * width, "dash": dash},
                                   name=f"{mass:.0%} credible region"))
    return traces


def _color_at(progress: float) -> str:
    """The colour of TIME_COLORSCALE at progress in [0, 1] (linear between its stops)."""
    stops = [(p, np.array([int(c[i:i + 2], 16) for i in (1, 3, 5)], dtype=float)) for p, c in TIME_COLORSCALE]
    for (p0, c0), (p1, c1) in zip(stops[:-1], stops[1:]):
        if progress <= p1:
            r, g, b = (c0 + (c1 - c0) * (progress - p0) / (p1 - p0)).round().astype(int)
            return f"#{r:02x}{g:02x}{b:02x}"
    return TIME_COLORSCALE[-1][1]


def _play(frame_ms: float) -> dict:
    return {"frame": {"duration": frame_ms, "redraw": True}, "fromcurrent": True, "transition": {"duration": 0}}


def globe_figure(trajectory_xyz: torch.Tensor | np.ndarray | None = None, samples_latlon=None,
                 truth: tuple[float, float] | None = None, best_guess: tuple[float, float] | None = None,
                 title: str = "", max_frames: int = MAX_FRAMES, max_points: int = MAX_POINTS,
                 frame_ms: int = 90, seed: int = 0, state_labels: list[str] | None = None, guided_latlon=None,
                 best_guess_name: str = "best guess", revision: str = "globe", cells: DensityCells | None = None,
                 region_temperature: float = 1.0) -> go.Figure:
    """Globe figure. trajectory_xyz: (S + 1, N, 3) sampler states in R^3 for one image, noise first, with
    state_labels (S + 1 strings: step, t, noise level) for the slider. Sends at most max_frames frames of at most
    max_points points (a fixed random subset, chosen by seed). guided_latlon: the guided samples the best guess
    was chosen from (hidden until picked in the legend). revision: a new value resets the user's camera.
    cells: a density map whose 50% and 90% highest-density regions (of p_T, T = region_temperature) are outlined
    (region_traces)."""
    traces = [sphere_mesh(), coastline_trace()]
    frames, sliders, menus = [], [], []
    reach = 1.15
    if trajectory_xyz is not None:
        traj = np.asarray(trajectory_xyz, dtype=np.float32)
        if traj.ndim != 3 or traj.shape[-1] != 3:
            raise ValueError(f"trajectory_xyz must have shape (steps + 1, N, 3), got {traj.shape}")
        num_states, n, _ = traj.shape
        labels = state_labels or [f"step {k} of {num_states - 1}" for k in range(num_states)]
        if len(labels) != num_states:
            raise ValueError(f"got {len(labels)} state labels for {num_states} states")
        keep = np.sort(np.random.default_rng(seed).choice(n, size=min(n, max_points), replace=False))
        states = frame_indices(num_states, max_frames)
        traj = traj[states][:, keep].round(4)
        progress = states / max(1, num_states - 1)
        reach = float(np.clip(np.percentile(np.linalg.norm(traj, axis=-1), 99) * 1.05, 1.15, 4.0))
        f, m = traj.shape[0], traj.shape[1]
        paths = np.concatenate((traj.transpose(1, 0, 2), np.full((m, 1, 3), np.nan, np.float32)), axis=1)
        path_color = np.concatenate((np.tile(progress, (m, 1)), np.full((m, 1), np.nan)), axis=1).ravel()
        traces.append(go.Scatter3d(
            x=paths[..., 0].ravel(), y=paths[..., 1].ravel(), z=paths[..., 2].ravel(), mode="lines",
            line={"color": path_color.astype(np.float32), "colorscale": TIME_COLORSCALE, "cmin": 0, "cmax": 1,
                  "width": 2, "showscale": True,
                  "colorbar": {"title": {"text": "progress<br>0 = noise<br>1 = sample", "font": {"color": "white"}},
                               "len": 0.5, "thickness": 12, "x": 0.98, "tickfont": {"color": "white"},
                               "bgcolor": LEGEND_COLOR}},
            opacity=0.3, hoverinfo="skip", name="paths"))
        traces.append(_points(traj[0], "noise (start)", size=2, color=START_COLOR, opacity=0.6))
        traces.append(_points(traj[-1], f"samples (end, {n})", size=3.5, color=END_COLOR, opacity=0.9))
        current = len(traces)
        colors = [_color_at(float(p)) for p in progress]
        traces.append(_points(traj[0], "moving points", size=3.5, color=colors[0]))
        start_eye = camera_eye(samples_latlon, best_guess, reach, zoom=False)
        final_eye = camera_eye(samples_latlon, best_guess, reach, zoom=True)
        for k in range(f):
            camera = {0: start_eye, f - 1: final_eye}.get(k)
            frames.append(go.Frame(
                name=str(k), traces=[current],
                data=[go.Scatter3d(x=traj[k, :, 0], y=traj[k, :, 1], z=traj[k, :, 2], marker={"color": colors[k]})],
                layout={"scene": {"camera": {"eye": camera}}} if camera else None))
        menus = [{"type": "buttons", "showactive": False, "x": 0.01, "y": 0.02, "xanchor": "left", "yanchor": "bottom",
                  "direction": "left", "bgcolor": "#e5e7eb",
                  "buttons": [{"label": "▶ Play", "method": "animate", "args": [None, _play(frame_ms)]},
                              {"label": "❚❚ Pause", "method": "animate",
                               "args": [[None], {"frame": {"duration": 0, "redraw": False}, "mode": "immediate"}]}]},
                 {"type": "dropdown", "active": SPEEDS.index(1.0), "x": 0.99, "y": 0.11, "xanchor": "right",
                  "yanchor": "bottom", "direction": "up", "bgcolor": "#e5e7eb", "showactive": True,
                  "buttons": [{"label": f"▶ speed {speed:g}×", "method": "animate",
                               "args": [None, _play(frame_ms / speed)]} for speed in SPEEDS]}]
        sliders = [{"active": 0, "x": 0.17, "len": 0.8, "y": 0.02, "yanchor": "bottom",
                    "currentvalue": {"prefix": "", "font": {"color": "white", "size": 13}},
                    "font": {"color": "rgba(0,0,0,0)"}, "ticklen": 3,
                    "steps": [{"label": labels[s], "method": "animate",
                               "args": [[str(k)], {"frame": {"duration": 0, "redraw": True}, "mode": "immediate"}]}
                              for k, s in enumerate(states)]}]
    elif samples_latlon is not None:
        pts = _latlon_xyz(samples_latlon, 1.01)
        traces.append(_points(pts[:max_points], f"samples ({len(pts)})", size=3.5, color=END_COLOR))
    if cells is not None:
        traces += region_traces(cells, temperature=region_temperature)
    if guided_latlon is not None and len(guided_latlon):
        traces.append(_points(_latlon_xyz(guided_latlon, 1.01), f"guided samples ({len(guided_latlon)})",
                              visible="legendonly", size=3, color=GUESS_COLOR, symbol="x"))
    if best_guess is not None:
        traces.append(_points(_latlon_xyz(best_guess, 1.01), best_guess_name, size=9, color=GUESS_COLOR,
                              symbol="diamond-open", line={"width": 3}))
    if truth is not None:
        traces.append(_points(_latlon_xyz(truth, 1.01), "true location", size=11, color=TRUTH_COLOR,
                              symbol="circle-open", line={"width": 3}))
    axis = {"visible": False, "range": [-reach, reach], "showbackground": False}
    fig = go.Figure(data=traces, frames=frames)
    fig.update_layout(
        title={"text": title or "Denoising trajectories", "font": {"color": "white", "size": 15}, "x": 0.02},
        paper_bgcolor=SPACE_COLOR, margin={"l": 0, "r": 0, "t": 40, "b": 0}, height=560,
        scene={"xaxis": axis, "yaxis": axis, "zaxis": axis, "aspectmode": "cube", "bgcolor": SPACE_COLOR,
               "camera": {"eye": camera_eye(samples_latlon, best_guess, reach, zoom=trajectory_xyz is None)}},
        legend={"font": {"color": "white"}, "x": 0.01, "y": 0.93, "bgcolor": LEGEND_COLOR,
                "title": {"text": "click to show / hide", "font": {"color": "#9aa4b8", "size": 11}}},
        updatemenus=menus, sliders=sliders, uirevision=revision)
    return fig
