"""Pacing functions: how much of the difficulty range is open at a point of training.

A pacing function maps training progress ``t`` in [0, 1] to a competence ``c`` in [0, 1]: the
fraction of examples (ordered easy to hard) the sampler may draw from at that point
(Platanios et al. 2019). Every built-in one starts at ``c0`` and reaches 1 once ``t`` reaches
``duration``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import repeat

import numpy as np

PacingFn = Callable[[float], float]

PACING_NAMES = ("linear", "root", "exponential", "step", "anti", "none")


def _check_fraction(name: str, value: float, *, open_low: bool = False) -> None:
    low_ok = value > 0 if open_low else value >= 0
    if not (low_ok and value <= 1) or math.isnan(value):
        interval = "(0, 1]" if open_low else "[0, 1]"
        raise ValueError(f"`{name}` must be in {interval}, got {value}.")


@dataclass(frozen=True)
class Pacing:
    """A named pacing schedule, callable as ``pacing(t) -> competence``.

    Args:
        name: one of ``linear``, ``root``, ``exponential``, ``step``, ``anti`` (linear pacing over
            hard-to-easy order: the sampler reverses the difficulty), ``none`` (full competence from
            the start, i.e. uniform random order).
        c0: competence at ``t = 0``.
        duration: fraction of training after which competence is 1.
        degree: the ``p`` of root pacing, ``c = (c0^p + (1 - c0^p) t / duration)^(1/p)``.
        boundaries: for ``step``: progress points (increasing, in (0, 1)) where competence jumps.
        levels: for ``step``: competence before the first boundary, between boundaries and after
            the last one (``len(boundaries) + 1`` values, non-decreasing, last one 1). Defaults to
            evenly spaced levels ``1/(n+1), 2/(n+1), ..., 1``.
    """

    name: str = "linear"
    c0: float = 0.01
    duration: float = 1.0
    degree: float = 2.0
    boundaries: Sequence[float] = field(default_factory=tuple)
    levels: Sequence[float] | None = None

    def __post_init__(self):
        if self.name not in PACING_NAMES:
            raise ValueError(
                f"Unknown pacing {self.name!r}. Choose one of {', '.join(PACING_NAMES)}, or pass a callable "
                "mapping training progress in [0, 1] to competence in [0, 1]."
            )
        _check_fraction("c0", self.c0, open_low=True)
        _check_fraction("duration", self.duration, open_low=True)
        if self.name == "root" and not self.degree > 0:
            raise ValueError(f"Root pacing needs `degree` > 0, got {self.degree}.")
        if self.name == "step":
            object.__setattr__(self, "boundaries", tuple(float(b) for b in self.boundaries))
            b = self.boundaries
            if not b:
                raise ValueError("Step pacing needs at least one boundary, e.g. `boundaries=[0.3, 0.6]`.")
            if any(not 0 < x < 1 for x in b) or any(x >= y for x, y in zip(b, b[1:])):
                raise ValueError(f"Step pacing boundaries must be strictly increasing in (0, 1), got {list(b)}.")
            levels = self.levels
            if levels is None:
                levels = [(i + 1) / (len(b) + 1) for i in range(len(b) + 1)]
            levels = tuple(float(x) for x in levels)
            if len(levels) != len(b) + 1:
                raise ValueError(
                    f"Step pacing needs one more level than boundaries: got {len(b)} boundaries and "
                    f"{len(levels)} levels."
                )
            if any(not 0 < x <= 1 for x in levels) or any(x > y for x, y in zip(levels, levels[1:])):
                raise ValueError(f"Step pacing levels must be non-decreasing in (0, 1], got {list(levels)}.")
            if levels[-1] != 1.0:
                raise ValueError(f"The last step pacing level must be 1.0 (all data open), got {levels[-1]}.")
            object.__setattr__(self, "levels", levels)
        elif self.boundaries or self.levels is not None:
            raise ValueError(f"`boundaries` and `levels` only apply to step pacing, not {self.name!r}.")

    @property
    def reverse(self) -> bool:
        """Whether the sampler should order examples hard to easy (anti-curriculum)."""
        return self.name == "anti"

    def __call__(self, t: float) -> float:
        if self.name == "none":
            return 1.0
        if self.name == "step":
            return self.levels[sum(t >= b for b in self.boundaries)]
        x = min(max(t, 0.0) / self.duration, 1.0)
        if self.name in ("linear", "anti"):
            c = self.c0 + (1.0 - self.c0) * x
        elif self.name == "root":
            p = self.degree
            c = (self.c0**p + (1.0 - self.c0**p) * x) ** (1.0 / p)
        else:  # exponential
            c = self.c0 ** (1.0 - x)
        return min(c, 1.0)


def competence_at(pacing: PacingFn, progress: np.ndarray) -> np.ndarray:
    """``pacing`` at every point of ``progress`` (a float64 array in [0, 1]), bit-identical to calling it pointwise.

    Built-in schedules are evaluated with array arithmetic; their powers go through Python's ``pow`` (the C library's,
    as a per-point call does) rather than ``np.power``, whose SIMD kernels may round the last bit differently. Any
    other callable is called once per point.
    """
    progress = np.asarray(progress, dtype=np.float64)
    if not isinstance(pacing, Pacing):
        return np.fromiter((float(pacing(t)) for t in progress.tolist()), dtype=np.float64, count=progress.size)
    if pacing.name == "none":
        return np.ones_like(progress)
    if pacing.name == "step":
        return np.asarray(pacing.levels, dtype=np.float64)[np.searchsorted(pacing.boundaries, progress, "right")]
    x = np.minimum(np.maximum(progress, 0.0) / pacing.duration, 1.0)
    if pacing.name in ("linear", "anti"):
        c = pacing.c0 + (1.0 - pacing.c0) * x
    elif pacing.name == "root":
        p = pacing.degree
        base = (pacing.c0**p + (1.0 - pacing.c0**p) * x).tolist()
        c = np.fromiter(map(pow, base, repeat(1.0 / p)), dtype=np.float64, count=x.size)
    else:  # exponential
        c = np.fromiter(map(pow, repeat(pacing.c0), (1.0 - x).tolist()), dtype=np.float64, count=x.size)
    return np.minimum(c, 1.0)


def make_pacing(pacing: str | PacingFn | Pacing, **kwargs) -> PacingFn:
    """Return a pacing callable from a name (with :class:`Pacing` keyword arguments) or a callable."""
    if isinstance(pacing, str):
        return Pacing(pacing, **kwargs)
    if callable(pacing):
        return pacing
    raise TypeError(f"`pacing` must be a pacing name or a callable, got {type(pacing).__name__}.")
