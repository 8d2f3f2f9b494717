import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from matloop.agents.decision.acquisition import AcquisitionSettings, select_batch
from matloop.agents.decision.constraints import (
    ConstraintModel,
    FailureClassifier,
    FailureClassifierSettings,
    select_constrained,
    weighted_log_acquisition,
)
from matloop.core.goals import Goal

torch.set_num_threads(1)

ACQ = AcquisitionSettings(init=0)
LINE = np.linspace(0.0, 1.0, 201)[:, None]  # 1-D pool, step 0.005


def _region_data(n=60, d=2, seed=0):
    X = np.random.default_rng(seed).random((n, d))
    return X, X[:, 0] > 0.6


# -- failure classifier --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["gp", "rf"])
def test_failure_classifier_learns_region(kind):
    X, failed = _region_data()
    clf = FailureClassifier(FailureClassifierSettings(kind=kind, n_trees=50), bounds=np.array([[0.0, 0.0], [1.0, 1.0]]))
    clf.fit(X, failed)
    assert clf.mode == kind
    p = clf.prob_success(np.array([[0.2, 0.5], [0.9, 0.5], [0.2, 0.1], [0.9, 0.9]]))
    assert p[0] > 0.8 and p[2] > 0.8
    assert p[1] < 0.2 and p[3] < 0.2
    grid = np.random.default_rng(1).random((500, 2))
    acc = np.mean((clf.prob_success(grid) > 0.5) == (grid[:, 0] <= 0.6))
    assert acc > 0.9
    np.testing.assert_allclose(clf.log_prob_success(grid), np.log(clf.prob_success(grid)))


def test_failure_classifier_chunked_prediction_matches_whole():
    X, failed = _region_data()
    clf = FailureClassifier(FailureClassifierSettings(chunk_size=7))
    clf.fit(X, failed)
    whole = FailureClassifier(FailureClassifierSettings(chunk_size=10_000))
    whole.fit(X, failed)
    grid = np.random.default_rng(2).random((40, 2))
    np.testing.assert_allclose(clf.prob_success(grid), whole.prob_success(grid), rtol=1e-8)


def test_failure_classifier_falls_back_to_smoothed_base_rate():
    X, _ = _region_data(n=10)
    clf = FailureClassifier()
    clf.fit(X, np.zeros(10, dtype=bool))  # no failure seen: (10 + 1) / (10 + 2)
    assert clf.mode == "base_rate"
    np.testing.assert_allclose(clf.prob_success(np.zeros((3, 2))), 11 / 12)
    clf.fit(X[:3], np.array([True, False, True]))  # fewer than min_labels=4
    np.testing.assert_allclose(clf.prob_success(np.zeros((2, 2))), 2 / 5)
    with pytest.raises(ValueError, match="rows"):
        clf.fit(X, np.zeros(3, dtype=bool))
    with pytest.raises(ValidationError):
        FailureClassifierSettings(kind="svm")


# -- known constraints ---------------------------------------------------------------------------


def test_constraint_model_probabilities_on_a_line():
    x = np.arange(11) / 10  # exact tenths: 0.6 is on the boundary, not above it
    X = x[:, None]
    cm = ConstraintModel(bounds=np.array([[0.0], [1.0]]))
    cm.fit({"g": (X, x, None, 0.6), "h": (X, x, 0.2, math.inf), "sparse": (X[:1], x[:1], None, 0.5)})
    t = np.array([[0.05], [0.4], [0.6], [0.9]])
    each = {k: np.exp(v) for k, v in cm.log_prob_each(t).items()}
    assert each["g"][1] > 0.99 and each["g"][3] < 0.01 and abs(each["g"][2] - 0.5) < 0.1
    assert each["h"][0] < 0.01 and each["h"][1] > 0.99
    np.testing.assert_allclose(each["sparse"], 2 / 3)  # one label, feasible: (1 + 1) / (1 + 2)
    np.testing.assert_allclose(cm.prob_feasible(t), each["g"] * each["h"] * each["sparse"], rtol=1e-10)
    assert cm.describe()["g"]["n_feasible"] == 7
    with pytest.raises(ValueError, match="lo <= hi"):
        cm.fit({"bad": (X, x, None, None)})


def test_weighted_log_acquisition_by_hand():
    out = weighted_log_acquisition(np.array([0.0, -1.0, -np.inf]), np.array([0.5, 0.0, 1.0]), np.array([1.0, 0.5, 1.0]))
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out[0], math.log(0.5))
    np.testing.assert_allclose(out[1], -1.0 - 1e6 + math.log(0.5))
    np.testing.assert_allclose(out[2], -1e6)
    logs = weighted_log_acquisition(np.array([0.0]), np.log([0.5]), np.log([0.25]), log_space=True)
    np.testing.assert_allclose(logs, math.log(0.125))
    np.testing.assert_allclose(weighted_log_acquisition(np.array([-2.0])), [-2.0])


# -- constrained selection -----------------------------------------------------------------------


def test_known_constraint_moves_the_pick_to_the_best_feasible_point():
    # maximise f(x) = x subject to g(x) = x <= 0.6; labels at 0, 0.1, ..., 0.5 and 0.8, 0.9, 1.0:
    # the best feasible candidate left is x = 0.6, the unconstrained one lies near 1
    tr = np.array([0, 20, 40, 60, 80, 100, 160, 180, 200])
    x = LINE[tr, 0]
    free = select_batch(LINE, tr, x, 1, Goal("max"), acquisition=ACQ, rng=np.random.default_rng(0))
    sel = select_constrained(
        LINE, tr, x, 1, Goal("max"), constraint_labels={"g": (tr, x, None, 0.6)}, acquisition=ACQ,
        rng=np.random.default_rng(0),
    )  # fmt: skip
    assert LINE[free.indices[0], 0] > 0.8
    assert 0.55 <= LINE[sel.indices[0], 0] <= 0.6
    c = sel.info["constraints"]
    assert c["known"]["g"]["n_labels"] == 9 and c["failures"]["n_failed"] == 0
    assert sel.info["best_feasible_incumbent"] == pytest.approx(0.5, abs=0.02)
    terms = c["chosen"][0]
    assert sel.acquisition[0] == pytest.approx(terms["log_acquisition"] + terms["log_prob_feasible"])


def test_window_goal_with_a_constraint_lands_in_the_intersection():
    tr = np.arange(0, 201, 20)
    x = LINE[tr, 0]
    sel = select_constrained(
        LINE, tr, x, 3, Goal("window", 0.7, 0.9), constraint_labels={"g": (tr, x, None, 0.75)},
        acquisition=ACQ, rng=np.random.default_rng(0),
    )  # fmt: skip
    chosen = LINE[sel.indices, 0]
    assert ((chosen >= 0.7) & (chosen <= 0.75)).all()
    assert len(set(sel.indices.tolist())) == 3


def test_failures_steer_the_batch_away_from_the_failing_region():
    # oracle fails for x > 0.6 (labels at 0.7, 0.8, 0.9, 1.0 are NaN); f(x) = x elsewhere
    tr = np.arange(0, 201, 20)
    x = LINE[tr, 0]
    y = np.where(x > 0.6, np.nan, x)
    free = select_batch(LINE, tr, y, 3, Goal("max"), acquisition=ACQ, rng=np.random.default_rng(0))
    sel = select_constrained(LINE, tr, y, 3, Goal("max"), acquisition=ACQ, rng=np.random.default_rng(0))
    assert (LINE[free.indices, 0] > 0.8).all()
    chosen = LINE[sel.indices, 0]
    assert chosen[0] < 0.7 and (chosen < 0.8).all()
    assert sel.info["constraints"]["failures"] == {"model": "gp", "n_success": 7, "n_failed": 4, "base_rate": 8 / 13}
    assert not set(sel.indices.tolist()) & set(tr.tolist())


def test_feasibility_search_when_no_label_is_feasible():
    tr = np.array([140, 160, 180, 200])  # x = 0.7..1.0, all violate x <= 0.3
    x = LINE[tr, 0]
    sel = select_constrained(
        LINE, tr, x, 2, Goal("max"), constraint_labels={"g": (tr, x, None, 0.3)}, acquisition=ACQ,
        rng=np.random.default_rng(0),
    )  # fmt: skip
    assert "feasibility search" in sel.info["constraints"]["weighting"]
    assert (LINE[sel.indices, 0] < 0.5).all()


def test_batch_respects_exclude_and_pending():
    tr = np.arange(0, 201, 20)
    x = LINE[tr, 0]
    labels = {"g": (tr, x, None, 0.6)}
    first = select_constrained(LINE, tr, x, 2, Goal("max"), constraint_labels=labels, acquisition=ACQ,
                               rng=np.random.default_rng(0))  # fmt: skip
    exclude = np.array([first.indices[1]])
    nxt = select_constrained(LINE, tr, x, 3, Goal("max"), constraint_labels=labels, acquisition=ACQ,
                             rng=np.random.default_rng(0), pending_idx=first.indices[:1], exclude=exclude)  # fmt: skip
    got = nxt.indices.tolist()
    assert len(set(got)) == 3
    assert not set(got) & (set(tr.tolist()) | set(first.indices.tolist()))


def test_without_constraints_or_failures_it_is_select_batch():
    tr = np.arange(0, 201, 25)
    x = LINE[tr, 0]
    a = select_batch(LINE, tr, x, 2, Goal("max"), acquisition=ACQ, rng=np.random.default_rng(3))
    b = select_constrained(LINE, tr, x, 2, Goal("max"), acquisition=ACQ, rng=np.random.default_rng(3))
    assert a.indices.tolist() == b.indices.tolist()
    assert b.info["constraints"]["weighting"].startswith("none")
    with pytest.raises(ValueError, match="log-scale"):
        select_constrained(LINE, tr, x, 2, Goal("max"), failed_idx=np.array([3]),
                           acquisition=AcquisitionSettings(kind="ucb"), rng=np.random.default_rng(0))  # fmt: skip
