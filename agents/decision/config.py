"""The agent's own settings, built from the campaign spec by ``matloop.loop.planning``."""

from __future__ import annotations

from dataclasses import dataclass, field

from matloop.agents.decision.acquisition import AcquisitionSettings
from matloop.agents.decision.multifidelity import ChoiceSettings
from matloop.agents.modelling.multifidelity import MultiFidelitySettings
from matloop.agents.modelling.surrogates import SurrogateSettings
from matloop.core.goals import Constraint, Goal
from matloop.core.protocols import OracleInfo

__all__ = ["AgentConfig", "MultiFidelityConfig", "ObjectiveInfo"]


@dataclass
class ObjectiveInfo:
    """One objective of a multi-objective campaign: a property, the oracle whose value counts, a goal."""

    property: str
    oracle: str
    goal: Goal

    def label(self, all_objectives: list[ObjectiveInfo]) -> str:
        """The property name, or ``property@oracle`` where two objectives share a property."""
        same = sum(1 for o in all_objectives if o.property == self.property)
        return self.property if same == 1 else f"{self.property}@{self.oracle}"


@dataclass
class MultiFidelityConfig:
    """``agent.fidelity`` with ``strategy: multi_fidelity``; ``oracles`` cheapest first, the last one counts."""

    oracles: list[str]
    model: MultiFidelitySettings = field(default_factory=lambda: MultiFidelitySettings())
    choice: ChoiceSettings = field(default_factory=lambda: ChoiceSettings())
    init: int = 3
    pca_variance: float | None = None


@dataclass
class AgentConfig:
    """What the agent plans for: the goal, the oracles it may ask, its models and its policy.

    The policy follows from the fields: ``fidelity`` set -> multi-fidelity; two or more
    ``objectives`` -> Pareto; otherwise the funnel (promotion rules plus entry-tier batches).
    """

    goal: Goal
    objective_property: str
    objective_oracle: str
    oracles: list[OracleInfo]
    surrogate: SurrogateSettings = field(default_factory=SurrogateSettings)
    acquisition: AcquisitionSettings = field(default_factory=AcquisitionSettings)
    constraints: list[Constraint] = field(default_factory=list)
    objectives: list[ObjectiveInfo] = field(default_factory=list)  # two or more: Pareto search
    fidelity: MultiFidelityConfig | None = None  # None: funnel (promote rules)

    def entry_oracles(self) -> list[OracleInfo]:
        """The oracles without a promotion rule: the agent picks candidates for them directly."""
        return [o for o in self.oracles if not o.promote]
