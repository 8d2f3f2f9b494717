"""From the campaign spec to the agent.

``build_agent`` turns the validated spec into the agent's own settings: the only place
spec dicts become agent settings.
"""

from __future__ import annotations


from matloop.agents.decision.acquisition import AcquisitionSettings
from matloop.agents.decision.agent import AgentConfig, DefaultAgent, MultiFidelityConfig, ObjectiveInfo
from matloop.agents.decision.multifidelity import ChoiceSettings
from matloop.agents.modelling.multifidelity import MultiFidelitySettings
from matloop.agents.modelling.surrogates import SurrogateSettings
from matloop.core.goals import Goal
from matloop.core.protocols import OracleInfo

from .spec import CampaignSpec
from .tiers import oracle_properties


def objective_infos(spec: CampaignSpec) -> list[ObjectiveInfo]:
    """Several objectives: each one's property, the oracle whose value counts and its goal."""
    return [ObjectiveInfo(o.property, spec.oracle_of(o).name, Goal.from_objective(o.goal, o.window))
            for o in spec.objectives or []]


def build_agent(spec: CampaignSpec, oracles: dict) -> DefaultAgent:
    """The campaign's agent, configured from ``spec.agent`` and the oracles' declared properties."""
    infos = [OracleInfo(o.name, oracle_properties(oracles[o.name]), o.fidelity, o.cost,
                        o.promote.model_dump() if o.promote else None)
             for o in spec.oracles]
    fidelity = None
    fs = spec.agent.fidelity
    if fs.strategy == "multi_fidelity":
        fidelity = MultiFidelityConfig(
            oracles=[o.name for o in spec.fidelity_oracles()], model=MultiFidelitySettings(**fs.model),
            choice=ChoiceSettings(**fs.choice), init=fs.init, pca_variance=fs.pca_variance,
        )
    primary = spec.primary_objective
    cfg = AgentConfig(
        goal=Goal.from_objective(primary.goal, primary.window),
        objective_property=primary.property,
        objective_oracle=spec.objective_oracle.name,
        oracles=infos,
        surrogate=SurrogateSettings(**spec.agent.surrogate),
        acquisition=AcquisitionSettings(**spec.agent.acquisition),
        constraints=[c.as_core() for c in spec.constraints],
        objectives=objective_infos(spec),
        fidelity=fidelity,
    )
    return DefaultAgent(cfg)
