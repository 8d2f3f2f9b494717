import numpy as np
import pytest
import torch

from matloop.agents.decision.multiobjective import default_ref_point, hypervolume, log_ehvi, pareto_front, select_pareto
from matloop.core.goals import Goal

torch.set_num_threads(1)

# -- fronts and hypervolumes ---------------------------------------------------------------------


def test_pareto_front_by_hand():
    Y = np.array(
        [
            [1.0, 5.0],  # front
            [2.0, 3.0],  # front
            [2.0, 2.0],  # dominated by [2, 3]
            [4.0, 1.0],  # front
            [0.5, 0.5],  # dominated by everything
            [2.0, 3.0],  # duplicate of a front point: kept
            [np.nan, 9.0],  # never on the front
        ]
    )
    assert pareto_front(Y, [True, True]).tolist() == [True, True, False, True, False, True, False]
    # minimise the second column: (4, 1) beats (2, 2), (2, 3) and (1, 5); (0.5, 0.5) has the least
    assert pareto_front(Y, [True, False]).tolist() == [False, False, False, True, True, False, False]
    assert pareto_front(np.zeros((0, 2)), [True, True]).shape == (0,)
    with pytest.raises(ValueError, match="maximize"):
        pareto_front(Y, [True])


def test_hypervolume_of_a_staircase_equals_its_area():
    # steps at (1,3), (2,2), (3,1) over the reference (0,0): 1*3 + 1*2 + 1*1 = 6
    Y = np.array([[1.0, 3.0], [2.0, 2.0], [3.0, 1.0]])
    assert hypervolume(Y, [0.0, 0.0], [True, True]) == pytest.approx(6.0)
    # dominated points and points not beating the reference add nothing
    extra = np.vstack([Y, [[1.0, 1.0], [-1.0, 10.0], [np.nan, 5.0]]])
    assert hypervolume(extra, [0.0, 0.0], [True, True]) == pytest.approx(6.0)
    # the same front as minimisation problems: mirror the values and the reference
    assert hypervolume(-Y, [0.0, 0.0], [False, False]) == pytest.approx(6.0)
    assert hypervolume(Y * [1, -1], [0.0, 0.0], [True, False]) == pytest.approx(6.0)
    # a shifted reference: (3-0.5)*... by hand: 0.5*2.5 + 1*1.5 + 1*0.5 = 3.25
    assert hypervolume(Y, [0.5, 0.5], [True, True]) == pytest.approx(3.25)
    assert hypervolume(Y, [5.0, 5.0], [True, True]) == 0.0


def test_hypervolume_in_three_dimensions():
    # two boxes [0,2]x[0,1]x[0,1] and [0,1]x[0,2]x[0,1]: union volume 2 + 2 - 1 = 3
    Y = np.array([[2.0, 1.0, 1.0], [1.0, 2.0, 1.0]])
    assert hypervolume(Y, [0.0, 0.0, 0.0], [True, True, True]) == pytest.approx(3.0)


def test_default_ref_point():
    Y = np.array([[1.0, 3.0], [3.0, 1.0], [0.0, 0.0]])  # front (1,3),(3,1): nadir (1,1), range (2,2)
    np.testing.assert_allclose(default_ref_point(Y, [True, True]), [0.8, 0.8])
    np.testing.assert_allclose(default_ref_point(-Y, [False, False]), [-0.8, -0.8])
    with pytest.raises(ValueError):
        default_ref_point(np.full((2, 2), np.nan), [True, True])


def _hv2d(P, ref):
    """2-D hypervolume (maximisation) by a sweep: independent of botorch's box decompositions."""
    P = P[(P > ref).all(axis=1)]
    area, top = 0.0, ref[1]
    for x, y in P[np.argsort(-P[:, 0])]:
        if y > top:
            area += (x - ref[0]) * (y - top)
            top = y
    return area


def test_log_ehvi_matches_monte_carlo():
    rng = np.random.default_rng(0)
    front = np.array([[1.0, 3.0], [2.0, 2.0], [3.0, 1.0]])
    ref = np.array([0.0, 0.0])
    assert _hv2d(front, ref) == pytest.approx(6.0)
    mean = np.array([[2.5, 2.5], [1.0, 1.0], [4.0, 0.5], [0.0, 0.0]])
    std = np.array([[0.5, 0.5], [0.3, 0.8], [0.2, 0.2], [1.0, 1.0]])
    hv0 = _hv2d(front, ref)
    got = np.exp(log_ehvi(mean, std, front, ref))
    for i in range(len(mean)):
        draws = mean[i] + std[i] * rng.standard_normal((20000, 2))
        mc = np.mean([_hv2d(np.vstack([front, d]), ref) - hv0 for d in draws])
        assert got[i] == pytest.approx(mc, rel=0.05, abs=2e-3)
    # an empty front: the improvement is the expected box volume above the reference
    only = np.exp(log_ehvi(np.array([[1.0, 2.0]]), np.array([[1e-6, 1e-6]]), np.zeros((0, 2)), ref))
    assert only[0] == pytest.approx(2.0, rel=1e-4)


# -- selection -----------------------------------------------------------------------------------

_G = np.linspace(0.0, 1.0, 30)
POOL = np.array([(a, b) for a in _G for b in _G])  # 900 points on [0, 1]^2


def _f(X):
    """Trade-off along x0 (f1 = x0 vs f2 = 1 - x0^2); both fall off away from x1 = 0.5."""
    pen = 2.0 * (X[:, 1] - 0.5) ** 2
    return np.column_stack([X[:, 0] - pen, 1.0 - X[:, 0] ** 2 - pen])


@pytest.fixture(scope="module")
def toy():
    rng = np.random.default_rng(0)
    tr = rng.choice(len(POOL), 10, replace=False)
    Y = _f(POOL[tr])
    sel = select_pareto(POOL, tr, Y, 4, ["max", "max"], rng=np.random.default_rng(1))
    return tr, Y, sel


def test_select_pareto_improves_the_hypervolume(toy):
    tr, Y, sel = toy
    ref = np.asarray(sel.info["ref_point_scores"])
    np.testing.assert_allclose(ref, default_ref_point(Y, [True, True]))
    hv0 = hypervolume(Y, ref, [True, True])
    assert sel.info["hypervolume"] == pytest.approx(hv0)
    hv1 = hypervolume(np.vstack([Y, _f(POOL[sel.indices])]), ref, [True, True])
    assert hv1 > hv0
    # better than random batches of the same size
    rng = np.random.default_rng(5)
    rest = np.setdiff1d(np.arange(len(POOL)), tr)
    gains = [hypervolume(np.vstack([Y, _f(POOL[rng.choice(rest, 4, replace=False)])]), ref, [True, True]) - hv0
             for _ in range(30)]  # fmt: skip
    assert hv1 - hv0 > np.quantile(gains, 0.9)
    # the chosen points sit near the ridge x1 = 0.5 (random points average |x1 - 0.5| = 0.26)
    assert np.mean(np.abs(POOL[sel.indices, 1] - 0.5)) < 0.1


def test_select_pareto_returns_a_clean_batch(toy):
    tr, Y, sel = toy
    got = sel.indices.tolist()
    assert len(got) == 4 and len(set(got)) == 4
    assert not set(got) & set(tr.tolist())
    assert sel.mean.shape == (4, 2) and sel.std.shape == (4, 2) and sel.acquisition.shape == (4,)
    front = pareto_front(Y, [True, True])
    assert sorted(sel.info["pareto_indices"]) == sorted(tr[front].tolist())
    np.testing.assert_allclose(sorted(sel.info["pareto_values"]), sorted(Y[front].tolist()))
    assert len(sel.info["batch_values"]) == 4
    # excluding the picks gives a disjoint batch
    again = select_pareto(POOL, tr, Y, 2, ["max", "max"], rng=np.random.default_rng(1), exclude=sel.indices)
    assert not set(again.indices.tolist()) & set(got)


def test_pending_points_are_fantasised_not_rechosen(toy):
    tr, Y, sel = toy
    # with the greedy batch's first two picks pending, the next two picks are its 3rd and 4th:
    # pending points enter qLogNEHVI exactly like earlier picks of the same batch
    nxt = select_pareto(POOL, tr, Y, 2, ["max", "max"], rng=np.random.default_rng(1), pending_idx=sel.indices[:2])
    assert not set(nxt.indices.tolist()) & set(sel.indices[:2].tolist())
    assert nxt.indices.tolist() == sel.indices[2:].tolist()


def test_select_pareto_with_min_and_window_objectives():
    # minimise g1 = -f1 and keep g2 = f2 inside [0.6, 0.8]; Goal objects and strings both accepted
    rng = np.random.default_rng(3)
    tr = rng.choice(len(POOL), 12, replace=False)
    F = _f(POOL[tr])
    Y = np.column_stack([-F[:, 0], F[:, 1]])
    sel = select_pareto(POOL, tr, Y, 2, [Goal("min"), "window:0.6:0.8"], rng=np.random.default_rng(0))
    assert len(set(sel.indices.tolist())) == 2 and not set(sel.indices.tolist()) & set(tr.tolist())
    assert sel.info["mean_units"] == ["property", "score (-distance to window)"]
    assert (sel.mean[:, 1] <= 1e-9 + 3 * sel.std[:, 1]).all()  # a window score is never positive


def test_select_pareto_random_start_and_errors():
    sel = select_pareto(POOL, [0], [[0.1, 0.2]], 3, ["max", "min"], rng=np.random.default_rng(0))
    assert "random" in sel.info["reason"] and len(set(sel.indices.tolist())) == 3 and 0 not in sel.indices
    with pytest.raises(ValueError, match="at least 2"):
        select_pareto(POOL, [0, 1], [[0.1], [0.2]], 1, ["max"], rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="columns"):
        select_pareto(POOL, [0, 1], [[0.1, 1.0], [0.2, 1.0]], 1, ["max", "max", "min"], rng=np.random.default_rng(0))


def test_select_pareto_leaves_torch_global_generator_alone(toy):
    tr, Y, sel = toy
    torch.manual_seed(123)
    before = torch.get_rng_state()
    again = select_pareto(POOL, tr, Y, 4, ["max", "max"], rng=np.random.default_rng(1))
    assert torch.equal(before, torch.get_rng_state())  # baseline pruning runs in a forked, seeded generator
    assert again.indices.tolist() == sel.indices.tolist()
