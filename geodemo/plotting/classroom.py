"""Figures of the classroom experiments (geodemo.explore): globes side by side that move in lockstep, the
probability path on the globe, the guidance and steps sweeps, the density at each time of the path.

Globes are plotly figures built from geodemo.plotting.globe; the rest are matplotlib figures (object API, no
pyplot state) on plain longitude / latitude axes with the shipped coastlines, quick enough to redraw as a sweep
fills in.
"""

from __future__ import annotations

from typing import Sequence

import matplotlib
import numpy as np
import plotly.graph_objects as go
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure

from geodemo.explore import Comparison, GuidanceSweep, ProbabilityPath, StepsSweep
from geodemo.plotting.basemap import coastlines
from geodemo.plotting.density_map import COLORMAP
from geodemo.plotting.globe import GUESS_COLOR, TRUTH_COLOR, globe_figure, sphere_mesh
from geodemo.plotting.globe_density import colorbar_trace, density_range, drape_colors, hex_to_rgb, log_density_at, \
    vertex_latlon
from geodemo.sphere import project, xyz_to_latlon

MODEL_COLORS = ("#2563eb", "#16a34a", "#dc2626", "#9333ea", "#ea580c", "#0891b2")
"""One colour per model, in the order the models are given."""
ARROW_RAD = 0.14
"""Length (radians on the sphere) of the longest field arrow of a frame; the others in proportion."""
DRAPE_STEP_DEG = 3.0
FLOOR_KM = 0.1
"""Distances below this are drawn at it on the logarithmic axes."""


def model_label(model: str, process: str) -> str:
    return f"{model} ({process})" if process and process not in model else model


# --- globes -----------------------------------------------------------------------------------------------------

def comparison_globes(comparison: Comparison) -> go.Figure:
    """One globe per run (samples' trajectories, best guess, truth), side by side, one slider and one Play."""
    steps = comparison.steps
    labels = [f"step {k} of {steps} · t = {1 - k / steps:.3f}" for k in range(steps + 1)]
    figures = [globe_figure(run.trajectories_xyz, run.samples, truth=comparison.truth,
                            best_guess=run.summary.best_guess, seed=comparison.seed, state_labels=labels)
               for run in comparison.runs]
    return lockstep_globes(figures, [model_label(r.model, r.process) for r in comparison.runs])


def lockstep_globes(figures: Sequence[go.Figure], titles: Sequence[str]) -> go.Figure:
    """Globe figures (globe_figure, each with the same frames) as one figure, one 3D scene each side by side:
    one slider and one Play button move all of them, frame by frame, in lockstep."""
    counts = {len(f.frames) for f in figures}
    if len(counts) > 1:
        raise ValueError(f"the globes must have the same number of frames to move in lockstep, got {sorted(counts)}")
    n = len(figures)
    merged = go.Figure()
    offsets = []
    for i, fig in enumerate(figures):
        scene = scene_name(i)
        offsets.append(len(merged.data))
        for trace in fig.data:
            trace = trace.to_plotly_json()
            trace["scene"] = scene
            if i > 0:
                trace["showlegend"] = False
                if trace.get("name") == "paths":
                    trace["line"]["showscale"] = False
            merged.add_trace(trace)
        layout_scene = fig.layout.scene.to_plotly_json()
        layout_scene["domain"] = {"x": [i / n, (i + 1) / n], "y": [0.06, 0.94]}
        merged.layout[scene] = layout_scene
    merged.frames = [go.Frame(name=frames[0].name, data=[d for frame in frames for d in frame.data],
                              traces=[offset + t for frame, offset in zip(frames, offsets) for t in frame.traces],
                              layout={scene_name(i): frame.layout.scene for i, frame in enumerate(frames)
                                      if frame.layout and frame.layout.scene} or None)
                     for frames in zip(*(f.frames for f in figures))]
    first = figures[0].layout
    merged.update_layout(
        paper_bgcolor=first.paper_bgcolor, margin={"l": 0, "r": 0, "t": 40, "b": 0}, height=first.height,
        legend={**first.legend.to_plotly_json(), "y": 0.98, "orientation": "h"}, updatemenus=first.updatemenus,
        sliders=first.sliders, uirevision="lockstep",
        annotations=[{"text": f"<b>{title}</b>", "x": (i + 0.5) / n, "y": 0.92, "xref": "paper", "yref": "paper",
                      "showarrow": False, "font": {"color": "white", "size": 13}} for i, title in enumerate(titles)])
    return merged


def scene_name(i: int) -> str:
    """plotly's name of the i-th 3D scene of a figure."""
    return "scene" if i == 0 else f"scene{i + 1}"


def path_globe(path: ProbabilityPath) -> go.Figure:
    """The probability path on one globe, one frame per time t: the particles at t, log p_t draped over the Earth
    (one colour range for all t) where computed, and the Riemannian flow's tangent field as arrows."""
    states = torch.stack([p.particles_xyz for p in path.times])
    final = xyz_to_latlon(states[-1].double())
    fig = globe_figure(states, final, truth=path.truth, seed=path.seed, max_frames=len(path.times),
                       state_labels=[f"t = {p.t:.2f} · γ = {p.gamma:.2f}" for p in path.times],
                       title=f"The probability path p_t(x | image), {model_label(path.model, path.process)}: "
                             "t = 1 noise → t = 0 data")
    fig.update_traces(selector={"name": "paths"}, visible=False)  # five states make poor paths: the frames move
    mesh = sphere_mesh(DRAPE_STEP_DEG)
    fig.data[0].update(x=mesh.x, y=mesh.y, z=mesh.z, i=mesh.i, j=mesh.j, k=mesh.k, vertexcolor=mesh.vertexcolor)
    earth = hex_to_rgb(mesh.vertexcolor)
    latlon = vertex_latlon(mesh)
    computed = [p.cells for p in path.times if p.cells is not None]
    vmin, vmax = density_range(computed) if computed else (0.0, 1.0)
    colors = [drape_colors(earth, log_density_at(p.cells, latlon), vmin, vmax) if p.cells is not None
              else list(mesh.vertexcolor) for p in path.times]
    extra = [0]
    if computed:
        fig.add_trace(colorbar_trace(vmin, vmax, "log p_t [nats/sr]"))
    arrows = [field_arrows(p.field_xyz, p.field_vectors) for p in path.times] if path.times[0].field_xyz is not None \
        else None
    if arrows:
        extra.append(len(fig.data))
        fig.add_trace(go.Scatter3d(x=arrows[0][:, 0], y=arrows[0][:, 1], z=arrows[0][:, 2], mode="lines",
                                   line={"color": "#f8fafc", "width": 2.5}, hoverinfo="skip",
                                   name="tangent field (where the particles go)"))
    fig.data[0].vertexcolor = colors[0]
    for k, frame in enumerate(fig.frames):
        updates = [go.Mesh3d(vertexcolor=colors[k])]
        if arrows:
            updates.append(go.Scatter3d(x=arrows[k][:, 0], y=arrows[k][:, 1], z=arrows[k][:, 2]))
        frame.data = list(frame.data) + updates
        frame.traces = list(frame.traces) + extra
    return fig


def field_arrows(points: torch.Tensor, vectors: torch.Tensor, radius: float = 1.012) -> np.ndarray:
    """Polyline (3 K, 3) of arrows on the sphere (K shafts with an arrow head each, NaN-separated): from each
    point along its tangent vector, the longest ARROW_RAD long, the others in proportion."""
    p = points.double()
    v = vectors.double()
    scale = ARROW_RAD / v.norm(dim=-1).max().clamp_min(1e-12)
    tip = project(p + scale * v)
    back = project(tip - 0.35 * scale * v)
    side = torch.linalg.cross(tip, v, dim=-1)
    side = 0.12 * ARROW_RAD * side / side.norm(dim=-1, keepdim=True).clamp_min(1e-12) * (
        v.norm(dim=-1, keepdim=True) / v.norm(dim=-1).max())
    left, right = project(back + side), project(back - side)
    gap = torch.full_like(p, float("nan"))
    return (torch.stack((p, tip, gap, left, tip, right, gap), dim=1).reshape(-1, 3) * radius).numpy()


# --- matplotlib figures -----------------------------------------------------------------------------------------

def _figure(size: tuple[float, float], dpi: int = 100) -> Figure:
    fig = Figure(figsize=size, dpi=dpi, facecolor="white")
    FigureCanvasAgg(fig)
    return fig


def world_axes(ax, title: str = "", labels: bool = True, window: tuple[float, float, float, float] | None = None
               ) -> None:
    """Longitude / latitude axes with the shipped coastlines, over the globe or window (lat0, lat1, lon0, lon1)."""
    ax.add_collection(LineCollection(list(coastlines()), colors="#64748b", linewidths=0.4 if window is None else 0.8))
    lat0, lat1, lon0, lon1 = window or (-90.0, 90.0, -180.0, 180.0)
    ax.set_xlim(lon0, lon1)
    ax.set_ylim(lat0, lat1)
    ax.set_aspect("equal")
    if window is None:
        ax.set_xticks(range(-180, 181, 90))
        ax.set_yticks(range(-90, 91, 45))
    ax.tick_params(labelsize=7)
    if labels:
        ax.set_xlabel("longitude (°)", fontsize=8)
        ax.set_ylabel("latitude (°)", fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)


def _truth(ax, truth) -> None:
    """The true location as an open circle that leaves the samples under it visible."""
    if truth is not None:
        ax.scatter([truth[1]], [truth[0]], s=140, marker="o", facecolors="none", edgecolors=TRUTH_COLOR,
                   linewidths=2.2, zorder=6, label="true location")
        ax.scatter([truth[1]], [truth[0]], s=140, marker="o", facecolors="none", edgecolors="black", linewidths=0.6,
                   zorder=6)


def points_window(latlon: np.ndarray, min_span_deg: float = 16.0) -> tuple[float, float, float, float] | None:
    """(lat0, lat1, lon0, lon1) around (K, 2) degree points with a margin, at least min_span_deg high and 1.5 times
    as wide; None when the points spread over most of the globe (the world map is the view)."""
    lat0, lat1 = latlon[:, 0].min(), latlon[:, 0].max()
    lon0, lon1 = latlon[:, 1].min(), latlon[:, 1].max()
    half = max(min_span_deg, 1.3 * (lat1 - lat0), 1.3 * (lon1 - lon0) / 1.5) / 2
    if half > 60:
        return None
    lat_c, lon_c = (lat0 + lat1) / 2, (lon0 + lon1) / 2
    return lat_c - half, lat_c + half, lon_c - 1.5 * half, lon_c + 1.5 * half


def guidance_curves(sweep: GuidanceSweep) -> Figure:
    """Spread (km) and median error to the truth (km) against w, one line per model."""
    fig = _figure((11, 3.6))
    axes = fig.subplots(1, 2)
    for i, (model, runs) in enumerate(sweep.runs.items()):
        w = [r.guidance for r in runs]
        style = {"color": MODEL_COLORS[i % len(MODEL_COLORS)], "marker": "o",
                 "label": model_label(model, sweep.processes[model])}
        axes[0].plot(w, [max(r.spread_km, FLOOR_KM) for r in runs], **style)
        if sweep.truth is not None:
            axes[1].plot(w, [max(r.error_km, FLOOR_KM) for r in runs], **style)
    axes[0].set_title("Spread of the samples: median distance to their mean", fontsize=10)
    axes[1].set_title("Error: median distance of the samples to the truth" if sweep.truth is not None
                      else "Error: the true location of this image is unknown", fontsize=10)
    for ax, label in zip(axes, ("spread (km)", "error to the truth (km)")):
        ax.set_xlabel("guidance scale w")
        ax.set_ylabel(label)
        ax.set_xscale("symlog", linthresh=1.0)
        ax.set_yscale("log")
        ax.set_xticks(sweep.guidance)
        ax.set_xticklabels([f"{w:g}" for w in sweep.guidance])
        ax.grid(alpha=0.3, which="both")
    axes[0].axhline(FLOOR_KM, color="#94a3b8", linestyle=":", linewidth=1)
    axes[0].annotate(f"< {FLOOR_KM:g} km drawn here: the samples collapsed onto one point", (0.02, FLOOR_KM),
                     xycoords=("axes fraction", "data"), xytext=(0, 4), textcoords="offset points", fontsize=7,
                     color="#64748b")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def guidance_maps(sweep: GuidanceSweep) -> Figure:
    """One world map per guidance scale with every model's samples at that w (and the truth)."""
    done = [w for i, w in enumerate(sweep.guidance) if all(len(runs) > i for runs in sweep.runs.values())]
    columns = min(3, max(1, len(sweep.guidance)))
    rows = -(-len(sweep.guidance) // columns)
    everything = [r.samples.numpy() for runs in sweep.runs.values() for r in runs]
    if sweep.truth is not None:
        everything.append(np.array([sweep.truth]))
    window = points_window(np.concatenate(everything)) if everything else None
    fig = _figure((11, 3.2 * rows))
    axes = np.atleast_1d(fig.subplots(rows, columns)).ravel()
    for i, ax in enumerate(axes):
        if i >= len(sweep.guidance):
            ax.set_visible(False)
            continue
        world_axes(ax, f"w = {sweep.guidance[i]:g}" + ("" if sweep.guidance[i] in done else " (computing…)"),
                   labels=i % columns == 0, window=window)
        for j, (model, runs) in enumerate(sweep.runs.items()):
            if len(runs) > i:
                pts = runs[i].samples.numpy()
                ax.scatter(pts[:, 1], pts[:, 0], s=5, color=MODEL_COLORS[j % len(MODEL_COLORS)], alpha=0.7,
                           label=model_label(model, sweep.processes[model]), zorder=4)
        _truth(ax, sweep.truth)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=len(handles), fontsize=8, markerscale=2)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig


def steps_curves(sweep: StepsSweep) -> Figure:
    """Median error (km) and mean GeoScore against the number of sampler steps, one line per model."""
    fig = _figure((11, 3.6))
    axes = fig.subplots(1, 2)
    for i, model in enumerate(sweep.processes):
        n = len(sweep.median_km[model])
        style = {"color": MODEL_COLORS[i % len(MODEL_COLORS)], "marker": "o",
                 "label": model_label(model, sweep.processes[model])}
        axes[0].plot(sweep.steps[:n], sweep.median_km[model], **style)
        axes[1].plot(sweep.steps[:n], sweep.geoscore[model], **style)
    axes[0].set_ylabel("median error to the truth (km)")
    axes[0].set_yscale("log")
    axes[1].set_ylabel("mean GeoScore (5000 = exact)")
    axes[1].set_ylim(0, 5000)
    views = f"{len(sweep.views)} views × {sweep.samples_per_view} samples, w = {sweep.guidance:g}"
    axes[0].set_title(f"Error against sampler steps ({views})", fontsize=10)
    axes[1].set_title("GeoScore against sampler steps", fontsize=10)
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xticks(sweep.steps)
        ax.set_xticklabels([str(s) for s in sweep.steps])
        ax.set_xlabel("sampler steps")
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def path_maps(path: ProbabilityPath) -> Figure:
    """log p_t on a world map at each time of the path (one colour range for all), with the particles at t."""
    computed = [p.cells for p in path.times if p.cells is not None]
    vmin, vmax = density_range(computed) if computed else (0.0, 1.0)
    fig = _figure((13, 3.1))
    axes = fig.subplots(1, len(path.times))
    image = None
    for i, (ax, p) in enumerate(zip(axes, path.times)):
        end = " (noise)" if i == 0 else " (data)" if i == len(path.times) - 1 else ""
        title = f"t = {p.t:.2f}{end}, γ = {p.gamma:.2f}"
        if p.cells is not None:
            lats, lons, raster = p.cells.rasterize(1.0)
            image = ax.imshow(raster, origin="lower", extent=(-180, 180, -90, 90), cmap=COLORMAP, vmin=vmin,
                              vmax=vmax, interpolation="nearest")
            title += f"\n∫ p_t dΩ = {p.cells.total_mass():.3f}"
        else:
            title += "\n(computing…)"
        world_axes(ax, title, labels=i == 0)
        pts = xyz_to_latlon(p.particles_xyz.double()).numpy()
        ax.scatter(pts[:, 1], pts[:, 0], s=2, c=GUESS_COLOR, alpha=0.6, zorder=4,
                   label="particles at t" if i == 0 else None)
        _truth(ax, path.truth if i == len(path.times) - 1 else None)
    if image is not None:
        bar = fig.colorbar(image, ax=list(axes), orientation="horizontal", fraction=0.06, pad=0.2, extend="min")
        bar.set_label("log p_t(x | image)  [nats per steradian]", fontsize=8)
    axes[0].legend(loc="lower left", fontsize=7, markerscale=3)
    return fig
