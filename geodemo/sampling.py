"""Deterministic samplers: start from noise at t = 1 and step over t_k = 1 - k/steps to t = 0."""

from __future__ import annotations

import itertools
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Iterator, Literal

import torch

from geodemo.acceleration import graphs_allowed
from geodemo.guidance import guidance_batch
from geodemo.network import GeoDenoiser, Modulations, Precision
from geodemo.point_pass import GuidedPointPass
from geodemo.processes import Process
from geodemo.schedules import Schedule
from geodemo.sphere import project

SamplePrecision = Literal["auto", "float32", "bf16x3", "bf16", "tf32"]
"""The per-point matmuls of the sampler: "float32" (the network's own arithmetic, exact), "bf16x3" (three bfloat16
products: float32 accuracy, on tensor cores), "bf16" (one bfloat16 product: samples move by kilometres), "tf32" (one
TF32 product on CUDA, geodemo.network.tf32_matmuls), "auto" (the default: bf16x3 on CUDA, float32 elsewhere, where
bfloat16 products are not faster). The state, the LayerNorms, the activations and the first block's input product
(folded through the 3-d input layer: geodemo.point_pass) stay float32 in every case."""


@dataclass
class SampleOutput:
    """End points on S^2 (B, N, 3) and, when recorded, every state (B, steps + 1, N, 3) in R^3."""

    xyz: torch.Tensor
    trajectories: torch.Tensor | None = None


def gamma_grid(schedule: Schedule, steps: int, device: torch.device | str | None = None) -> torch.Tensor:
    """gamma(1 - k/steps) for k = 0..steps (noise to data), float32 as the sampler runs."""
    t = 1 - torch.arange(steps + 1, dtype=torch.float32, device=device) / steps
    return schedule.gamma(t)


def make_generator(seed: int | torch.Generator | None, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator seeded with `seed` (an int), passed through (a Generator), or freshly seeded (None)."""
    if isinstance(seed, torch.Generator):
        return seed
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(int(seed))
    return generator


def matmul_precision(precision: SamplePrecision, device: torch.device | str) -> Precision:
    """The network's Precision for a SamplePrecision on `device`."""
    if precision == "auto":
        return "bf16x3" if torch.device(device).type == "cuda" else "native"
    if precision not in ("float32", "bf16x3", "bf16", "tf32"):
        raise ValueError(f"precision must be 'auto', 'float32', 'bf16x3', 'bf16' or 'tf32', got {precision!r}")
    return "native" if precision == "float32" else precision


MODULATION_BYTES = 64 * 2**20
"""Memory for the modulations computed ahead of the step loop; more steps are computed in several chunks."""


def step_modulations(network: GeoDenoiser, gammas: torch.Tensor, emb: torch.Tensor, guidance: float,
                     chunk_bytes: int | None = None) -> Iterator[Modulations]:
    """Chunks of the modulations of steps k (gamma_k, guidance_batch(emb)), batched over steps: (K, B, 1, dim)
    tensors for K steps, (K, 2B, 1, dim) with guidance.

    They do not depend on the points, so they are computed in a few large matmuls before the points move
    (chunks of steps bounded by chunk_bytes, default MODULATION_BYTES)."""
    conds = guidance_batch(emb, guidance)
    rows = conds.shape[0]
    per_step = rows * network.config.dim * (3 * network.config.depth + 2) * 4
    chunk = max(1, (chunk_bytes or MODULATION_BYTES) // per_step)
    for part in gammas.split(chunk):
        flat = network.modulations(part.to(conds.dtype).repeat_interleave(rows), conds.repeat(len(part), 1))
        yield flat.map(lambda m: m.reshape(len(part), rows, *m.shape[1:]))


def run_steps(network: GeoDenoiser, process: Process, gammas: torch.Tensor, mods: Modulations, weights,
              precision: Precision, guidance: float, y: torch.Tensor, states: list | None) -> torch.Tensor:
    """len(gammas) - 1 sampler steps from gamma_0 to gamma_K given their modulations stacked (K, rows, 1, dim);
    appends every new state to `states` when it is a list."""
    predict = GuidedPointPass(network, mods, weights, precision, guidance)
    for k in range(len(gammas) - 1):
        y = process.step(y, predict(k, y), gammas[k], gammas[k + 1])
        if states is not None:
            states.append(y)
    return y


def _steps_in(mods: Modulations) -> int:
    return mods.final[0].shape[0]


class GraphedLoop:
    """The whole step loop captured once as a CUDA graph, replayed without per-kernel launch overhead.

    Inputs (start points, modulations) are copied into the graph's own buffers; a lock makes concurrent callers
    replay one at a time. Built by graphed_loop for one (network weights, process, steps, shapes, guidance,
    precision, trajectories)."""

    def __init__(self, network: GeoDenoiser, process: Process, gammas: torch.Tensor, mods: Modulations,
                 precision: Precision, guidance: float, y: torch.Tensor, trajectories: bool):
        self.gammas, self.mods, self.y = gammas.clone(), mods.map(torch.clone), y.clone()
        # The graph reads these tensors' memory at every replay: they must live as long as the graph (bf16 forms
        # of the weights are new tensors; freed, their memory would be reused and the replays read garbage).
        self.weights = network.hidden_weights(precision)

        def run() -> tuple[torch.Tensor, torch.Tensor | None]:
            states = [self.y] if trajectories else None
            end = run_steps(network, process, self.gammas, self.mods, self.weights, precision, guidance, self.y,
                            states)
            return end, torch.stack(states, dim=1) if states is not None else None

        side = torch.cuda.Stream(device=y.device)
        side.wait_stream(torch.cuda.current_stream(y.device))
        with torch.cuda.stream(side):
            run()  # warm-up: library handles and workspaces exist before capture
        torch.cuda.current_stream(y.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.out, self.states = run()
        self.lock = threading.Lock()

    def __call__(self, mods: Modulations, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        with self.lock:
            for static, new in zip(_tensors(self.mods), _tensors(mods)):
                static.copy_(new)
            self.y.copy_(y)
            self.graph.replay()
            return self.out.clone(), self.states.clone() if self.states is not None else None


def _tensors(mods: Modulations) -> list[torch.Tensor]:
    return [m for block in mods.blocks for m in block] + list(mods.final)


GRAPH_CACHE_SIZE = 8
"""Captured step loops kept per process (least recently used dropped first); each holds its activation memory."""
GRAPH_MODULATION_BYTES = 512 * 2**20
"""Step loops whose stacked modulations need more memory than this run eagerly (in chunks of steps)."""
_graphs: OrderedDict[tuple, GraphedLoop] = OrderedDict()
_graphs_lock = threading.Lock()


def graphed_loop(network: GeoDenoiser, process: Process, schedule: Schedule, gammas: torch.Tensor, mods: Modulations,
                 precision: Precision, guidance: float, y: torch.Tensor, trajectories: bool) -> GraphedLoop:
    """The cached GraphedLoop for these inputs' shapes and the network's current weights (a weight changed in place
    or replaced gives a new capture)."""
    weights_key = tuple((p.data_ptr(), p._version) for p in network.parameters())
    key = (id(network), weights_key, process.name, schedule, len(gammas), tuple(y.shape),
           tuple(_tensors(mods)[0].shape), guidance, precision, trajectories, str(y.device))
    with _graphs_lock:
        loop = _graphs.pop(key, None)
        if loop is None:
            loop = GraphedLoop(network, process, gammas, mods, precision, guidance, y, trajectories)
        _graphs[key] = loop
        while len(_graphs) > GRAPH_CACHE_SIZE:
            _graphs.popitem(last=False)
    return loop


@torch.no_grad()
def sample(network: GeoDenoiser, process: Process, schedule: Schedule, emb: torch.Tensor, num_samples: int,
           steps: int = 32, guidance: float = 0.0, seed: int | torch.Generator | None = None,
           initial_noise: torch.Tensor | None = None, trajectories: bool = False,
           precision: SamplePrecision = "auto", graphs: bool | None = None) -> SampleOutput:
    """Draw num_samples points per embedding. emb (B, C); initial_noise, if given, (B, N, 3).

    Noise is drawn on the CPU from `seed` so that the same seed gives the same samples on any device.
    The state stays float32 (float64 for a float64 network); precision picks the per-point matmuls (SamplePrecision; "float32" is the exact path,
    the default "auto" stays within 0.01 degrees of it: tests/test_fast_paths.py, benchmarks/README.md).
    graphs: run the step loop as a captured CUDA graph (default: on CUDA outside ZeroGPU, see
    geodemo.acceleration), captured once per shape and replayed afterwards.
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    device = emb.device
    batch = emb.shape[0]
    if initial_noise is None:
        initial_noise = process.initial_noise((batch, num_samples), generator=make_generator(seed))
    y = initial_noise.to(device=device, dtype=torch.float64 if network.initial_mapper.weight.dtype == torch.float64
                         else torch.float32)
    gammas = gamma_grid(schedule, steps, device=device)
    mode = matmul_precision(precision, device)
    net_emb = emb.to(network.initial_mapper.weight.dtype)
    use_graphs = graphs_allowed(device) if graphs is None else graphs
    if use_graphs and torch.device(device).type != "cuda":
        raise ValueError("CUDA graphs need a CUDA device")
    chunks = step_modulations(network, gammas[:-1], net_emb, guidance,
                              chunk_bytes=GRAPH_MODULATION_BYTES if use_graphs else None)
    mods = next(chunks)
    if use_graphs and _steps_in(mods) == steps:
        end, states = graphed_loop(network, process, schedule, gammas, mods, mode, guidance, y, trajectories)(mods, y)
        return SampleOutput(xyz=project(end), trajectories=states)
    weights = network.hidden_weights(mode)
    states = [y] if trajectories else None
    done = 0
    for mods in itertools.chain((mods,), chunks):
        k = _steps_in(mods)
        y = run_steps(network, process, gammas[done:done + k + 1], mods, weights, mode, guidance, y, states)
        done += k
    return SampleOutput(xyz=project(y), trajectories=torch.stack(states, dim=1) if states is not None else None)
