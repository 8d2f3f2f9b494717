"""The agent-side seams: ``Generator``, ``Surrogate`` and the state they see.

Layering (one direction only): ``matloop.loop`` uses ``matloop.agents``, which uses
``matloop.oracles.records`` for the shared record types.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from matloop.oracles.records import Candidate, Observation


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
    """A source of new candidates (mutation, generative decoding, database enumeration)."""

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
