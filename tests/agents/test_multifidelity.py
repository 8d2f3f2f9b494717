"""Multi-fidelity GP and cost-aware fidelity choice, on synthetic data with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from matloop.agents.decision.multifidelity import ChoiceSettings, choose_requests
from matloop.agents.modelling.multifidelity import MultiFidelityGP, MultiFidelitySettings
from matloop.core.goals import Goal
from matloop.agents.modelling.surrogates import GPSurrogate

torch.set_num_threads(1)

UNIT2 = np.array([[0.0, 0.0], [1.0, 1.0]])


def f_lo(X: np.ndarray) -> np.ndarray:
    """A wiggly 2-D function (``n``): too rough for 10 points to pin down alone."""
    return np.sin(6 * X[:, 0]) + np.cos(5 * X[:, 1]) + 2 * X[:, 0] * X[:, 1]


def f_hi(X: np.ndarray) -> np.ndarray:
    return 1.5 * f_lo(X) + 0.3


@pytest.fixture(scope="module")
def linear_tiers():
    """100 cheap labels, 10 top labels (f_hi = 1.5 f_lo + 0.3, noise 0.02), 300 held-out points."""
    rng = np.random.default_rng(0)
    Xl, Xh, Xt = rng.random((100, 2)), rng.random((10, 2)), rng.random((300, 2))
    yl = f_lo(Xl) + 0.02 * rng.standard_normal(100)
    yh = f_hi(Xh) + 0.02 * rng.standard_normal(10)
    X = np.vstack([Xl, Xh])
    fid = np.r_[np.zeros(100, int), np.ones(10, int)]
    return X, fid, np.r_[yl, yh], Xh, yh, Xt


@pytest.fixture(scope="module")
def mtgp_linear(linear_tiers):
    X, fid, y, *_ = linear_tiers
    return MultiFidelityGP(MultiFidelitySettings(kind="mtgp"), bounds=UNIT2, seed=0).fit(X, fid, y)


@pytest.fixture(scope="module")
def single_fidelity_rmse(linear_tiers):
    _, _, _, Xh, yh, Xt = linear_tiers
    g = GPSurrogate(bounds=UNIT2)
    g.fit(Xh, yh)
    return float(np.sqrt(np.mean((g.predict(Xt)[0] - f_hi(Xt)) ** 2)))


def test_mtgp_recovers_linear_relation_between_tiers(mtgp_linear, linear_tiers, single_fidelity_rmse):
    Xt = linear_tiers[-1]
    mean, std = mtgp_linear.predict(Xt, 1)
    rmse = float(np.sqrt(np.mean((mean - f_hi(Xt)) ** 2)))
    # the cheap tier carries the shape: far better than a GP on the 10 top labels alone
    assert rmse < 0.3 * single_fidelity_rmse, (rmse, single_fidelity_rmse)
    assert rmse < 0.15
    assert mtgp_linear.task_correlation()[0, 1] > 0.9
    C = mtgp_linear.task_correlation()
    assert np.allclose(np.diag(C), 1.0) and np.allclose(C, C.T)
    # the learned task covariance carries the slope: sd(hi) / sd(lo) ~ 1.5
    B = mtgp_linear.task_covariance()
    assert 1.2 < math.sqrt(B[1, 1] / B[0, 0]) < 1.8
    # the cheap tier is predicted too, and it is calibrated: most errors within 3 std
    m0, s0 = mtgp_linear.predict(Xt, 0)
    assert np.mean(np.abs(m0 - f_lo(Xt)) < 3 * s0 + 0.05) > 0.9


def test_smfgp_uses_cheap_labels_and_has_its_fixed_correlation(linear_tiers, single_fidelity_rmse):
    X, fid, y, _, _, Xt = linear_tiers
    m = MultiFidelityGP(MultiFidelitySettings(kind="smfgp"), bounds=UNIT2, seed=0).fit(X, fid, y)
    rmse = float(np.sqrt(np.mean((m.predict(Xt, 1)[0] - f_hi(Xt)) ** 2)))
    assert rmse < 0.7 * single_fidelity_rmse, (rmse, single_fidelity_rmse)
    # linear-truncated kernel: k((x,0),(x,1)) = k0, k((x,0),(x,0)) = k0 + k1, k0(x,x) = k1(x,x)
    assert m.task_correlation()[0, 1] == pytest.approx(1 / math.sqrt(2), abs=1e-9)


@pytest.mark.parametrize("kind", ["mtgp", "smfgp"])
def test_predict_equals_botorch_posterior(kind):
    rng = np.random.default_rng(1)
    X = rng.random((30, 2))
    fid = np.r_[np.zeros(20, int), np.ones(10, int)]
    y = np.where(fid == 1, f_hi(X), f_lo(X))
    m = MultiFidelityGP(MultiFidelitySettings(kind=kind, fit_maxiter=20, chunk_size=7), bounds=UNIT2).fit(X, fid, y)
    Xq = rng.random((25, 2))
    fq = rng.integers(0, 2, 25)
    mean, std = m.predict(Xq, fq)  # chunked (7 rows), mixed fidelities
    with torch.no_grad():
        post = m.model.posterior(m._inputs(Xq, fq))
    np.testing.assert_allclose(mean, post.mean.numpy().ravel() * m._ystd + m._ymean, atol=1e-8)
    np.testing.assert_allclose(std, post.variance.sqrt().numpy().ravel() * m._ystd, atol=1e-8)
    mf, cf = m.predict_fidelities(Xq[:5])
    jm, jc = m.joint(np.vstack([Xq[:5], Xq[:5]]), np.r_[np.zeros(5, int), np.ones(5, int)])
    np.testing.assert_allclose(mf.T.ravel(), jm, atol=1e-8)
    np.testing.assert_allclose(cf[:, 0, 1], np.diag(jc[:5, 5:]), atol=1e-8)
    np.testing.assert_allclose(cf[:, 1, 1], np.diag(jc[5:, 5:]), atol=1e-8)


def test_known_noise_is_fixed_per_fidelity():
    rng = np.random.default_rng(2)
    X = rng.random((40, 2))
    fid = np.r_[np.zeros(30, int), np.ones(10, int)]
    y = np.where(fid == 1, f_hi(X), f_lo(X))
    yvar = np.where(fid == 1, 0.04, 1e-4)
    m = MultiFidelityGP(MultiFidelitySettings(fit_maxiter=30), bounds=UNIT2).fit(X, fid, y, yvar=yvar)
    from gpytorch.likelihoods import FixedNoiseGaussianLikelihood

    assert isinstance(m.model.likelihood, FixedNoiseGaussianLikelihood)
    assert m.noise_variance(0) == pytest.approx(1e-4, rel=1e-9)
    assert m.noise_variance(1) == pytest.approx(0.04, rel=1e-9)
    # nearly noise-free cheap labels are interpolated
    mean, _ = m.predict(X[:30], 0)
    assert np.max(np.abs(mean - y[:30])) < 0.05
    # observation noise widens the predictive spread by exactly the fixed variance
    _, s_lat = m.predict(X[:5], 1)
    _, s_obs = m.predict(X[:5], 1, observation_noise=True)
    np.testing.assert_allclose(s_obs**2 - s_lat**2, 0.04, rtol=1e-6)


def test_reused_hyperparameters_condition_on_new_labels(mtgp_linear, linear_tiers):
    X, fid, y, _, _, Xt = linear_tiers
    rng = np.random.default_rng(3)
    Xn = rng.random((20, 2))
    X2 = np.vstack([X, Xn])
    fid2 = np.r_[fid, np.ones(20, int)]
    y2 = np.r_[y, f_hi(Xn)]
    m2 = MultiFidelityGP(MultiFidelitySettings(), bounds=UNIT2).fit(X2, fid2, y2, hyperparameters_from=mtgp_linear)
    assert m2.fit_info["reused_hyperparameters"]
    a, b = m2.model.state_dict(), mtgp_linear.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # 20 more top labels: smaller posterior spread at the top fidelity
    assert np.mean(m2.predict(Xt, 1)[1]) < np.mean(mtgp_linear.predict(Xt, 1)[1])
    with pytest.raises(ValueError):
        MultiFidelityGP(MultiFidelitySettings(kind="smfgp"), bounds=UNIT2).fit(
            X2, fid2, y2, hyperparameters_from=mtgp_linear
        )


def test_balanced_fit_subset():
    m = MultiFidelityGP(MultiFidelitySettings(max_fit_points=50))
    m.n_fidelities = 2
    fid = np.r_[np.zeros(500, int), np.ones(10, int)]
    sub = m._fit_subset(fid, np.random.default_rng(0))
    assert len(sub) == 50 and len(np.unique(sub)) == 50
    assert np.sum(fid[sub] == 1) == 10  # every scarce top label is kept


# -- choose_requests ---------------------------------------------------------------------------

D4 = 4
UNIT4 = np.array([np.zeros(D4), np.ones(D4)])


def f4(X: np.ndarray) -> np.ndarray:
    return np.sin(5 * X + np.arange(D4)).sum(axis=1)


def _choice_model(cheap: str, n: int, seed: int = 1):
    """``n`` candidates labelled at both fidelities in a 300-candidate 4-D pool."""
    rng = np.random.default_rng(seed)
    pool = rng.random((300, D4))
    tr = rng.choice(300, n, replace=False)
    y_cheap = f4(pool[tr]) + 0.01 * rng.standard_normal(n) if cheap == "correlated" else rng.standard_normal(n)
    y_top = 1.5 * f4(pool[tr]) + 0.3 + 0.01 * rng.standard_normal(n)
    X = np.vstack([pool[tr], pool[tr]])
    fid = np.r_[np.zeros(n, int), np.ones(n, int)]
    m = MultiFidelityGP(bounds=UNIT4, seed=seed).fit(X, fid, np.r_[y_cheap, y_top])
    return m, pool, tr


@pytest.fixture(scope="module")
def correlated_choice():
    return _choice_model("correlated", 30)


@pytest.fixture(scope="module")
def noise_choice():
    # 60 pairs: with 30, a sample correlation of pure noise with the top labels is still
    # ~ +-0.2, and at a cost ratio of 20 even that much information is worth a screen
    return _choice_model("noise", 60)


WINDOW = Goal("window", 1.0, 2.0)
COSTS = {0: 1.0, 1: 20.0}


def test_prefers_cheap_fidelity_when_correlated_and_cheap(correlated_choice):
    m, pool, tr = correlated_choice
    assert m.task_correlation()[0, 1] > 0.9
    _, cov = m.predict_fidelities(pool)
    rho2 = cov[:, 0, 1] ** 2 / (cov[:, 1, 1] * (cov[:, 0, 0] + m.noise_variance(0)))
    assert np.median(rho2) > 0.9
    reqs = choose_requests(m, pool, COSTS, 1, WINDOW, 10, {0: tr, 1: tr}, np.random.default_rng(0))
    assert len(reqs) == 10
    assert sum(r.fidelity == 0 for r in reqs) >= 7, [(r.fidelity, r.rationale) for r in reqs]
    screen = next(r for r in reqs if r.fidelity == 0)
    assert screen.rationale.startswith("screen at fidelity 0")


def test_prefers_top_fidelity_when_cheap_is_noise(noise_choice):
    m, pool, tr = noise_choice
    # the model learns that a cheap label says little about the top value at the same point
    _, cov = m.predict_fidelities(pool)
    rho2 = cov[:, 0, 1] ** 2 / (cov[:, 1, 1] * (cov[:, 0, 0] + m.noise_variance(0)))
    assert np.median(rho2) < 0.3
    reqs = choose_requests(m, pool, COSTS, 1, WINDOW, 10, {0: tr, 1: tr}, np.random.default_rng(0))
    assert len(reqs) == 10
    assert all(r.fidelity == 1 for r in reqs), [(r.fidelity, r.rationale) for r in reqs]


def test_cheap_fidelity_loses_when_it_costs_as_much(correlated_choice):
    m, pool, tr = correlated_choice
    reqs = choose_requests(m, pool, {0: 20.0, 1: 20.0}, 1, WINDOW, 10, {0: tr, 1: tr}, np.random.default_rng(0))
    # screen-then-confirm costs at least as much as confirming, for no more hits
    assert all(r.fidelity == 1 for r in reqs)


@pytest.mark.parametrize("criterion", ["ucb", "hits_per_cost", "variance_per_cost"])
def test_no_duplicates_no_excluded_pairs_and_pending_respected(correlated_choice, criterion):
    m, pool, tr = correlated_choice
    rng = np.random.default_rng(5)
    done0 = np.r_[tr, rng.choice(np.setdiff1d(np.arange(300), tr), 100, replace=False)]
    done1 = tr
    pending = [(int(i), 0) for i in np.setdiff1d(np.arange(300), done0)[:5]] + [(int(done0[-1]), 1)]
    reqs = choose_requests(
        m, pool, COSTS, 1, WINDOW, 60, {0: done0, 1: done1}, rng, pending=pending,
        settings=ChoiceSettings(criterion=criterion, shortlist=120),
    )
    assert len(reqs) == 60
    idx = [r.index for r in reqs]
    assert len(set(idx)) == len(idx)  # one request per candidate per batch
    s0, s1 = set(done0.tolist()), set(done1.tolist())
    assert not any(r.fidelity == 0 and r.index in s0 for r in reqs)
    assert not any(r.fidelity == 1 and r.index in s1 for r in reqs)
    assert not set(idx) & {i for i, _ in pending}
    assert all(np.isfinite(r.score) for r in reqs)


def test_max_cost_caps_the_batch(correlated_choice):
    m, pool, tr = correlated_choice
    reqs = choose_requests(m, pool, COSTS, 1, WINDOW, 50, {0: tr, 1: tr}, np.random.default_rng(0), max_cost=45.0)
    assert sum(COSTS[r.fidelity] for r in reqs) <= 45.0
    assert sum(COSTS[r.fidelity] for r in reqs) > 45.0 - 20.0  # it fills the budget


def test_fantasies_do_not_ask_the_same_thing_twice(correlated_choice):
    m, pool, tr = correlated_choice
    twin = np.vstack([pool, pool])  # every candidate twice: indices i and i + 300 are the same point
    ex = np.r_[tr, tr + 300]
    reqs = choose_requests(m, twin, COSTS, 1, WINDOW, 20, {0: ex, 1: ex}, np.random.default_rng(0))
    screened = [r.index % 300 for r in reqs if r.fidelity == 0]
    assert len(screened) >= 5
    assert len(set(screened)) == len(screened), screened  # a screened twin makes its copy's screen worthless
    assert len({(r.index, r.fidelity) for r in reqs}) == len(reqs)


def test_max_goal_and_validation(correlated_choice):
    m, pool, tr = correlated_choice
    reqs = choose_requests(m, pool, COSTS, 1, Goal("max"), 5, {0: tr, 1: tr}, np.random.default_rng(0))
    assert len(reqs) == 5 and len({r.index for r in reqs}) == 5
    assert "expected improvement" in reqs[0].rationale
    with pytest.raises(ValueError):
        choose_requests(m, pool, {0: 1.0, 1: 0.0}, 1, WINDOW, 5, None, np.random.default_rng(0))
    with pytest.raises(ValueError):
        choose_requests(m, pool, {0: 1.0, 1: 10.0}, 0, WINDOW, 5, None, np.random.default_rng(0))
    # everything already measured at the top: nothing left to ask
    assert choose_requests(m, pool, COSTS, 1, WINDOW, 5, {1: np.arange(300)}, np.random.default_rng(0)) == []


def test_default_asks_first_the_candidate_the_single_fidelity_ucb_ranks_first(correlated_choice):
    """The default criterion orders candidates as the single-fidelity default does: UCB on the goal score."""
    m, pool, tr = correlated_choice
    mean, cov = m.predict_fidelities(pool)
    ucb = mean[:, 1] + np.sqrt(cov[:, 1, 1])
    ucb[tr] = -np.inf
    reqs = choose_requests(m, pool, COSTS, 1, Goal("max"), 3, {0: tr, 1: tr}, np.random.default_rng(0))
    assert reqs[0].index == int(np.argmax(ucb))
    assert "UCB of its goal score" in reqs[0].rationale
    # a window goal: the first pick is predicted closest to (or inside) the window, allowing for its spread
    w = choose_requests(m, pool, COSTS, 1, WINDOW, 1, {0: tr, 1: tr}, np.random.default_rng(0))[0]
    dist = np.maximum(np.maximum(WINDOW.lo - mean[:, 1], mean[:, 1] - WINDOW.hi), 0.0)
    dist[tr] = np.inf
    assert dist[w.index] <= np.quantile(dist[np.isfinite(dist)], 0.05)
