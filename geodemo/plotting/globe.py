"""Animated 3D globe of the denoising trajectories (plotly, rendered by the bundled plotly.js: no CDN, no tiles).

The sphere carries Natural Earth colours and coastlines from assets/map/. Trajectories are drawn in R^3
as the sampler really moves: RFM points slide on the unit sphere; R^3 diffusion and flow points start as
Gaussian noise in space and converge onto the sphere. Frames x points sent to the browser are capped.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.colors import sample_colorscale
import torch

from geodemo.plotting.basemap import coastlines, earth_colors
from geodemo.sphere import latlon_to_xyz

MAX_FRAMES = 33
MAX_POINTS = 256
TIME_COLORSCALE = "Plasma"
SPACE_COLOR = "#0b1020"
START_COLOR = "#9aa4b8"
END_COLOR = "#ff3b30"
TRUTH_COLOR = "#ffd60a"
GUESS_COLOR = "#32d7ff"


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


def _points(xyz: np.ndarray, name: str, **marker) -> go.Scatter3d:
    return go.Scatter3d(x=xyz[:, 0], y=xyz[:, 1], z=xyz[:, 2], mode="markers", name=name, marker=marker)


def _latlon_point(latlon: tuple[float, float], radius: float = 1.02) -> np.ndarray:
    return latlon_to_xyz(torch.tensor([latlon], dtype=torch.float64)).numpy() * radius


def globe_figure(trajectory_xyz: torch.Tensor | np.ndarray | None = None, samples_latlon=None,
                 truth: tuple[float, float] | None = None, best_guess: tuple[float, float] | None = None,
                 process_name: str = "", max_frames: int = MAX_FRAMES, max_points: int = MAX_POINTS,
                 frame_ms: int = 90, seed: int = 0) -> go.Figure:
    """Globe figure. trajectory_xyz: (S + 1, N, 3) sampler states in R^3 for one image, noise first.
    Sends at most max_frames frames of at most max_points points (a fixed random subset, chosen by seed)."""
    traces = [sphere_mesh(), coastline_trace()]
    frames, sliders, menus = [], [], []
    reach = 1.15
    if trajectory_xyz is not None:
        traj = np.asarray(trajectory_xyz, dtype=np.float32)
        if traj.ndim != 3 or traj.shape[-1] != 3:
            raise ValueError(f"trajectory_xyz must have shape (steps + 1, N, 3), got {traj.shape}")
        num_states, n, _ = traj.shape
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
                               "len": 0.5, "thickness": 12, "x": 0.98, "tickfont": {"color": "white"}}},
            opacity=0.35, hoverinfo="skip", name="paths", showlegend=False))
        traces.append(_points(traj[0], "noise (start)", size=2.5, color=START_COLOR, opacity=0.7))
        traces.append(_points(traj[-1], "samples (end)", size=4.5, color=END_COLOR,
                              line={"color": "white", "width": 1}))
        current = len(traces)
        colors = sample_colorscale(TIME_COLORSCALE, progress.tolist())
        traces.append(_points(traj[0], "moving points", size=4, color=colors[0]))
        for k in range(f):
            frames.append(go.Frame(name=str(k), traces=[current], data=[go.Scatter3d(
                x=traj[k, :, 0], y=traj[k, :, 1], z=traj[k, :, 2], marker={"color": colors[k]})]))
        play = {"frame": {"duration": frame_ms, "redraw": True}, "fromcurrent": True, "transition": {"duration": 0}}
        menus = [{"type": "buttons", "showactive": False, "x": 0.02, "y": 0.02, "xanchor": "left", "yanchor": "bottom",
                  "direction": "left", "bgcolor": "#e5e7eb",
                  "buttons": [{"label": "▶ Play", "method": "animate", "args": [None, play]},
                              {"label": "❚❚ Pause", "method": "animate",
                               "args": [[None], {"frame": {"duration": 0, "redraw": False}, "mode": "immediate"}]}]}]
        sliders = [{"active": 0, "x": 0.2, "len": 0.78, "y": 0.02, "yanchor": "bottom",
                    "currentvalue": {"prefix": "sampler step ", "font": {"color": "white"}},
                    "font": {"color": "white"},
                    "steps": [{"label": str(int(s)), "method": "animate",
                               "args": [[str(k)], {"frame": {"duration": 0, "redraw": True}, "mode": "immediate"}]}
                              for k, s in enumerate(states)]}]
    elif samples_latlon is not None:
        pts = latlon_to_xyz(torch.as_tensor(samples_latlon, dtype=torch.float64)).numpy() * 1.01
        traces.append(_points(pts[:max_points], "samples", size=4.5, color=END_COLOR))
    if best_guess is not None:
        traces.append(_points(_latlon_point(best_guess), "best guess", size=9, color=GUESS_COLOR, symbol="diamond",
                              line={"color": "black", "width": 1}))
    if truth is not None:
        traces.append(_points(_latlon_point(truth), "true location", size=10, color=TRUTH_COLOR, symbol="diamond",
                              line={"color": "black", "width": 1}))
    axis = {"visible": False, "range": [-reach, reach], "showbackground": False}
    eye = _camera_eye(samples_latlon, distance=1.7)
    title = f"Denoising trajectories — {process_name}" if process_name else "Denoising trajectories"
    fig = go.Figure(data=traces, frames=frames)
    fig.update_layout(
        title={"text": title, "font": {"color": "white", "size": 15}, "x": 0.02},
        paper_bgcolor=SPACE_COLOR, margin={"l": 0, "r": 0, "t": 40, "b": 0}, height=560,
        scene={"xaxis": axis, "yaxis": axis, "zaxis": axis, "aspectmode": "cube", "bgcolor": SPACE_COLOR,
               "camera": {"eye": eye}},
        legend={"font": {"color": "white"}, "x": 0.01, "y": 0.93, "bgcolor": "rgba(0,0,0,0)"},
        updatemenus=menus, sliders=sliders, uirevision="globe")
    return fig


def _camera_eye(samples_latlon, distance: float) -> dict:
    """Look at the samples' mean direction (or at lat 20, lon 0) from `distance`."""
    if samples_latlon is not None and len(samples_latlon):
        mean = latlon_to_xyz(torch.as_tensor(samples_latlon, dtype=torch.float64)).mean(0)
        direction = mean / mean.norm() if mean.norm() > 1e-3 else torch.tensor([1.0, 0, 0], dtype=torch.float64)
    else:
        direction = latlon_to_xyz(torch.tensor([20.0, 0.0], dtype=torch.float64))
    x, y, z = (direction * distance).tolist()
    return {"x": x, "y": y, "z": z}
