"""What "better" means: one mapping from a campaign objective to a maximisation score.

Torch-free on purpose: the agent, the report, the benchmarks and the runner all score
values through ``Goal`` and ``pareto_front``, and none of them should need torch for it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from .records import InputError

__all__ = ["Constraint", "Goal", "pareto_front"]


@dataclass(frozen=True)
class Goal:
    """What "better" means for one scalar property.

    Attributes:
        kind: ``max``, ``min``, or ``window`` (the target should lie in ``[lo, hi]``).
        lo: lower edge of the window (``-inf`` allowed); window goals only.
        hi: upper edge of the window (``inf`` allowed); window goals only.
    """

    kind: Literal["max", "min", "window"]
    lo: float | None = None
    hi: float | None = None

    def __post_init__(self):
        if self.kind not in ("max", "min", "window"):
            raise ValueError(f"goal kind must be max, min or window, not {self.kind!r}")
        if self.kind == "window":
            if self.lo is None or self.hi is None:
                raise ValueError("a window goal needs lo and hi")
            if math.isnan(self.lo) or math.isnan(self.hi) or self.lo > self.hi:
                raise ValueError(f"window needs lo <= hi, got [{self.lo}, {self.hi}]")
            if math.isinf(self.lo) and math.isinf(self.hi):
                raise ValueError("a window needs at least one finite edge")

    @classmethod
    def parse(cls, text: str) -> Goal:
        """Parse ``max``/``maximize``, ``min``/``minimize`` or ``window:LO:HI`` (``inf``/``-inf`` allowed as edges).

        Raises:
            InputError: the text is none of these.
        """
        t = str(text).strip().lower()
        if t in ("max", "min", "maximize", "minimize"):
            return cls(t[:3])
        parts = t.split(":")
        if len(parts) == 3 and parts[0] == "window":
            try:
                return cls("window", float(parts[1]), float(parts[2]))
            except ValueError as exc:
                raise InputError(f"bad window goal {text!r}: {exc}", where="goal") from None
        raise InputError(f"unparseable goal {text!r}; expected max, min, maximize, minimize or window:LO:HI",
                         where="goal")

    @classmethod
    def from_objective(cls, goal: str, window=None) -> Goal:
        """The goal of a campaign objective: ``maximize``/``max``, ``minimize``/``min``, or ``window`` with ``[lo, hi]``.

        This is the one mapping from an objective's words to a ``Goal``; the agent, the
        report and the benchmarks all go through it.
        """
        g = str(goal).strip().lower()
        if g in ("maximize", "max"):
            return cls("max")
        if g in ("minimize", "min"):
            return cls("min")
        if g == "window":
            if window is None or len(window) != 2:
                raise InputError("a window goal needs window: [lo, hi]", where="goal")
            return cls("window", float(window[0]), float(window[1]))
        raise InputError(f"unknown goal {goal!r}; expected maximize, minimize or window", where="goal")

    def __str__(self) -> str:
        return self.kind if self.kind != "window" else f"window:{self.lo:g}:{self.hi:g}"

    def score(self, y: np.ndarray) -> np.ndarray:
        """Maximisation score: ``y`` (max), ``-y`` (min), ``-distance to [lo, hi]`` (window)."""
        y = np.asarray(y, dtype=float)
        if self.kind == "max":
            return y.copy()
        if self.kind == "min":
            return -y
        return -(np.maximum(self.lo - y, 0.0) + np.maximum(y - self.hi, 0.0))

    def contains(self, y: np.ndarray) -> np.ndarray:
        """Boolean mask of values inside the window (window goals only)."""
        if self.kind != "window":
            raise ValueError("contains() is defined for window goals only")
        y = np.asarray(y, dtype=float)
        return (y >= self.lo) & (y <= self.hi)


def pareto_front(scores: np.ndarray) -> np.ndarray:
    """Mask of the non-dominated rows of ``scores`` (``n x k``, every column maximised).

    A row is dominated when another row is at least as good in every column and strictly
    better in one. Identical non-dominated rows are all kept; rows with a NaN are never on
    the front.
    """
    S = np.asarray(scores, dtype=float)
    if S.ndim != 2:
        raise ValueError(f"scores must be n x k, got shape {S.shape}")
    ok = np.isfinite(S).all(axis=1)
    mask = np.zeros(len(S), dtype=bool)
    T = S[ok]
    # O(n^2 k) pairwise test: fronts here are over labelled candidates (hundreds), so this
    # stays well under a millisecond and keeps the core free of torch/botorch.
    ge = (T[:, None, :] >= T[None, :, :]).all(axis=2)
    gt = (T[:, None, :] > T[None, :, :]).any(axis=2)
    dominated = (ge & gt).any(axis=0)
    mask[np.flatnonzero(ok)] = ~dominated
    return mask


@dataclass(frozen=True)
class Constraint:
    """A feasibility condition on one property, e.g. ``e_above_hull_ev_per_atom <= 0.1``.

    Attributes:
        property: the property name (units in the name).
        oracle: the oracle whose value counts; None: the first oracle that reports it.
        min: lower bound (inclusive) or None.
        max: upper bound (inclusive) or None.
    """

    property: str
    oracle: str | None = None
    min: float | None = None
    max: float | None = None

    def satisfied(self, value: float | None) -> bool:
        """Whether ``value`` is finite and inside the bounds."""
        if value is None or not math.isfinite(value):
            return False
        return (self.max is None or value <= self.max) and (self.min is None or value >= self.min)

    def met_by(self, observations: Iterable) -> bool:
        """Whether a candidate's successful observations meet this constraint: the first value
        of the property from ``oracle`` (or any oracle) must be ``satisfied``; none is a no."""
        for ob in observations:
            if (self.oracle is None or ob.oracle == self.oracle) and ob.value(self.property) is not None:
                return self.satisfied(ob.value(self.property))
        return False
