"""The leave-one-out ceiling that `matloop benchmark` writes to summary.json ("attainable")."""

from __future__ import annotations

import numpy as np

from matloop.core.goals import Goal
from matloop.loop.benchmark import attainable, good_mask


def test_ceiling_is_high_when_features_carry_the_label_and_random_when_they_do_not():
    rng = np.random.default_rng(0)
    X = rng.random((200, 4))
    y = X[:, 0] + 0.5 * X[:, 1] ** 2 + 0.01 * rng.standard_normal(200)
    goal = Goal(kind="min")
    good = good_mask(y, goal, 0.05)  # the 10 lowest
    informative = attainable(X, y, goal, good, budget=20)
    assert set(informative) == {"rf_oob", "gp_loo"}
    for model in informative.values():
        assert model["recall_at_budget"] >= 0.8 and model["spearman"] > 0.9
    shuffled = rng.permutation(y)
    blind = attainable(X, shuffled, goal, good_mask(shuffled, goal, 0.05), budget=20)
    for model in blind.values():
        # random picks would recall 20/200 = 0.1 in expectation
        assert model["recall_at_budget"] <= 0.35 and abs(model["spearman"]) < 0.2


def test_window_goal_ranks_by_distance_to_the_window():
    rng = np.random.default_rng(1)
    X = rng.random((150, 2))
    y = 3 * X[:, 0]
    goal = Goal.parse("window:1.0:1.2")
    good = good_mask(y, goal, 0.01)
    res = attainable(X, y, goal, good, budget=int(good.sum()) * 2)
    assert res["gp_loo"]["recall_at_budget"] >= 0.9
