"""Globe (plotly) and log-density map (cartopy): offline, capped, animated, showing each process as it moves."""

import socket

import numpy as np
import pytest
import torch

from geodemo.adaptive_density import progressive_density
from geodemo.plotting import density_map_figure, globe_figure, render_png
from geodemo.plotting.globe import END_COLOR, MAX_FRAMES, frame_indices, region_radius_deg
from geodemo.processes import process_from_name
from geodemo.sphere import latlon_to_xyz, project


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a plot tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def trajectory(process_name: str, steps: int = 64, n: int = 300) -> torch.Tensor:
    """A process's own noise moved linearly towards points near Lyon: (steps + 1, n, 3)."""
    g = torch.Generator().manual_seed(0)
    noise = process_from_name(process_name).initial_noise((n,), generator=g).double()
    target = project(torch.tensor([0.69, 0.06, 0.72], dtype=torch.float64) + 0.05 * torch.randn(n, 3, generator=g, dtype=torch.float64))
    s = torch.linspace(0, 1, steps + 1, dtype=torch.float64)[:, None, None]
    path = (1 - s) * noise + s * target
    return project(path) if process_name == "rfm_s2" else path


def test_frame_indices_keep_both_ends():
    idx = frame_indices(251, 33)
    assert len(idx) <= 33 and idx[0] == 0 and idx[-1] == 250
    assert list(frame_indices(5, 33)) == [0, 1, 2, 3, 4]


def test_globe_animation_is_capped_and_complete(no_network):
    traj = trajectory("rfm_s2")
    labels = [f"step {k} of 64 · t = {1 - k / 64:.3f} · noise 1 − γ = {1 - k / 64:.3f}" for k in range(65)]
    fig = globe_figure(traj, truth=(48.85, 2.35), best_guess=(45.7, 4.8), title="rfm_s2", max_points=128,
                       state_labels=labels, guided_latlon=[[45.7, 4.8], [45.8, 4.9]])
    assert len(fig.frames) <= MAX_FRAMES
    moving = [t.name for t in fig.data].index("moving points")
    first, last = fig.frames[0].data[0], fig.frames[-1].data[0]
    assert len(first.x) == 128 and fig.frames[0].traces == (moving,)
    ends = np.stack((last.x, last.y, last.z), -1)
    assert np.allclose(np.linalg.norm(ends, axis=1), 1, atol=1e-3) and ends[:, 0].mean() > 0.5  # landed near Lyon
    assert last.marker.color == END_COLOR  # in the last frame the moving points have the samples' colour
    assert len(fig.data[0].vertexcolor) == len(fig.data[0].x)  # Earth colours from the shipped raster
    names = [t.name for t in fig.data]
    assert {"Earth", "coastlines", "noise (start)", "samples (end, 300)", "true location", "best guess",
            "guided samples (2)"} <= set(names)
    buttons = [b.label for b in fig.layout.updatemenus[0].buttons]
    assert any("Play" in b for b in buttons) and any("Pause" in b for b in buttons)
    assert len(fig.layout.sliders[0].steps) == len(fig.frames)
    assert len(fig.to_json()) < 1_200_000


def test_globe_markers_leave_the_samples_visible_and_can_be_hidden():
    fig = globe_figure(trajectory("rfm_s2"), truth=(48.85, 2.35), best_guess=(45.7, 4.8),
                       guided_latlon=[[45.7, 4.8]])
    traces = {t.name: t for t in fig.data}
    for name in ("best guess", "true location"):
        assert traces[name].marker.symbol.endswith("-open")  # outlined: the samples under it show through
        assert traces[name].showlegend is not False  # a legend entry: a click hides it
    assert traces["guided samples (1)"].visible == "legendonly"
    assert traces["Earth"].showlegend is False
    assert fig.layout.legend.title.text == "click to show / hide"


def test_globe_frames_are_labelled_and_the_speed_can_be_chosen():
    labels = [f"step {k} of 64 · t = {1 - k / 64:.3f} · noise σ = {1 - k / 64:.3f}" for k in range(65)]
    fig = globe_figure(trajectory("flow_r3"), state_labels=labels, frame_ms=80)
    steps = fig.layout.sliders[0].steps
    kept = [int(s.label.split()[1]) for s in steps]
    assert kept[0] == 0 and kept[-1] == 64 and steps[-1].label == labels[64]
    assert fig.layout.sliders[0].currentvalue.prefix == ""  # the current frame's label is shown as it is
    speeds = fig.layout.updatemenus[1].buttons
    durations = [b.args[1]["frame"]["duration"] for b in speeds]
    assert len(speeds) >= 3 and durations == sorted(durations, reverse=True) and 80 in durations
    assert all("speed" in b.label for b in speeds)
    with pytest.raises(ValueError, match="65 states"):
        globe_figure(trajectory("flow_r3"), state_labels=labels[:10])


def test_the_last_frame_moves_the_camera_onto_the_samples():
    """The animation ends looking straight down at the best guess from close enough that the region holding
    the samples fills the view; the first frame looks from afar along the same line."""
    g = torch.Generator().manual_seed(0)
    samples = torch.tensor([30.5, 31.5]) + torch.randn(128, 2, generator=g) * 1.0
    traj = trajectory("rfm_s2")
    fig = globe_figure(traj, samples, best_guess=(30.5, 31.5))
    start = np.array([fig.frames[0].layout.scene.camera.eye[a] for a in "xyz"])
    end = np.array([fig.frames[-1].layout.scene.camera.eye[a] for a in "xyz"])
    guess = latlon_to_xyz(torch.tensor([30.5, 31.5], dtype=torch.float64)).numpy()
    assert np.allclose(end / np.linalg.norm(end), guess, atol=1e-9) and np.allclose(start / np.linalg.norm(start), guess)
    assert np.linalg.norm(end) < 0.5 * np.linalg.norm(start)
    assert all(not f.to_plotly_json().get("layout") for f in fig.frames[1:-1])  # the user may turn the globe
    assert 1.0 < region_radius_deg(samples, (30.5, 31.5)) < 3.0  # 80% of N(0, 1 degree) points within ~1.8 degrees
    centre = torch.tensor([30.5, 31.5])
    spread = globe_figure(traj, centre + (samples - centre) * 8, best_guess=(30.5, 31.5))
    wide = np.array([spread.frames[-1].layout.scene.camera.eye[a] for a in "xyz"])
    assert np.linalg.norm(end) < np.linalg.norm(wide)  # a wider region is seen from further away


def test_r3_processes_travel_through_space_while_rfm_stays_on_the_surface():
    sphere = globe_figure(trajectory("rfm_s2"))
    space = globe_figure(trajectory("diffusion_r3"))
    start = lambda fig: np.stack([np.asarray(getattr(fig.frames[0].data[0], a)) for a in "xyz"], -1)
    assert np.allclose(np.linalg.norm(start(sphere), axis=1), 1, atol=1e-3)
    assert np.percentile(np.linalg.norm(start(space), axis=1), 90) > 1.8  # Gaussian noise fills space
    assert sphere.layout.scene.xaxis.range[1] < 1.2 < space.layout.scene.xaxis.range[1]


def test_density_map_renders_offline_with_labelled_colour_bar(no_network):
    mu = torch.tensor([0.69, 0.06, 0.72], dtype=torch.float64)

    fn = lambda latlon: 300 * (latlon_to_xyz(latlon.double()) @ (mu / mu.norm())) - 300
    cells = list(progressive_density(fn, coarse_deg=30.0, levels=3))[-1]
    samples = torch.tensor([[45.0, 5.0], [46.0, 6.0]])
    fig = density_map_figure(cells, samples, truth=(48.85, 2.35), best_guess=(45.0, 5.0), title="test")
    labels = [a.get_xlabel() for a in fig.axes]
    assert any("nats per steradian" in label and "log" in label for label in labels)  # the colour bar
    world, close_up = fig.axes[0], fig.axes[1]  # the peak is narrow: a close-up of the mass sits beside the world
    assert len(world.collections) >= 4 and close_up.get_title().startswith("close-up")
    image = render_png(fig)  # the close-up draws borders and coastlines at the shipped scale, offline
    assert image.size == (1200, 520)
    pixels = np.asarray(image)
    assert pixels.std() > 20  # not blank
