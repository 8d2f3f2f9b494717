"""Objective bookkeeping: what counts as a result, the best so far, and the Pareto front.

A candidate's objective value counts when its objective oracle reported it and every
constraint is met (``matloop.core.goals.Constraint.met_by`` on the candidate's successful
observations); best-so-far ranks the counted values by the campaign's (primary) goal.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from matloop.agents.decision.agent import pareto_summary
from matloop.core.goals import Goal
from matloop.core.records import Candidate, Observation

from .planning import objective_infos
from .spec import CampaignSpec


@dataclass
class ArmResult:
    """One arm's outcome: evaluations made, the best counted value and its formula."""

    evaluations: int
    best_value: float | None
    best_formula: str | None
    n_feasible: int
    n_hits: int | None  # window goals: evaluations landing in the window


class Scoreboard:
    """Scores one campaign's observations by its primary objective and constraints."""

    def __init__(self, spec: CampaignSpec):
        self.spec = spec
        self.goal = Goal.from_objective(spec.primary_objective.goal, spec.primary_objective.window)
        self.constraints = [c.as_core() for c in spec.constraints]

    def values(self, observations: list[Observation]) -> list[tuple[str, float]]:
        """(candidate id, objective value) of the successful, feasible candidates, in first-seen order."""
        prop = self.spec.primary_objective.property
        oname = self.spec.objective_oracle.name
        by_cand: dict[str, dict[str, Observation]] = {}
        for o in observations:
            if o.ok:
                by_cand.setdefault(o.candidate_id, {})[o.oracle] = o
        out = []
        for cid, per in by_cand.items():
            main = per.get(oname)
            if main is None or main.value(prop) is None:
                continue
            if all(c.met_by(per.values()) for c in self.constraints):
                out.append((cid, main.value(prop)))
        return out

    def fitness(self, observations: list[Observation]) -> dict[str, float]:
        """Candidate id -> goal score (higher is better) of the counted values."""
        vals = self.values(observations)
        if not vals:
            return {}
        scores = self.goal.score(np.array([v for _, v in vals]))
        return {cid: float(s) for (cid, _), s in zip(vals, scores)}

    def result(self, observations: list[Observation], candidates: dict[str, Candidate]) -> ArmResult:
        """The ``ArmResult`` of one arm's observations (``candidates``: id -> candidate, for the formula)."""
        vals = self.values(observations)
        if not vals:
            return ArmResult(len(observations), None, None, 0, 0 if self.goal.kind == "window" else None)
        y = np.array([v for _, v in vals])
        k = int(np.argmax(self.goal.score(y)))
        hits = int(self.goal.contains(y).sum()) if self.goal.kind == "window" else None
        return ArmResult(len(observations), vals[k][1], candidates[vals[k][0]].formula, len(vals), hits)

    def pareto(self, observations: list[Observation], candidates: list[Candidate]) -> dict | None:
        """Several objectives: the Pareto front of these observations (``pareto_summary``); None otherwise."""
        if not self.spec.objectives:
            return None
        formulas = {c.id: c.formula for c in candidates}
        return pareto_summary(observations, formulas, objective_infos(self.spec), self.constraints)
