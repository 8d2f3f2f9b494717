"""The default agent: plans one iteration of requests from the campaign's state.

``DefaultAgent`` is a thin dispatcher over three policies that share one selection
pipeline (``matloop.agents.decision.policies``), chosen by the campaign:

* **funnel** (one objective, the default): promotions by the oracles' rules, then a
  surrogate-ranked batch per entry tier (``FunnelPolicy``);
* **several objectives** (``AgentConfig.objectives``): promotions, then a qLogNEHVI batch
  weighted by the probabilities of feasibility and of oracle success (``ParetoPolicy``);
* **multi-fidelity** (``AgentConfig.fidelity``): (candidate, oracle) pairs by expected
  top-fidelity utility per unit cost (``MultiFidelityPolicy``).

Every plan reads only labels already acquired and carries a readable rationale that the
loop writes to the store.
"""

from __future__ import annotations

from matloop.agents.decision.config import AgentConfig, MultiFidelityConfig, ObjectiveInfo
from matloop.agents.decision.multiobjective import pareto_summary
from matloop.agents.decision.policies import FunnelPolicy, MultiFidelityPolicy, ParetoPolicy
from matloop.agents.decision.promotion import promoted_candidate
from matloop.core.protocols import Plan, PlanningState

__all__ = [
    "AgentConfig",
    "DefaultAgent",
    "MultiFidelityConfig",
    "ObjectiveInfo",
    "pareto_summary",
    "promoted_candidate",
]


class DefaultAgent:
    """The ``Agent`` of a campaign: the policy its config names (multi-fidelity, Pareto or funnel)."""

    def __init__(self, config: AgentConfig):
        self.config = config
        if config.fidelity is not None:
            self.policy = MultiFidelityPolicy(config)
        elif config.objectives:
            self.policy = ParetoPolicy(config)
        else:
            self.policy = FunnelPolicy(config)

    def propose(self, state: PlanningState) -> Plan:
        """Plan the next iteration with the configured policy."""
        return self.policy.propose(state)
