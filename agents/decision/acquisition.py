"""Batch selection over a candidate pool: fit a surrogate, score the pool, pick a q-batch.

``select_batch`` runs in three steps so that 10^5-10^6 candidates plan in seconds:

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
   posterior sample on the shortlist per batch slot. Random forests have no joint
   posterior: top-q by score.

Running botorch's ``optimize_acqf_discrete`` directly on a 10^5 pool with q=8 took 392 s
and 7 GB; steps 2 and 3 together take seconds (see ``benchmarks/planning.py``).
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from scipy.special import erfcx, log_ndtr, ndtr

from matloop.agents.modelling.surrogates import GPSurrogate, RandomForestSurrogate, SurrogateSettings, fit_pca, make_surrogate
from matloop.core.goals import Goal
from matloop.core.records import InputError

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
    mc_samples: int = Field(256, ge=16, description="quasi-Monte-Carlo samples for batch='mc'")
    pool_precision: Literal["float32", "float64"] = Field(
        "float32",
        description="GP posterior precision when screening the whole pool; the shortlist is always "
        "re-scored in float64 before the batch is chosen",
    )


@dataclass
class Selection:
    """A chosen batch.

    Attributes:
        indices: ``q`` indices into the pool, in the order chosen.
        acquisition: ``q`` pool scores of the chosen candidates (step 2: LogEI, UCB, window
            log-probability; NaN for random picks).
        mean: ``q`` posterior means in the property's own units (NaN for random picks).
        std: ``q`` posterior standard deviations (NaN for random picks).
        info: human-readable rationale: pool and shortlist sizes, best observed value,
            acquisition and surrogate kinds, the greedy batch values, timings in seconds.
    """

    indices: np.ndarray
    acquisition: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    info: dict = field(default_factory=dict)


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


def pool_bounds(X_pool: np.ndarray, chunk_size: int = 65536) -> np.ndarray:
    """``2 x d`` column-wise min and max of the pool, streamed in chunks."""
    lo = np.full(X_pool.shape[1], np.inf)
    hi = np.full(X_pool.shape[1], -np.inf)
    for a in range(0, X_pool.shape[0], chunk_size):
        c = np.asarray(X_pool[a : a + chunk_size], dtype=float)
        lo = np.minimum(lo, c.min(axis=0))
        hi = np.maximum(hi, c.max(axis=0))
    return np.stack([lo, hi])


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


def _random_selection(available, q, rng, info) -> Selection:
    idx = rng.choice(available, size=q, replace=False) if q else np.zeros(0, dtype=int)
    nan = np.full(len(idx), np.nan)
    return Selection(np.asarray(idx, dtype=int), nan, nan.copy(), nan.copy(), info)


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


def select_batch(
    X_pool: np.ndarray,
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
    """Choose ``q`` new pool candidates to evaluate next.

    Args:
        X_pool: ``N x d`` preprocessed features of the whole pool (float32 is fine; it is
            streamed in chunks and never copied whole).
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
    N = X_pool.shape[0]
    train_idx = np.asarray(train_idx, dtype=int).reshape(-1)
    y_train = np.asarray(y_train, dtype=float).reshape(-1)
    if len(train_idx) != len(y_train):
        raise ValueError(f"train_idx has {len(train_idx)} entries but y_train has {len(y_train)}")
    pending_idx = np.zeros(0, dtype=int) if pending_idx is None else np.asarray(pending_idx, dtype=int).reshape(-1)
    blocked = np.zeros(N, dtype=bool)
    for arr in (exclude, train_idx, pending_idx):
        if arr is not None and len(arr):
            blocked[np.asarray(arr, dtype=int)] = True
    available = np.flatnonzero(~blocked)
    q = int(min(q, len(available)))
    finite = np.isfinite(y_train)
    tr, y = train_idx[finite], y_train[finite]
    kind = _resolve_kind(goal, acquisition)
    info: dict = {
        "pool_size": int(N),
        "n_available": int(len(available)),
        "n_train": int(len(tr)),
        "n_pending": int(len(pending_idx)),
        "goal": str(goal),
        "acquisition": kind,
        "surrogate": surrogate.kind,
    }
    if len(y):
        s = goal.score(y)
        info["best_observed"] = float(y[int(np.argmax(s))])
    if len(tr) < 2 or len(np.unique(tr)) + len(pending_idx) < acquisition.init:
        info["reason"] = (
            f"random: {len(tr)} labels, {len(pending_idx)} pending (< 2 labels or < init={acquisition.init})"
        )
        info["seconds"] = {"total": time.perf_counter() - t0}
        return _random_selection(available, q, rng, info)
    if q == 0:
        info["reason"] = "no candidates left"
        e = np.zeros(0)
        return Selection(np.zeros(0, dtype=int), e, e, e, info)

    # ---- 1. fit: a window goal models the raw property; max/min model the score
    window_direct = goal.kind == "window" and kind == "window"
    target = y if window_direct else goal.score(y)
    sign = -1.0 if goal.kind == "min" and not window_direct else 1.0  # model units -> property units
    unwarp = None
    if surrogate.warp == "rank" and not window_direct:
        target, unwarp = rank_warp(target)
    t_fit = time.perf_counter()
    if surrogate.kind == "gp" and surrogate.pca_variance is not None:
        X_pool = fit_pca(X_pool, surrogate.pca_variance, acquisition.chunk_size)
        info["pca_components"] = int(X_pool.shape[1])
    model = make_surrogate(
        surrogate,
        rng=rng,
        bounds=pool_bounds(X_pool, acquisition.chunk_size) if surrogate.kind == "gp" else None,
        n_fraction_columns=n_fraction_columns,
    )
    if surrogate.fraction_block:
        info["kernel_structure"] = f"additive_fractions ({n_fraction_columns} fraction columns)"
    model.fit(np.asarray(X_pool[tr], dtype=float), target, yvar=label_noise(yvar, finite, surrogate, info))
    info["seconds_fit"] = time.perf_counter() - t_fit
    if isinstance(model, GPSurrogate):
        info["fit"] = model.fit_info

    # ---- 2. score the pool (closed form, streamed)
    t_score = time.perf_counter()
    order_score = None
    mean = np.empty(len(available))
    std = np.empty(len(available))
    cs = acquisition.chunk_size
    gp_model = isinstance(model, GPSurrogate)
    if gp_model and acquisition.pool_precision == "float32" and model.screening_device().type == "cuda":
        cs = model.screening_chunk_size(cs)
        info["screening_device"] = "cuda"
    for a in range(0, len(available), cs):
        chunk = X_pool[available[a : a + cs]]
        if gp_model:
            mean[a : a + cs], std[a : a + cs] = model.predict(chunk, precision=acquisition.pool_precision)
        else:
            mean[a : a + cs], std[a : a + cs] = model.predict(chunk)
    best_f = float("nan")
    if kind == "logei":
        best_f = float(np.max(target))
    elif kind == "qlognei":  # noisy incumbent: the best posterior mean among the labelled
        best_f = float(np.max(model.predict(np.asarray(X_pool[tr], dtype=float))[0]))
    noise = model.noise_variance() if gp_model else 0.0
    if kind == "ptop":
        best_f = top_threshold(mean, np.sqrt(std**2 + noise), target, acquisition.top_fraction)
        info["top_threshold"] = float(sign * best_f) if unwarp is None else float(sign * unwarp([best_f], [0])[0][0])

    def pool_score(mean, std):
        if kind in ("logei", "qlognei"):
            return log_expected_improvement(mean, std, best_f)
        if kind in ("ucb", "thompson"):
            return mean + math.sqrt(acquisition.beta) * std
        if kind == "ptop":
            return log_ndtr((mean - best_f) / np.sqrt(std**2 + noise))
        return log_window_probability(mean, std, goal.lo, goal.hi)

    score = pool_score(mean, std)
    if kind in ("ucb", "thompson"):
        betas = _slot_betas(acquisition, q)
        if betas[-1] != betas[0]:  # shortlist: best of the most and the least exploring slot
            order_score = np.maximum(
                _rank01(mean + math.sqrt(betas[0]) * std), _rank01(mean + math.sqrt(betas[-1]) * std)
            )
    info["seconds_score"] = time.perf_counter() - t_score

    # ---- 3. batch on the shortlist
    t_batch = time.perf_counter()
    K = int(min(acquisition.shortlist, len(available)))
    osc = score if order_score is None else order_score
    short = np.argpartition(-osc, K - 1)[:K] if K < len(available) else np.arange(len(available))
    short = short[np.argsort(-osc[short], kind="stable")]
    info["shortlist_size"] = int(K)
    X_short_np = np.asarray(X_pool[available[short]], dtype=float)
    if gp_model and acquisition.pool_precision != "float64":  # exact numbers for the decision
        mean[short], std[short] = model.predict(X_short_np)
        score[short] = pool_score(mean[short], std[short])
        if order_score is None:
            o = np.argsort(-score[short], kind="stable")
            short, X_short_np = short[o], X_short_np[o]
    if isinstance(model, RandomForestSurrogate):
        if kind == "thompson":
            P = model.tree_predictions(X_short_np)  # n_trees x K
            picks: list[int] = []
            for _ in range(q):
                row = P[rng.integers(P.shape[0])].copy()
                row[picks] = -np.inf
                picks.append(int(np.argmax(row)))
            pick = np.asarray(picks, dtype=int)
            info["batch_rule"] = "Thompson: argmax of one random tree per slot"
        else:
            pick = np.arange(q)  # the forest has no joint posterior: top-q by pool score
            info["batch_rule"] = "top-q by pool score (random forest has no joint posterior)"
        batch_values = score[short[pick]]
    elif kind == "thompson":
        samples = model.sample_joint(X_short_np, q, rng)  # q x K
        picks = []
        for i in range(q):
            row = samples[i].copy()
            row[picks] = -np.inf
            picks.append(int(np.argmax(row)))
        pick = np.asarray(picks, dtype=int)
        batch_values = samples[np.arange(q), pick]
        info["batch_rule"] = "Thompson: argmax of one joint posterior sample on the shortlist per slot"
    elif acquisition.batch == "topq" or (kind == "window" and window_direct and acquisition.batch == "believer"):
        pick = np.arange(q)  # the shortlist is sorted by the pool score
        batch_values = score[short[pick]]
        info["batch_rule"] = (
            f"top-q {kind} pool score"
            + (" (maximises the expected number of hits)" if kind == "window" else ", no conditioning")
        )
    elif acquisition.batch == "believer":
        pick, batch_values = _believer_batch(
            model, X_short_np, np.asarray(X_pool[pending_idx], dtype=float), q, kind, best_f,
            _slot_betas(acquisition, q),
        )
        info["batch_rule"] = f"sequential greedy {kind} with kriging-believer fantasies on the shortlist"
    else:
        pick, batch_values = _gp_batch(
            model, kind, X_short_np, q, X_pool, tr, pending_idx, target, goal, acquisition, rng, best_f
        )
        info["batch_rule"] = f"sequential greedy MC {kind} on the shortlist, pending as X_pending"
    info["batch_values"] = [float(v) for v in batch_values]
    info["mean_units"] = "property" if (window_direct or goal.kind != "window") else "score (-distance to window)"
    info["seconds_batch"] = time.perf_counter() - t_batch
    chosen = short[pick]
    info["seconds"] = {
        "fit": info.pop("seconds_fit"),
        "score": info.pop("seconds_score"),
        "batch": info.pop("seconds_batch"),
        "total": time.perf_counter() - t0,
    }
    m_out, s_out = mean[chosen], std[chosen]
    if unwarp is not None:
        m_out, s_out = unwarp(m_out, s_out)
    return Selection(
        indices=available[chosen].astype(int),
        acquisition=score[chosen],
        mean=sign * m_out,
        std=s_out,
        info=info,
    )


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


def _slot_betas(acquisition: AcquisitionSettings, q: int) -> np.ndarray:
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


def _believer_batch(model, X_short, X_pend, q, kind, best_f, betas):
    """Greedy picks on the shortlist (``K x d``) with kriging-believer conditioning.

    Pending points (``P x d``) are conditioned in first. Each conditioning on point ``j`` is
    the rank-1 update ``S <- S - S[:, j] S[j, :] / (S[j, j] + noise)``; the mean is unchanged
    because the fantasised value equals the posterior mean, and for EI the incumbent becomes
    ``max(best_f, mean[j])``.

    Returns:
        the ``q`` picked shortlist positions and the acquisition value at each pick.
    """
    P = len(X_pend)
    mu, S = model.joint(np.vstack([X_pend, X_short]) if P else X_short)
    noise = max(model.noise_variance(), 1e-10 * float(np.mean(np.diag(S))) + 1e-12)
    ei = kind in ("logei", "qlognei")

    def condition(S, j):
        col = S[:, j].copy()
        return S - np.outer(col, col) / (col[j] + noise)

    for j in range(P):
        S = condition(S, j)
        if ei:
            best_f = max(best_f, float(mu[j]))
    taken = np.zeros(len(X_short), dtype=bool)
    picks, values = [], []
    for i in range(q):
        m, sd = mu[P:], np.sqrt(np.clip(np.diag(S)[P:], 1e-12, None))
        if ei:
            a = log_expected_improvement(m, sd, best_f)
        elif kind == "ptop":  # best_f is the top threshold here
            a = log_ndtr((m - best_f) / np.sqrt(sd**2 + noise))
        else:
            a = m + math.sqrt(betas[i]) * sd
        a[taken] = -np.inf
        j = int(np.argmax(a))
        picks.append(j)
        values.append(float(a[j]))
        taken[j] = True
        S = condition(S, P + j)
        if ei:
            best_f = max(best_f, float(m[j]))
    return np.asarray(picks, dtype=int), np.asarray(values)


def _gp_batch(model, kind, X_short_np, q, X_pool, tr, pending_idx, target, goal, acquisition, rng, threshold):
    from botorch.acquisition.logei import qLogExpectedImprovement, qLogNoisyExpectedImprovement
    from botorch.acquisition.monte_carlo import qSimpleRegret, qUpperConfidenceBound
    from botorch.sampling import SobolQMCNormalSampler

    dt = torch.float64
    sampler = SobolQMCNormalSampler(torch.Size([acquisition.mc_samples]), seed=int(rng.integers(2**31 - 1)))
    X_pending = torch.as_tensor(np.asarray(X_pool[pending_idx], dtype=float), dtype=dt) if len(pending_idx) else None
    gp = model.model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kind == "logei":
            acqf = qLogExpectedImprovement(gp, best_f=float(np.max(target)), sampler=sampler)
        elif kind == "qlognei":
            X_base = torch.as_tensor(np.asarray(X_pool[tr], dtype=float), dtype=dt)
            acqf = qLogNoisyExpectedImprovement(
                gp, X_baseline=X_base, sampler=sampler, prune_baseline=True, cache_root=True
            )
        elif kind == "ucb":
            acqf = qUpperConfidenceBound(gp, beta=acquisition.beta, sampler=sampler)
        else:  # window, or ptop: the window (threshold, inf)
            lo, hi = (goal.lo, goal.hi) if kind == "window" else (threshold, math.inf)
            tau = 1e-2 * float(np.std(target) + 1e-12)
            acqf = qSimpleRegret(gp, sampler=sampler, objective=_window_objective(lo, hi, tau))
        X_short = torch.as_tensor(X_short_np, dtype=dt)
        return greedy_mc_batch(acqf, X_short, q, X_pending)
