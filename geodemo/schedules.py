"""Noise schedules gamma(t): gamma(0) = 1 is data, gamma(1) ~ 0 is noise (PLONK's convention)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class SigmoidSchedule:
    """gamma(t) = (sig(e/tau) - sig((t (e - s) + s)/tau)) / (sig(e/tau) - sig(s/tau)), clamped to [clip_min, 1]."""

    start: float = -7.0
    end: float = 3.0
    tau: float = 1.0
    clip_min: float = 1e-9
    kind: str = "sigmoid"

    def _bounds(self) -> tuple[float, float]:
        sig = lambda v: 1.0 / (1.0 + math.exp(-v))  # noqa: E731
        return sig(self.start / self.tau), sig(self.end / self.tau)

    def gamma(self, t: torch.Tensor) -> torch.Tensor:
        v_start, v_end = self._bounds()
        out = (v_end - torch.sigmoid((t * (self.end - self.start) + self.start) / self.tau)) / (v_end - v_start)
        return out.clamp(self.clip_min, 1.0)

    def dgamma(self, t: torch.Tensor) -> torch.Tensor:
        """gamma'(t) = -(e - s) sig(u)(1 - sig(u)) / (tau (sig(e/tau) - sig(s/tau))), u = (t (e - s) + s)/tau."""
        v_start, v_end = self._bounds()
        s = torch.sigmoid((t * (self.end - self.start) + self.start) / self.tau)
        return -(self.end - self.start) * s * (1 - s) / (self.tau * (v_end - v_start))


@dataclass(frozen=True)
class CosineSchedule:
    """gamma(t) = (cos((t (e - s) + s) pi/2)^(2 tau) - cos(e pi/2)^(2 tau)) / (cos(s pi/2)^(2 tau) - cos(e pi/2)^(2 tau))."""

    start: float = 1.0
    end: float = 0.0
    tau: float = 1.0
    clip_min: float = 1e-9
    kind: str = "cosine"

    def _bounds(self) -> tuple[float, float]:
        f = lambda v: math.cos(v * math.pi / 2) ** (2 * self.tau)  # noqa: E731
        return f(self.start), f(self.end)

    def gamma(self, t: torch.Tensor) -> torch.Tensor:
        v_start, v_end = self._bounds()
        c = torch.cos((t * (self.end - self.start) + self.start) * math.pi / 2).clamp_min(0)
        return ((c ** (2 * self.tau) - v_end) / (v_start - v_end)).clamp(self.clip_min, 1.0)

    def dgamma(self, t: torch.Tensor) -> torch.Tensor:
        """gamma'(t) = -2 tau cos(a)^(2 tau - 1) sin(a) (e - s) pi/2 / (v_s - v_e), a = (t (e - s) + s) pi/2."""
        v_start, v_end = self._bounds()
        a = (t * (self.end - self.start) + self.start) * math.pi / 2
        c = torch.cos(a).clamp_min(0)
        return -2 * self.tau * c ** (2 * self.tau - 1) * torch.sin(a) * (self.end - self.start) * math.pi / 2 / (v_start - v_end)


@dataclass(frozen=True)
class LinearSchedule:
    """gamma(t) = 1 - t, clamped to [clip_min, 1]."""

    clip_min: float = 1e-9
    kind: str = "linear"

    def gamma(self, t: torch.Tensor) -> torch.Tensor:
        return (1 - t).clamp(self.clip_min, 1.0)

    def dgamma(self, t: torch.Tensor) -> torch.Tensor:
        return torch.full_like(t, -1.0)


Schedule = SigmoidSchedule | CosineSchedule | LinearSchedule
_KINDS = {"sigmoid": SigmoidSchedule, "cosine": CosineSchedule, "linear": LinearSchedule}


def schedule_from_config(config: dict | None) -> Schedule:
    """Build a schedule from {"kind": ..., other fields}; None gives PLONK's sigmoid(-7, 3, tau 1)."""
    config = dict(config or {"kind": "sigmoid"})
    kind = config.pop("kind", "sigmoid")
    if kind not in _KINDS:
        raise ValueError(f"unknown schedule {kind!r}; choose one of {sorted(_KINDS)}")
    return _KINDS[kind](**config)


def schedule_to_config(schedule: Schedule) -> dict:
    return asdict(schedule)
