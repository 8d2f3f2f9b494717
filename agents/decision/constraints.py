"""Constraints for pool-based selection: oracle failures (unknown) and property bounds (known).

* ``FailureClassifier`` learns where oracles fail (a relaxation that diverges, an SCF that
  never converges). Default model: Dirichlet-based GP classification (Milios et al. 2018),
  i.e. one exact botorch GP per class (``GPSurrogate``) regressing log-Dirichlet pseudo-targets
  with their known heteroscedastic noise; the class probability is the softmax of the two
  latent GPs, here ``sigmoid(f_ok - f_fail)`` under the probit approximation. With one class
  absent or too few labels it returns the smoothed base rate ``(k + 1) / (n + 2)``.
* ``ConstraintModel`` puts one surrogate on each constrained property (e.g.
  ``e_above_hull_ev_per_atom <= 0.1``) and gives ``P(feasible) = prod_c P(lo_c <= g_c <= hi_c)``.
* ``weighted_log_acquisition`` adds the two log-probabilities to a log acquisition
  (constrained EI, Gardner et al. 2014; Gelbart et al. 2014), and ``select_constrained`` is
  ``select_batch`` with that weighting.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from matloop.agents.decision.acquisition import (
    AcquisitionSettings,
    label_noise,
    log_expected_improvement,
    log_window_probability,
    select_batch,
)
from matloop.agents.decision.batch import believer_batch
from matloop.agents.decision.pipeline import (
    Pool,
    Selection,
    as_rows,
    available,
    check_labels,
    empty_selection,
    fit_surrogate,
    screen,
    selection_info,
    shortlist,
)
from matloop.agents.modelling.surrogates import GPSurrogate, SurrogateSettings, make_surrogate
from matloop.core.goals import Goal

__all__ = [
    "FailureClassifierSettings",
    "FailureClassifier",
    "ConstraintModel",
    "weighted_log_acquisition",
    "select_constrained",
    "Feasibility",
    "fit_feasibility",
]

_MIN_LOG = -1e6  # stands in for log(0): finite, so sums never give nan or -inf


class FailureClassifierSettings(BaseModel):
    """How the probability that an oracle succeeds at a candidate is modelled."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["gp", "rf"] = Field(
        "gp",
        description="'gp': Dirichlet-based GP classification (two exact botorch GPs); "
        "'rf': sklearn random forest classifier (for very many labels)",
    )
    alpha_epsilon: float = Field(
        0.01, gt=0.0, le=1.0, description="Dirichlet prior concentration of the absent class (gp)"
    )
    kernel: Literal["rbf", "matern52"] = Field("rbf", description="GP kernel, ARD over every feature (gp)")
    max_fit_points: int = Field(
        300, ge=2, description="labels used for the GP hyperparameter fit; the posterior uses all (gp)"
    )
    min_labels: int = Field(
        4, ge=2, description="below this many labels, or with one class absent, use the smoothed base rate"
    )
    n_trees: int = Field(200, ge=2, description="trees in the random forest (rf)")
    min_samples_leaf: int = Field(2, ge=1, description="random forest minimum samples per leaf (rf)")
    chunk_size: int = Field(16384, ge=1, description="candidates per chunk when predicting")


class FailureClassifier:
    """Probability that an oracle succeeds at a candidate, learnt from past failures.

    Args:
        settings: model settings (default: Dirichlet GP classification).
        bounds: ``2 x d`` feature bounds for the GP's input normalisation (pass the pool's).
        rng: source of the model seeds; None uses seed 0.
    """

    def __init__(
        self,
        settings: FailureClassifierSettings | None = None,
        *,
        bounds: np.ndarray | None = None,
        rng: np.random.Generator | None = None,
    ):
        self.settings = settings or FailureClassifierSettings()
        self.bounds = bounds
        self.seed = int(rng.integers(2**31 - 1)) if rng is not None else 0
        self.mode = "unfitted"
        self.base_rate = 0.5
        self.n_success = 0
        self.n_failed = 0
        self._gps: tuple[GPSurrogate, GPSurrogate] | None = None
        self._forest = None

    def fit(self, X: np.ndarray, failed: np.ndarray) -> None:
        """Fit on ``X`` (``n x d``) and ``failed`` (``n`` bool, True where the oracle failed)."""
        X = np.asarray(X, dtype=float)
        failed = np.asarray(failed, dtype=bool).reshape(-1)
        if len(X) != len(failed):
            raise ValueError(f"X has {len(X)} rows but failed has {len(failed)} entries")
        n = len(failed)
        self.n_failed = int(failed.sum())
        self.n_success = n - self.n_failed
        self.base_rate = (self.n_success + 1.0) / (n + 2.0)
        self._gps = self._forest = None
        if n < self.settings.min_labels or self.n_failed == 0 or self.n_success == 0:
            self.mode = "base_rate"
            return
        if self.settings.kind == "rf":
            from sklearn.ensemble import RandomForestClassifier

            self._forest = RandomForestClassifier(
                n_estimators=self.settings.n_trees,
                min_samples_leaf=self.settings.min_samples_leaf,
                random_state=self.seed,
                n_jobs=1,
            ).fit(X, (~failed).astype(int))
            self.mode = "rf"
            return
        # Dirichlet transform: alpha = alpha_eps + onehot(class); log-normal moment matching
        # gives a regression target and its noise variance per class (Milios et al. 2018)
        gp_settings = SurrogateSettings(
            kind="gp",
            kernel=self.settings.kernel,
            max_fit_points=self.settings.max_fit_points,
            chunk_size=self.settings.chunk_size,
        )
        gps = []
        for c, member in enumerate((failed, ~failed)):
            alpha = np.where(member, 1.0 + self.settings.alpha_epsilon, self.settings.alpha_epsilon)
            var = np.log1p(1.0 / alpha)
            gp = GPSurrogate(gp_settings, bounds=self.bounds, seed=self.seed + c)
            gp.fit(X, np.log(alpha) - 0.5 * var, var)
            gps.append(gp)
        self._gps = (gps[0], gps[1])
        self.mode = "gp"

    def log_prob_success(self, X: np.ndarray) -> np.ndarray:
        """log P(the oracle succeeds) at ``X`` (``m x d``), streamed in chunks; ``m`` values."""
        X = np.asarray(X)
        m = X.shape[0]
        if self.mode in ("unfitted", "base_rate"):
            return np.full(m, math.log(self.base_rate))
        out = np.empty(m)
        cs = self.settings.chunk_size
        for a in range(0, m, cs):
            xb = np.asarray(X[a : a + cs], dtype=float)
            if self.mode == "rf":
                p = self._forest.predict_proba(xb)[:, 1]
                eps = 1.0 / (self.n_success + self.n_failed + 2.0)
                out[a : a + cs] = np.log(np.clip(p, eps, 1.0 - eps))
            else:
                mu_fail, sd_fail = self._gps[0].predict(xb)
                mu_ok, sd_ok = self._gps[1].predict(xb)
                # E[sigmoid(z)] ~ sigmoid(mean / sqrt(1 + pi var / 8)) for z = f_ok - f_fail
                z = (mu_ok - mu_fail) / np.sqrt(1.0 + math.pi * (sd_ok**2 + sd_fail**2) / 8.0)
                out[a : a + cs] = -np.logaddexp(0.0, -z)
        return out

    def prob_success(self, X: np.ndarray) -> np.ndarray:
        """P(the oracle succeeds) at ``X`` (``m x d``); ``m`` values in ``(0, 1)``."""
        return np.exp(self.log_prob_success(X))

    def describe(self) -> dict:
        """What was fitted, for a selection's ``info``."""
        return {
            "model": self.mode,
            "n_success": self.n_success,
            "n_failed": self.n_failed,
            "base_rate": self.base_rate,
        }


def _edges(lo: float | None, hi: float | None) -> tuple[float, float]:
    lo = -math.inf if lo is None else float(lo)
    hi = math.inf if hi is None else float(hi)
    if math.isnan(lo) or math.isnan(hi) or lo > hi or (math.isinf(lo) and math.isinf(hi)):
        raise ValueError(f"a constraint needs lo <= hi with at least one finite edge, got [{lo}, {hi}]")
    return lo, hi


class ConstraintModel:
    """One surrogate per constrained property; ``P(feasible)`` assumes independent properties.

    Args:
        surrogate: settings of each property's surrogate (default GP).
        bounds: ``2 x d`` feature bounds for the GP's input normalisation (pass the pool's).
        rng: source of the model seeds; None uses seed 0.
        n_fraction_columns: trailing element-fraction columns of the features, for
            ``surrogate.kernel_structure='additive_fractions'``.
    """

    def __init__(
        self,
        surrogate: SurrogateSettings | None = None,
        *,
        bounds: np.ndarray | None = None,
        rng: np.random.Generator | None = None,
        n_fraction_columns: int = 0,
    ):
        self.surrogate = surrogate or SurrogateSettings()
        self.bounds = bounds
        self.rng = rng if rng is not None else np.random.default_rng(0)
        self.n_fraction_columns = int(n_fraction_columns)
        self.models: dict[str, dict] = {}

    def fit(self, constraints: Mapping[str, tuple[np.ndarray, np.ndarray, float | None, float | None]]) -> None:
        """Fit one surrogate per property.

        Args:
            constraints: ``name -> (X, values, lo, hi)``: ``n x d`` features of the labelled
                candidates, their ``n`` values (non-finite ones are ignored), and the
                feasible interval (``lo``/``hi`` None or infinite for a one-sided bound).
                With fewer than 2 finite values a property's probability is the smoothed
                fraction of feasible values seen, ``(k + 1) / (n + 2)``.
        """
        self.models = {}
        for name, (X, values, lo, hi) in constraints.items():
            lo, hi = _edges(lo, hi)
            values = np.asarray(values, dtype=float).reshape(-1)
            X = np.asarray(X, dtype=float).reshape(len(values), -1)
            ok = np.isfinite(values)
            X, values = X[ok], values[ok]
            inside = (values >= lo) & (values <= hi)
            entry = {"lo": lo, "hi": hi, "n_labels": int(len(values)), "n_feasible": int(inside.sum())}
            if len(values) < 2:
                entry["model"] = None
                entry["log_base_rate"] = math.log((inside.sum() + 1.0) / (len(values) + 2.0))
            else:
                model = make_surrogate(self.surrogate, rng=self.rng, bounds=self.bounds,
                                       n_fraction_columns=self.n_fraction_columns)
                model.fit(X, values)
                entry["model"] = model
            self.models[name] = entry

    def log_prob_each(self, X: np.ndarray) -> dict[str, np.ndarray]:
        """``name -> log P(lo <= g(x) <= hi)`` under each posterior, ``m`` values each."""
        X = np.asarray(X)
        out = {}
        for name, e in self.models.items():
            if e["model"] is None:
                out[name] = np.full(X.shape[0], e["log_base_rate"])
            else:
                mean, std = e["model"].predict(X)
                out[name] = log_window_probability(mean, std, e["lo"], e["hi"])
        return out

    def log_prob_feasible(self, X: np.ndarray) -> np.ndarray:
        """log P(every constraint holds) at ``X`` (``m x d``); 0 when there are no constraints."""
        total = np.zeros(np.asarray(X).shape[0])
        for lp in self.log_prob_each(X).values():
            total += np.maximum(lp, _MIN_LOG)
        return total

    def prob_feasible(self, X: np.ndarray) -> np.ndarray:
        """P(every constraint holds) = prod_c P(lo_c <= g_c(x) <= hi_c); ``m`` values."""
        return np.exp(self.log_prob_feasible(X))

    def describe(self) -> dict:
        """Per property: window, label counts and model kind, for a selection's ``info``."""
        return {
            name: {
                "lo": e["lo"],
                "hi": e["hi"],
                "n_labels": e["n_labels"],
                "n_feasible": e["n_feasible"],
                "model": "base_rate" if e["model"] is None else type(e["model"]).__name__,
            }
            for name, e in self.models.items()
        }


def weighted_log_acquisition(
    log_acq: np.ndarray,
    prob_feasible: np.ndarray | None = None,
    prob_success: np.ndarray | None = None,
    *,
    log_space: bool = False,
    min_log: float = _MIN_LOG,
) -> np.ndarray:
    """log acq + log P(feasible) + log P(success), every term clipped below at ``min_log``.

    Args:
        log_acq: ``m`` log acquisition values (LogEI, log window probability).
        prob_feasible: ``m`` probabilities that the known constraints hold (None: 1).
        prob_success: ``m`` probabilities that the oracle succeeds (None: 1).
        log_space: the two probability arguments are already log-probabilities (use the
            models' ``log_prob_*`` methods: they stay finite where probabilities underflow).
        min_log: floor that replaces ``-inf`` terms, so the result is always finite.

    Returns:
        ``m`` weighted log acquisition values.
    """
    out = np.maximum(np.asarray(log_acq, dtype=float), min_log)
    for p in (prob_feasible, prob_success):
        if p is None:
            continue
        p = np.asarray(p, dtype=float)
        if not log_space:
            with np.errstate(divide="ignore"):
                p = np.log(np.clip(p, 0.0, 1.0))
        out = out + np.maximum(np.nan_to_num(p, nan=min_log), min_log)
    return out


class Feasibility:
    """Known constraints and oracle failures of one planning step (``fit_feasibility``).

    Attributes:
        known: the fitted ``ConstraintModel`` (no properties: log P = 0 everywhere).
        failures: the fitted ``FailureClassifier``, or None when nothing has failed yet.
    """

    def __init__(self, known: ConstraintModel, failures: FailureClassifier | None):
        self.known, self.failures = known, failures

    def log_weights(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``m`` log P(feasible) and ``m`` log P(oracle success) at ``X`` (``m x d``)."""
        lpf = self.known.log_prob_feasible(X)
        lps = self.failures.log_prob_success(X) if self.failures is not None else np.zeros(len(lpf))
        return lpf, lps

    def describe(self) -> dict:
        """The fitted models, for a selection's ``info``."""
        return {
            "known": self.known.describe(),
            "failures": self.failures.describe() if self.failures is not None else {"model": "none", "n_failed": 0},
        }


def fit_feasibility(
    X_pool: np.ndarray,
    train_idx: np.ndarray,
    constraint_labels: Mapping[str, tuple[np.ndarray, np.ndarray, float | None, float | None]],
    failed_idx: np.ndarray,
    *,
    surrogate: SurrogateSettings,
    bounds: np.ndarray,
    rng: np.random.Generator,
    classifier: FailureClassifierSettings | None = None,
    n_fraction_columns: int = 0,
) -> Feasibility:
    """Fit the constraint model on ``constraint_labels`` (``name -> (pool indices, values, lo,
    hi)``) and, when ``failed_idx`` is not empty, the failure classifier on every labelled
    candidate (objective, constraints, failures) against the failed ones."""
    known = ConstraintModel(surrogate, bounds=bounds, rng=rng, n_fraction_columns=n_fraction_columns)
    known.fit(
        {
            name: (np.asarray(X_pool[np.asarray(idx, dtype=int)], dtype=float), vals, lo, hi)
            for name, (idx, vals, lo, hi) in constraint_labels.items()
        }
    )
    fclf = FailureClassifier(classifier, bounds=bounds, rng=rng)
    failed_idx = np.asarray(failed_idx, dtype=int).reshape(-1)
    if not len(failed_idx):
        return Feasibility(known, None)
    labelled = [np.asarray(train_idx, dtype=int)] + [np.asarray(v[0], dtype=int).reshape(-1)
                                                     for v in constraint_labels.values()]
    labelled = np.union1d(np.unique(np.concatenate(labelled)), failed_idx)
    fclf.fit(np.asarray(X_pool[labelled], dtype=float), np.isin(labelled, failed_idx))
    return Feasibility(known, fclf)


def select_constrained(
    X_pool: np.ndarray | Pool,
    train_idx: np.ndarray,
    y_train: np.ndarray,
    q: int,
    goal: Goal,
    *,
    constraint_labels: Mapping[str, tuple[np.ndarray, np.ndarray, float | None, float | None]] | None = None,
    failed_idx: np.ndarray | None = None,
    exclude: np.ndarray | None = None,
    surrogate: SurrogateSettings | None = None,
    acquisition: AcquisitionSettings | None = None,
    classifier: FailureClassifierSettings | None = None,
    rng: np.random.Generator,
    pending_idx: np.ndarray | None = None,
    n_fraction_columns: int = 0,
    yvar: np.ndarray | None = None,
) -> Selection:
    """``select_batch`` weighted by the probabilities of feasibility and of oracle success.

    Each candidate scores ``log a(x) + log P(feasible | x) + log P(success | x)`` where ``a``
    is LogEI against the best labelled candidate that is (predicted) feasible, or for a
    window goal the probability of lying in the window. While no labelled candidate is
    feasible, ``a = 1``: the batch searches for feasibility first (Gelbart et al. 2014).
    The batch is chosen on the top ``acquisition.shortlist`` candidates by that score:
    sequential greedy with kriging-believer conditioning of the objective GP on pending
    points and earlier picks (feasibility and success weights stay fixed); for a window
    goal, a surrogate without a joint posterior, or the feasibility search, the top ``q``
    by score (``acquisition.batch`` is not used). With ``surrogate.pca_variance`` every
    model (objective, constraints, failures) sees the same PCA view of the pool.

    Args:
        X_pool, train_idx, y_train, q, goal, exclude, surrogate, acquisition, rng,
            pending_idx, n_fraction_columns, yvar: as in ``select_batch`` (the objective and the
            constraint models share ``surrogate``; the failure classifier keeps its own kernel).
        constraint_labels: ``name -> (pool indices, values, lo, hi)`` of each known
            constraint ``lo <= value <= hi`` (None or infinite edge for one-sided).
        failed_idx: pool indices whose oracle run failed; None means those in
            ``train_idx`` whose label is not finite.
        classifier: failure classifier settings.

    Returns:
        The ``Selection``; ``acquisition`` holds the weighted log scores and
        ``info['constraints']`` the weighting, the fitted models and, per pick, the three
        terms. With no constraints and no failures this is exactly ``select_batch``.

    Raises:
        ValueError: for ``ucb``/``thompson`` acquisitions, which are not on a log scale.
    """
    t0 = time.perf_counter()
    surrogate = surrogate or SurrogateSettings()
    acquisition = acquisition or AcquisitionSettings()
    constraint_labels = dict(constraint_labels or {})
    train_idx, y_train = check_labels(train_idx, y_train)
    finite = np.isfinite(y_train)
    failed_idx = train_idx[~finite] if failed_idx is None else as_rows(failed_idx)
    pending_idx = as_rows(pending_idx)
    kind = _log_scale_kind(goal, acquisition)
    n_init = len(np.unique(train_idx[finite])) + len(pending_idx)
    if (not constraint_labels and not len(failed_idx)) or finite.sum() < 2 or n_init < acquisition.init:
        excl = failed_idx if exclude is None else np.union1d(np.asarray(exclude, dtype=int), failed_idx)
        sel = select_batch(X_pool, train_idx, y_train, q, goal, exclude=excl, surrogate=surrogate,
                           acquisition=acquisition, rng=rng, pending_idx=pending_idx,
                           n_fraction_columns=n_fraction_columns, yvar=yvar)  # fmt: skip
        why = "no constraints and no failures observed" if not constraint_labels and not len(failed_idx) else (
            "random initial design")
        sel.info["constraints"] = {"weighting": f"none: {why}"}
        return sel

    pool = Pool.wrap(X_pool)
    avail = available(pool.shape[0], exclude, train_idx, pending_idx, failed_idx)
    q = int(min(q, len(avail)))
    tr, y = train_idx[finite], y_train[finite]
    info = selection_info(pool.shape[0], avail, len(tr), pending_idx, goal=str(goal), acquisition=kind,
                          surrogate=surrogate.kind)
    if q == 0:
        return empty_selection(info)
    t_fit = time.perf_counter()
    gp = surrogate.kind == "gp"
    X = pool.pca(surrogate.pca_variance, acquisition.chunk_size) if gp and surrogate.pca_variance is not None else pool
    if X is not pool:  # every model (objective, constraints, failures) sees the view
        info["pca_components"] = int(X.shape[1])
    window_direct = kind == "window"
    target = y if window_direct else goal.score(y)
    sign = -1.0 if goal.kind == "min" and not window_direct else 1.0
    model = fit_surrogate(surrogate, X, tr, target, rng=rng, bounds=X.bounds if gp else None,
                          n_fraction_columns=n_fraction_columns, yvar=label_noise(yvar, finite, surrogate, info))
    feas = fit_feasibility(X, train_idx, constraint_labels, failed_idx, surrogate=surrogate, bounds=X.bounds,
                           rng=rng, classifier=classifier, n_fraction_columns=n_fraction_columns)
    best_f = _feasible_incumbent(model, feas.known, np.asarray(X[tr], dtype=float), target, kind)
    search_feasibility = not window_direct and math.isnan(best_f)
    t_score = time.perf_counter()
    mean, std, log_acq, lpf, lps = screen(X, avail, acquisition.chunk_size, _weighted_scorer(
        model, feas, goal, kind, best_f, search_feasibility))
    score = weighted_log_acquisition(log_acq, lpf, lps, log_space=True)
    t_batch = time.perf_counter()
    short = shortlist(score, acquisition.shortlist)
    if window_direct or search_feasibility or not isinstance(model, GPSurrogate):
        pick, batch_values = np.arange(q), score[short[:q]]
        info["batch_rule"] = "top-q by weighted score" + (
            " (expected number of valid hits is additive)" if window_direct else "")
    else:
        pick, batch_values = _weighted_believer_batch(model, feas.known, X, avail[short], pending_idx, lpf[short],
                                                      lps[short], q, best_f)
        info["batch_rule"] = "sequential greedy weighted LogEI with kriging-believer conditioning on the shortlist"
    chosen = short[pick]
    info.update(shortlist_size=len(short), batch_values=[float(v) for v in batch_values],
                best_feasible_incumbent=None if math.isnan(best_f) else float(sign * best_f),
                constraints=_weighting_info(feas, search_feasibility, log_acq, lpf, lps, chosen))
    t_end = time.perf_counter()
    info["seconds"] = {"fit": t_score - t_fit, "score": t_batch - t_score, "batch": t_end - t_batch, "total": t_end - t0}
    return Selection(avail[chosen].astype(int), score[chosen], sign * mean[chosen], std[chosen], info)


def _log_scale_kind(goal: Goal, acquisition: AcquisitionSettings) -> str:
    """The acquisition of a weighted selection: 'auto' is window (window goals) or qlognei."""
    kind = acquisition.kind
    if kind == "auto":
        kind = "window" if goal.kind == "window" else "qlognei"
    if kind in ("ucb", "thompson"):
        raise ValueError(f"constraint weighting needs a log-scale acquisition (logei, qlognei, window), not {kind!r}")
    if kind == "window" and goal.kind != "window":
        raise ValueError(f"acquisition 'window' needs a window goal, got {goal}")
    return kind


def _feasible_incumbent(model, known: ConstraintModel, X_tr: np.ndarray, target: np.ndarray, kind: str) -> float:
    """The best labelled score among the (predicted) feasible labels: the label for logei, the
    posterior mean for qlognei; NaN for a window, or when no label is feasible."""
    feasible_tr = known.log_prob_feasible(X_tr) >= math.log(0.5)
    if kind == "window" or not feasible_tr.any():
        return math.nan
    if kind == "logei":
        return float(np.max(target[feasible_tr]))
    return float(np.max(model.predict(X_tr[feasible_tr])[0]))  # noisy incumbent


def _weighted_scorer(model, feas: Feasibility, goal: Goal, kind: str, best_f: float, search_feasibility: bool):
    """The screen of ``select_constrained``: per chunk mean, std, log acquisition, log P(feasible), log P(success)."""

    def score_chunk(Xc, _rows):
        Xc = np.asarray(Xc, dtype=float)
        mu, sd = model.predict(Xc)
        if kind == "window":
            log_acq = log_window_probability(mu, sd, goal.lo, goal.hi)
        elif search_feasibility:
            log_acq = np.zeros(len(mu))
        else:
            log_acq = log_expected_improvement(mu, sd, best_f)
        return (mu, sd, log_acq, *feas.log_weights(Xc))

    return score_chunk


def _weighted_believer_batch(model, known: ConstraintModel, X, short_rows, pending_rows, lpf_short, lps_short, q,
                             best_f):
    """Greedy picks maximising LogEI + log P(feasible) + log P(success) with kriging-believer conditioning.

    The incumbent rises to a conditioned point's mean only when that point is predicted
    feasible.

    Returns:
        the ``q`` picked shortlist positions and the weighted value at each pick.
    """
    X_short, X_pend = np.asarray(X[short_rows], dtype=float), np.asarray(X[pending_rows], dtype=float)
    pend_feasible = known.log_prob_feasible(X_pend) >= math.log(0.5) if len(X_pend) else np.zeros(0, bool)
    log_w = lpf_short + lps_short

    def acquire(_slot, m, sd, best, _noise):
        return weighted_log_acquisition(log_expected_improvement(m, sd, best), log_w, log_space=True)

    return believer_batch(model, X_short, X_pend, q, acquire, best_f=best_f, raise_pending=pend_feasible,
                          raise_short=lpf_short >= math.log(0.5))


def _weighting_info(feas: Feasibility, search_feasibility: bool, log_acq, lpf, lps, chosen) -> dict:
    """``info['constraints']``: the weighting, the fitted models, pool means and each pick's three terms."""
    return {
        "weighting": "log acquisition + log P(feasible) + log P(success)"
        + ("; no feasible label yet: acquisition = 1 (feasibility search)" if search_feasibility else ""),
        **feas.describe(),
        "pool_mean_prob_feasible": float(np.mean(np.exp(lpf))),
        "pool_mean_prob_success": float(np.mean(np.exp(lps))),
        "chosen": [
            {
                "log_acquisition": float(log_acq[j]),
                "log_prob_feasible": float(lpf[j]),
                "log_prob_success": float(lps[j]),
            }
            for j in chosen
        ],
    }
