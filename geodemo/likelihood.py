"""Exact log-density log p(y | c) by the probability-flow ODE (PLONK, Proposition 1).

Integrate the augmented state [y, int div v dt] from data (t = t_start) to noise (t = t_end):
  log p(y) = log p_base(y(t_end)) + int_{t_start}^{t_end} div_y (dy/dt) dt,   dy/dt = gamma'(t) v(y, gamma(t)).
Units: natural log per steradian of the unit sphere (exp(log p) integrates to 1 over S^2).
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable, Iterator, Literal, NamedTuple, Sequence

import numpy as np
import torch
from torchdiffeq import odeint

from geodemo.acceleration import compile_allowed
from geodemo.guidance import guidance_batch, guided_output, guided_prediction, repeat_for_guidance
from geodemo.network import GeoDenoiser, Modulations, Precision
from geodemo.processes import AmbientProcess, Process
from geodemo.sampling import MODULATION_BYTES, step_modulations
from geodemo.schedules import Schedule
from geodemo.sphere import LOG_SPHERE_AREA, project, project_tangent, tangent_basis
from geodemo.tangent_pass import TangentPointPass, fast_bf16_cpu

DensityGeometry = Literal["riemannian", "ambient"]
"""How the RFM density is taken: on S^2 (the field projected on the tangent plane) or in R^3 (the authors' way)."""
RUNGE_KUTTA = {
    "euler": ((), (1.0,)),
    "midpoint": (((0.5,),), (0.0, 1.0)),
    "rk4": (((0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)), (1 / 6, 1 / 3, 1 / 3, 1 / 6)),
}
"""Explicit fixed-step methods as (a, b) of their Butcher tableau (nodes c_i = sum_j a_ij); rk4 is the classic one."""
FIXED_STEP_METHODS = tuple(RUNGE_KUTTA)
MIN_RADIUS = 0.02
"""Smallest radius of the radial quadrature: a ray's quadrature never reaches the origin."""
RadialRule = Literal["sinh", "hermite", "adaptive"]
"""The radial quadrature of the R^3 processes: sinh-mapped Gauss-Legendre (any profile, many nodes), Gauss-Hermite
around the data radius (profiles near the noise level's Gaussian: few nodes), or Gauss-Hermite around each ray's own
mean radius and spread, measured by a pilot solve (adaptive_hermite: fewest nodes)."""
PILOT_NODES, PILOT_STEPS = 5, 8
"""The "adaptive" radial rule's pilot: a "hermite" quadrature of this many nodes, solved with this many RK4 steps (or
the screening's steps), whose terms give each ray's profile moments (profile_moments)."""
Accuracy = Literal["default", "map"]
"""The log-density presets: "default" adaptive dopri5, at least as accurate as the authors' solver and faster (H100:
2e-6, bf16x3, compiled; 2-core CPU: 5e-7, float32; measured in benchmarks/README.md), "map" for drawing maps
(fixed-step RK4 screened at 8 steps, 4 adaptive radial nodes, steps and radial nodes doubled as a check says: ~0.05
nats where log p is within 10 nats of its maximum, measured at samples of the shipped models' 10 example views: up to
0.059 (default), 0.038 (earth-flow) and 0.047 nats (earth-diffusion), benchmarks/map_precision.py; CheckReport says
when the check stopped unverified; over-estimated far below it; on a CPU the doubling stops at CPU_MAP_MAX_STEPS;
the blocks' products in bfloat16 on CUDA and on CPUs with bf16 instructions, fast_bf16_cpu)."""


@dataclass(frozen=True)
class ODEOptions:
    """Everything log_density's solve takes besides the model and the points (see log_density)."""

    method: str = "dopri5"
    atol: float = 2e-6
    rtol: float = 2e-6
    steps: int | None = None
    radial_nodes: int = 20
    radial_rule: RadialRule = "sinh"
    precision: Precision = "native"
    compile: bool = False
    chunk_size: int = 8192
    check_points: int = 0
    """Fixed-step solves: re-solve this many points (check_indices) with twice the steps and, for the R^3
    processes, twice the radial nodes; while they disagree by more than check_tolerance, double the steps, the nodes
    or both (cheapest_agreeing) and re-solve the points near the maximum (relevant_columns; 0: no check)."""
    check_tolerance: float = 0.04
    """RK4's error is about (finer - coarser) 16/15, so 0.04 keeps it within the map's 0.05 nats; a tighter check
    chases the float32 solve's own noise (about 0.01-0.02 nats on the shipped models, measured against 256 steps)."""
    max_steps: int = 2048
    """Fixed-step solves with a check: doubling never goes past this many steps (nor the radial nodes past
    the same factor), whatever the check says: a bound on the time of one solve."""
    time_filter: bool = True
    """Fixed-step solves of a process with likelihood_time_filter average its time conditioning over each step
    (filtered_modulations); False: the conditioning at the stage times, as the adaptive solvers take it."""
    screen_steps: int = 0
    """Fixed-step solves: solve every point with this many steps first, then with `steps` the points within
    RELEVANT_NATS + RELEVANCE_MARGIN of the highest one, and again those near the highest fully solved one until
    none is left (a grid that misses a sharp peak can end up solving all); 0: no screening."""


@dataclass
class CheckReport:
    """What the fixed-step presets' step-doubling checks found over the log_density calls given it (e.g. a map's
    levels). gap: the largest disagreement (nats) at the check points between the settings kept and a finer solve
    of them, or, where the doubling bound (max_steps) stopped the doubling, between the last two settings tried;
    settled: every check agreed within its tolerance; steps / radial_nodes: the finest settings kept (0: none
    checked; radial_nodes 0 on S^2); checks / unsettled: how many checks ended, and how many of them at the bound."""

    gap: float = 0.0
    settled: bool = True
    steps: int = 0
    radial_nodes: int = 0
    checks: int = 0
    unsettled: int = 0

    def record(self, gap: float, settled: bool, steps: int, radial_nodes: int) -> None:
        """One check's outcome for the settings kept."""
        self.gap, self.settled = max(self.gap, gap), self.settled and settled
        self.steps, self.radial_nodes = max(self.steps, steps), max(self.radial_nodes, radial_nodes)
        self.checks, self.unsettled = self.checks + 1, self.unsettled + (not settled)


CPU_MAP_MAX_STEPS = 64
"""The "map" preset's doubling on a CPU stops at 64 steps and 8 radial nodes: one doubling of each past the 32-step,
4-node solve. Measured on the shipped models (Nile view, against 128 steps, before the S^2 time filter and the
flow's time warp): 64 steps were within 0.01-0.03 nats where 32 steps were off by up to 0.09 (RFM) and 0.04
(earth-flow); further doublings cost 4x, 16x, ... (earth-flow's complete map: more than 24 minutes on 2 cores without
the cap). Where the cap stops a failing check, CheckReport says so: earth-diffusion's Hawaii map (0.47 nats), random
dim-256 weights (0.6 nats off at the cap; benchmarks/README.md)."""


CPU_DEFAULT_TOLERANCE = 5e-7
"""The "default" preset's dopri5 tolerance on a CPU (2e-6 on CUDA). At 2e-6 a 2-core CPU's float32 solve was 1.5x
the authors' max error (dim 256, 10-degree grid); at 5e-7 it is 3x smaller than theirs and still 1.26x faster."""


def accuracy_options(accuracy: Accuracy, device: torch.device | str, radial: bool = False) -> ODEOptions:
    """The preset for `accuracy` on `device`. On CUDA the blocks' matmuls run on tensor cores (bf16x3: float32
    accuracy, for "default"; one bf16 product, for "map") in a compiled pass with the whole grid in few chunks; on
    a CPU eager, in float32, except an R^3 process's map (radial: 3 tangents at each of its radial nodes) where the
    cores have bf16 instructions: its products in bfloat16 (geodemo.tangent_pass; the map 1.4x faster, within 0.03
    nats of float32 on the shipped models; the S^2 map gained nothing and lost 0.04 nats; benchmarks/README.md)."""
    cuda = torch.device(device).type == "cuda"
    compiled = compile_allowed(device)
    if accuracy == "default":
        tolerance = ODEOptions.atol if cuda else CPU_DEFAULT_TOLERANCE
        return ODEOptions(atol=tolerance, rtol=tolerance, precision="bf16x3" if cuda else "native", compile=compiled,
                          chunk_size=1 << 17 if cuda else 8192)
    if accuracy == "map":
        return ODEOptions(method="rk4", steps=32, radial_nodes=4, radial_rule="adaptive",
                          precision="bf16" if cuda or (radial and fast_bf16_cpu()) else "native", compile=compiled,
                          chunk_size=1 << 17 if cuda else 4096, check_points=8, screen_steps=8,
                          max_steps=2048 if cuda else CPU_MAP_MAX_STEPS)
    raise ValueError(f"accuracy must be 'default' or 'map', got {accuracy!r}")


def field_and_divergence(field: Callable[[torch.Tensor], torch.Tensor], y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """f(y) and div f(y) = sum_i df_i/dy_i for a pointwise field on (B, M, 3).

    Exact trace of the 3x3 Jacobian with one forward-mode JVP over 3 stacked copies of y (tangents e_1, e_2, e_3).
    """
    batch, m, _ = y.shape
    stacked = y.repeat(1, 3, 1)
    basis = torch.eye(3, dtype=y.dtype, device=y.device).repeat_interleave(m, dim=0)
    out, tangent_out = torch.func.jvp(field, (stacked,), (basis.expand(batch, -1, -1),))
    div = tangent_out.reshape(batch, 3, m, 3).diagonal(dim1=1, dim2=3).sum(-1)
    return out[:, :m], div


@functools.cache
def compiled_jvp() -> Callable:
    """GeoDenoiser.jvp_modulated through torch.compile with dynamic shapes, made once per process: one compilation
    per network size and precision serves every number of points in every later solve."""
    return torch.compile(GeoDenoiser.jvp_modulated, dynamic=True)


def t_at_gamma(schedule: Schedule, gamma: float) -> float:
    """Solve gamma(t) = target for t in [0, 1] by bisection (gamma is decreasing in t)."""
    lo, hi = 0.0, 1.0
    for _ in range(80):
        mid = (lo + hi) / 2
        if float(schedule.gamma(torch.tensor(mid, dtype=torch.float64))) > gamma:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def per_point_error_norm(scaled_error: torch.Tensor) -> torch.Tensor:
    """max over points of the RMS over a point's state [y, int div]: every point's own error stays within the
    tolerance, however many points share the solve (torchdiffeq's default RMS over all would average them)."""
    return scaled_error.pow(2).mean(-1).sqrt().max()


def _solve(field: "ODEField", y0: torch.Tensor, t_start: float, t_end: float, method: str, atol: float, rtol: float,
           steps: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Integrate [y, int div] from t_start to t_end; returns (y(t_end), int div dt)."""

    def augmented(terms: FieldTerms, state: torch.Tensor) -> torch.Tensor:
        dy, div = field.with_divergence(terms, state[..., :3])
        return torch.cat((dy, div.unsqueeze(-1)), dim=-1)

    state0 = torch.cat((y0, torch.zeros_like(y0[..., :1])), dim=-1)
    if method in RUNGE_KUTTA:
        state1 = fixed_steps(augmented, state0, t_start, t_end, steps or 64, method, field.terms,
                              field.process.likelihood_step_power)
    else:
        times = torch.tensor([t_start, t_end], dtype=y0.dtype, device=y0.device)
        state1 = odeint(lambda t, state: augmented(field.terms(t.view(1))[0], state), state0, times, method=method,
                        atol=atol, rtol=rtol, options={"norm": per_point_error_norm})[-1]
    return state1[..., :3], state1[..., 3]


def fixed_steps(fun: Callable[[Any, torch.Tensor], torch.Tensor], state: torch.Tensor, t_start: float, t_end: float,
                steps: int, method: str = "rk4", prepare: Callable[[torch.Tensor], Sequence] | None = None,
                power: int = 1) -> torch.Tensor:
    """`steps` equal steps in q of an explicit Runge-Kutta method (RUNGE_KUTTA) for d state/dq = t'(q) fun(t(q), state),
    t = t_start + (t_end - t_start) warp(q) (time_warp with `power`; 1: equal steps in t):
    k_i = t'(q + c_i h) fun(t(q + c_i h), state + h sum_j a_ij k_j), state += h sum_i b_i k_i, h = 1 / steps.

    The stage times are known in advance: prepare(times, widths) maps all of them, (steps * stages,) in order, with
    the width in t of each one's step, to what fun takes as its time in one call (ODEField.terms: the network's
    time conditioning of every stage at once); without it fun takes the 0-d times."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    a, b = RUNGE_KUTTA[method]
    h = 1.0 / steps
    nodes = (0.0, *(sum(row) for row in a))
    q = torch.tensor([(n + c) * h for n in range(steps) for c in nodes], dtype=torch.float64)
    warp, slope = time_warp(q, power)
    times = (t_start + (t_end - t_start) * warp).to(dtype=state.dtype, device=state.device)
    rates = ((t_end - t_start) * slope).tolist()
    edges = time_warp(torch.arange(steps + 1, dtype=torch.float64) * h, power)[0]
    widths = (abs(t_end - t_start) * edges.diff()).repeat_interleave(len(nodes)).to(times)
    stage_times = iter(prepare(times, widths) if prepare else times.unbind())
    stage_rates = iter(rates)
    for _ in range(steps):
        ks = [next(stage_rates) * fun(next(stage_times), state)]
        for row in a:
            stage = state + h * sum(coef * k for coef, k in zip(row, ks) if coef)
            ks.append(next(stage_rates) * fun(next(stage_times), stage))
        state = state + h * sum(coef * k for coef, k in zip(b, ks) if coef)
    return state


def time_warp(q: torch.Tensor, power: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(warp(q), warp'(q)) on [0, 1] with warp(0) = 0, warp(1) = 1: warp = q^p for p >= 1 (steps dense at the start),
    1 - (1 - q)^|p| for p <= -1 (dense at the end); p = 1 (or -1) is the identity. Integer powers only: a fractional
    one makes the warped field non-smooth at the dense end and RK4 drops to order |p| there."""
    if abs(power) < 1 or power != int(power):
        raise ValueError(f"the time warp's power must be a whole number, at least 1 in size, got {power}")
    if power > 0:
        return q.pow(power), power * q.pow(power - 1)
    return 1 - (1 - q).pow(-power), -power * (1 - q).pow(-power - 1)


FILTER_SAMPLES = 16
"""Midpoints per step at which filtered_modulations averages the time conditioning (8 and 32 gave the same errors
within 0.01 nats on the shipped RFM model)."""


def filtered_modulations(network: GeoDenoiser, schedule: Schedule, times: torch.Tensor, widths: torch.Tensor,
                         emb: torch.Tensor, guidance: float) -> Iterator[Modulations]:
    """Chunks (as geodemo.sampling.step_modulations, (K, rows, 1, dim) tensors) of the modulations averaged over
    [t - w/2, t + w/2] (clipped to [0, 1]) for times t and widths w (K,): m_w(t) = (1/S) sum_j m(gamma(t + w ((j + 1/2)
    / S - 1/2))), S = FILTER_SAMPLES (GeoDenoiser.averaged_modulations). The solve of dy/dt = f(y, m_w(t)) tends to
    the exact one as the steps (w) shrink, and at a few dozen steps no longer aliases a conditioning that oscillates
    faster than the steps."""
    offsets = (torch.arange(FILTER_SAMPLES, dtype=torch.float64, device=times.device) + 0.5) / FILTER_SAMPLES - 0.5
    conds = guidance_batch(emb, guidance)
    per_time = FILTER_SAMPLES * conds.shape[0] * network.config.dim * 4 * 4  # cond, SiLU and the time embedder's
    for part, part_widths in zip(*(x.split(max(1, MODULATION_BYTES // per_time)) for x in (times, widths))):
        sub = (part.double().unsqueeze(1) + part_widths.double().unsqueeze(1) * offsets).clamp(0.0, 1.0)
        gamma = schedule.gamma(sub.to(conds.dtype)).expand(conds.shape[0], -1, -1)
        yield network.averaged_modulations(gamma, conds).map(lambda m: m.transpose(0, 1).unsqueeze(2))


class FieldTerms(NamedTuple):
    """What dy/dt takes at one time t besides the points: gamma(t), gamma'(t) and, for a GeoDenoiser, the adaLN
    modulations of (gamma(t), guidance_batch(emb)), (rows, 1, dim) tensors, and for its TangentPointPass the
    folded first block [A; e] (rows, 5, hidden)."""

    t: torch.Tensor
    gamma: torch.Tensor
    dgamma: torch.Tensor
    mods: Modulations | None
    first: torch.Tensor | None


class ODEField:
    """dy/dt = gamma'(t) v(y, gamma(t)); with on_sphere, v is taken at y/|y| and projected on the tangent plane.

    Calling it gives dy/dt; `with_divergence` also gives its exact divergence. For a GeoDenoiser that is one
    hand-written forward-mode pass carrying the tangent directions beside the activations (3 in R^3; 2 on the
    sphere, where the field depends on y/|y| only, so the radial direction adds 0 to the trace), with the
    conditioning computed once per image and time (`terms`: a fixed-step solve's stage times all at once): on a CPU
    with "native" or "bf16" products geodemo.tangent_pass's (first block folded through the input layer, primal and
    tangents stacked), else GeoDenoiser.jvp_modulated; any other network goes through field_and_divergence.
    precision="bf16x3" runs the blocks' matmuls as three bfloat16 products (geodemo.network.hidden_product);
    compile=True hands jvp_modulated to torch.compile (fused elementwise work; one compilation per input shape).
    Relies on process.velocity(y, pred, gamma) being linear in (y, pred), true of all three processes.
    """

    def __init__(self, network: GeoDenoiser, process: Process, schedule: Schedule, emb: torch.Tensor,
                 guidance: float, on_sphere: bool, precision: Precision = "native", compile: bool = False,
                 time_filter: bool = True):
        self.network, self.process, self.schedule = network, process, schedule
        self.time_filter = time_filter and process.likelihood_time_filter
        self.emb, self.guidance, self.on_sphere = emb, guidance, on_sphere
        self.tangent_pass: TangentPointPass | None = None
        if not isinstance(network, GeoDenoiser):
            if precision != "native" or compile:
                raise ValueError("precision and compile apply to a GeoDenoiser only")
        elif precision in ("native", "bf16") and not compile and network.initial_mapper.weight.device.type == "cpu":
            self.tangent_pass = TangentPointPass(network, precision)
        else:
            jvp = compiled_jvp() if compile else GeoDenoiser.jvp_modulated
            self._jvp = functools.partial(jvp, network, weights=network.hidden_weights(precision), precision=precision)

    def __call__(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        gamma, dgamma = self.schedule.gamma(t), self.schedule.dgamma(t)
        point = project(y) if self.on_sphere else y
        pred = guided_prediction(self.network, point, gamma.expand(y.shape[0]), self.emb, self.guidance)
        v = self.process.velocity(point, pred, gamma)
        return dgamma * (project_tangent(point, v) if self.on_sphere else v)

    def terms(self, times: torch.Tensor, widths: torch.Tensor | None = None) -> list[FieldTerms]:
        """FieldTerms at each of the 0-d times in times (K,), the modulations of all K in batched matmuls
        (geodemo.sampling.step_modulations), and so the tangent pass's folded first blocks. widths (K,): the steps'
        widths in t, over which a process with likelihood_time_filter averages the modulations
        (filtered_modulations) unless the field was made with time_filter=False."""
        gamma, dgamma = self.schedule.gamma(times), self.schedule.dgamma(times)
        mods, first = [None] * len(times), [None] * len(times)
        if isinstance(self.network, GeoDenoiser):
            chunks = list(filtered_modulations(self.network, self.schedule, times, widths, self.emb, self.guidance)
                          if widths is not None and self.time_filter else
                          step_modulations(self.network, gamma, self.emb, self.guidance))
            mods = [mods for chunk in chunks for mods in chunk.unbind()]
            if self.tangent_pass:
                first = [terms for chunk in chunks for terms in self.tangent_pass.first_terms(chunk).unbind()]
        return [FieldTerms(*at) for at in zip(times.unbind(), gamma.unbind(), dgamma.unbind(), mods, first)]

    def with_divergence(self, terms: FieldTerms, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(dy/dt (B, M, 3), div_y dy/dt (B, M)) at y (B, M, 3) and the time of `terms` (ODEField.terms).

        On the sphere, with p = y/|y|, tangent basis u_i and G the network's field at p:
        div [G - (p.G) p] = sum_i u_i . dG/du_i - 2 (p.G) / |y| (u_i . p = 0, u_i . dp/du_i = 1/|y|)."""
        if not isinstance(self.network, GeoDenoiser):
            return field_and_divergence(lambda pts: self(terms.t, pts), y)
        if self.on_sphere:
            norm = y.norm(dim=-1, keepdim=True)
            point = y / norm
            directions = tangent_basis(point)
            tangents = directions / norm  # d(y/|y|) along a direction u perpendicular to y
        else:
            point = y
            directions = torch.eye(3, dtype=y.dtype, device=y.device).view(3, 1, 1, 3).expand(3, *y.shape)
            tangents = directions
        pred, dpred = self._guided_jvp(point, tangents, terms)
        v = self.process.velocity(point, pred, terms.gamma)
        div = (directions * self.process.velocity(tangents, dpred, terms.gamma)).sum(-1).sum(0)
        if self.on_sphere:
            pv = (point * v).sum(-1, keepdim=True)
            v = v - pv * point
            div = div - 2 * (pv / norm).squeeze(-1)
        return terms.dgamma * v, terms.dgamma * div

    def _guided_jvp(self, point: torch.Tensor, tangents: torch.Tensor, terms: FieldTerms
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Guided network output at point (B, M, 3) and its derivatives along tangents (T, B, M, 3)."""
        w = self.guidance
        inputs = (repeat_for_guidance(point, w), repeat_for_guidance(tangents, w, dim=1), terms.mods)
        out, dout = self.tangent_pass(*inputs, terms.first) if self.tangent_pass else self._jvp(*inputs)
        return guided_output(out, w), guided_output(dout, w, dim=1)


@torch.no_grad()
def r3_log_density(network: GeoDenoiser, process: AmbientProcess, schedule: Schedule, emb: torch.Tensor,
                   y: torch.Tensor, t_start: float, guidance: float = 0.0, method: str = "dopri5", atol: float = 1e-5,
                   rtol: float = 1e-5, steps: int | None = None, precision: Precision = "native",
                   compile: bool = False) -> torch.Tensor:
    """log p_t(y) in R^3 (B, M) of an R^3 process at t = t_start; at the noise end the base is the Gaussian
    N(0, v I) with the marginal's variance v (AmbientProcess.base_variance), N(0, I) up to O(gamma)."""
    field = ODEField(network, process, schedule, emb.to(y.dtype), guidance, False, precision, compile)
    t_end = t_at_gamma(schedule, process.ode_end_gamma) if process.ode_end_gamma > 0 else 1.0
    var = process.base_variance(float(schedule.gamma(torch.tensor(t_end, dtype=torch.float64))))
    y1, int_div = _solve(field, y, t_start, t_end, method, atol, rtol, steps)
    return -0.5 * y1.pow(2).sum(-1) / var - 1.5 * math.log(2 * math.pi * var) + int_div


def radial_scales(process: AmbientProcess, schedule: Schedule, radial_sigma: float) -> tuple[float, float, float]:
    """(t_start, a, s): the time at which the noise scale s of y = a x0 + s n equals radial_sigma, and (a, s) there."""
    t_start = t_at_gamma(schedule, process.gamma_at_noise(radial_sigma))
    return t_start, *process.signal_and_noise(float(schedule.gamma(torch.tensor(t_start, dtype=torch.float64))))


def radial_quadrature(process: AmbientProcess, schedule: Schedule, radial_sigma: float, nodes: int, reach: float = 25.0,
                      rule: RadialRule = "sinh") -> tuple[float, np.ndarray, np.ndarray]:
    """(t_start, radii, log weights) for int f(r) dr ~ sum_k w_k f(r_k) at the noise level where the noise
    scale s equals radial_sigma (y = a x0 + s n).
    "sinh": Gauss-Legendre in u with r = a + s sinh(u), dr = s cosh(u) du, over r in [a - reach s, a + reach s] (at
    least MIN_RADIUS): dense where the radial mass is, thin in the tails; right for any radial profile.
    "hermite": Gauss-Hermite nodes r = a + s x with weights s w exp(x^2 / 2): exact for a Gaussian N(a, s^2) profile
    times a polynomial of degree < 2 nodes, i.e. for the profile of the data on the sphere seen at noise s; a
    profile much wider than s (far tails of a trained model) is underestimated."""
    t_start, a, s = radial_scales(process, schedule, radial_sigma)
    if rule == "hermite":
        x, w = np.polynomial.hermite_e.hermegauss(nodes)
        radii = a + s * x
        if radii.min() < MIN_RADIUS:
            raise ValueError(f"{nodes} Gauss-Hermite nodes reach below radius {MIN_RADIUS}: use the 'sinh' rule")
        return t_start, radii, np.log(s * w) + x**2 / 2
    if rule != "sinh":
        raise ValueError(f"radial_rule must be 'sinh' or 'hermite' here ('adaptive' takes adaptive_hermite), "
                         f"got {rule!r}")
    x, w = np.polynomial.legendre.leggauss(nodes)
    lo, hi = math.asinh(max(-reach, (MIN_RADIUS - a) / s)), math.asinh(reach)
    u = lo + (x + 1) * (hi - lo) / 2
    radii = a + s * np.sinh(u)
    log_w = np.log(w * (hi - lo) / 2 * s * np.cosh(u))
    return t_start, radii, log_w


def profile_moments(terms: torch.Tensor, radii: torch.Tensor) -> torch.Tensor:
    """(..., 2): each ray's mean radius c and spread h under its radial profile, from a quadrature's terms
    log(w_k p(r_k u) r_k^2) (..., K) at radii (..., K): q = softmax(terms), c = sum_k q_k r_k,
    h^2 = sum_k q_k (r_k - c)^2."""
    weights = torch.softmax(terms, dim=-1)
    center = (weights * radii).sum(-1)
    spread = (weights * (radii - center.unsqueeze(-1)).pow(2)).sum(-1).sqrt()
    return torch.stack((center, spread), dim=-1)


def adaptive_hermite(moments: torch.Tensor, nodes: int, noise_scale: float, signal: float
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(radii, log weights), each (..., nodes), of Gauss-Hermite around each ray's moments (..., 2) (profile_moments):
    r = c + h x_k, w = h w_k exp(x_k^2 / 2), exact for a N(c, h^2) profile times a polynomial of degree < 2 nodes.
    c is kept within 4 noise scales s of the data radius a and h within [s / 4, 4 s] (a degenerate pilot)."""
    x, w = (torch.as_tensor(v, dtype=moments.dtype, device=moments.device)
            for v in np.polynomial.hermite_e.hermegauss(nodes))
    center = moments[..., :1].clamp(signal - 4 * noise_scale, signal + 4 * noise_scale)
    spread = moments[..., 1:].nan_to_num(noise_scale).clamp(noise_scale / 4, 4 * noise_scale)
    radii = center + spread * x
    if radii.min() < MIN_RADIUS:
        raise ValueError(f"{nodes} adaptive Gauss-Hermite nodes reach below radius {MIN_RADIUS}: use the 'sinh' rule")
    return radii, spread.log() + (w.log() + x**2 / 2)


@torch.no_grad()
def log_density(network: GeoDenoiser, process: Process, schedule: Schedule, emb: torch.Tensor, xyz: torch.Tensor,
                guidance: float = 0.0, geometry: DensityGeometry = "riemannian", accuracy: Accuracy = "default",
                radial_sigma: float = 0.02, t_start: float = 0.0, known_max: torch.Tensor | None = None,
                report: CheckReport | None = None, **options) -> torch.Tensor:
    """log p(xyz | emb) in nats per steradian, shape (B, M). emb (B, C), xyz (B, M, 3) unit vectors.

    geometry="riemannian" (RFM): field v(y/|y|) projected on the tangent plane, divergence on S^2, base 1/(4 pi).
    geometry="ambient" (RFM, the authors' convention): raw field and R^3 divergence; not normalised on S^2.
    R^3 processes: the density of the directions y/|y| at noise level sigma = radial_sigma (y = a x0 + sigma n),
    p_S2(u) = int p_R3(r u) r^2 dr, by a radial rule around r = a (radial_quadrature) or, "adaptive", around each
    ray's mean radius from a pilot solve (adaptive_hermite).
    accuracy: the preset of the solve for this device (accuracy_options); options override any ODEOptions field:
    method (a torchdiffeq solver, or "euler" / "midpoint" / "rk4" with `steps` fixed steps; adaptive solvers keep
    every point's error estimate within atol + rtol |state|, per_point_error_norm), radial_nodes / radial_rule,
    precision / compile (the network pass's speed options, see ODEField) and chunk_size (points per solve).
    t_start (RFM): the density of the marginal p_t at t = t_start in [0, 1), the ODE running from t_start to the
    noise end t = 1 (0: the model's density); the R^3 processes set their time by radial_sigma instead.
    known_max (B,): the rows' highest log p known from earlier solves (a map's other cells, the samples): the
    fixed-step presets' screening and check measure "near the maximum" from it when it exceeds these points' own.
    report: a CheckReport that the step-doubling check adds its outcome to (fixed-step solves with check_points).
    """
    unknown = set(options) - set(asdict(ODEOptions()))
    if unknown:
        raise TypeError(f"unknown log_density options {sorted(unknown)}")
    opts = accuracy_options(accuracy, xyz.device, radial=not process.on_sphere)
    if not isinstance(network, GeoDenoiser):  # the presets' speed options are a GeoDenoiser's; explicit ones are checked
        opts = replace(opts, precision="native", compile=False)
    opts = replace(opts, **options)
    if not (0 <= t_start < 1 and (process.on_sphere or t_start == 0)):
        raise ValueError(f"t_start must be in [0, 1) for the Riemannian flow and 0 otherwise, got {t_start}")
    if geometry not in ("riemannian", "ambient"):
        raise ValueError(f"geometry must be 'riemannian' or 'ambient', got {geometry!r}")
    if geometry == "ambient" and not process.on_sphere:
        raise ValueError("the 'ambient' geometry exists only for the Riemannian flow on S^2")
    if not torch.isfinite(xyz).all():
        raise ValueError("coordinates contain NaN or infinite values")
    emb = emb.to(xyz.dtype)

    def solve(points: torch.Tensor, settings: ODEOptions, moments: torch.Tensor | None = None) -> torch.Tensor:
        """log p at points (B, M, 3); the "adaptive" radial rule takes the rays' profile moments (B, M, 2)."""
        if process.on_sphere:
            field = ODEField(network, process, schedule, emb, guidance, geometry == "riemannian", settings.precision,
                             settings.compile, settings.time_filter)

            def sphere_log_density(pts: torch.Tensor) -> torch.Tensor:
                _, int_div = _solve(field, pts, t_start, 1.0, settings.method, settings.atol, settings.rtol,
                                    settings.steps)
                return int_div - LOG_SPHERE_AREA

            return _chunked(sphere_log_density, settings.chunk_size, points)
        return torch.logsumexp(radial_terms(points, settings, moments)[0], dim=-1)

    def radial_terms(points: torch.Tensor, settings: ODEOptions, moments: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """(terms log(w_k p_R3(r_k u) r_k^2), radii r_k), each (B, M, K), of an R^3 process's radial rule."""
        if settings.radial_rule == "adaptive":
            if moments is None:
                raise ValueError("the 'adaptive' radial rule needs the rays' profile moments of a pilot solve")
            start, a, s = radial_scales(process, schedule, radial_sigma)
            radii, log_w = adaptive_hermite(moments.to(points.dtype), settings.radial_nodes, s, a)
        else:
            start, radii_np, log_w_np = radial_quadrature(process, schedule, radial_sigma, settings.radial_nodes,
                                                          rule=settings.radial_rule)
            radii, log_w = (torch.as_tensor(v, dtype=points.dtype, device=points.device).expand(*points.shape[:2], -1)
                            for v in (radii_np, log_w_np))
        k = radii.shape[-1]

        def ray_terms(pts: torch.Tensor, rad: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
            rays = (pts.unsqueeze(2) * rad.unsqueeze(-1)).reshape(pts.shape[0], -1, 3)
            log_r3 = r3_log_density(network, process, schedule, emb, rays, start, guidance, settings.method,
                                    settings.atol, settings.rtol, settings.steps, settings.precision, settings.compile)
            return log_r3.reshape(pts.shape[0], -1, k) + 2 * rad.log() + weights

        return _chunked(ray_terms, max(1, settings.chunk_size // k), points, radii, log_w), radii

    moments = None
    if opts.radial_rule == "adaptive" and not process.on_sphere:
        pilot = replace(opts, method="rk4", steps=opts.screen_steps or PILOT_STEPS, radial_rule="hermite",
                        radial_nodes=PILOT_NODES)
        terms, radii = radial_terms(xyz, pilot)
        moments = profile_moments(terms, radii)
    if opts.method not in RUNGE_KUTTA:
        return solve(xyz, opts, moments)
    if opts.screen_steps and moments is not None:  # the pilot's quadrature is the screening
        logp = torch.logsumexp(terms, dim=-1)
    else:
        logp = solve(xyz, replace(opts, steps=opts.screen_steps) if opts.screen_steps else opts, moments)
    solved = torch.full(logp.shape[1:], not opts.screen_steps, dtype=torch.bool, device=logp.device)
    while not solved.all():  # the screened points near the highest solved log p, until none is left near it
        near = ~solved & relevant_columns(logp, known_max, among=solved if solved.any() else None)
        if not near.any():
            break
        logp[:, near] = solve(xyz[:, near], opts, columns(moments, near))
        solved |= near
    first, failed_gap = opts, None

    def record(gap: float, settled: bool) -> None:
        if report is not None:
            report.record(gap, settled, opts.steps or 0, 0 if process.on_sphere else opts.radial_nodes)

    while opts.check_points:  # the check points solved finer (doublings) must agree with their current values
        index = check_indices(logp, opts.check_points, known_max)
        candidates = doublings(opts, first, radial=not process.on_sphere)
        if index.shape[1] == 0 or not candidates:
            if failed_gap is not None:  # the bound stopped the doubling after a failed check
                record(failed_gap, False)
            break
        points = xyz.gather(1, index.unsqueeze(-1).expand(-1, -1, 3))
        point_moments = None if moments is None else moments.gather(1, index.unsqueeze(-1).expand(-1, -1, 2))
        finest = replace(opts, **{k: v for change in candidates for k, v in change.items()})
        finest_logp = solve(points, finest, point_moments)
        gap = float((finest_logp - logp.gather(1, index)).abs().max())
        if gap <= opts.check_tolerance:
            record(gap, True)
            break
        failed_gap = gap
        opts = cheapest_agreeing(functools.partial(solve, moments=point_moments), points, opts, candidates, finest,
                                 finest_logp) if len(candidates) > 1 else finest
        near = relevant_columns(logp, known_max)
        logp[:, near] = solve(xyz[:, near], opts, columns(moments, near))
    return logp


def doublings(opts: ODEOptions, first: ODEOptions, radial: bool) -> list[dict]:
    """The refinements a fixed-step solve's check may take, one axis doubled each: the steps (up to first.max_steps)
    and, for the R^3 processes (radial), the radial nodes (up to the same factor over first's)."""
    steps = opts.steps or 64
    candidates = [{"steps": 2 * steps}] if 2 * steps <= first.max_steps else []
    if radial and 2 * opts.radial_nodes * (first.steps or 64) <= first.radial_nodes * first.max_steps:
        candidates.append({"radial_nodes": 2 * opts.radial_nodes})
    return candidates


def cheapest_agreeing(solve: Callable[[torch.Tensor, ODEOptions], torch.Tensor], points: torch.Tensor,
                      opts: ODEOptions, candidates: list[dict], finest: ODEOptions, finest_logp: torch.Tensor
                      ) -> ODEOptions:
    """After a failed check with every axis doubled (`finest`, the check points' values `finest_logp`): one axis
    doubled alone is enough if its values agree with finest_logp within check_tolerance (the closer of the two);
    else `finest`. On the shipped R^3 models the radial rule, not the steps, holds most of the error
    (benchmarks/README.md)."""
    singles = [replace(opts, **change) for change in candidates]
    gaps = [float((solve(points, single) - finest_logp).abs().max()) for single in singles]
    best = min(range(len(singles)), key=gaps.__getitem__)
    return singles[best] if gaps[best] <= opts.check_tolerance else finest


RELEVANT_NATS = 10.0
"""The accuracy claims of the fixed-step presets hold where log p is within this many nats of its maximum."""
RELEVANCE_MARGIN = 5.0
"""Step doubling re-solves the points within RELEVANT_NATS + this margin of the maximum by the coarser solve (its
error far from the mass overestimates log p, measured on the shipped models; never by 5 nats near the mass)."""


def row_ceiling(logp: torch.Tensor, known_max: torch.Tensor | None, among: torch.Tensor | None = None
                ) -> torch.Tensor:
    """(B, 1): each row's maximum of logp (B, M) over the columns `among` (M,) bool (default: all), or the row's
    known maximum (B,) from earlier solves if higher."""
    top = (logp if among is None else logp[:, among]).max(dim=1, keepdim=True).values
    return top if known_max is None else torch.maximum(top, known_max.to(logp).view(-1, 1))


def relevant_columns(logp: torch.Tensor, known_max: torch.Tensor | None = None, among: torch.Tensor | None = None
                     ) -> torch.Tensor:
    """(M,) bool: points within RELEVANT_NATS + RELEVANCE_MARGIN of their row's maximum (row_ceiling, over `among`)
    in some row of logp (B, M). A screened value over-estimates far from the mass, so a screened point below the
    highest fully solved one by more than that is far below it."""
    return (logp >= row_ceiling(logp, known_max, among) - RELEVANT_NATS - RELEVANCE_MARGIN).any(dim=0)


def check_indices(logp: torch.Tensor, count: int, known_max: torch.Tensor | None = None) -> torch.Tensor:
    """(B, <= count) indices of the points a step-doubling check re-solves, per row of logp (B, M): among the points
    within RELEVANT_NATS of the row's maximum (row_ceiling), half the count the highest, the rest spread evenly (in
    index order); none when a row has no such point (its accuracy claim covers none of them)."""
    ceiling = row_ceiling(logp, known_max).squeeze(1)
    rows = []
    for row, top_value in zip(logp, ceiling):
        relevant = torch.nonzero(row >= top_value - RELEVANT_NATS).squeeze(1)
        top = min(count // 2 or 1, len(relevant))
        spread = relevant[torch.linspace(0, len(relevant) - 1, count - top, device=row.device).round().long()] \
            if len(relevant) else relevant
        highest = relevant[torch.topk(row[relevant], top).indices]
        rows.append(torch.cat((highest, spread)).unique()[:count])
    size = min(len(r) for r in rows)
    return torch.stack([r[:size] for r in rows])


def _chunked(fn: Callable[..., torch.Tensor], chunk_size: int, *tensors: torch.Tensor) -> torch.Tensor:
    """Apply fn to chunks of at most chunk_size points along dim 1 of the tensors (each (B, M, ...)) and concatenate."""
    return torch.cat([fn(*parts) for parts in zip(*(t.split(chunk_size, dim=1) for t in tensors))], dim=1)


def columns(values: torch.Tensor | None, mask: torch.Tensor) -> torch.Tensor | None:
    """values[:, mask] for a (B, M, ...) tensor and an (M,) bool mask; None stays None."""
    return None if values is None else values[:, mask]
