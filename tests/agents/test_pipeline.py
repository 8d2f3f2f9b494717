"""The shared selection pipeline: pool bounds and PCA once per state, available rows, screen, shortlist."""

import numpy as np
import pytest

from matloop.agents.decision import pipeline
from matloop.agents.decision.acquisition import AcquisitionSettings, SurrogateSettings, select_batch
from matloop.agents.decision.batch import condition
from matloop.agents.decision.constraints import select_constrained
from matloop.agents.decision.pipeline import Pool, available, pool_bounds, screen, shortlist
from matloop.core.goals import Goal
from matloop.core.protocols import PlanningState


def _pool(n=120, d=4, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.uniform(-1, 1, (n, d)).astype(np.float32)
    return X, np.sin(3 * X[:, 0]) + X[:, 1]


def test_pool_of_a_state_scans_the_bounds_once():
    X, _ = _pool()
    state = PlanningState(0, [], X, [], set(), set(), 4, np.random.default_rng(0))
    pool = Pool.of(state)
    assert pool.shape == X.shape and len(pool) == len(X)
    np.testing.assert_array_equal(pool[[3, 5]], X[[3, 5]])
    assert pool.bounds is pool.bounds  # computed on first use and kept, not a second scan
    np.testing.assert_array_equal(pool.bounds, pool_bounds(X))


def test_one_pca_fit_and_one_bounds_scan_per_pool(monkeypatch):
    X, y = _pool()
    fits, scans = [], []
    real_fit, real_bounds = pipeline.fit_pca, pipeline.pool_bounds
    monkeypatch.setattr(pipeline, "fit_pca", lambda *a, **k: fits.append(1) or real_fit(*a, **k))
    monkeypatch.setattr(pipeline, "pool_bounds", lambda *a, **k: scans.append(1) or real_bounds(*a, **k))
    pool = Pool(X)
    s = SurrogateSettings(pca_variance=0.9)
    a = AcquisitionSettings(init=0, shortlist=30)
    tr = np.arange(20)
    y_fail = y[tr].copy()
    y_fail[3] = np.nan  # a failure: the constrained path
    for _ in range(2):
        select_batch(pool, tr, y[tr], 3, Goal("max"), surrogate=s, acquisition=a, rng=np.random.default_rng(0))
        select_constrained(pool, tr, y_fail, 3, Goal("max"), surrogate=s, acquisition=AcquisitionSettings(
            kind="logei", init=0, shortlist=30), rng=np.random.default_rng(0))
    assert len(fits) == 1 and len(scans) == 1  # the PCA view's bounds; the raw pool's are never needed


def test_a_pool_and_its_array_give_the_same_selection():
    X, y = _pool()
    tr = np.arange(0, 30)
    a = AcquisitionSettings(init=0, shortlist=40)
    s1 = select_batch(X, tr, y[tr], 5, Goal("max"), acquisition=a, rng=np.random.default_rng(3))
    s2 = select_batch(Pool(X), tr, y[tr], 5, Goal("max"), acquisition=a, rng=np.random.default_rng(3))
    np.testing.assert_array_equal(s1.indices, s2.indices)
    np.testing.assert_array_equal(s1.acquisition, s2.acquisition)


def test_available_screen_and_shortlist():
    assert available(6, [1, 3], None, np.array([], dtype=int), np.array([3, 5])).tolist() == [0, 2, 4]
    X = np.arange(10.0)[:, None]
    rows = np.array([1, 4, 6, 9])
    mean, twice = screen(X, rows, 3, lambda Xc, r: (Xc[:, 0], 2 * r))
    np.testing.assert_array_equal(mean, [1, 4, 6, 9])
    np.testing.assert_array_equal(twice, [2, 8, 12, 18])
    np.testing.assert_array_equal(screen(X, rows, 2, lambda Xc, r: -Xc[:, 0]), [-1, -4, -6, -9])
    score = np.array([0.1, 0.9, 0.5, 0.9, 0.3])
    assert shortlist(score, 3).tolist()[2] == 2 and set(shortlist(score, 3)[:2]) == {1, 3}
    assert shortlist(score, 3, ties_by_position=True).tolist() == [1, 3, 2]
    assert shortlist(score, 10).tolist() == shortlist(score, 5).tolist()


def test_condition_is_the_kriging_believer_update():
    S = np.array([[1.0, 0.5], [0.5, 2.0]])
    C = condition(S, 0, 0.0)
    np.testing.assert_allclose(C, [[0.0, 0.0], [0.0, 1.75]])
    assert condition(S, 1, 2.0)[0, 0] == pytest.approx(1.0 - 0.25 / 4.0)
