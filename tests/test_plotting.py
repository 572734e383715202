"""Globe (plotly) and log-density map (cartopy): offline, capped, animated, showing each process as it moves."""

import socket

import numpy as np
import pytest
import torch

from geodemo.adaptive_density import progressive_density
from geodemo.plotting import density_map_figure, globe_figure, render_png
from geodemo.plotting.globe import MAX_FRAMES, frame_indices
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
    fig = globe_figure(traj, truth=(48.85, 2.35), best_guess=(45.7, 4.8), process_name="rfm_s2", max_points=128)
    assert len(fig.frames) <= MAX_FRAMES
    moving = [t.name for t in fig.data].index("moving points")
    first, last = fig.frames[0].data[0], fig.frames[-1].data[0]
    assert len(first.x) == 128 and fig.frames[0].traces == (moving,)
    ends = np.stack((last.x, last.y, last.z), -1)
    assert np.allclose(np.linalg.norm(ends, axis=1), 1, atol=1e-3) and ends[:, 0].mean() > 0.5  # landed near Lyon
    assert len(fig.data[0].vertexcolor) == len(fig.data[0].x)  # Earth colours from the shipped raster
    names = [t.name for t in fig.data]
    assert {"Earth", "coastlines", "noise (start)", "samples (end)", "true location", "best guess"} <= set(names)
    buttons = [b.label for b in fig.layout.updatemenus[0].buttons]
    assert any("Play" in b for b in buttons) and any("Pause" in b for b in buttons)
    assert len(fig.layout.sliders[0].steps) == len(fig.frames)
    assert len(fig.to_json()) < 1_200_000


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
