"""What the agent has learnt so far, read from its observations as pool indices and values.

Every policy trains on labels only (never on the oracles themselves); these functions are
the one place where observations become training arrays.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from matloop.agents.decision.config import AgentConfig, ObjectiveInfo
from matloop.core.goals import Constraint
from matloop.core.protocols import OracleInfo
from matloop.core.records import Observation

__all__ = ["constraint_labels", "label_oracle", "objective_labels", "objectives_table", "rows_of"]


def label_oracle(config: AgentConfig, entry: OracleInfo, observations: list[Observation]) -> str:
    """Which oracle's values train the surrogate that ranks candidates for ``entry``.

    The entry oracle itself when it reports the objective; otherwise the highest-fidelity
    oracle reporting the objective property that has at least ``max(2, acquisition.init)``
    labels, falling back to the objective oracle.
    """
    prop = config.objective_property
    if prop in entry.properties:
        return entry.name
    reporting = sorted((o for o in config.oracles if prop in o.properties), key=lambda o: -o.fidelity)
    for o in reporting:
        n = sum(1 for ob in observations if ob.oracle == o.name and ob.value(prop) is not None)
        if n >= max(2, config.acquisition.init):
            return o.name
    return config.objective_oracle


def objective_labels(prop: str, oracle: str, observations: list[Observation],
                     index: dict[str, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pool indices, values (NaN for failures) and reported noise variances (NaN where the
    oracle gave no uncertainty) of ``oracle``'s observations of ``prop``; the last
    observation of a candidate counts."""
    done = {}
    for ob in observations:
        if ob.oracle != oracle:
            continue
        v = ob.value(prop) if ob.ok else None
        u = ob.uncertainties.get(prop) if ob.ok and ob.uncertainties else None
        u = float(u) ** 2 if u is not None and math.isfinite(float(u)) else float("nan")
        done[ob.candidate_id] = (v if v is not None else float("nan"), u)
    ids = [cid for cid in done if cid in index]
    return (
        np.array([index[c] for c in ids], dtype=int),
        np.array([done[c][0] for c in ids], dtype=float),
        np.array([done[c][1] for c in ids], dtype=float),
    )


def constraint_labels(constraints: Iterable[Constraint], observations: list[Observation],
                      index: dict[str, int]) -> dict[str, tuple[np.ndarray, np.ndarray, float | None, float | None]]:
    """``name -> (pool indices, values, lo, hi)`` for each known constraint with at least 2 labels."""
    out = {}
    for c in constraints:
        vals = {}
        for ob in observations:
            if not ob.ok or (c.oracle and ob.oracle != c.oracle) or ob.candidate_id not in index:
                continue
            v = ob.value(c.property)
            if v is not None:
                vals[index[ob.candidate_id]] = v
        if len(vals) >= 2:
            idx = np.fromiter(vals.keys(), dtype=int)
            out[f"{c.property}@{c.oracle or 'any'}"] = (idx, np.fromiter(vals.values(), dtype=float), c.min, c.max)
    return out


def objectives_table(objectives: list[ObjectiveInfo], observations: list[Observation],
                     index: dict[str, int]) -> tuple[np.ndarray, np.ndarray, set[str]]:
    """Pool indices (``n``) and ``n x k`` values (NaN where missing) of every candidate with an
    observation from an objective's oracle, and the ids of those whose observation failed."""
    k = len(objectives)
    rows: dict[str, list[float]] = {}
    failed: set[str] = set()
    for ob in observations:
        if ob.candidate_id not in index:
            continue
        for j, o in enumerate(objectives):
            if ob.oracle != o.oracle:
                continue
            row = rows.setdefault(ob.candidate_id, [math.nan] * k)
            v = ob.value(o.property) if ob.ok else None
            if v is not None:
                row[j] = v
            if not ob.ok:
                failed.add(ob.candidate_id)
    train_idx = np.array([index[c] for c in rows], dtype=int)
    return train_idx, np.array(list(rows.values()), dtype=float).reshape(len(rows), k), failed


def rows_of(pairs: Iterable[tuple[str, str]], oracles: set[str], index: dict[str, int]) -> np.ndarray:
    """Sorted pool rows of the (candidate id, oracle) pairs whose oracle is in ``oracles``."""
    return np.array(sorted({index[c] for (c, name) in pairs if name in oracles and c in index}), dtype=int)
