"""Checks on every number that enters the store.

One function, :func:`observation_problems`, is the single gate: oracles (through the
executors), ``matloop tell``, folder results and the Python API all call it before an
observation is recorded.  A successful observation with a problem is recorded as a failed
one carrying the problems as its reason (``tell`` refuses the whole file instead).

Sane ranges are keyed by the unit suffix of the property name (the project's naming rule:
units in the name).  They are deliberately wide -- they catch garbage (1e308, a sign error
on a cost, a percentage of 250), not surprising science.
"""

from __future__ import annotations

import math
from typing import Any

# (suffix, low, high): the first suffix that ends the property name applies.  Values outside
# are physically meaningless for any inorganic material in the unit named.
SANE_RANGES: tuple[tuple[str, float, float], ...] = (
    ("_percent", -1e-9, 100.0),
    ("_fraction", -1e-9, 1.0),
    ("_ev_per_atom", -50.0, 50.0),
    ("gap_ev", -1e-9, 50.0),
    ("_ev", -1e4, 1e4),
    ("_v", -20.0, 20.0),
    ("_k", 0.0, 1e5),
)
# any other property: finite and within this magnitude (a GP fed 1e308 predicts NaN)
DEFAULT_LIMIT = 1e9


def sane_range(prop: str) -> tuple[float, float]:
    """The (low, high) range a value of property ``prop`` must lie in."""
    for suffix, lo, hi in SANE_RANGES:
        if prop.endswith(suffix):
            return lo, hi
    return -DEFAULT_LIMIT, DEFAULT_LIMIT


def _number(x: Any) -> float | None:
    if isinstance(x, bool):
        return None
    try:
        return float(x)
    except (TypeError, ValueError, OverflowError):
        return None


def observation_problems(properties: dict[str, Any], uncertainties: dict[str, Any] | None = None,
                         cost: Any = 0.0) -> list[str]:
    """Every problem with a successful observation's numbers, as readable phrases (empty if none).

    Checks: each property value is a finite number inside :func:`sane_range`; each uncertainty
    is finite and >= 0; the cost is finite and >= 0.
    """
    problems: list[str] = []
    for prop, raw in (properties or {}).items():
        v = _number(raw)
        if v is None:
            problems.append(f"{prop}={raw!r} is not a number")
            continue
        if not math.isfinite(v):
            problems.append(f"{prop}={raw!r} is not finite")
            continue
        lo, hi = sane_range(prop)
        if not lo <= v <= hi:
            problems.append(f"{prop}={v:g} is outside the sane range [{lo:g}, {hi:g}]")
    for prop, raw in (uncertainties or {}).items():
        s = _number(raw)
        if s is None or not math.isfinite(s):
            problems.append(f"uncertainty of {prop}={raw!r} is not a finite number")
        elif s < 0:
            problems.append(f"uncertainty of {prop}={s:g} is negative")
    c = _number(cost)
    if c is None or not math.isfinite(c):
        problems.append(f"cost={cost!r} is not a finite number")
    elif c < 0:
        problems.append(f"cost={c:g} is negative")
    return problems
