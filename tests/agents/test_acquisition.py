import math

import numpy as np
import pytest
from pydantic import ValidationError
from scipy.special import log_ndtr

from matloop.agents.decision.acquisition import (
    AcquisitionSettings,
    SurrogateSettings,
    label_noise,
    log_expected_improvement,
    log_window_probability,
    pool_bounds,
    select_batch,
    slot_betas,
)
from matloop.agents.decision.batch import believer_batch
from matloop.core.goals import Goal
from matloop.core.records import InputError

# -- goals ---------------------------------------------------------------------------------------


def test_goal_scores_by_hand():
    y = np.array([0.0, 1.5, 3.0])
    np.testing.assert_allclose(Goal("max").score(y), [0.0, 1.5, 3.0])
    np.testing.assert_allclose(Goal("min").score(y), [0.0, -1.5, -3.0])
    np.testing.assert_allclose(Goal("window", 1.0, 2.0).score(y), [-1.0, 0.0, -1.0])
    np.testing.assert_allclose(Goal("window", 77, math.inf).score([70.0, 90.0]), [-7.0, 0.0])
    assert Goal("window", 1.0, 2.0).contains(y).tolist() == [False, True, False]


def test_goal_parse():
    assert Goal.parse("MAX") == Goal("max")
    assert Goal.parse("window:1.1:1.7") == Goal("window", 1.1, 1.7)
    assert Goal.parse("window:77:inf") == Goal("window", 77.0, math.inf)
    assert str(Goal.parse("window:77:inf")) == "window:77:inf"
    for bad in ("maximise", "window:1", "window:a:b", "window:2:1"):
        with pytest.raises((InputError, ValueError)):
            Goal.parse(bad)


# -- closed-form acquisitions -----------------------------------------------------------------


def test_log_ei_by_hand():
    # u = 1: EI = u Phi(u) + phi(u) = 0.8413447 + 0.2419707 = 1.0833155
    assert log_expected_improvement(np.array([1.0]), np.array([1.0]), 0.0)[0] == pytest.approx(math.log(1.0833155), abs=1e-6)
    # std = 2, u = 0: EI = 2 phi(0) = 0.7978846
    assert log_expected_improvement(np.array([3.0]), np.array([2.0]), 3.0)[0] == pytest.approx(math.log(0.7978846), abs=1e-6)


def test_log_ei_far_below_the_incumbent_uses_the_asymptotic_series():
    # h(u) = phi(u) / u^2 (1 - 3/u^2 + 15/u^4 - 105/u^6 + ...) for u -> -inf
    u = -30.0
    expected = -0.5 * u * u - 0.5 * math.log(2 * math.pi) - 2 * math.log(30) + math.log(
        1 - 3 / u**2 + 15 / u**4 - 105 / u**6 + 945 / u**8
    )
    got = log_expected_improvement(np.array([u]), np.array([1.0]), 0.0)[0]
    assert got == pytest.approx(expected, rel=1e-9)
    # continuity across the branch switch at u = -1
    a, b = log_expected_improvement(np.array([-1.0 + 1e-9, -1.0 - 1e-9]), np.ones(2), 0.0)
    assert a == pytest.approx(b, abs=1e-7)


def test_log_window_probability_by_hand():
    # P(-1 <= f <= 1), f ~ N(0, 1) = 0.6826895
    assert log_window_probability(np.array([0.0]), np.array([1.0]), -1, 1)[0] == pytest.approx(math.log(0.6826895), abs=1e-6)
    # far outside: P = Phi(-40) - Phi(-41), and Phi(-41) / Phi(-40) ~ e^-40
    far = log_window_probability(np.array([0.0]), np.array([1.0]), 40, 41)[0]
    assert np.isfinite(far) and far == pytest.approx(log_ndtr(-40.0), rel=1e-12)
    # a half-open window is a probability of exceeding lo
    assert log_window_probability(np.array([0.0]), np.array([1.0]), 1.0, math.inf)[0] == pytest.approx(log_ndtr(-1.0))


def test_rank_warp_by_hand():
    from matloop.agents.decision.acquisition import rank_warp

    t = np.array([3.0, 1.0, 2.0, 2.0, 10.0])
    z, unwarp = rank_warp(t)
    # ranks 4, 1, 2.5, 2.5, 5 -> Phi^-1 of 0.7, 0.1, 0.4, 0.4, 0.9
    np.testing.assert_allclose(z, [0.5244005, -1.2815516, -0.2533471, -0.2533471, 1.2815516], atol=1e-7)
    m, s = unwarp(z, np.zeros(5))
    np.testing.assert_allclose(m, t)
    # beyond the top label: linear with the last slope (10 - 3) / (1.2815516 - 0.5244005)
    m, s = unwarp(np.array([1.2815516 + 0.1]), np.array([0.1]))
    np.testing.assert_allclose(m, 10 + 0.1 * 7 / 0.7571511, rtol=1e-6)
    np.testing.assert_allclose(s, 0.1 * 7 / 0.7571511, rtol=1e-6)


def test_top_threshold_by_hand():
    from matloop.agents.decision.acquisition import top_threshold

    # four N(0, 1) candidates: P(y > 1) = 0.158655 each, so 15.8655 % of the pool lies above 1
    assert top_threshold(np.zeros(4), np.ones(4), np.array([]), 0.158655) == pytest.approx(1.0, abs=1e-5)
    # labels at 5 and 6 above four N(0, 1) candidates: 2 of 6 lie above any t just below 5
    t = top_threshold(np.zeros(4), np.ones(4), np.array([5.0, 6.0]), 1 / 3)
    assert t == pytest.approx(5.0, abs=1e-6)


def test_slot_betas_are_geometric_from_exploit_to_explore():
    a = AcquisitionSettings(kind="ucb", beta=1.0, beta_spread=16.0)
    np.testing.assert_allclose(slot_betas(a, 5), [0.25, 0.5, 1.0, 2.0, 4.0])
    np.testing.assert_allclose(slot_betas(AcquisitionSettings(beta=2.0), 3), [2.0, 2.0, 2.0])


def test_pool_bounds_streams():
    X = np.arange(12.0).reshape(6, 2)
    np.testing.assert_array_equal(pool_bounds(X, chunk_size=4), [[0, 1], [10, 11]])


# -- kriging believer ----------------------------------------------------------------------------


class _Toy:
    """A GP double: candidate k is the row with feature k; fixed joint mean and covariance."""

    def __init__(self, mean, cov, noise=0.0):
        self.mean, self.cov, self.noise = np.asarray(mean, float), np.asarray(cov, float), noise

    def joint(self, X):
        k = np.asarray(X[:, 0], dtype=int)
        return self.mean[k], self.cov[np.ix_(k, k)]

    def noise_variance(self):
        return self.noise


def _ucb(slot, mean, std, best_f, noise):
    return mean + std


def test_believer_conditions_on_each_pick():
    # candidates 0 and 1 are perfectly correlated, 2 is independent; UCB = mean + std
    toy = _Toy([1.0, 0.99, 0.5], [[1, 1, 0], [1, 1, 0], [0, 0, 1]])
    X = np.arange(3.0)[:, None]
    picks, vals = believer_batch(toy, X, np.zeros((0, 1)), 2, _ucb)
    # after 0 is fantasised, 1 has no variance left (UCB 0.99) and 2 keeps UCB 1.5
    assert picks.tolist() == [0, 2]
    np.testing.assert_allclose(vals, [2.0, 1.5], atol=1e-6)


def test_believer_conditions_on_pending_points_first():
    toy = _Toy([1.0, 0.99, 0.5], [[1, 1, 0], [1, 1, 0], [0, 0, 1]])
    X_short = np.array([[1.0], [2.0]])
    picks, _ = believer_batch(toy, X_short, np.array([[0.0]]), 1, _ucb)
    assert picks.tolist() == [1]  # candidate 2: candidate 1 is covered by the pending 0


# -- select_batch -------------------------------------------------------------------------------


def _grid(n=201):
    x = np.linspace(0, 1, n)
    return x[:, None].astype(np.float32), -((x - 0.3) ** 2)


def test_random_fallback_with_fewer_than_two_labels():
    X, _ = _grid(50)
    sel = select_batch(X, np.array([3]), np.array([1.0]), 5, Goal("max"), exclude=np.array([0, 1]),
                       rng=np.random.default_rng(0))
    assert len(sel.indices) == 5 and len(set(sel.indices)) == 5
    assert not set(sel.indices) & {0, 1, 3}
    assert sel.info["reason"].startswith("random") and np.isnan(sel.mean).all()


def test_random_until_init_labels_or_pending():
    X, y = _grid(50)
    tr = np.array([0, 10, 20])
    sel = select_batch(X, tr, y[tr], 2, Goal("max"), acquisition=AcquisitionSettings(init=6),
                       rng=np.random.default_rng(0), pending_idx=np.array([30, 40]))
    assert sel.info["reason"].startswith("random")
    sel = select_batch(X, tr, y[tr], 2, Goal("max"), acquisition=AcquisitionSettings(init=5),
                       rng=np.random.default_rng(0), pending_idx=np.array([30, 40]))
    assert "reason" not in sel.info


@pytest.mark.parametrize("kind", ["logei", "qlognei", "ucb", "thompson"])
def test_gp_finds_the_maximum_of_a_parabola(kind):
    X, y = _grid()
    tr = np.array([0, 20, 50, 80, 120, 160, 200])  # x = 0, 0.1, 0.25, 0.4, ...; optimum 0.3
    sel = select_batch(X, tr, y[tr], 1, Goal("max"), acquisition=AcquisitionSettings(kind=kind, beta=1.0, init=0),
                       rng=np.random.default_rng(0))
    assert abs(float(X[sel.indices[0], 0]) - 0.3) <= 0.03
    assert sel.info["n_train"] == 7 and sel.info["best_observed"] == pytest.approx(y[50])


def test_min_goal_reports_means_in_property_units():
    X, y = _grid()
    tr = np.array([0, 40, 80, 120, 160, 200])
    sel = select_batch(X, tr, -y[tr], 3, Goal("min"), acquisition=AcquisitionSettings(init=0),
                       rng=np.random.default_rng(0))
    assert np.all(np.abs(X[sel.indices, 0] - 0.3) <= 0.15)
    assert np.all(sel.mean >= -0.01) and np.all(sel.mean < 0.03)  # -y = (x - 0.3)^2 near 0


@pytest.mark.parametrize("kind", ["auto", "window"])
def test_window_goal_picks_inside_the_window(kind):
    X, _ = _grid()
    y = X[:, 0].astype(float)  # target = x
    tr = np.arange(0, 201, 25)
    sel = select_batch(X, tr, y[tr], 4, Goal("window", 0.61, 0.69), acquisition=AcquisitionSettings(kind=kind, init=0),
                       rng=np.random.default_rng(0))
    # auto: UCB on -distance to the window; window: probability of the modelled x in the window
    assert sel.info["acquisition"] == ("ucb" if kind == "auto" else "window")
    assert np.all((y[sel.indices] > 0.56) & (y[sel.indices] < 0.74))


@pytest.mark.parametrize("kind", ["logei", "qlognei", "ucb", "thompson", "auto", "ptop", "window"])
@pytest.mark.parametrize("batch", ["believer", "mc"])
def test_batches_are_valid_and_reproducible(kind, batch):
    rng = np.random.default_rng(5)
    X = rng.uniform(-1, 1, (300, 4)).astype(np.float32)
    y = np.sin(3 * X[:, 0]) + X[:, 1]
    goal = Goal("window", 0.5, 1.0) if kind in ("auto", "window") else Goal("max")
    tr, pend, exc = np.arange(0, 40), np.array([50, 51, 52]), np.array([60, 61])
    a = AcquisitionSettings(kind=kind, batch=batch, shortlist=50, mc_samples=64, beta_spread=4.0)
    s1 = select_batch(X, tr, y[tr], 6, goal, exclude=exc, acquisition=a, rng=np.random.default_rng(1), pending_idx=pend)
    s2 = select_batch(X, tr, y[tr], 6, goal, exclude=exc, acquisition=a, rng=np.random.default_rng(1), pending_idx=pend)
    assert len(s1.indices) == 6 and len(set(s1.indices.tolist())) == 6
    assert not set(s1.indices.tolist()) & (set(tr) | set(pend) | set(exc))
    np.testing.assert_array_equal(s1.indices, s2.indices)
    assert s1.mean.shape == s1.std.shape == s1.acquisition.shape == (6,)
    assert s1.info["shortlist_size"] == 50 and s1.info["n_pending"] == 3


def test_rf_surrogate_path_and_a_pool_smaller_than_q():
    X, y = _grid(12)
    tr = np.arange(0, 8)
    sel = select_batch(X, tr, y[tr], 10, Goal("max"), surrogate=SurrogateSettings(kind="rf", n_trees=20),
                       acquisition=AcquisitionSettings(kind="ucb", init=0), rng=np.random.default_rng(0))
    assert sorted(sel.indices.tolist()) == [8, 9, 10, 11]


def test_failed_labels_are_ignored():
    X, y = _grid(60)
    tr = np.array([0, 10, 20, 30, 40, 50])
    yy = y[tr].copy()
    yy[2] = np.nan
    sel = select_batch(X, tr, yy, 2, Goal("max"), acquisition=AcquisitionSettings(init=0), rng=np.random.default_rng(0))
    assert sel.info["n_train"] == 5 and 20 not in sel.indices


def test_settings_forbid_unknown_keys():
    with pytest.raises(ValidationError):
        AcquisitionSettings(kind="ei")
    with pytest.raises(ValidationError):
        AcquisitionSettings(betta=2)
    with pytest.raises(ValueError):
        select_batch(np.zeros((5, 1)), np.array([0, 1]), np.array([0.0, 1.0]), 1, Goal("max"),
                     acquisition=AcquisitionSettings(kind="window", init=0), rng=np.random.default_rng(0))


def test_reported_noise_discounts_an_uncertain_outlier():
    """Oracle-reported uncertainties are the GP's noise: a wild label with a huge reported
    sigma barely moves the model, while the same label reported as exact pulls the batch."""
    X, _ = _grid()
    x = X[:, 0].astype(float)
    f = -((x - 0.3) ** 2)
    tr = np.arange(0, 201, 20)
    tr = np.append(tr, 160)  # x = 0.8
    y = f[tr].copy()
    y[-1] = 5.0  # a wild measurement at x = 0.8
    yvar = np.full(len(tr), 1e-4)
    yvar[-1] = 100.0  # ... that its oracle said was worth nothing
    a = AcquisitionSettings(init=0, skill_aware=False)  # one wild label is low skill by design: test the noise alone
    noisy = select_batch(X, tr, y, 3, Goal("max"), acquisition=a, rng=np.random.default_rng(0), yvar=yvar)
    assert noisy.info["label_noise"].startswith("reported")
    assert np.all(np.abs(x[noisy.indices] - 0.3) < 0.1)
    exact = select_batch(X, tr, y, 3, Goal("max"), acquisition=a, rng=np.random.default_rng(0),
                         yvar=np.full(len(tr), 1e-4))
    assert np.all(np.abs(x[exact.indices] - 0.8) < 0.1)


def test_label_noise_needs_every_label_and_a_plain_gp():
    info: dict = {}
    finite = np.array([True, True, False])
    assert label_noise(None, finite, SurrogateSettings(), info) is None and "label_noise" not in info
    assert label_noise(np.array([0.1, np.nan, 0.2]), finite, SurrogateSettings(), info) is None
    assert "1 of 2" in info["label_noise"]
    v = label_noise(np.array([0.1, 0.3, np.nan]), finite, SurrogateSettings(), info)
    np.testing.assert_allclose(v, [0.1, 0.3])
    assert label_noise(np.array([0.1, 0.3, 0.2]), finite, SurrogateSettings(kind="rf"), info) is None
    assert label_noise(np.array([0.1, 0.3, 0.2]), finite, SurrogateSettings(warp="rank"), info) is None


def test_mc_batches_leave_torch_global_generator_alone():
    import torch

    rng = np.random.default_rng(5)
    X = rng.uniform(-1, 1, (200, 3)).astype(np.float32)
    y = np.sin(3 * X[:, 0]) + X[:, 1]
    tr = np.arange(0, 30)
    a = AcquisitionSettings(kind="qlognei", batch="mc", shortlist=40, mc_samples=32, init=0)
    picks = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        before = torch.get_rng_state()
        sel = select_batch(X, tr, y[tr], 4, Goal("max"), acquisition=a, rng=np.random.default_rng(1))
        assert torch.equal(before, torch.get_rng_state())  # the baseline pruning has its own seeded sampler
        picks.append(sel.indices.tolist())
    assert picks[0] == picks[1]
