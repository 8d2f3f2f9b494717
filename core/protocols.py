"""The seams between the loop and the agent side: states, plans and the protocols.

* ``Generator.generate(n, state, rng)`` proposes new candidates from a ``CampaignState``.
* ``Surrogate.fit`` / ``Surrogate.predict`` model one objective over feature vectors.
* ``Agent.propose(state) -> Plan`` plans one iteration from a ``PlanningState``.

Layering (one direction only): ``matloop.loop`` uses ``matloop.agents`` and the concrete
oracles; both use this core, which imports none of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Protocol, runtime_checkable

import numpy as np

from matloop.core.records import Candidate, Observation, Request


@dataclass
class CampaignState:
    """What generators and agents may see: the known candidates and the acquired labels only.

    Attributes:
        candidates: every candidate known to the campaign, by id (pool + generated).
        observations: every observation so far (success and failed), in arrival order.
        fitness: candidate id -> scalar fitness, higher is better (the objective turned into
            a maximisation score for the agent's goal; window goals score distance to window).
        pending: ids of candidates with requests still running.
        iteration: current iteration index.
    """

    candidates: dict[str, Candidate] = field(default_factory=dict)
    observations: list[Observation] = field(default_factory=list)
    fitness: dict[str, float] = field(default_factory=dict)
    pending: set[str] = field(default_factory=set)
    iteration: int = 0

    def best(self, k: int) -> list[Candidate]:
        """The k candidates with the highest fitness."""
        ids = sorted(self.fitness, key=self.fitness.get, reverse=True)[:k]
        return [self.candidates[i] for i in ids if i in self.candidates]


@runtime_checkable
class Generator(Protocol):
    """A source of new candidates (mutation, generative decoding, database enumeration).

    Registered under ``matloop.generators`` and built as ``cls(name, settings, base_dir=...)``:
    ``base_dir`` is the campaign file's folder, which relative paths in ``settings`` are taken from.
    """

    name: str

    def generate(self, n: int, state: CampaignState, rng: np.random.Generator) -> list[Candidate]:
        """Up to ``n`` new valid candidates, each with provenance (source, operator, parents)."""
        ...


@runtime_checkable
class Surrogate(Protocol):
    """A probabilistic model of one objective over feature vectors."""

    def fit(self, X: np.ndarray, y: np.ndarray, yvar: np.ndarray | None = None) -> None:
        """Fit on ``X`` (``n x d``) and ``y`` (``n``); ``yvar`` is known noise variance or None."""
        ...

    def predict(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and standard deviation (each ``m``), streamed in chunks."""
        ...


@dataclass
class OracleInfo:
    """What the agent knows about one oracle: no handle on the oracle itself.

    Attributes:
        promote: the funnel rule (``after``, ``top_k``, ``property``, ``min``, ``max``) as a
            dict, or None for an entry tier the agent picks for directly.
    """

    name: str
    properties: tuple[str, ...]
    fidelity: int
    cost: float
    promote: dict | None = None


@dataclass
class PlanningState:
    """Everything an agent may read to plan one iteration; built by the loop, never mutated by the agent.

    Attributes:
        iteration: index of the iteration being planned (-1 in asynchronous mode).
        candidates: the pool, row-aligned with ``X``.
        X: ``N x d`` preprocessed pool features (float32).
        observations: every observation of the agent's arm so far (success and failed).
        requested: (candidate id, oracle name) pairs ever requested: never asked again.
        pending: pairs still running; agents treat them as fantasised points.
        batch_size: requests wanted on the entry tier this iteration.
        rng: the campaign's random generator (the only source of randomness).
        budget_left: remaining cost budget, or None when the campaign has no cost budget.
        max_requests: remaining evaluations over all tiers, or None without an evaluation budget.
        fraction_columns: width of the trailing element-fraction block of ``X`` (the
            ``additive_fractions`` kernel), 0 when there is none.
    """

    iteration: int
    candidates: list[Candidate]
    X: Any
    observations: list[Observation]
    requested: set[tuple[str, str]]
    pending: set[tuple[str, str]]
    batch_size: int
    rng: np.random.Generator
    budget_left: float | None = None
    max_requests: int | None = None
    fraction_columns: int = 0

    @cached_property
    def index(self) -> dict[str, int]:
        """Candidate id -> row of ``X``."""
        return {c.id: i for i, c in enumerate(self.candidates)}

    @property
    def cost_left(self) -> float:
        """Remaining cost budget (``inf`` without a cost budget)."""
        return math.inf if self.budget_left is None else float(self.budget_left)


@dataclass
class Plan:
    """One iteration's requests, their acquisition values, and the rationale the store keeps."""

    requests: list[Request]
    acquisition: dict[str, float | None]
    rationale: dict
    expected_cost: float = 0.0


@runtime_checkable
class Agent(Protocol):
    """Plans the next iteration's requests from the campaign's state."""

    def propose(self, state: PlanningState) -> Plan:
        """The requests to make now (within ``state``'s budget), with a readable rationale."""
        ...
