"""Baseline agents for retrospective benchmarks, each an ``Agent`` (``propose(state) -> Plan``).

Single fidelity, one oracle:

* ``RandomAgent``: uniform picks among the candidates not yet requested.
* ``ForestUcbAgent``: a random forest on the goal score; the batch is the top ``q`` by
  ``mean + sqrt(beta) * spread across trees`` (``beta = 1``: ``rf_ucb``; ``0``: ``greedy_rf``).

Two fidelities (a cheap oracle and the top one, which counts):

* ``FunnelAgent``: the rule a practitioner writes: screen a batch on the cheap oracle (with
  another agent), then promote every screened candidate whose cheap value lies in a window.
* ``MultiFidelityRoundAgent``: one ``MultiFidelityGP`` over both fidelities and
  ``choose_requests`` up to a cost per round, hyperparameters refitted every few rounds.

``InitialDesign`` puts a fixed first iteration (the same random candidates for every
strategy at one seed) in front of any of them.
"""

from __future__ import annotations

import math
import time

import numpy as np

from matloop.agents.decision.multifidelity import ChoiceSettings, choose_requests
from matloop.agents.decision.pipeline import pool_bounds
from matloop.agents.modelling.multifidelity import MultiFidelityGP, MultiFidelitySettings
from matloop.agents.modelling.surrogates import SurrogateSettings, make_surrogate
from matloop.core.goals import Goal
from matloop.core.protocols import Agent, Plan, PlanningState
from matloop.core.records import Request

__all__ = ["ForestUcbAgent", "FunnelAgent", "InitialDesign", "MultiFidelityRoundAgent", "RandomAgent"]


def _plan(state: PlanningState, picks: list[tuple[int, str]], rationale: dict, acquisition=None) -> Plan:
    """A plan requesting pool rows ``picks`` (row, oracle) in this order."""
    requests = [Request(Request.make_id(state.candidates[i].id, o, state.iteration), state.candidates[i], o,
                        state.iteration) for i, o in picks]
    values = list(acquisition) if acquisition is not None else [None] * len(requests)
    return Plan(requests, {r.id: v for r, v in zip(requests, values)},
                {"iteration": state.iteration, "n_requests": len(requests), **rationale})


def _requested_rows(state: PlanningState, oracle: str) -> np.ndarray:
    """Sorted pool rows already requested at ``oracle``."""
    return np.array(sorted(state.index[c] for c, o in state.requested if o == oracle and c in state.index), dtype=int)


def _labels(state: PlanningState, oracle: str, prop: str) -> tuple[np.ndarray, np.ndarray]:
    """Pool rows and values of ``oracle``'s successful observations of ``prop``, in arrival order."""
    rows, values = [], []
    for ob in state.observations:
        v = ob.value(prop) if ob.ok and ob.oracle == oracle else None
        if v is not None and ob.candidate_id in state.index:
            rows.append(state.index[ob.candidate_id])
            values.append(v)
    return np.array(rows, dtype=int), np.array(values, dtype=float)


class InitialDesign:
    """A fixed first iteration, then another agent.

    Args:
        picks: (pool row, oracle) pairs requested first, in this order, as far as the cost
            budget and the evaluation budget allow.
        then: the agent that plans every later iteration.
        costs: oracle name -> cost per evaluation (default: free).
    """

    def __init__(self, picks: list[tuple[int, str]], then: Agent, costs: dict[str, float] | None = None):
        self.picks = [(int(i), o) for i, o in picks]
        self.then = then
        self.costs = costs or {}

    def propose(self, state: PlanningState) -> Plan:
        """The initial picks while none of them is requested yet, else the next agent's plan."""
        if any((state.candidates[i].id, o) in state.requested for i, o in self.picks):
            return self.then.propose(state)
        chosen, spent = [], 0.0
        for i, o in self.picks:
            if spent + self.costs.get(o, 0.0) > state.cost_left + 1e-9:
                break
            if state.max_requests is not None and len(chosen) >= state.max_requests:
                break
            chosen.append((i, o))
            spent += self.costs.get(o, 0.0)
        return _plan(state, chosen, {"initial_design": f"{len(chosen)} fixed random picks"})


class RandomAgent:
    """Uniform random picks, without replacement, among the candidates not yet requested at ``oracle``."""

    def __init__(self, oracle: str):
        self.oracle = oracle

    def propose(self, state: PlanningState) -> Plan:
        """``batch_size`` random rows of the pool."""
        free = np.setdiff1d(np.arange(len(state.candidates)), _requested_rows(state, self.oracle))
        picks = state.rng.choice(free, size=min(state.batch_size, len(free)), replace=False)
        return _plan(state, [(int(i), self.oracle) for i in picks], {"selection": "random"})


class ForestUcbAgent:
    """A random forest on the goal score of ``oracle``'s labels; top ``q`` by forest UCB.

    The forest sees the pool features without the trailing element-fraction block, if any.
    With fewer than 2 labels the batch is random.
    """

    SHORTLIST = 500

    def __init__(self, oracle: str, prop: str, goal: Goal, beta: float = 1.0,
                 settings: SurrogateSettings | None = None):
        self.oracle, self.prop, self.goal, self.beta = oracle, prop, goal, float(beta)
        self.settings = settings or SurrogateSettings(kind="rf")

    def propose(self, state: PlanningState) -> Plan:
        """Fit, score every free candidate, take the ``batch_size`` best."""
        X = state.X[:, : state.X.shape[1] - state.fraction_columns] if state.fraction_columns else state.X
        rows, y = _labels(state, self.oracle, self.prop)
        blocked = np.zeros(X.shape[0], dtype=bool)
        blocked[_requested_rows(state, self.oracle)] = True
        blocked[rows] = True
        free = np.flatnonzero(~blocked)
        q = min(state.batch_size, len(free))
        if len(rows) < 2:
            picks = state.rng.choice(free, size=q, replace=False) if q else free[:0]
            return _plan(state, [(int(i), self.oracle) for i in picks], {"selection": "random: fewer than 2 labels"})
        if q == 0:
            return Plan([], {}, {"stop_reason": "no candidates left"})
        model = make_surrogate(self.settings, rng=state.rng)
        model.fit(np.asarray(X[rows], dtype=float), self.goal.score(y))
        mean, std = model.predict(X[free])
        score = mean + math.sqrt(self.beta) * std
        # the shortlist, then its stable order: ties break as in the default agent's selection
        k = min(self.SHORTLIST, len(free))
        short = np.argpartition(-score, k - 1)[:k] if k < len(free) else np.arange(len(free))
        short = short[np.argsort(-score[short], kind="stable")][:q]
        return _plan(state, [(int(free[j]), self.oracle) for j in short],
                     {"selection": f"random forest, mean + sqrt({self.beta:g}) x spread, top {q}"}, score[short])


class FunnelAgent:
    """Screen on the cheap oracle, promote to the top oracle by a window on the cheap value.

    Each iteration either promotes (every screened candidate whose cheap value lies in
    ``window`` and that was not promoted yet, in screening order, as far as the budget
    allows) or, when there is nothing to promote, screens the next batch with ``screen``.

    Attributes:
        rounds: screening batches planned by ``screen``.
    """

    def __init__(self, screen: Agent, cheap: str, top: str, prop: str, window: Goal, costs: dict[str, float]):
        self.screen, self.cheap, self.top, self.prop, self.window, self.costs = screen, cheap, top, prop, window, costs
        self.rounds = 0

    def propose(self, state: PlanningState) -> Plan:
        """Promotions if any are due (none when the budget cannot pay one), else a screening batch."""
        rows, values = _labels(state, self.cheap, self.prop)
        due = [int(i) for i, v in zip(rows, values)
               if self.window.contains(v) and (state.candidates[i].id, self.top) not in state.requested]
        if due:
            n = int(min(len(due), (state.cost_left + 1e-9) // self.costs[self.top]))
            if n == 0:
                return Plan([], {}, {"stop_reason": "remaining budget below the top oracle's cost"})
            return _plan(state, [(i, self.top) for i in due[:n]], {"promoted": f"{n} of {len(due)} in {self.window}"})
        if state.cost_left + 1e-9 < self.costs[self.cheap]:
            return Plan([], {}, {"stop_reason": "remaining budget below the cheap oracle's cost"})
        plan = self.screen.propose(state)
        self.rounds += bool(plan.requests)
        return plan


class MultiFidelityRoundAgent:
    """Rounds of ``choose_requests`` on one ``MultiFidelityGP`` over every label of both fidelities.

    Args:
        oracles: oracle names, cheapest fidelity first (the last one counts).
        costs: cost per evaluation of each oracle, in the same order.
        prop: the property every oracle reports.
        goal: the goal at the top fidelity.
        model: the multi-fidelity GP settings.
        choice: how (candidate, fidelity) pairs are chosen.
        round_cost: cost planned per round (at most ``round_cost / cheapest cost`` requests).
        refit_every: hyperparameters are refitted every this many rounds and reused between.
        first: (pool row, oracle) pairs requested before this agent's first round (an
            initial design), in the order paid for.

    Labels train the model in the order they were paid for (``first``, then each round's
    requests in the order chosen); labels this agent did not see planned come after them.

    Attributes:
        stats: ``rounds``, ``seconds_fit``, ``seconds_choose`` and the ``first_rationales``.
    """

    def __init__(self, oracles: list[str], costs: list[float], prop: str, goal: Goal, model: MultiFidelitySettings,
                 choice: ChoiceSettings, round_cost: float, refit_every: int = 3,
                 first: list[tuple[int, str]] = ()):
        self.oracles, self.costs = list(oracles), {m: float(c) for m, c in enumerate(costs)}
        self.prop, self.goal, self.settings, self.choice = prop, goal, model, choice
        self.round_cost, self.refit_every = float(round_cost), int(refit_every)
        self.previous = None
        self.paid = [(int(i), o) for i, o in first]
        self.stats = {"rounds": 0, "seconds_fit": 0.0, "seconds_choose": 0.0, "first_rationales": []}

    def propose(self, state: PlanningState) -> Plan:
        """Refit (or recondition) the model, then ``choose_requests`` within the round's cost."""
        left = state.cost_left
        if left + 1e-9 < min(self.costs.values()):
            return Plan([], {}, {"stop_reason": "remaining budget below the cheapest fidelity's cost"})
        idx, fid, y = self._training_data(state)
        t0 = time.perf_counter()
        model = MultiFidelityGP(self.settings, bounds=pool_bounds(state.X), seed=int(state.rng.integers(2**31 - 1)))
        rounds = self.stats["rounds"]
        reuse = self.previous if (self.previous is not None and rounds % self.refit_every != 0) else None
        X = np.asarray(state.X)
        model.fit(X[np.asarray(idx, dtype=int)], np.asarray(fid, dtype=int), np.asarray(y),
                  n_fidelities=len(self.oracles), hyperparameters_from=reuse)
        if reuse is None:
            self.previous = model
        t1 = time.perf_counter()
        done = {m: _requested_rows(state, name) for m, name in enumerate(self.oracles)}
        chosen = choose_requests(model, X, self.costs, len(self.oracles) - 1, self.goal,
                                 int(self.round_cost // min(self.costs.values())), done, state.rng,
                                 settings=self.choice, max_cost=min(self.round_cost, left))
        self.stats["seconds_choose"] += time.perf_counter() - t1
        self.stats["seconds_fit"] += t1 - t0
        if not chosen:
            return Plan([], {}, {"stop_reason": "no (candidate, fidelity) pair left to request"})
        if rounds < 3:
            self.stats["first_rationales"].append(chosen[0].rationale)
        self.stats["rounds"] += 1
        self.paid += [(int(r.index), self.oracles[r.fidelity]) for r in chosen]
        return _plan(state, [(r.index, self.oracles[r.fidelity]) for r in chosen],
                     {"selection": f"choose_requests ({self.choice.criterion})"}, [r.score for r in chosen])

    def _training_data(self, state: PlanningState) -> tuple[list[int], list[int], list[float]]:
        """Pool rows, fidelity levels and values of every label, in the order paid for."""
        rank = {(i, o): k for k, (i, o) in enumerate(self.paid)}
        labels = []
        for n, ob in enumerate(state.observations):
            v = ob.value(self.prop) if ob.ok and ob.oracle in self.oracles else None
            if v is not None and ob.candidate_id in state.index:
                i = state.index[ob.candidate_id]
                labels.append((rank.get((i, ob.oracle), len(rank) + n), i, self.oracles.index(ob.oracle), v))
        labels.sort(key=lambda t: t[0])
        return [t[1] for t in labels], [t[2] for t in labels], [t[3] for t in labels]
