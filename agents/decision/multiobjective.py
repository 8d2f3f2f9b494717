"""Several objectives at once: Pareto fronts, hypervolumes and qLogNEHVI batches over a pool.

``select_pareto`` follows ``select_batch``'s three steps:

1. **Fit** one GP per objective (``GPSurrogate``: botorch ``SingleTaskGP`` with
   ``Normalize``/``Standardize``) on the maximisation score of that objective (the value,
   its negative, or ``-distance to the window``) and join them in a ``ModelListGP``.
2. **Score the pool** in chunks with the closed-form expected hypervolume improvement of a
   single point under independent Gaussian posteriors: over the cells ``[l, u]`` of the
   box decomposition of the non-dominated region, ``EHVI = sum_cells prod_j (psi_j(l_j) -
   psi_j(u_j))`` with ``psi(a) = E[(f - a)_+]`` the expected improvement over ``a`` (as in
   botorch's analytic ``ExpectedHypervolumeImprovement``), evaluated in log space.
3. **Batch** on the top ``shortlist`` candidates: botorch's
   ``qLogNoisyExpectedHypervolumeImprovement`` by sequential greedy conditioning
   (``optimize_acqf_discrete``), pending requests as ``X_pending``.

All hypervolumes here are in score space (every objective maximised).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from scipy.special import logsumexp

from matloop.agents.decision.acquisition import log_expected_improvement
from matloop.agents.decision import pipeline
from matloop.agents.decision.batch import greedy_mc_batch
from matloop.agents.decision.pipeline import (
    Pool,
    Selection,
    as_rows,
    available,
    empty_selection,
    fit_surrogate,
    random_selection,
    screen,
    selection_info,
)
from matloop.agents.modelling.surrogates import SurrogateSettings
from matloop.core.goals import Constraint, Goal
from matloop.core.records import Observation

if TYPE_CHECKING:
    from matloop.agents.decision.config import ObjectiveInfo

__all__ = ["pareto_front", "hypervolume", "default_ref_point", "log_ehvi", "select_pareto", "pareto_summary"]

_DTYPE = torch.float64


def _max_sense(Y: np.ndarray, maximize: Sequence[bool]) -> np.ndarray:
    Y = np.asarray(Y, dtype=float)
    if Y.ndim != 2:
        raise ValueError(f"Y must be n x k, got shape {Y.shape}")
    flags = np.asarray(list(maximize), dtype=bool)
    if flags.shape != (Y.shape[1],):
        raise ValueError(f"maximize has {flags.size} entries for {Y.shape[1]} objectives")
    return np.where(flags, Y, -Y)


def pareto_front(Y: np.ndarray, maximize: Sequence[bool]) -> np.ndarray:
    """Mask of the non-dominated rows of ``Y`` (``n x k``); ``n`` bools.

    A row is dominated when another row is at least as good in every objective and
    strictly better in one. Identical non-dominated rows are all kept; rows with a NaN are
    never on the front.
    """
    from botorch.utils.multi_objective.pareto import is_non_dominated

    S = _max_sense(Y, maximize)
    mask = np.zeros(len(S), dtype=bool)
    ok = np.isfinite(S).all(axis=1)
    if ok.any():
        mask[ok] = is_non_dominated(torch.as_tensor(S[ok], dtype=_DTYPE), deduplicate=False).numpy()
    return mask


def hypervolume(Y: np.ndarray, ref_point: Sequence[float], maximize: Sequence[bool]) -> float:
    """Volume dominated by the rows of ``Y`` (``n x k``) and bounded by ``ref_point`` (``k``).

    Rows that do not strictly beat ``ref_point`` in every objective add nothing; rows with
    a NaN are ignored. ``ref_point`` is in the same units and senses as ``Y``.
    """
    from botorch.utils.multi_objective.box_decompositions.dominated import DominatedPartitioning

    S = _max_sense(Y, maximize)
    ref = _max_sense(np.asarray(ref_point, dtype=float).reshape(1, -1), maximize)[0]
    S = S[np.isfinite(S).all(axis=1) & (S > ref).all(axis=1)]
    if len(S) == 0:
        return 0.0
    part = DominatedPartitioning(ref_point=torch.as_tensor(ref, dtype=_DTYPE), Y=torch.as_tensor(S, dtype=_DTYPE))
    return float(part.compute_hypervolume())


def default_ref_point(Y: np.ndarray, maximize: Sequence[bool], scale: float = 0.1) -> np.ndarray:
    """Reference point ``nadir - scale * range`` of the Pareto front of ``Y`` (``n x k``).

    botorch's ``infer_reference_point`` (Ishibuchi et al. 2011), in ``Y``'s own units and
    senses: for a minimised objective it lies above the worst front value. A front of one
    point is moved back by ``scale * max(|value|, 1)`` per objective.
    """
    from botorch.utils.multi_objective.hypervolume import infer_reference_point

    S = _max_sense(Y, maximize)
    S = S[np.isfinite(S).all(axis=1)]
    if len(S) == 0:
        raise ValueError("default_ref_point needs at least one row without NaN")
    front = S[pareto_front(S, [True] * S.shape[1])]
    ref = infer_reference_point(torch.as_tensor(front, dtype=_DTYPE), scale=scale).numpy()
    return np.where(np.asarray(list(maximize), dtype=bool), ref, -ref)


def _log_diff_ei(log_ei_lo: np.ndarray, log_ei_hi: np.ndarray) -> np.ndarray:
    """log(exp(a) - exp(b)) for a >= b elementwise (b may be -inf)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        d = np.minimum(log_ei_hi - log_ei_lo, 0.0)
        return log_ei_lo + np.log1p(-np.exp(d))


def log_ehvi(
    mean: np.ndarray, std: np.ndarray, pareto_scores: np.ndarray, ref_point: np.ndarray
) -> np.ndarray:
    """log of the closed-form expected hypervolume improvement of single points.

    Independent Gaussian objectives (all maximised), exact for one point:
    ``EHVI = sum_cells prod_j (psi_j(l_j) - psi_j(u_j))`` over the cells ``[l, u]`` of
    botorch's ``FastNondominatedPartitioning`` of the region the front does not dominate.

    Args:
        mean: ``m x k`` posterior means of the scores.
        std: ``m x k`` posterior standard deviations.
        pareto_scores: ``p x k`` current front (scores; ``p`` may be 0).
        ref_point: ``k`` reference point (scores).

    Returns:
        ``m`` values; ``-inf`` where the improvement underflows.
    """
    from botorch.utils.multi_objective.box_decompositions.non_dominated import FastNondominatedPartitioning

    ref = torch.as_tensor(np.asarray(ref_point, dtype=float), dtype=_DTYPE)
    Yp = torch.as_tensor(np.asarray(pareto_scores, dtype=float).reshape(-1, len(ref)), dtype=_DTYPE)
    Yp = Yp[(Yp > ref).all(dim=-1)]
    cells = FastNondominatedPartitioning(ref_point=ref, Y=Yp).get_hypercell_bounds().numpy()  # 2 x C x k
    lower, upper = cells[0], cells[1]
    m, k = mean.shape
    terms = np.zeros((lower.shape[0], m))
    for c in range(lower.shape[0]):
        for j in range(k):
            lo = log_expected_improvement(mean[:, j], std[:, j], float(lower[c, j]))
            if math.isinf(upper[c, j]):
                terms[c] += lo
            else:
                terms[c] += _log_diff_ei(lo, log_expected_improvement(mean[:, j], std[:, j], float(upper[c, j])))
    return logsumexp(terms, axis=0)


def _as_goal(g) -> Goal:
    return g if isinstance(g, Goal) else Goal.parse(str(g))


def _check_settings(goals: list[Goal], surrogate: SurrogateSettings) -> None:
    if len(goals) < 2:
        raise ValueError(f"select_pareto needs at least 2 objectives, got {len(goals)}")
    if surrogate.kind != "gp":
        raise ValueError("select_pareto needs GP surrogates (qLogNEHVI samples a joint posterior)")
    if surrogate.pca_variance is not None:
        raise ValueError("select_pareto does not support pca_variance; project the features beforehand")
    if surrogate.kernel_structure != "single":
        raise ValueError(f"select_pareto does not support kernel_structure {surrogate.kernel_structure!r}")


def select_pareto(
    X_pool: np.ndarray | Pool,
    train_idx: np.ndarray,
    Y_train: np.ndarray,
    q: int,
    objectives: Sequence[Goal | str],
    *,
    exclude: np.ndarray | None = None,
    rng: np.random.Generator,
    pending_idx: np.ndarray | None = None,
    shortlist: int = 500,
    ref_point: Sequence[float] | None = None,
    surrogate: SurrogateSettings | None = None,
    mc_samples: int = 128,
    init: int = 2,
    chunk_size: int = 16384,
    log_weights: np.ndarray | None = None,
) -> Selection:
    """Choose ``q`` pool candidates that are expected to grow the hypervolume the most.

    Args:
        X_pool: ``N x d`` preprocessed features of the pool (streamed in chunks), or a ``Pool``.
        train_idx: ``n`` pool indices with labels.
        Y_train: ``n x k`` raw labels in each property's units; a non-finite entry leaves
            that candidate out of that objective's GP and out of the front.
        q: batch size.
        objectives: ``k`` goals (``Goal`` or ``'max'``, ``'min'``, ``'window:LO:HI'``).
        exclude: indices never to choose; ``train_idx`` and ``pending_idx`` are excluded too.
        rng: the only source of randomness (random picks, GP fit subsets, MC seeds).
        pending_idx: indices with requests still running, passed as ``X_pending``.
        shortlist: candidates (top by closed-form log EHVI) handed to qLogNEHVI.
        ref_point: ``k`` reference point in score units (``Goal.score``: the value for max,
            minus the value for min, minus the distance to a window); default
            ``default_ref_point`` of the labelled scores.
        surrogate: settings of each objective's GP (``kind`` must be 'gp').
        mc_samples: quasi-Monte-Carlo samples of qLogNEHVI.
        init: random picks while fewer candidates than this have all objectives labelled.
        chunk_size: candidates per chunk when scoring the pool.
        log_weights: ``N`` log-probabilities per pool candidate (of being feasible and of
            the oracle succeeding, as in ``constraints.select_constrained``), added to the
            closed-form log EHVI of the screen and to each greedy step's qLogNEHVI (the
            gain given the batch so far), so that a pick maximises ``P x EHVI``. None: no
            weighting (``optimize_acqf_discrete``).

    Returns:
        The ``Selection``: ``acquisition`` holds the closed-form log EHVI of each pick,
        ``mean``/``std`` are ``q x k`` in each property's units, and ``info`` holds the
        current front (``pareto_indices`` into the pool, ``pareto_values`` in property
        units), the ``hypervolume`` of the labelled scores w.r.t. ``ref_point_scores``, the
        greedy qLogNEHVI values and timings.
    """
    t0 = time.perf_counter()
    goals = [_as_goal(g) for g in objectives]
    k = len(goals)
    surrogate = surrogate or SurrogateSettings()
    _check_settings(goals, surrogate)
    pool = Pool.wrap(X_pool)
    N = pool.shape[0]
    train_idx = as_rows(train_idx)
    Y_train, S_train = _labels_and_scores(Y_train, len(train_idx), goals)
    pending_idx = as_rows(pending_idx)
    avail = available(N, exclude, train_idx, pending_idx)
    q = int(min(q, len(avail)))
    complete = np.isfinite(S_train).all(axis=1)
    info = selection_info(N, avail, complete.sum(), pending_idx, objectives=[str(g) for g in goals],
                          acquisition="qlognehvi")
    S_c, idx_c = S_train[complete], train_idx[complete]
    ref = _front_info(S_c, idx_c, Y_train[complete], ref_point, k, info)
    if len(np.unique(idx_c)) < max(init, 2) or any(np.isfinite(S_train[:, j]).sum() < 2 for j in range(k)):
        info["reason"] = f"random: {len(np.unique(idx_c))} fully labelled candidates (< init={max(init, 2)})"
        return random_selection(avail, q, rng, info, t0, n_objectives=k)
    if q == 0:
        return empty_selection(info, n_objectives=k)

    t_fit = time.perf_counter()
    gps = []
    for j in range(k):  # one GP per objective score
        ok = np.isfinite(S_train[:, j])
        gps.append(fit_surrogate(surrogate, pool, train_idx[ok], S_train[ok, j], rng=rng, bounds=pool.bounds))
    info["fit"] = [gp.fit_info for gp in gps]
    t_score = time.perf_counter()
    front_scores = S_c[pareto_front(S_c, [True] * k)]
    mean, std, score = screen(pool, avail, chunk_size, _ehvi_scorer(gps, front_scores, ref))
    if log_weights is not None:
        log_weights = np.asarray(log_weights, dtype=float).reshape(-1)
        if len(log_weights) != N:
            raise ValueError(f"log_weights has {len(log_weights)} entries for a pool of {N}")
        score = score + log_weights[avail]
        info["weighted"] = "log EHVI + log P(feasible) + log P(success)"
    t_batch = time.perf_counter()
    short = pipeline.shortlist(score, shortlist)
    pick, batch_values = _qlognehvi_batch(
        gps, np.asarray(pool[avail[short]], dtype=float), np.asarray(pool[idx_c], dtype=float),
        np.asarray(pool[pending_idx], dtype=float) if len(pending_idx) else None, ref, q, mc_samples,
        int(rng.integers(2**31 - 1)), None if log_weights is None else log_weights[avail[short]],
    )
    chosen = short[pick]
    info["shortlist_size"] = len(short)
    info["batch_rule"] = "sequential greedy qLogNEHVI on the shortlist (optimize_acqf_discrete), pending as X_pending"
    info["batch_values"] = [float(v) for v in batch_values]
    t_end = time.perf_counter()
    info["seconds"] = {"fit": t_score - t_fit, "score": t_batch - t_score, "batch": t_end - t_batch, "total": t_end - t0}
    info["mean_units"] = ["score (-distance to window)" if g.kind == "window" else "property" for g in goals]
    # scores back to property units: max keeps, min negates; a window score stays a distance
    sign = np.array([-1.0 if g.kind == "min" else 1.0 for g in goals])
    return Selection(avail[chosen].astype(int), score[chosen], mean[chosen] * sign, std[chosen], info)


def _labels_and_scores(Y_train, n: int, goals: list[Goal]) -> tuple[np.ndarray, np.ndarray]:
    """``n x k`` labels and their maximisation scores (``Goal.score`` per column)."""
    k = len(goals)
    Y_train = np.asarray(Y_train, dtype=float).reshape(n, -1 if n else k)
    if Y_train.shape[1] != k:
        raise ValueError(f"Y_train has {Y_train.shape[1]} columns for {k} objectives")
    return Y_train, np.column_stack([g.score(Y_train[:, j]) for j, g in enumerate(goals)])


def _front_info(S_c, idx_c, Y_c, ref_point, k: int, info: dict) -> np.ndarray | None:
    """The reference point (given or ``default_ref_point``), and the labelled front and its
    hypervolume in ``info``; None without a fully labelled candidate."""
    if not len(S_c):
        return None
    ref = np.asarray(ref_point, dtype=float).reshape(k) if ref_point is not None else default_ref_point(S_c, [True] * k)
    front = pareto_front(S_c, [True] * k)
    info["ref_point_scores"] = [float(r) for r in ref]
    info["pareto_indices"] = [int(i) for i in idx_c[front]]
    info["pareto_values"] = Y_c[front].tolist()
    info["hypervolume"] = hypervolume(S_c, ref, [True] * k)
    return ref


def _ehvi_scorer(gps, front_scores: np.ndarray, ref: np.ndarray):
    """The screen of ``select_pareto``: per chunk ``c x k`` means and stds and ``c`` closed-form log EHVI."""

    def score_chunk(Xc, _rows):
        Xc = np.asarray(Xc, dtype=float)
        mean = np.empty((len(Xc), len(gps)))
        std = np.empty((len(Xc), len(gps)))
        for j, gp in enumerate(gps):
            mean[:, j], std[:, j] = gp.predict(Xc)
        return mean, std, log_ehvi(mean, std, front_scores, ref)

    return score_chunk


def _qlognehvi_batch(gps, X_short, X_base, X_pend, ref, q, mc_samples, seed, log_w=None):
    """Greedy qLogNEHVI picks on the shortlist (``K x d``): positions and values.

    With ``log_w`` (``K``), each greedy step maximises ``log_w + qLogNEHVI`` where the
    acquisition already counts earlier picks as pending (the gain given the batch so far).
    """
    from botorch.acquisition.multi_objective.logei import qLogNoisyExpectedHypervolumeImprovement
    from botorch.models import ModelListGP
    from botorch.optim import optimize_acqf_discrete
    from botorch.sampling import SobolQMCNormalSampler

    model = ModelListGP(*[gp.model for gp in gps])
    model.eval()
    choices = torch.as_tensor(X_short, dtype=_DTYPE)
    X_pending = None if X_pend is None else torch.as_tensor(X_pend, dtype=_DTYPE)
    with warnings.catch_warnings(), torch.random.fork_rng():
        warnings.simplefilter("ignore")
        # botorch's multi-objective baseline pruning samples with torch's global generator (no sampler arg)
        torch.manual_seed(seed)
        acqf = qLogNoisyExpectedHypervolumeImprovement(
            model,
            ref_point=torch.as_tensor(ref, dtype=_DTYPE),
            X_baseline=torch.as_tensor(X_base, dtype=_DTYPE),
            sampler=SobolQMCNormalSampler(torch.Size([mc_samples]), seed=seed),
            X_pending=X_pending,
            prune_baseline=True,
            cache_root=True,
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if log_w is not None:
            return greedy_mc_batch(acqf, choices, q, X_pending, max_batch=256, log_w=log_w)
        cand, values = optimize_acqf_discrete(acqf, q=q, choices=choices, max_batch_size=256, unique=True)
    # map the returned rows back to shortlist positions (the first unused identical row)
    used = np.zeros(len(X_short), dtype=bool)
    picks = []
    for row in cand.numpy():
        hits = np.flatnonzero((X_short == row).all(axis=1) & ~used)
        picks.append(int(hits[0]))
        used[hits[0]] = True
    return np.asarray(picks, dtype=int), values.reshape(-1).numpy()


def pareto_summary(observations: list[Observation], formulas: dict[str, str], objectives: list[ObjectiveInfo],
                   constraints: Sequence[Constraint] = ()) -> dict:
    """The current Pareto front of the labelled, feasible candidates, and its hypervolume.

    A candidate counts once every objective has a value from its oracle and every
    constraint is met (as for best-so-far). The hypervolume is in score space (each
    objective maximised: the value, its negative, or minus the distance to a window)
    against a reference point 10 % of each score's range below its worst labelled value.

    Returns:
        ``objectives``, ``n_labelled``, ``hypervolume``, ``ref_point_scores`` and ``front``:
        one ``{candidate, formula, values: {objective label: value}}`` per front member.
    """
    k = len(objectives)
    labels = [o.label(objectives) for o in objectives]
    vals: dict[str, list[float]] = {}
    per: dict[str, list[Observation]] = {}
    for ob in observations:
        if not ob.ok:
            continue
        per.setdefault(ob.candidate_id, []).append(ob)
        for j, o in enumerate(objectives):
            v = ob.value(o.property) if ob.oracle == o.oracle else None
            if v is not None:
                vals.setdefault(ob.candidate_id, [math.nan] * k)[j] = v

    ids = [cid for cid, row in vals.items()
           if np.isfinite(row).all() and all(c.met_by(per.get(cid, [])) for c in constraints)]
    out = {"objectives": [{"label": lab, "property": o.property, "oracle": o.oracle, "goal": str(o.goal)}
                          for lab, o in zip(labels, objectives)],
           "n_labelled": len(ids), "hypervolume": None, "ref_point_scores": None, "front": []}
    if not ids:
        return out
    Y = np.array([vals[c] for c in ids], dtype=float)
    S = np.column_stack([o.goal.score(Y[:, j]) for j, o in enumerate(objectives)])
    mask = pareto_front(S, [True] * k)
    # below the worst labelled score by 10 % of the range: only ever moves outward, so the
    # hypervolume of successive iterations never decreases and can be compared
    lo, hi = S.min(axis=0), S.max(axis=0)
    ref = lo - 0.1 * np.where(hi > lo, hi - lo, np.maximum(np.abs(lo), 1.0))
    out["hypervolume"] = hypervolume(S, ref, [True] * k)
    out["ref_point_scores"] = [float(r) for r in ref]
    out["front"] = [{"candidate": c, "formula": formulas.get(c, c), "values": dict(zip(labels, map(float, Y[i])))}
                    for i, c in enumerate(ids) if mask[i]]
    return out
