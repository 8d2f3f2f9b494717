"""The selection pipeline that every policy shares: available -> fit -> screen -> shortlist -> batch.

* **available**: the pool rows that may be chosen (not requested, labelled, pending or failed).
* **fit**: a surrogate on the labels (``fit_surrogate``; ``make_surrogate`` picks the kind).
* **screen**: a closed-form score of every available row, streamed in chunks (``screen``).
* **shortlist**: the top ``K`` rows by that score (``shortlist``), re-scored exactly where the
  screen was approximate.
* **batch**: the policy's own rule on the shortlist (kriging-believer greedy, Monte-Carlo
  greedy, qLogNEHVI, cost-aware fidelity choice; see ``matloop.agents.decision.batch``).

``Pool`` carries the pool's features through these steps with their bounds and PCA views,
each computed once per planning state, so that a plan with several tiers, promotions and
models fits one PCA and scans the pool for its bounds once.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from matloop.agents.modelling.surrogates import SurrogateSettings, fit_pca, make_surrogate
from matloop.core.protocols import PlanningState

__all__ = [
    "Pool",
    "Selection",
    "as_rows",
    "available",
    "check_labels",
    "empty_selection",
    "finite_or_none",
    "fit_surrogate",
    "pool_bounds",
    "random_selection",
    "screen",
    "selection_info",
    "shortlist",
]


@dataclass
class Selection:
    """A chosen batch.

    Attributes:
        indices: ``q`` indices into the pool, in the order chosen.
        acquisition: ``q`` pool scores of the chosen candidates (the screen's score: LogEI,
            UCB, window log-probability, log EHVI; NaN for random picks).
        mean: posterior means in the property's own units (``q``, or ``q x k`` for ``k``
            objectives; NaN for random picks).
        std: posterior standard deviations, shaped like ``mean`` (NaN for random picks).
        info: human-readable rationale: pool and shortlist sizes, best observed value,
            acquisition and surrogate kinds, the greedy batch values, timings in seconds.
    """

    indices: np.ndarray
    acquisition: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    info: dict = field(default_factory=dict)


def pool_bounds(X_pool: np.ndarray, chunk_size: int = 65536) -> np.ndarray:
    """``2 x d`` column-wise min and max of the pool, streamed in chunks."""
    lo = np.full(X_pool.shape[1], np.inf)
    hi = np.full(X_pool.shape[1], -np.inf)
    for a in range(0, X_pool.shape[0], chunk_size):
        c = np.asarray(X_pool[a : a + chunk_size], dtype=float)
        lo = np.minimum(lo, c.min(axis=0))
        hi = np.maximum(hi, c.max(axis=0))
    return np.stack([lo, hi])


class Pool:
    """An ``N x d`` pool of feature rows with its bounds and PCA views, each computed once.

    Indexes like the array it wraps (``shape``, ``len``, ``pool[rows]``), so every selection
    function takes a plain array or a ``Pool``; the agent builds one per ``PlanningState``
    (``Pool.of``) and every step of that plan shares it.

    Args:
        X: the ``N x d`` rows (an array, or anything that slices by rows, e.g. a ``PcaView``).
        bounds: ``2 x d`` bounds, a function that returns them, or None to compute them on
            first use (``pool_bounds`` with ``chunk_size``).
        chunk_size: rows per chunk when the bounds are computed here.
    """

    def __init__(self, X, *, bounds: np.ndarray | Callable[[], np.ndarray] | None = None, chunk_size: int = 65536):
        self.X = X
        self.shape = tuple(X.shape)
        self.chunk_size = int(chunk_size)
        self._bounds = bounds
        self._views: dict[tuple[float, int], Pool] = {}

    @classmethod
    def of(cls, state: PlanningState) -> Pool:
        """The pool of a planning state (one per plan: every step of the plan shares its bounds and views)."""
        return cls(state.X)

    @classmethod
    def wrap(cls, X) -> Pool:
        """``X`` itself when it is a ``Pool``, else a new ``Pool`` over it."""
        return X if isinstance(X, Pool) else cls(X)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows):
        return self.X[rows]

    @property
    def bounds(self) -> np.ndarray:
        """``2 x d`` column-wise min and max of the rows, computed once."""
        if callable(self._bounds):
            self._bounds = self._bounds()
        elif self._bounds is None:
            self._bounds = pool_bounds(self.X, self.chunk_size)
        return self._bounds

    def pca(self, variance: float, chunk_size: int = 65536) -> Pool:
        """The pool's principal components that explain ``variance`` (``fit_pca``), fitted once.

        ``chunk_size`` is the chunk of the covariance sums and of the view's bounds; it is part
        of the cache key, since chunked float sums differ in their last bits.
        """
        key = (float(variance), int(chunk_size))
        if key not in self._views:
            self._views[key] = Pool(fit_pca(self.X, variance, chunk_size), chunk_size=chunk_size)
        return self._views[key]


def as_rows(idx) -> np.ndarray:
    """Pool indices as a 1-D int array (``None`` gives an empty one)."""
    return np.zeros(0, dtype=int) if idx is None else np.asarray(idx, dtype=int).reshape(-1)


def check_labels(train_idx, y_train) -> tuple[np.ndarray, np.ndarray]:
    """``train_idx`` and ``y_train`` as 1-D int and float arrays of one length.

    Raises:
        ValueError: the lengths differ.
    """
    train_idx = np.asarray(train_idx, dtype=int).reshape(-1)
    y_train = np.asarray(y_train, dtype=float).reshape(-1)
    if len(train_idx) != len(y_train):
        raise ValueError(f"train_idx has {len(train_idx)} entries but y_train has {len(y_train)}")
    return train_idx, y_train


def available(pool_size: int, *blocked) -> np.ndarray:
    """The pool rows that may be chosen, ascending: every row in none of ``blocked`` (index arrays or None)."""
    mask = np.zeros(pool_size, dtype=bool)
    for arr in blocked:
        if arr is not None and len(arr):
            mask[np.asarray(arr, dtype=int)] = True
    return np.flatnonzero(~mask)


def selection_info(pool_size: int, avail: np.ndarray, n_train: int, pending: np.ndarray, **extra) -> dict:
    """The rationale every selection starts with: pool, available, labelled and pending counts."""
    return {
        "pool_size": int(pool_size),
        "n_available": int(len(avail)),
        "n_train": int(n_train),
        "n_pending": int(len(pending)),
        **extra,
    }


def random_selection(avail: np.ndarray, q: int, rng: np.random.Generator, info: dict, t0: float,
                     n_objectives: int | None = None) -> Selection:
    """``q`` rows drawn uniformly without replacement from ``avail`` (the initial design).

    ``mean``/``std`` are NaN, shaped ``q`` or ``q x n_objectives``.
    """
    info["seconds"] = {"total": time.perf_counter() - t0}
    idx = rng.choice(avail, size=q, replace=False) if q else np.zeros(0, dtype=int)
    nan = np.full(len(idx), np.nan)
    shape = (len(idx),) if n_objectives is None else (len(idx), n_objectives)
    return Selection(np.asarray(idx, dtype=int), nan, np.full(shape, np.nan), np.full(shape, np.nan), info)


def empty_selection(info: dict, n_objectives: int | None = None) -> Selection:
    """The selection when no candidate is left."""
    info["reason"] = "no candidates left"
    shape = (0,) if n_objectives is None else (0, n_objectives)
    return Selection(np.zeros(0, dtype=int), np.zeros(0), np.zeros(shape), np.zeros(shape), info)


def fit_surrogate(settings: SurrogateSettings, X, rows: np.ndarray, target: np.ndarray, *,
                  rng: np.random.Generator, bounds: np.ndarray | None = None, n_fraction_columns: int = 0,
                  yvar: np.ndarray | None = None):
    """The surrogate ``settings`` names, fitted on ``X[rows]`` (``n x d``) and ``target`` (``n``).

    Draws one seed from ``rng`` (``make_surrogate``); ``bounds`` normalise a GP's inputs.
    """
    model = make_surrogate(settings, rng=rng, bounds=bounds, n_fraction_columns=n_fraction_columns)
    model.fit(np.asarray(X[rows], dtype=float), target, yvar=yvar)
    return model


def screen(X, rows: np.ndarray, chunk_size: int, score_chunk: Callable) -> tuple[np.ndarray, ...]:
    """Score ``X[rows]`` chunk by chunk and join the results.

    Args:
        X: the pool (array, ``Pool`` or ``PcaView``); only ``chunk_size`` rows are read at once.
        rows: ``m`` pool rows to score (not empty).
        score_chunk: ``(X[chunk], chunk) -> array or tuple of arrays``, each with the chunk's
            rows along its first axis.

    Returns:
        The tuple of joined arrays (``m`` rows each), or one array when ``score_chunk``
        returns one.
    """
    parts = []
    for a in range(0, len(rows), chunk_size):
        chunk = rows[a : a + chunk_size]
        parts.append(score_chunk(X[chunk], chunk))
    if not isinstance(parts[0], tuple):
        return np.concatenate(parts)
    return tuple(np.concatenate(p) for p in zip(*parts))


def shortlist(score: np.ndarray, k: int, *, ties_by_position: bool = False) -> np.ndarray:
    """Positions of the ``k`` highest scores, best first.

    By default the top ``k`` come from ``argpartition`` (O(n)) and are then sorted stably;
    ``ties_by_position`` sorts the whole score instead, so that exact ties are always broken
    by position (for a score that already carries its own tie-breaking noise).
    """
    n = len(score)
    k = int(min(k, n))
    if ties_by_position:
        return np.argsort(-score, kind="stable")[:k]
    top = np.argpartition(-score, k - 1)[:k] if k < n else np.arange(n)
    return top[np.argsort(-score[top], kind="stable")]


def finite_or_none(x) -> float | None:
    """``float(x)`` when it is a finite number, else None (for JSON rationales)."""
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None
