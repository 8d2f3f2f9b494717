"""Batch rules on a shortlist: sequential greedy picks that account for the batch so far.

* ``believer_batch``: one joint GP posterior over pending points and the shortlist; each
  pick (and first every pending point) is conditioned in as a kriging-believer fantasy
  (``condition``), so nearby variances shrink and the batch spreads out. Milliseconds.
* ``greedy_mc_batch``: botorch's sequential greedy over a discrete set, as in
  ``botorch.optim.optimize_acqf_discrete``, with earlier picks as ``X_pending``. Seconds.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

__all__ = ["believer_batch", "condition", "greedy_mc_batch"]


def condition(S: np.ndarray, j: int, noise: float) -> np.ndarray:
    """Kriging-believer update of a joint covariance ``S`` (``m x m``) on a noisy value at ``j``.

    ``S - S[:, j] S[j, :] / (S[j, j] + noise)``; the mean is unchanged, because the believed
    value is the posterior mean.
    """
    col = S[:, j].copy()
    return S - np.outer(col, col) / (col[j] + noise)


def believer_batch(
    model,
    X_short: np.ndarray,
    X_pend: np.ndarray,
    q: int,
    acquire: Callable[[int, np.ndarray, np.ndarray, float, float], np.ndarray],
    *,
    best_f: float = math.nan,
    raise_pending: np.ndarray | None = None,
    raise_short: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy picks on the shortlist (``K x d``) with kriging-believer conditioning.

    Pending points (``P x d``) are conditioned in first, then each pick.

    Args:
        model: a fitted GP with ``joint(X) -> (mean, cov)`` and ``noise_variance()``.
        acquire: ``(slot, mean, std, best_f, noise) -> K`` acquisition values of the
            shortlist under the conditioned posterior (``noise``: the conditioning noise
            variance).
        best_f: the incumbent handed to ``acquire``.
        raise_pending: ``P`` flags: a conditioned pending point's mean may raise ``best_f``
            (None: never).
        raise_short: ``K`` flags, the same for the picks.

    Returns:
        the ``q`` picked shortlist positions and the acquisition value at each pick.
    """
    P = len(X_pend)
    mu, S = model.joint(np.vstack([X_pend, X_short]) if P else X_short)
    noise = max(model.noise_variance(), 1e-10 * float(np.mean(np.diag(S))) + 1e-12)
    for j in range(P):
        S = condition(S, j, noise)
        if raise_pending is not None and raise_pending[j]:
            best_f = max(best_f, float(mu[j]))
    taken = np.zeros(len(X_short), dtype=bool)
    picks, values = [], []
    for i in range(q):
        sd = np.sqrt(np.clip(np.diag(S)[P:], 1e-12, None))
        a = acquire(i, mu[P:], sd, best_f, noise)
        a[taken] = -np.inf
        j = int(np.argmax(a))
        picks.append(j)
        values.append(float(a[j]))
        taken[j] = True
        S = condition(S, P + j, noise)
        if raise_short is not None and raise_short[j]:
            best_f = max(best_f, float(mu[P + j]))
    return np.asarray(picks, dtype=int), np.asarray(values)


def greedy_mc_batch(
    acqf, X_short: torch.Tensor, q: int, X_pending: torch.Tensor | None, max_batch: int = 512,
    log_w: np.ndarray | None = None,
):
    """Sequential greedy batch on a shortlist (``K x d``): q picks and each pick's value.

    With ``log_w`` (``K`` log-weights, e.g. log P(feasible)) each step maximises
    ``log_w + acqf`` (a log-scale acquisition), and the values include the weight.
    """
    chosen: list[int] = []
    values: list[float] = []
    avail = torch.ones(X_short.shape[0], dtype=torch.bool)
    offset = None if log_w is None else torch.as_tensor(np.asarray(log_w, dtype=float))
    for _ in range(min(q, X_short.shape[0])):
        pend = [X_short[chosen]] if chosen else []
        if X_pending is not None and len(X_pending):
            pend = [X_pending] + pend
        acqf.set_X_pending(torch.cat(pend) if pend else None)
        with torch.no_grad():
            vals = torch.cat(
                [acqf(X_short[a : a + max_batch].unsqueeze(-2)) for a in range(0, X_short.shape[0], max_batch)]
            )
        if offset is not None:
            vals = vals + offset.to(vals.dtype)
        vals = torch.where(avail, vals, torch.tensor(-math.inf, dtype=vals.dtype))
        j = int(torch.argmax(vals))
        chosen.append(j)
        values.append(float(vals[j]))
        avail[j] = False
    return np.asarray(chosen, dtype=int), np.asarray(values)
