"""The funnel policy's selection: closed-form acquisitions and ``select_batch``.

``select_batch`` runs the shared pipeline (``matloop.agents.decision.pipeline``: available,
fit, screen, shortlist, batch) so that 10^5-10^6 candidates plan in seconds:

1. **Fit** the surrogate on the labelled candidates (botorch ``SingleTaskGP`` with
   ``Normalize``/``Standardize``, hyperparameters by marginal likelihood on at most
   ``max_fit_points`` labels; or a random forest).
2. **Score the whole pool** with a closed-form acquisition computed from the posterior mean
   and standard deviation only, streamed in chunks (never an ``N x N`` covariance; float32
   for this screening): UCB on the goal score (the default; for a window goal the score is
   minus the distance to the window), LogEI, the probability of lying in the top fraction
   of the pool (``ptop``), or for a window goal the log-probability that the property
   (modelled directly) lies in ``[lo, hi]`` (``window``; on a zero-inflated property such
   as band gaps a GP predicts "in between" for uncertain metal-or-insulator candidates,
   which is why it is not the default).
3. **Select the batch on a shortlist** (the top ``shortlist`` candidates by that score,
   re-scored in float64). Default (``batch='believer'``): one joint posterior over
   shortlist + pending points, then sequential greedy picks of the same closed-form
   acquisition, each pick (and first every pending point) conditioned in as a
   kriging-believer fantasy (its value = its posterior mean, so nearby variances shrink and
   the batch spreads out; for EI the incumbent may rise). A window goal picks the ``q``
   highest probabilities of lying in the window: the expected number of hits of a batch is
   the sum of its members' probabilities. ``batch='mc'``: botorch's Monte-Carlo qLogEI /
   qLogNEI / qUCB / window ``qSimpleRegret`` (probability that at least one member lies in
   the window) by sequential greedy conditioning as in
   ``botorch.optim.optimize_acqf_discrete``, returning pool indices, with pending points as
   ``X_pending``. ``batch='topq'``: the q best scores. Thompson sampling draws one joint
   posterior sample on the shortlist per batch slot. Random forests (and plug-in
   surrogates) have no joint posterior: top-q by score.

Running botorch's ``optimize_acqf_discrete`` directly on a 10^5 pool with q=8 took 392 s
and 7 GB; steps 2 and 3 together take seconds (see ``benchmarks/planning.py``).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from scipy.special import erfcx, log_ndtr, ndtr

from matloop.agents.decision.batch import believer_batch, greedy_mc_batch
from matloop.agents.decision.skill import measure_skill, space_filling
from matloop.agents.decision.pipeline import (
    Pool,
    Selection,
    as_rows,
    available,
    empty_selection,
    fit_surrogate,
    check_labels,
    pool_bounds,
    random_selection,
    screen,
    selection_info,
    shortlist,
)
from matloop.agents.modelling.surrogates import GPSurrogate, RandomForestSurrogate, SurrogateSettings
from matloop.core.goals import Goal

__all__ = [
    "label_noise",
    "Goal",
    "SurrogateSettings",
    "AcquisitionSettings",
    "Selection",
    "select_batch",
    "log_expected_improvement",
    "log_window_probability",
    "pool_bounds",
    "rank_warp",
    "slot_betas",
    "PoolScore",
    "top_threshold",
]


class AcquisitionSettings(BaseModel):
    """How candidates are scored and how a batch is chosen."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["auto", "logei", "qlognei", "ucb", "thompson", "window", "ptop"] = Field(
        "auto",
        description="acquisition: 'auto' = ucb on the goal score (y, -y, or -distance to the window); "
        "it beat logei, qlognei, thompson and ptop on the JCAP OER plates and, for windows, the "
        "window probability on the experimental-gap, SuperCon and Castelli benchmarks; "
        "logei/qlognei/ucb/thompson on a window goal act on the score -distance to the window; "
        "'ptop' = probability of lying in the top 'top_fraction' of the pool (threshold estimated "
        "from the posterior predictive mixture over the pool and the labels)",
    )
    top_fraction: float = Field(
        0.01, gt=0.0, lt=1.0, description="for kind 'ptop': the fraction of the pool counted as top"
    )
    beta: float = Field(
        1.0, ge=0.0, description="UCB exploration weight in botorch's convention: mean + sqrt(beta) * std"
    )
    beta_spread: float = Field(
        1.0,
        ge=1.0,
        description="UCB batches (believer): slot i of q uses beta * spread^(i/(q-1) - 1/2), from "
        "beta/sqrt(spread) (exploit, picked first) to beta*sqrt(spread) (explore); 1 = one beta. "
        "A hedge: every batch both refines the best region and probes uncertain ones",
    )
    shortlist: int = Field(500, ge=1, description="top candidates by the pool score passed to batch selection")
    chunk_size: int = Field(16384, ge=1, description="candidates per chunk when scoring the pool")
    init: int = Field(
        10,
        ge=0,
        description="random picks until this many candidates are labelled or pending "
        "(and always while fewer than 2 labels exist)",
    )
    batch: Literal["believer", "mc", "topq"] = Field(
        "believer",
        description="how a GP builds the q-batch on the shortlist: 'believer' = the closed-form "
        "acquisition with kriging-believer conditioning on each pick and on pending points (one "
        "joint posterior over the shortlist, milliseconds); 'mc' = botorch Monte-Carlo qLogEI / "
        "qLogNEI / qUCB / window qSimpleRegret by sequential greedy with X_pending (seconds); "
        "'topq' = the q best pool scores, no conditioning (pending points only excluded)",
    )
    skill_aware: bool = Field(
        True,
        description="measure the surrogate's leave-one-out rank correlation on its labels every plan "
        "(closed-form GP LOO, forest out-of-bag; matloop.agents.decision.skill) and, when it is not "
        "clearly above zero, give a fraction P(no skill) of the batch to space-filling picks; the "
        "measurement and decision are recorded in the rationale ('skill')",
    )
    skill_confidence: float = Field(
        0.95, gt=0.5, lt=1.0,
        description="one-sided confidence of the lower bound on the LOO rank correlation that must be "
        "above zero for the batch to follow the acquisition alone",
    )
    explore_subsample: int = Field(
        20, ge=1,
        description="space-filling picks choose by max-min distance among this many uniformly drawn "
        "available candidates per exploration slot (few: close to random picks; many: pushes to the "
        "pool's outskirts)",
    )
    mc_samples: int = Field(256, ge=16, description="quasi-Monte-Carlo samples for batch='mc'")
    pool_precision: Literal["float32", "float64"] = Field(
        "float32",
        description="GP posterior precision when screening the whole pool; the shortlist is always "
        "re-scored in float64 before the batch is chosen",
    )


def log_expected_improvement(mean: np.ndarray, std: np.ndarray, best_f: float) -> np.ndarray:
    """log EI(x) = log(std) + log h((mean - best_f) / std), h(u) = phi(u) + u Phi(u).

    Numerically stable for very negative ``u`` (Ament et al. 2023, as in botorch's LogEI):
    there h(u) = phi(u) (1 - |u| Phi(-|u|)/phi(u)) and the Mills ratio comes from ``erfcx``.
    """
    mean = np.asarray(mean, dtype=float)
    std = np.maximum(np.asarray(std, dtype=float), 1e-12)
    u = (mean - best_f) / std
    log_phi = -0.5 * u**2 - 0.5 * math.log(2 * math.pi)
    out = np.empty_like(u)
    hi = u > -1.0
    uh = u[hi]
    out[hi] = np.log(np.exp(log_phi[hi]) + uh * np.exp(log_ndtr(uh)))
    ul = -u[~hi]  # > 1
    mills = erfcx(ul / math.sqrt(2)) * math.sqrt(math.pi / 2)
    out[~hi] = log_phi[~hi] + np.log1p(-ul * mills)
    return out + np.log(std)


def log_window_probability(mean: np.ndarray, std: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """log P(lo <= f <= hi) for f ~ N(mean, std^2), stable far outside the window."""
    mean = np.asarray(mean, dtype=float)
    std = np.maximum(np.asarray(std, dtype=float), 1e-12)
    a = (lo - mean) / std
    b = (hi - mean) / std
    # P = Phi(b) - Phi(a) = Phi(-a) - Phi(-b); use the tail that is small to avoid cancellation
    upper = a > 0
    la = np.where(upper, log_ndtr(-a), log_ndtr(b))
    lb = np.where(upper, log_ndtr(-b), log_ndtr(a))
    with np.errstate(divide="ignore", invalid="ignore"):
        out = la + np.log1p(-np.exp(np.minimum(lb - la, 0.0)))
    return np.where(np.isfinite(out), out, -np.inf)


def rank_warp(t: np.ndarray):
    """Gaussian copula of ``t`` (``n``): normal scores ``Phi^-1((rank - 1/2) / n)``, ties averaged.

    Returns:
        the warped values (``n``) and ``unwarp(mean, std)`` mapping model means back by
        piecewise-linear interpolation over the labelled pairs (linear beyond the ends) and
        stds by the local slope.
    """
    from scipy.special import ndtri
    from scipy.stats import rankdata

    t = np.asarray(t, dtype=float)
    z = ndtri((rankdata(t) - 0.5) / len(t))
    zs, idx = np.unique(z, return_index=True)
    ts = t[idx]
    if len(zs) < 2:
        return z, None

    def unwarp(m, s):
        m = np.asarray(m, dtype=float)
        lo_slope = (ts[1] - ts[0]) / (zs[1] - zs[0])
        hi_slope = (ts[-1] - ts[-2]) / (zs[-1] - zs[-2])
        out = np.interp(m, zs, ts)
        out = np.where(m < zs[0], ts[0] + (m - zs[0]) * lo_slope, out)
        out = np.where(m > zs[-1], ts[-1] + (m - zs[-1]) * hi_slope, out)
        k = np.clip(np.searchsorted(zs, m), 1, len(zs) - 1)
        slope = (ts[k] - ts[k - 1]) / (zs[k] - zs[k - 1])
        return out, np.abs(slope) * np.asarray(s, dtype=float)

    return z, unwarp


def label_noise(yvar: np.ndarray | None, finite: np.ndarray, surrogate: SurrogateSettings, info: dict) -> np.ndarray | None:
    """Known noise variances for the GP fit, or None to infer a homoscedastic noise.

    Oracles may report a standard uncertainty with a value (MD migration energies, lab
    replicates); ``yvar`` holds its square per label (NaN where none was reported). They are
    used, as a fixed heteroscedastic noise, only when every finite label has one and the
    model is a GP without a rank warp (a warp changes the scale of each label differently).
    The goal's score (-y, or minus the distance to a window) keeps the variance of y.
    ``info['label_noise']`` says which was used.
    """
    if yvar is None:
        return None
    v = np.asarray(yvar, dtype=float).reshape(-1)[finite]
    if surrogate.kind != "gp" or surrogate.warp != "none":
        info["label_noise"] = "inferred (reported uncertainties need a GP without warp)"
        return None
    if not len(v) or not np.all(np.isfinite(v) & (v >= 0)):
        n = int(np.sum(np.isfinite(v)))
        if n:
            info["label_noise"] = f"inferred ({n} of {len(v)} labels report an uncertainty; all must)"
        return None
    info["label_noise"] = f"reported: {len(v)} variances, median {float(np.median(v)):.3g}"
    return np.maximum(v, 1e-10)


def _resolve_kind(goal: Goal, acquisition: AcquisitionSettings) -> str:
    kind = acquisition.kind
    if kind == "auto":
        return "ucb"
    if kind == "window" and goal.kind != "window":
        raise ValueError(f"acquisition 'window' needs a window goal, got {goal}")
    return kind


def slot_betas(acquisition: AcquisitionSettings, q: int) -> np.ndarray:
    """UCB beta of each batch slot (``q``), geometric from exploit to explore."""
    if q <= 1 or acquisition.beta_spread == 1.0:
        return np.full(max(q, 1), acquisition.beta)
    e = np.linspace(-0.5, 0.5, q)
    return acquisition.beta * acquisition.beta_spread**e


def _rank01(a: np.ndarray) -> np.ndarray:
    """Ranks scaled to [0, 1] (``n``), to merge two scores into one shortlist order."""
    r = np.empty(len(a))
    r[np.argsort(a, kind="stable")] = np.arange(len(a))
    return r / max(len(a) - 1, 1)


@dataclass
class PoolScore:
    """The closed-form acquisition of a posterior mean and standard deviation (``m`` each).

    ``logei``/``qlognei``: LogEI over ``best_f``; ``ucb``/``thompson``: ``mean + sqrt(beta) std``;
    ``ptop``: log P(a new measurement exceeds the top threshold ``best_f``), with the noise
    variance ``noise``; ``window``: log P(lo <= f <= hi) of the goal's window.
    """

    kind: str
    goal: Goal
    beta: float
    best_f: float = math.nan
    noise: float = 0.0

    def __call__(self, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
        """``m`` scores."""
        if self.kind in ("logei", "qlognei"):
            return log_expected_improvement(mean, std, self.best_f)
        if self.kind in ("ucb", "thompson"):
            return mean + math.sqrt(self.beta) * std
        if self.kind == "ptop":
            return log_ndtr((mean - self.best_f) / np.sqrt(std**2 + self.noise))
        return log_window_probability(mean, std, self.goal.lo, self.goal.hi)


@dataclass
class _Objective:
    """The fitted objective of one selection: the model, the features it sees, and its units."""

    model: object
    X: Pool  # the pool or its PCA view
    rows: np.ndarray  # labelled pool rows
    target: np.ndarray  # what the model was fitted on
    sign: float  # model units -> property units
    unwarp: Callable | None
    window_direct: bool  # a window goal modelled as the raw property

    @property
    def gp(self) -> bool:
        return isinstance(self.model, GPSurrogate)


def select_batch(
    X_pool: np.ndarray | Pool,
    train_idx: np.ndarray,
    y_train: np.ndarray,
    q: int,
    goal: Goal,
    *,
    exclude: np.ndarray | None = None,
    surrogate: SurrogateSettings | None = None,
    acquisition: AcquisitionSettings | None = None,
    rng: np.random.Generator,
    pending_idx: np.ndarray | None = None,
    n_fraction_columns: int = 0,
    yvar: np.ndarray | None = None,
) -> Selection:
    """Choose ``q`` new pool candidates to evaluate next (the funnel policy's selection).

    Args:
        X_pool: ``N x d`` preprocessed features of the whole pool (float32 is fine; it is
            streamed in chunks and never copied whole), or a ``Pool`` whose bounds and PCA
            views are reused.
        train_idx: ``n`` pool indices with labels.
        y_train: ``n`` raw labels in the property's units (the goal is applied inside);
            non-finite labels (failed evaluations) are ignored.
        q: batch size.
        goal: what "better" means.
        exclude: indices never to choose (evaluated or pending); ``train_idx`` and
            ``pending_idx`` are excluded as well.
        surrogate: model settings (default GP).
        acquisition: acquisition settings (default 'auto').
        rng: the only source of randomness (random picks, MC seeds, forest seed).
        pending_idx: indices with requests still running; fantasised as ``X_pending`` in the
            batch acquisition.
        n_fraction_columns: the last columns of ``X_pool`` that hold the element-fraction
            block (``features.fraction_block``); needed by
            ``surrogate.kernel_structure='additive_fractions'``, ignored otherwise.
        yvar: per-label noise variance reported by the oracle (NaN where none); see
            ``label_noise`` for when it replaces the inferred noise.

    Returns:
        The ``Selection``. With fewer than 2 finite labels, or fewer than
        ``acquisition.init`` labelled-or-pending candidates, the batch is drawn uniformly at
        random from the non-excluded pool (``info['reason']`` says so). Fewer than ``q``
        indices come back only when fewer than ``q`` candidates remain.
    """
    t0 = time.perf_counter()
    surrogate = surrogate or SurrogateSettings()
    acquisition = acquisition or AcquisitionSettings()
    pool = Pool.wrap(X_pool)
    train_idx, y_train = check_labels(train_idx, y_train)
    pending_idx = as_rows(pending_idx)
    avail = available(pool.shape[0], exclude, train_idx, pending_idx)
    q = int(min(q, len(avail)))
    finite = np.isfinite(y_train)
    tr, y = train_idx[finite], y_train[finite]
    kind = _resolve_kind(goal, acquisition)
    info = selection_info(pool.shape[0], avail, len(tr), pending_idx, goal=str(goal), acquisition=kind,
                          surrogate=surrogate.kind)
    if len(y):
        info["best_observed"] = float(y[int(np.argmax(goal.score(y)))])
    if len(tr) < 2 or len(np.unique(tr)) + len(pending_idx) < acquisition.init:
        info["reason"] = (
            f"random: {len(tr)} labels, {len(pending_idx)} pending (< 2 labels or < init={acquisition.init})"
        )
        return random_selection(avail, q, rng, info, t0)
    if q == 0:
        return empty_selection(info)
    t_fit = time.perf_counter()
    obj = _fit_objective(pool, tr, y, goal, kind, surrogate, acquisition, rng, n_fraction_columns,
                         label_noise(yvar, finite, surrogate, info), info)
    n_explore = _skill_decision(obj, q, acquisition, info)
    q_exploit = q - n_explore
    t_score = time.perf_counter()
    mean, std, score, order, scorer = _screen_pool(obj, avail, q, goal, kind, acquisition, info)
    t_batch = time.perf_counter()
    short, X_short = _exact_shortlist(obj, avail, mean, std, score, order, scorer, acquisition, info)
    X_pend = np.asarray(obj.X[pending_idx], dtype=float)
    pick, batch_values = np.zeros(0, dtype=int), np.zeros(0)
    if q_exploit:
        pick, batch_values = _batch(obj, kind, goal, short, X_short, X_pend, score, scorer, q_exploit, acquisition,
                                    rng, info)
    info["batch_values"] = [float(v) for v in batch_values]
    info["mean_units"] = "property" if (obj.window_direct or goal.kind != "window") else "score (-distance to window)"
    chosen = short[pick]
    if n_explore:
        chosen = np.concatenate([chosen, _explore(obj, avail, chosen, tr, pending_idx, n_explore, acquisition, rng,
                                                  info)])
    t_end = time.perf_counter()
    info["seconds"] = {"fit": t_score - t_fit, "score": t_batch - t_score, "batch": t_end - t_batch, "total": t_end - t0}
    m_out, s_out = mean[chosen], std[chosen]
    if obj.unwarp is not None:
        m_out, s_out = obj.unwarp(m_out, s_out)
    return Selection(avail[chosen].astype(int), score[chosen], obj.sign * m_out, s_out, info)


def _fit_objective(pool: Pool, tr, y, goal, kind, surrogate, acquisition, rng, n_fraction_columns, yvar,
                   info) -> _Objective:
    """Fit step: a window goal models the raw property, max/min the goal's score (rank-warped on request)."""
    window_direct = goal.kind == "window" and kind == "window"
    target = y if window_direct else goal.score(y)
    sign = -1.0 if goal.kind == "min" and not window_direct else 1.0
    unwarp = None
    if surrogate.warp == "rank" and not window_direct:
        target, unwarp = rank_warp(target)
    gp = surrogate.kind == "gp"
    X = pool
    if gp and surrogate.pca_variance is not None:
        X = pool.pca(surrogate.pca_variance, acquisition.chunk_size)
        info["pca_components"] = int(X.shape[1])
    if surrogate.fraction_block:
        info["kernel_structure"] = f"additive_fractions ({n_fraction_columns} fraction columns)"
    model = fit_surrogate(surrogate, X, tr, target, rng=rng, bounds=X.bounds if gp else None,
                          n_fraction_columns=n_fraction_columns, yvar=yvar)
    if isinstance(model, GPSurrogate):
        info["fit"] = model.fit_info
    return _Objective(model, X, tr, target, sign, unwarp, window_direct)


def _skill_decision(obj: _Objective, q: int, acquisition: AcquisitionSettings, info: dict) -> int:
    """Measure the fitted model's LOO skill (``measure_skill``); the number of the ``q`` slots to explore.

    Records ``info['skill']``: the measurement, ``explore_fraction`` and the decision in words.
    """
    if not acquisition.skill_aware:
        return 0
    skill = measure_skill(obj.model, confidence=acquisition.skill_confidence)
    if skill is None:
        info["skill"] = {"spearman_loo": None, "calibration": None, "n_labels": len(obj.rows), "explore_fraction": 0.0,
                         "decision": "not measured: the surrogate offers no leave-one-out predictions or has too "
                                     "few labels"}
        return 0
    info["skill"] = skill.as_dict()
    return int(min(q, round(skill.explore_fraction * q)))


def _explore(obj: _Objective, avail, chosen, tr, pending_idx, k, acquisition, rng, info) -> np.ndarray:
    """``k`` space-filling picks (positions into ``avail``) among a uniform random subsample of the
    rows not chosen, by max-min distance from the labelled, pending and chosen rows."""
    free = np.setdiff1d(np.arange(len(avail)), chosen)
    m = int(min(len(free), acquisition.explore_subsample * k))
    sub = np.sort(rng.choice(free, size=m, replace=False))
    ref = np.concatenate([tr, as_rows(pending_idx), avail[chosen]]).astype(int)
    rows = space_filling(obj.X, avail[sub], ref, k, obj.X.bounds)
    pos = np.searchsorted(avail, rows)
    info["explore_picks"] = int(len(pos))
    info["explore_rule"] = (f"{len(pos)} of the batch by max-min distance among {m} random available candidates "
                            "(space filling: the model's ranking is not trusted)")
    return pos


def _screen_pool(obj: _Objective, avail, q, goal, kind, acquisition, info):
    """Screen step: posterior mean and std of every available row (float32 on request) and its score.

    Returns:
        mean, std, score (``m`` each), the shortlist order of a UCB beta spread (or None),
        and the ``PoolScore``.
    """
    model, cs, precision = obj.model, acquisition.chunk_size, acquisition.pool_precision
    if obj.gp and precision == "float32" and model.screening_device().type == "cuda":
        cs = model.screening_chunk_size(cs)
        info["screening_device"] = "cuda"
    if obj.gp:
        mean, std = screen(obj.X, avail, cs, lambda Xc, _: model.predict(Xc, precision=precision))
    else:
        mean, std = screen(obj.X, avail, cs, lambda Xc, _: model.predict(Xc))
    scorer = PoolScore(kind, goal, acquisition.beta)
    if kind == "logei":
        scorer.best_f = float(np.max(obj.target))
    elif kind == "qlognei":  # noisy incumbent: the best posterior mean among the labelled
        scorer.best_f = float(np.max(model.predict(np.asarray(obj.X[obj.rows], dtype=float))[0]))
    scorer.noise = model.noise_variance() if obj.gp else 0.0
    if kind == "ptop":
        scorer.best_f = top_threshold(mean, np.sqrt(std**2 + scorer.noise), obj.target, acquisition.top_fraction)
        t = scorer.best_f if obj.unwarp is None else obj.unwarp([scorer.best_f], [0])[0][0]
        info["top_threshold"] = float(obj.sign * t)
    score = scorer(mean, std)
    order = None
    if kind in ("ucb", "thompson"):
        betas = slot_betas(acquisition, q)
        if betas[-1] != betas[0]:  # shortlist: best of the most and the least exploring slot
            order = np.maximum(_rank01(mean + math.sqrt(betas[0]) * std), _rank01(mean + math.sqrt(betas[-1]) * std))
    return mean, std, score, order, scorer


def _exact_shortlist(obj: _Objective, avail, mean, std, score, order, scorer, acquisition, info):
    """Shortlist step: the top ``acquisition.shortlist`` rows, re-scored in float64 after a float32 screen.

    Updates ``mean``, ``std`` and ``score`` at the shortlist in place.

    Returns:
        shortlist positions into ``avail`` (best first) and their ``K x d`` features.
    """
    K = int(min(acquisition.shortlist, len(avail)))
    short = shortlist(score if order is None else order, K)
    info["shortlist_size"] = K
    X_short = np.asarray(obj.X[avail[short]], dtype=float)
    if obj.gp and acquisition.pool_precision != "float64":  # exact numbers for the decision
        mean[short], std[short] = obj.model.predict(X_short)
        score[short] = scorer(mean[short], std[short])
        if order is None:
            o = np.argsort(-score[short], kind="stable")
            short, X_short = short[o], X_short[o]
    return short, X_short


def _argmax_per_slot(rows) -> np.ndarray:
    """One pick per row of values (``K`` each): its argmax among the positions not yet picked."""
    picks: list[int] = []
    for row in rows:
        row = row.copy()
        row[picks] = -np.inf
        picks.append(int(np.argmax(row)))
    return np.asarray(picks, dtype=int)


def _batch(obj: _Objective, kind, goal, short, X_short, X_pend, score, scorer, q, acquisition, rng, info):
    """Batch step: the ``q`` picks on the shortlist (positions) and the value of each pick."""
    model = obj.model
    if isinstance(model, RandomForestSurrogate) and kind == "thompson":
        P = model.tree_predictions(X_short)  # n_trees x K
        pick = _argmax_per_slot(P[rng.integers(P.shape[0])] for _ in range(q))
        info["batch_rule"] = "Thompson: argmax of one random tree per slot"
        return pick, score[short[pick]]
    if not obj.gp:
        what = "random forest" if isinstance(model, RandomForestSurrogate) else type(model).__name__
        info["batch_rule"] = f"top-q by pool score ({what} has no joint posterior)"
        return np.arange(q), score[short[:q]]
    if kind == "thompson":
        samples = model.sample_joint(X_short, q, rng)  # q x K
        pick = _argmax_per_slot(samples)
        info["batch_rule"] = "Thompson: argmax of one joint posterior sample on the shortlist per slot"
        return pick, samples[np.arange(q), pick]
    if acquisition.batch == "topq" or (kind == "window" and obj.window_direct and acquisition.batch == "believer"):
        info["batch_rule"] = f"top-q {kind} pool score" + (
            " (maximises the expected number of hits)" if kind == "window" else ", no conditioning"
        )
        return np.arange(q), score[short[:q]]  # the shortlist is sorted by the pool score
    if acquisition.batch == "believer":
        info["batch_rule"] = f"sequential greedy {kind} with kriging-believer fantasies on the shortlist"
        return _believer(model, kind, X_short, X_pend, q, scorer.best_f, slot_betas(acquisition, q))
    info["batch_rule"] = f"sequential greedy MC {kind} on the shortlist, pending as X_pending"
    return _mc_batch(obj, kind, goal, X_short, X_pend, q, acquisition, rng, scorer.best_f)


def _believer(model, kind, X_short, X_pend, q, best_f, betas):
    """Kriging-believer greedy of the closed-form acquisition; for EI every conditioned point may
    raise the incumbent to its mean."""
    ei = kind in ("logei", "qlognei")

    def acquire(i, m, sd, best, noise):
        if ei:
            return log_expected_improvement(m, sd, best)
        if kind == "ptop":  # best is the top threshold here
            return log_ndtr((m - best) / np.sqrt(sd**2 + noise))
        return m + math.sqrt(betas[i]) * sd

    every = (np.ones(len(X_pend), dtype=bool), np.ones(len(X_short), dtype=bool)) if ei else (None, None)
    return believer_batch(model, X_short, X_pend, q, acquire, best_f=best_f, raise_pending=every[0],
                          raise_short=every[1])


def _window_objective(lo: float, hi: float, tau: float):
    """Smoothed indicator of ``lo <= f <= hi`` as a botorch MC objective."""
    from botorch.acquisition.objective import GenericMCObjective

    def obj(samples, X=None):
        f = samples[..., 0]
        out = torch.ones_like(f)
        if math.isfinite(lo):
            out = out * torch.sigmoid((f - lo) / tau)
        if math.isfinite(hi):
            out = out * torch.sigmoid((hi - f) / tau)
        return out

    return GenericMCObjective(obj)


def _mc_batch(obj: _Objective, kind, goal, X_short, X_pend, q, acquisition, rng, threshold):
    """botorch's Monte-Carlo qLogEI / qLogNEI / qUCB / window qSimpleRegret, sequential greedy."""
    from botorch.acquisition.logei import qLogExpectedImprovement, qLogNoisyExpectedImprovement
    from botorch.acquisition.monte_carlo import qSimpleRegret, qUpperConfidenceBound
    from botorch.acquisition.utils import prune_inferior_points
    from botorch.sampling import SobolQMCNormalSampler

    dt = torch.float64
    seed = int(rng.integers(2**31 - 1))
    sampler = SobolQMCNormalSampler(torch.Size([acquisition.mc_samples]), seed=seed)
    X_pending = torch.as_tensor(X_pend, dtype=dt) if len(X_pend) else None
    gp = obj.model.model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kind == "logei":
            acqf = qLogExpectedImprovement(gp, best_f=float(np.max(obj.target)), sampler=sampler)
        elif kind == "qlognei":
            X_base = torch.as_tensor(np.asarray(obj.X[obj.rows], dtype=float), dtype=dt)
            # prune here with a seeded sampler: inside qLogNEI the pruning draws from torch's global generator
            X_base = prune_inferior_points(gp, X_base, sampler=SobolQMCNormalSampler(torch.Size([2048]), seed=seed))
            acqf = qLogNoisyExpectedImprovement(
                gp, X_baseline=X_base, sampler=sampler, prune_baseline=False, cache_root=True
            )
        elif kind == "ucb":
            acqf = qUpperConfidenceBound(gp, beta=acquisition.beta, sampler=sampler)
        else:  # window, or ptop: the window (threshold, inf)
            lo, hi = (goal.lo, goal.hi) if kind == "window" else (threshold, math.inf)
            tau = 1e-2 * float(np.std(obj.target) + 1e-12)
            acqf = qSimpleRegret(gp, sampler=sampler, objective=_window_objective(lo, hi, tau))
        return greedy_mc_batch(acqf, torch.as_tensor(X_short, dtype=dt), q, X_pending)


def top_threshold(mean: np.ndarray, std: np.ndarray, observed: np.ndarray, fraction: float) -> float:
    """Value ``t`` such that a ``fraction`` of the pool is expected to lie above it.

    The unlabelled candidates contribute ``P(y_i > t) = Phi((mean_i - t) / std_i)`` (``m``
    each) and the labelled ones their observed values (``n``); solved by bisection.
    """
    mean, std = np.asarray(mean, float), np.maximum(np.asarray(std, float), 1e-12)
    observed = np.asarray(observed, float)
    n_total = len(mean) + len(observed)
    target = fraction * n_total

    def expected_above(t):
        return float(np.sum(ndtr((mean - t) / std)) + np.sum(observed > t))

    lo = float(min(np.min(mean - 12 * std), np.min(observed, initial=np.inf)))
    hi = float(max(np.max(mean + 12 * std), np.max(observed, initial=-np.inf)))
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        if expected_above(mid) > target:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)
