"""Retrospective runs through the real campaign loop.

A benchmark writes its labelled pool once as a lookup table (``write_labels``) and describes
it as a campaign (``replay_spec``: lookup oracles over that table, the inline executor);
each (seed, strategy) run is then ``replay``: the real ``Campaign`` loop on a fresh in-memory
store seeded with the pool, with the strategy as the agent and the pool features passed in,
so nothing is featurized twice.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from matloop.core.goals import Goal
from matloop.core.protocols import Agent, Plan, PlanningState
from matloop.core.records import Candidate

from .campaign import Campaign
from .pool import PoolFeatures
from .spec import CampaignSpec
from .store import Store

ID_COLUMN = "candidate_id"
COMPOSITION_COLUMN = "composition"


def write_labels(path: Path, candidates: list[Candidate], columns: dict[str, np.ndarray]) -> Path:
    """Write the lookup table: each candidate's id, composition and labels, one row per candidate.

    Rows are keyed by candidate id, so polymorphs of one composition (perov5's site swaps)
    keep their own labels. Labels are written as ``repr`` (shortest round trip): a value
    that was read from a CSV reads back as the same float.
    """
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([ID_COLUMN, COMPOSITION_COLUMN, *columns])
        for r, c in enumerate(candidates):
            w.writerow([c.id, c.composition, *(repr(float(v[r])) for v in columns.values())])
    return path


def lookup_oracle(name: str, table: Path, prop: str, column: str, cost: float = 1.0, fidelity: int = 0) -> dict:
    """The spec of a lookup oracle reporting ``prop`` from ``column`` of the labels table."""
    return {"name": name, "kind": "lookup", "cost": cost, "fidelity": fidelity,
            "settings": {"table": str(table), "key_column": ID_COLUMN, "key": "candidate_id",
                         "columns": {prop: column}, "duplicates": "first"}}


def objective_of(prop: str, goal: Goal) -> dict:
    """The spec objective for ``goal`` on ``prop``."""
    if goal.kind == "window":
        return {"property": prop, "goal": "window", "window": [goal.lo, goal.hi]}
    return {"property": prop, "goal": "maximize" if goal.kind == "max" else "minimize"}


def replay_spec(name: str, table: Path, oracles: list[dict], objective: dict, budget: dict, batch_size: int,
                agent: dict | None = None, features: dict | None = None) -> CampaignSpec:
    """A campaign over the labels table: its pool, lookup ``oracles``, the inline executor, no store file."""
    spec = CampaignSpec.model_validate({
        "name": name, "objective": objective, "oracles": oracles, "budget": budget, "batch_size": batch_size,
        "sources": [{"kind": "file", "settings": {"path": str(table), "composition_column": COMPOSITION_COLUMN}}],
        "agent": agent or {}, "features": features or {}, "store": ":memory:", "executor": {"kind": "inline"},
    })
    spec.base_dir = Path(table).parent
    return spec


class _PlanLog:
    """Passes plans through and keeps their requests in the order they were made."""

    def __init__(self, agent: Agent):
        self.agent = agent
        self.requests: list[tuple[str, str]] = []

    def propose(self, state: PlanningState) -> Plan:
        """The wrapped agent's plan, its requests noted."""
        plan = self.agent.propose(state)
        self.requests += [(r.candidate.id, r.oracle) for r in plan.requests]
        return plan


def replay(spec: CampaignSpec, candidates: list[Candidate], pool: PoolFeatures, agent: Agent,
           rng: np.random.Generator) -> list[tuple[str, str]]:
    """One run of the campaign loop on an in-memory store holding ``candidates`` (rows of ``pool``).

    Returns:
        The (candidate id, oracle) requests in the order the agent made them.
    """
    log = _PlanLog(agent)
    store = Store(":memory:")
    try:
        store.add_candidates(candidates)
        store.set_meta("pool_loaded", True)
        Campaign(spec, agent=log, pool=pool, rng=rng, store=store, quiet=True).run()
        observed = sorted((o.candidate_id, o.oracle) for o in store.observations(arm="agent"))
    finally:
        store.close()
    if observed != sorted(log.requests):
        raise RuntimeError("the store's observations differ from the requests planned")
    return log.requests
