"""How far the surrogate can be trusted, measured on the labels it has, and what that means for the batch.

Every plan of the funnel policy measures the fitted surrogate's out-of-sample skill before it
picks a batch:

* **Rank skill**: Spearman's rank correlation between each label and the model's prediction
  of it when that label is left out. For an exact GP the leave-one-out (LOO) means and
  variances come in closed form from ``K^-1`` (Rasmussen & Williams 2006, eq. 5.12:
  ``mu_i = y_i - [K^-1 y]_i / [K^-1]_ii``, ``sigma_i^2 = 1 / [K^-1]_ii``; no refit); for a
  random forest from the trees that did not see the label (out-of-bag). Plug-in surrogates
  that offer ``loo_predictions()`` are measured the same way; others are not measured.
* **Uncertainty**: a lower confidence bound on the rank correlation by the Fisher
  transformation with the Fieller-Hartley-Pearson variance for Spearman's rho,
  ``se = sqrt(1.06 / (n - 3))``, and ``P(rho <= 0)`` under the same normal approximation.
* **Calibration**: the fraction of LOO z-scores ``(y_i - mu_i) / sigma_i`` within +-1 (0.683
  for a calibrated Gaussian predictive; lower means over-confident).

The decision (``explore_fraction``): 0 when the lower bound is above zero (the model ranks
better than chance, exploit as usual); otherwise ``P(rho <= 0)``, the probability that the
model ranks no better than chance, so a model with no measurable skill (rho near 0) gives
half the batch to exploration and a model that ranks backwards (rho well below 0) nearly all
of it. Exploration slots are filled by greedy max-min distance (space filling, in the
normalised feature space the model sees) among a uniform random subsample of the available
pool, away from every labelled, pending and already-picked row: a pick that does not depend on
the model's predictions, so in expectation it finds good candidates at least as often as
random picks do, and it spreads the labels that the next fit learns from.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import norm, spearmanr

__all__ = ["Skill", "measure_skill", "space_filling"]


@dataclass
class Skill:
    """Out-of-sample skill of a fitted surrogate on its own labels and the exploration it implies.

    Attributes:
        spearman_loo: Spearman rank correlation of LOO (or out-of-bag) predictions with the labels.
        calibration: fraction of LOO z-scores within +-1 (0.683 when calibrated); NaN without
            predictive standard deviations.
        n_labels: labels with a LOO prediction.
        lower_bound: one-sided lower confidence bound on the rank correlation (``confidence``).
        p_no_skill: ``P(rho <= 0)`` by the Fisher approximation.
        explore_fraction: the fraction of the batch given to space-filling exploration.
        decision: one readable sentence: what was measured and what the batch does about it.
    """

    spearman_loo: float
    calibration: float
    n_labels: int
    lower_bound: float
    p_no_skill: float
    explore_fraction: float
    decision: str

    RECORD = ("spearman_loo", "calibration", "n_labels", "explore_fraction", "decision")

    def as_dict(self) -> dict:
        """Every field, JSON-ready (NaN becomes None)."""
        return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in asdict(self).items()}

    def record(self) -> dict:
        """The rationale entry ``tiers[tier]['skill']``: spearman_loo, calibration, n_labels,
        explore_fraction, decision (JSON-ready; NaN becomes None)."""
        d = self.as_dict()
        return {k: d[k] for k in self.RECORD}


def _loo(model) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    fn = getattr(model, "loo_predictions", None)
    if fn is None:
        return None
    return fn()


def measure_skill(model, *, confidence: float = 0.95, min_labels: int = 5) -> Skill | None:
    """Measure a fitted surrogate's LOO skill and decide how much of the batch to explore.

    Args:
        model: a fitted surrogate with ``loo_predictions() -> (y, mean, std)`` (each ``n``, in
            the units it was fitted in; NaN where a label has no prediction).
        confidence: the one-sided confidence of the lower bound that counts as "clearly above
            zero".
        min_labels: fewer LOO predictions than this give no measurement (None).

    Returns:
        The ``Skill``, or None when the model offers no LOO predictions or has too few labels.
    """
    got = _loo(model)
    if got is None:
        return None
    y, mu, sd = (np.asarray(a, dtype=float).reshape(-1) for a in got)
    ok = np.isfinite(y) & np.isfinite(mu)
    n = int(ok.sum())
    if n < max(min_labels, 4):
        return None
    y, mu, sd = y[ok], mu[ok], sd[ok]
    if np.ptp(mu) <= 1e-12 * (1.0 + np.abs(mu).max()) or np.ptp(y) == 0:
        rho = 0.0  # a constant prediction ranks nothing
    else:
        rho = float(spearmanr(y, mu).statistic)
        rho = 0.0 if not math.isfinite(rho) else rho
    se = math.sqrt(1.06 / (n - 3))
    z = math.atanh(float(np.clip(rho, -0.999999, 0.999999)))
    lower = math.tanh(z - norm.ppf(confidence) * se)
    p_no_skill = float(norm.cdf(-z / se))
    good_sd = np.isfinite(sd) & (sd > 0)
    calibration = float(np.mean(np.abs((y - mu)[good_sd] / sd[good_sd]) <= 1.0)) if good_sd.any() else math.nan
    cal_txt = "" if not math.isfinite(calibration) else f", {calibration:.0%} of LOO z-scores within +-1 (0.68 if calibrated)"
    if lower > 0:
        explore = 0.0
        decision = (f"exploit: LOO rank correlation {rho:.2f} on {n} labels, lower bound {lower:.2f} > 0{cal_txt}; "
                    "the batch follows the acquisition")
    else:
        explore = p_no_skill
        decision = (f"explore: LOO rank correlation {rho:.2f} on {n} labels is not clearly above zero (lower bound "
                    f"{lower:.2f}, P(no skill) {p_no_skill:.2f}){cal_txt}; {explore:.0%} of the batch goes to "
                    "space-filling picks")
    return Skill(rho, calibration, n, lower, p_no_skill, explore, decision)


def space_filling(X, candidates: np.ndarray, reference: np.ndarray, k: int, bounds: np.ndarray) -> np.ndarray:
    """Greedy max-min distance picks: ``k`` of ``candidates`` (pool rows), each farthest from the rest.

    Distances are Euclidean in features scaled to [0, 1] by ``bounds`` (``2 x d``); every pick
    maximises its distance to the nearest of ``reference`` (pool rows: labelled, pending, already
    chosen) and the earlier picks.

    Returns:
        ``k`` pool rows (fewer when fewer candidates), in the order picked.
    """
    candidates = np.asarray(candidates, dtype=int)
    k = int(min(k, len(candidates)))
    if k <= 0:
        return np.zeros(0, dtype=int)
    lo, hi = np.asarray(bounds[0], dtype=float), np.asarray(bounds[1], dtype=float)
    scale = np.where(hi - lo > 1e-12, hi - lo, 1.0)
    C = (np.asarray(X[candidates], dtype=float) - lo) / scale
    d2 = np.full(len(C), np.inf)
    reference = np.asarray(reference, dtype=int)
    if len(reference):
        R = (np.asarray(X[reference], dtype=float) - lo) / scale
        cc = (C**2).sum(1)
        for a in range(0, len(R), 512):
            r = R[a : a + 512]
            d2 = np.minimum(d2, (cc[:, None] + (r**2).sum(1)[None, :] - 2.0 * C @ r.T).min(axis=1))
    picks: list[int] = []
    for _ in range(k):
        j = int(np.argmax(d2))
        picks.append(j)
        d2 = np.minimum(d2, ((C - C[j]) ** 2).sum(-1))
        d2[j] = -np.inf
    return candidates[np.asarray(picks, dtype=int)]
