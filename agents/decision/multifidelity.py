"""Cost-aware choice of which candidate to measure at which fidelity (the multi-fidelity policy's batch).

``choose_requests`` runs the shared pipeline on (candidate, fidelity) pairs: the pairs that
may still be asked (available), a ``MultiFidelityGP`` fitted by the caller (fit), every
candidate's best pair rate over the pool in chunks (screen), the top ``settings.shortlist``
candidates (shortlist), and a greedy batch with kriging-believer fantasies across all
fidelities (batch). Its criterion is documented on the function.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal, NamedTuple

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy.special import ndtri

from matloop.agents.decision.acquisition import log_expected_improvement, log_window_probability
from matloop.agents.decision.batch import condition
from matloop.agents.decision.pipeline import as_rows, screen, shortlist
from matloop.core.goals import Goal

if TYPE_CHECKING:
    from matloop.agents.modelling.multifidelity import MultiFidelityGP

__all__ = ["ChoiceSettings", "FidelityRequest", "choose_requests"]


class ChoiceSettings(BaseModel):
    """How ``choose_requests`` scores (candidate, fidelity) pairs."""

    model_config = ConfigDict(extra="forbid")

    criterion: Literal["ucb", "hits_per_cost", "variance_per_cost"] = Field(
        "ucb",
        description="'ucb' (default): candidates in the order of the single-fidelity default's utility, UCB "
        "on the top fidelity's goal score (y, -y, or -distance to the window), each asked at the fidelity "
        "with the best screen-then-confirm rate of 'hits_per_cost'; 'hits_per_cost': expected top-fidelity "
        "utility (P(in window) or EI) per unit of expected cost of screen-then-confirm vs confirm-now, for "
        "candidate and fidelity alike (see choose_requests); 'variance_per_cost': reduction of the "
        "top-fidelity posterior variance per unit cost on the shortlist by top-fidelity acquisition",
    )
    beta: float = Field(
        1.0, ge=0.0,
        description="'ucb': exploration weight, mean + sqrt(beta) * std of the goal score, as "
        "agent.acquisition.beta of the single-fidelity default",
    )
    shortlist: int = Field(300, ge=1, description="candidates scored jointly (with fantasies) for the batch")
    quadrature: int = Field(
        64, ge=8, le=1024, description="equal-probability quadrature nodes over the outcome of a cheaper measurement"
    )


class FidelityRequest(NamedTuple):
    """One chosen request.

    Attributes:
        index: pool index of the candidate.
        fidelity: fidelity to measure it at.
        score: the criterion's value when it was picked (``hits_per_cost``: natural log of
            expected top-fidelity utility per unit cost; ``variance_per_cost``: top-fidelity
            variance reduction per unit cost, property units^2).
        rationale: one readable sentence saying why.
    """

    index: int
    fidelity: int
    score: float
    rationale: str


def _log_utility(goal: Goal, mu: np.ndarray, sd: np.ndarray, best: float) -> np.ndarray:
    """log of what one top-fidelity measurement is worth: P(in window) or expected improvement."""
    if goal.kind == "window":
        return log_window_probability(mu, sd, goal.lo, goal.hi)
    if goal.kind == "max":
        return log_expected_improvement(mu, sd, best)
    return log_expected_improvement(-mu, sd, -best)


def _score_ucb(goal: Goal, mu: np.ndarray, sd: np.ndarray, beta: float, nodes: np.ndarray) -> np.ndarray:
    """UCB of the goal score under ``y ~ N(mu, sd^2)``: ``E[s] + sqrt(beta) SD[s]``.

    ``s`` is ``y`` (max), ``-y`` (min) or minus the distance to the window, the score the
    single-fidelity default ranks by (``acquisition.kind: auto``). For a window the moments
    come from the equal-probability quadrature ``nodes``, because ``s`` is not Gaussian.
    """
    if goal.kind == "max":
        return mu + math.sqrt(beta) * sd
    if goal.kind == "min":
        return -mu + math.sqrt(beta) * sd
    y = mu[:, None] + sd[:, None] * nodes[None, :]
    s = -np.maximum(np.maximum(goal.lo - y, y - goal.hi), 0.0)
    return s.mean(axis=1) + math.sqrt(beta) * s.std(axis=1)


def _screen_log_rate(
    goal: Goal, mu, var_y, s2, best, c_m: float, c_top: float, nodes, log_w
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Best log rate of "measure at m, then confirm at the top if it looks worth it", per candidate.

    Args:
        mu, var_y: ``K`` top-fidelity predictive mean and variance of a new top measurement.
        s2: ``K`` variance of the top-fidelity mean's shift that the fidelity-m outcome causes.

    Returns:
        ``K`` log rates, ``K`` promotion thresholds (utility), ``K`` promotion probabilities.
    """
    s = np.sqrt(np.clip(s2, 0.0, None))
    mu_after = mu[:, None] + s[:, None] * nodes[None, :]  # K x G
    sd_after = np.sqrt(np.clip(var_y - s2, 1e-12, None))[:, None]
    lu = _log_utility(goal, mu_after, np.broadcast_to(sd_after, mu_after.shape), best)
    # the outcomes must average to today's utility (tower property, for P(in window) and for
    # EI alike); removing the quadrature's error keeps a screen from creating expected hits
    lu_now = _log_utility(goal, mu, np.sqrt(var_y), best)
    lu_mean = np.logaddexp.reduce(lu + log_w[None, :], axis=1)
    lu = lu + np.where(np.isfinite(lu_mean) & np.isfinite(lu_now), lu_now - lu_mean, 0.0)[:, None]
    order = np.argsort(-lu, axis=1)
    lu_sorted = np.take_along_axis(lu, order, axis=1)
    lw_sorted = log_w[order]
    log_hits = np.logaddexp.accumulate(lw_sorted + lu_sorted, axis=1)
    p_promote = np.cumsum(np.exp(lw_sorted), axis=1)
    log_rate = log_hits - np.log(c_m + c_top * p_promote)
    j = np.argmax(log_rate, axis=1)
    rows = np.arange(len(mu))
    return log_rate[rows, j], np.exp(lu_sorted[rows, j]), p_promote[rows, j]


def choose_requests(
    model: MultiFidelityGP,
    X_pool: np.ndarray,
    costs: dict[int, float],
    top_fidelity: int,
    goal: Goal,
    q: int,
    exclude_by_fidelity: dict[int, np.ndarray] | None,
    rng: np.random.Generator,
    pending: list[tuple[int, int]] | None = None,
    *,
    settings: ChoiceSettings | None = None,
    max_cost: float | None = None,
) -> list[FidelityRequest]:
    """Choose up to ``q`` (candidate, fidelity) requests, trading information against cost.

    **Criterion** ``hits_per_cost``. Only top-fidelity measurements count
    (a candidate is found when its top-fidelity value meets the goal), so every request is
    valued in the currency of the goal, top-fidelity utility ``u``, per unit of expected
    cost. ``u`` is the probability that a new top-fidelity measurement lies in the window
    (window goals) or its expected improvement over the best top-fidelity posterior mean
    at a top-fidelity training point (max/min goals). For candidate ``x``:

    * confirm now, at the top fidelity T: ``rate_T(x) = u(mu(x), sigma_y(x)) / c_T``, with
      the top-fidelity posterior mean ``mu`` and the predictive spread ``sigma_y`` of a new
      top measurement (latent variance plus the top fidelity's noise);
    * screen first, at a cheaper fidelity m: the outcome ``y_m(x)`` is not known yet, but
      under the model it moves the top-fidelity mean to ``mu + s_m z`` (z standard normal)
      and shrinks the variance to ``sigma_y^2 - s_m^2``, where
      ``s_m^2 = Cov(f_T(x), f_m(x))^2 / (Var f_m(x) + noise_m)`` is exactly the reduction
      in top-fidelity posterior variance at x that observing it at m brings. The plan
      "measure at m, then confirm at T if the updated ``u`` clears a threshold t" earns
      ``E[u' 1{u' >= t}]`` for ``c_m + c_T P(u' >= t)`` expected cost; ``rate_m(x)`` is
      that ratio at the best t (equal-probability quadrature over z, normalised so the
      outcomes average to today's ``u``; the best t is a threshold on the sorted outcomes).
      With ``c_m >= c_T`` screening can never win: ``E[u' 1{u' >= t}] <= u``.

    A cheap fidelity therefore wins where it is informative (``s_m`` large: strongly
    correlated, low noise) and the candidate is uncertain, and loses to confirming when the
    candidate is already likely good or the cheap fidelity says little (``s_m ~ 0`` makes
    ``rate_m < rate_T``). Pairs are ranked by these rates over the whole pool (streamed),
    the best ``settings.shortlist`` candidates are kept, and the batch is built greedily:
    each pick (and first every pending request) is conditioned into the joint posterior of
    the shortlist across all fidelities as a kriging-believer fantasy (its noisy value at
    its fidelity equals the posterior mean: means stay, covariances shrink), and ``s_m`` is
    recomputed from the conditioned covariance, so that a later pick is valued only for
    the information the batch has not already bought: a batch does not ask the same thing
    twice, directly or through a strongly correlated neighbour. ``mu`` and ``sigma_y``
    stay the unconditioned ones, because expected hits add up over a batch (a believer
    fantasy would otherwise make a confirmed point's neighbours look certain). At most one
    request per candidate per batch (a screen's outcome decides the confirmation later).

    ``ucb`` (the default). The same per-fidelity rates decide only *where* a candidate is
    measured; *which* candidates are asked follows the single-fidelity default's utility: UCB
    on the goal score (``y``, ``-y`` or minus the distance to the window) from the top
    fidelity's latent posterior, ``E[s] + sqrt(beta) SD[s]``. The shortlist is the best
    candidates by that UCB, and the greedy batch takes the highest UCB on the posterior
    conditioned on the batch so far (kriging believer, as the single-fidelity batch), asked
    at its best-rate fidelity. Ranking by the window probability instead (``hits_per_cost``)
    concentrates on candidates already predicted inside the window and was no cheaper than a
    single fidelity on the experimental-vs-PBE band gaps (README, "Multi-fidelity").

    ``variance_per_cost`` (ablation): shortlist by top-fidelity acquisition ``u`` and rank
    pairs by ``s_m^2 / c_m`` (``s_T^2 = sigma^4 / (sigma^2 + noise_T)`` for the top),
    with the same greedy fantasies.

    Args:
        model: a fitted ``MultiFidelityGP``.
        X_pool: ``N x d`` pool features (streamed by rows).
        costs: cost of one measurement at each fidelity; its keys are the fidelities that
            may be requested (the top one included).
        top_fidelity: the fidelity that counts.
        goal: what "good" means at the top fidelity.
        q: most requests to return.
        exclude_by_fidelity: pool indices already measured (or requested) at each
            fidelity; never asked again. A candidate measured at fidelity m is not asked
            at a lower one, and one measured at the top is done.
        rng: breaks exact ties (no other randomness).
        pending: (pool index, fidelity) pairs still running: fantasised, and their
            candidates are not asked again in this batch.
        settings: criterion settings.
        max_cost: stop adding requests once the next would take the batch's summed cost
            above this (cheaper pairs are still tried).

    Returns:
        Requests in the order picked. Fewer than ``q`` when the pool runs out or the cost
        cap binds.
    """
    settings = settings or ChoiceSettings()
    fids = _check_costs(model, costs, top_fidelity)
    c = np.array([float(costs[f]) for f in fids])
    pending = [(int(i), int(f)) for i, f in (pending or [])]
    allowed = _allowed_pairs(X_pool.shape[0], fids, exclude_by_fidelity, pending)
    avail = np.flatnonzero(allowed.any(axis=1))
    if q <= 0 or len(avail) == 0:
        return []
    noise = np.array([model.noise_variance(f) for f in fids])  # property units^2, per fidelity
    scorer = _PairScorer(settings, goal, c, noise, _top_incumbent(model, goal, top_fidelity))
    key = screen(X_pool, avail, model.settings.chunk_size, scorer.screen(model, fids, top_fidelity, allowed))
    key = key + 1e-9 * rng.random(len(key))  # exact ties only
    short = avail[shortlist(key, settings.shortlist, ties_by_position=True)]
    return _greedy_pairs(model, X_pool, short, pending, fids, allowed[short], scorer, q, max_cost)


def _check_costs(model: MultiFidelityGP, costs: dict[int, float], top_fidelity: int) -> list[int]:
    """The requestable fidelities, ascending (the top one last); raises ValueError on bad costs."""
    model.require_fit()
    if top_fidelity not in costs:
        raise ValueError(f"costs has no entry for the top fidelity {top_fidelity}")
    if any(not (c > 0) for c in costs.values()):
        raise ValueError(f"costs must be positive, got {costs}")
    fids = sorted(int(f) for f in costs)
    if fids[-1] != top_fidelity:
        raise ValueError(f"top_fidelity {top_fidelity} must be the highest fidelity in costs {fids}")
    if fids[-1] >= model.n_fidelities:
        raise ValueError(f"the model knows {model.n_fidelities} fidelities, costs name {fids}")
    return fids


def _allowed_pairs(N: int, fids: list[int], exclude_by_fidelity, pending) -> np.ndarray:
    """``N x F`` flags: may candidate i be asked at ``fids[k]``? Not at or below a fidelity it
    was measured at, and not at all while a request for it is pending."""
    allowed = np.ones((N, len(fids)), dtype=bool)
    highest_done = np.full(N, -1)
    for f, idx in (exclude_by_fidelity or {}).items():
        idx = as_rows(idx)
        if len(idx):
            highest_done[idx] = np.maximum(highest_done[idx], int(f))
    for k, f in enumerate(fids):
        allowed[:, k] &= highest_done < f
    for i, _ in pending:
        allowed[i, :] = False
    return allowed


def _top_incumbent(model: MultiFidelityGP, goal: Goal, top_fidelity: int) -> float:
    """For EI: the best top-fidelity posterior mean at a top-fidelity training point (any
    training point while there is none); NaN for a window goal."""
    if goal.kind == "window":
        return float("nan")
    Xtr, fid = model.training_features()
    tr_top = fid == top_fidelity
    mb, _ = model.predict(Xtr[tr_top] if np.any(tr_top) else Xtr, top_fidelity)
    return float(np.max(mb) if goal.kind == "max" else np.min(mb))


class _PairScorer:
    """Scores of (candidate, fidelity) pairs under ``settings.criterion`` (see ``choose_requests``)."""

    def __init__(self, settings: ChoiceSettings, goal: Goal, costs: np.ndarray, noise: np.ndarray, best: float):
        self.settings, self.goal, self.c, self.noise, self.best = settings, goal, costs, noise, best
        self.T = len(costs) - 1  # position of the top fidelity
        # equal-probability nodes (midpoint quantiles of z): u' is nearly a step in z when the
        # screen is very informative, where Gauss-Hermite nodes are far too coarse
        self.nodes = ndtri((np.arange(settings.quadrature) + 0.5) / settings.quadrature)
        self.log_w = np.full(settings.quadrature, -math.log(settings.quadrature))

    def scores(self, mu_top, var_top, cov_top_m, var_m, var_top_now=None) -> tuple[np.ndarray, dict]:
        """``K x F`` scores of every (candidate, fidelity) pair and details for rationales.

        ``mu_top``/``var_top`` are the top fidelity's marginal posterior (what a
        confirmation is worth); ``cov_top_m``, ``var_m`` and ``var_top_now`` come from the
        posterior conditioned on the batch so far (what a measurement still teaches).
        """
        T, F, c, noise = self.T, len(self.c), self.c, self.noise
        var_top_now = var_top if var_top_now is None else np.minimum(var_top_now, var_top)
        var_y = var_top + noise[T]
        s2 = np.zeros((len(mu_top), F))
        for k in range(F):
            s2[:, k] = np.clip(cov_top_m[:, k] ** 2 / (var_m[:, k] + noise[k]), 0.0, var_top_now)
        lu = _log_utility(self.goal, mu_top, np.sqrt(var_y), self.best)
        K_ = len(mu_top)
        detail = {"log_u": lu, "s2": s2, "var_top": var_top, "t": np.zeros((K_, F)), "p": np.ones((K_, F))}
        S = np.empty((len(mu_top), F))
        if self.settings.criterion == "variance_per_cost":
            S[:] = s2 / c[None, :]
            return S, detail
        S[:, T] = lu - math.log(c[T])
        for k in range(T):
            S[:, k], detail["t"][:, k], detail["p"][:, k] = _screen_log_rate(
                self.goal, mu_top, var_y, s2[:, k], self.best, c[k], c[T], self.nodes, self.log_w
            )
        return S, detail

    def ucb(self, mu_top: np.ndarray, var_top: np.ndarray) -> np.ndarray:
        """``criterion: ucb``: the UCB of the goal score from the top fidelity's latent posterior."""
        return _score_ucb(self.goal, mu_top, np.sqrt(np.clip(var_top, 0.0, None)), self.settings.beta, self.nodes)

    def screen(self, model: MultiFidelityGP, fids: list[int], top: int, allowed: np.ndarray):
        """The pool screen: per chunk, each candidate's shortlist key (its best allowed pair
        score; for ``variance_per_cost`` its top-fidelity acquisition)."""

        def key_chunk(Xc, rows):
            mean, cov = model.predict_fidelities(Xc)
            S, detail = self.scores(mean[:, top], cov[:, top, top], cov[:, top, fids], cov[:, fids, fids])
            if self.settings.criterion == "variance_per_cost":
                return detail["log_u"]  # shortlist by top-fidelity acquisition
            if self.settings.criterion == "ucb":
                return np.where(allowed[rows].any(axis=1), self.ucb(mean[:, top], cov[:, top, top]), -np.inf)
            return np.max(np.where(allowed[rows], S, -np.inf), axis=1)

        return key_chunk


def _greedy_pairs(model: MultiFidelityGP, X_pool, short, pending, fids, ok, scorer: _PairScorer, q, max_cost):
    """The batch: greedy pairs on the shortlist with kriging-believer fantasies across all fidelities.

    One joint posterior over the pending pairs and shortlist x fidelities; pending pairs are
    conditioned in first, then each pick, and ``s_m`` is recomputed from the conditioned
    covariance while ``mu`` and ``sigma_y`` stay the marginal ones.
    """
    F, K, T, P = len(fids), len(short), scorer.T, len(pending)
    c, noise = scorer.c, scorer.noise
    Xj = np.vstack(
        ([np.asarray(X_pool[[i for i, _ in pending]], dtype=float)] if P else [])
        + [np.asarray(X_pool[short], dtype=float)] * F
    )
    fj = np.concatenate([np.array([f for _, f in pending], dtype=int), np.repeat(np.array(fids), K)])
    mu_j, Sig = model.joint(Xj, fj)
    noise_of = {f: noise[k] for k, f in enumerate(fids)}
    pos = P + np.arange(F)[None, :] * K + np.arange(K)[:, None]  # K x F positions in the joint
    mu_top = mu_j[pos[:, T]]
    var_top = np.clip(np.diag(Sig)[pos[:, T]], 1e-12, None)  # marginal: expected hits add over a batch
    for p, (_, f) in enumerate(pending):
        Sig = condition(Sig, p, noise_of.get(f, model.noise_variance(f)))
    ok = ok.copy()
    out: list[FidelityRequest] = []
    spent = 0.0
    while len(out) < q and ok.any():
        dg = np.diag(Sig)
        cov_top_m = Sig[pos[:, T][:, None], pos]
        var_m = np.clip(dg[pos], 1e-12, None)
        S, detail = scorer.scores(mu_top, var_top, cov_top_m, var_m, np.clip(dg[pos[:, T]], 1e-12, None))
        fits = ok & (c[None, :] <= (math.inf if max_cost is None else max_cost - spent) + 1e-12)
        if not fits.any():
            break
        S = np.where(fits, S, -np.inf)
        if scorer.settings.criterion == "ucb":
            # the candidate by the single-fidelity utility on the conditioned posterior (a believer
            # batch, as the single-fidelity default), then its fidelity by the screen-or-confirm rate
            ucb = np.where(fits.any(axis=1), scorer.ucb(mu_top, dg[pos[:, T]]), -np.inf)
            r = int(np.argmax(ucb))
            ks = np.flatnonzero(fits[r])
            k = int(ks[np.argmax(S[r, ks])])  # the cheapest fitting fidelity when no rate is finite
            why = (_rationale(scorer.settings, scorer.goal, fids, c, k, T, S[r], detail, r)
                   + f"; candidate chosen by the UCB of its goal score, {ucb[r]:.3g}")
        else:
            r, k = np.unravel_index(int(np.argmax(S)), S.shape)
            why = _rationale(scorer.settings, scorer.goal, fids, c, k, T, S[r], detail, r)
        out.append(FidelityRequest(int(short[r]), fids[k], float(S[r, k]), why))
        spent += c[k]
        ok[r, :] = False
        Sig = condition(Sig, pos[r, k], noise[k])
    return out


def _rationale(settings, goal, fids, c, k, T, S_row, detail, r) -> str:
    u_name = "P(in window)" if goal.kind == "window" else "expected improvement"
    u = math.exp(detail["log_u"][r])
    frac = detail["s2"][r, k] / max(detail["var_top"][r], 1e-300)
    if settings.criterion == "variance_per_cost":
        return (
            f"fidelity {fids[k]} (cost {c[k]:g}) removes {frac:.0%} of the top-fidelity variance here: "
            f"{S_row[k]:.3g} per unit cost (top-fidelity {u_name} {u:.3g})"
        )
    per = "hits" if goal.kind == "window" else "improvement"
    if k == T:
        alt = max(range(T), key=lambda j: S_row[j]) if T else None
        tail = ""
        if alt is not None and np.isfinite(S_row[alt]):
            tail = f"; screening at fidelity {fids[alt]} would give {math.exp(S_row[alt]):.3g}"
        return (
            f"confirm at fidelity {fids[k]} (cost {c[k]:g}): {u_name} {u:.3g}, "
            f"{math.exp(S_row[k]):.3g} {per} per unit cost{tail}"
        )
    return (
        f"screen at fidelity {fids[k]} (cost {c[k]:g}): {u_name} now {u:.3g}; the result explains {frac:.0%} of the "
        f"top-fidelity variance; screen-then-confirm earns {math.exp(S_row[k]):.3g} {per} per unit cost "
        f"(confirm if {u_name} >= {detail['t'][r, k]:.2g}, chance {detail['p'][r, k]:.0%}) vs "
        f"{math.exp(S_row[T]):.3g} confirming now at fidelity {fids[T]} (cost {c[T]:g})"
    )
