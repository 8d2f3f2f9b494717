"""A plan while it is being built: requests, their acquisition values, rationale and cost."""

from __future__ import annotations

import math

from matloop.core.protocols import Plan, PlanningState
from matloop.core.records import Candidate, Request

__all__ = ["PlanDraft"]


class PlanDraft:
    """The requests of one iteration as the policy adds them, and what they are expected to cost.

    Attributes:
        rationale: the readable rationale the store keeps (``iteration``, ``pool_size``,
            ``tiers`` and whatever the policy adds).
        cost_left: the state's remaining cost budget (``inf`` without one).
        max_requests: the state's remaining evaluations, or None.
    """

    def __init__(self, state: PlanningState, **rationale):
        self.iteration = state.iteration
        self.requests: list[Request] = []
        self.acquisition: dict[str, float | None] = {}
        self.rationale: dict = {"iteration": state.iteration, "pool_size": len(state.candidates), "tiers": {},
                                **rationale}
        self.expected_cost = 0.0
        self.cost_left = state.cost_left
        self.max_requests = state.max_requests

    def affordable(self, q: int, unit_cost: float, per_unit: int = 1) -> int:
        """How many of ``q`` units (each ``per_unit`` requests costing ``unit_cost`` in all) the
        remaining cost budget and evaluation count still allow."""
        n = q if (unit_cost <= 0 or math.isinf(self.cost_left)) else int(
            min(q, max(0, (self.cost_left - self.expected_cost) // unit_cost)))
        if self.max_requests is not None:
            n = min(n, max(0, (self.max_requests - len(self.requests)) // per_unit))
        return n

    def add(self, candidate: Candidate, oracle: str, cost: float) -> Request:
        """Request ``candidate`` from ``oracle`` (no acquisition value recorded)."""
        r = Request(Request.make_id(candidate.id, oracle, self.iteration), candidate, oracle, self.iteration)
        self.requests.append(r)
        self.expected_cost += cost
        return r

    def add_scored(self, candidate: Candidate, oracle: str, cost: float, acquisition: float | None) -> Request:
        """Request ``candidate`` from ``oracle`` and record its acquisition value (None when not finite)."""
        r = self.add(candidate, oracle, cost)
        self.acquisition[r.id] = acquisition
        return r

    def plan(self) -> Plan:
        """The finished ``Plan``; the rationale gets ``expected_cost`` and ``n_requests``."""
        self.rationale["expected_cost"] = self.expected_cost
        self.rationale["n_requests"] = len(self.requests)
        return Plan(requests=self.requests, acquisition=self.acquisition, rationale=self.rationale,
                    expected_cost=self.expected_cost)
