"""Shared record types: every layer of matloop imports these and nothing else in common.

``Candidate`` is what the agent may ask about, ``Request`` pairs one candidate with one
oracle, and ``Observation`` is what came back (a value, or a failure with its reason).
They are plain dataclasses that round-trip through JSON so that the store never pickles.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any


class MatloopError(Exception):
    """Base class of every error matloop raises on purpose."""


class InputError(MatloopError):
    """Bad user input: names the file and the row or YAML path. The CLI exits with 2."""

    def __init__(self, message: str, *, file: str | None = None, where: str | None = None):
        self.file = file
        self.where = where
        prefix = ""
        if file:
            prefix += f"{file}"
        if where:
            prefix += f" {where}" if prefix else where
        super().__init__(f"{prefix}: {message}" if prefix else message)


class CampaignPaused(MatloopError):
    """The campaign cannot go on until a person acts (a lab refused its credentials, HTTP 401/403).

    Nothing is failed: the unanswered requests stay open in the store and the next ``matloop
    run`` asks for them again. The CLI prints the message and exits with :attr:`exit_status`.
    """

    exit_status = 3


class OracleError(MatloopError):
    """Raised inside ``Oracle.evaluate``; becomes a failed ``Observation`` with this reason."""


class Status(str, Enum):
    """Outcome of an observation: ``success`` or ``failed`` (stored as the string value)."""

    SUCCESS = "success"
    FAILED = "failed"


def stable_hash(obj: Any, n: int = 16) -> str:
    """Deterministic short hash of a JSON-able object (sorted keys)."""
    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:n]


@dataclass(frozen=True)
class Candidate:
    """A material the agent may ask about.

    Attributes:
        id: canonical id; equal ids mean the same material to the campaign.
        formula: reduced formula (pymatgen), used for deduplication and display.
        composition: the composition string as given (fractions kept).
        structure: ``pymatgen.core.Structure.as_dict()`` or None for composition-only.
        source: the name of the candidate source that produced it.
        provenance: free-form origin facts (operator, parent ids, file and row, latent).
    """

    id: str
    formula: str
    composition: str
    structure: dict | None = None
    source: str = ""
    provenance: dict = field(default_factory=dict)

    @classmethod
    def from_composition(cls, composition, source: str = "", provenance: dict | None = None) -> Candidate:
        """Candidate from a formula string or pymatgen ``Composition`` (no structure).

        The id (``c-...``) hashes the fractional composition, so ``Fe2O3`` and ``Fe4O6`` are the
        same candidate; ``composition`` keeps the string as given.

        Raises:
            ValueError: if the composition is empty or (from pymatgen) unparseable.
        """
        from pymatgen.core import Composition

        comp = Composition(composition) if not isinstance(composition, Composition) else composition
        if comp.num_atoms <= 0:
            raise ValueError(f"empty composition {composition!r}")
        # fractional compositions (Ni0.1Fe0.9) keep their fractions in the id
        frac = comp.fractional_composition
        key = {str(el): round(float(amt), 6) for el, amt in sorted(frac.items(), key=lambda kv: str(kv[0]))}
        cid = "c-" + stable_hash(key, 14)
        return cls(
            id=cid,
            formula=comp.reduced_formula,
            composition=str(composition) if isinstance(composition, str) else comp.formula.replace(" ", ""),
            structure=None,
            source=source,
            provenance=dict(provenance or {}),
        )

    @classmethod
    def from_structure(cls, structure, source: str = "", provenance: dict | None = None) -> Candidate:
        """Candidate from a pymatgen ``Structure``; its id (``s-...``) is its ``structure_hash``."""
        return cls(
            id="s-" + structure_hash(structure),
            formula=structure.composition.reduced_formula,
            composition=structure.composition.formula.replace(" ", ""),
            structure=structure.as_dict(),
            source=source,
            provenance=dict(provenance or {}),
        )

    def pmg_composition(self):
        """This candidate's composition as a pymatgen ``Composition``."""
        from pymatgen.core import Composition

        return Composition(self.composition)

    def pmg_structure(self):
        """This candidate's structure as a pymatgen ``Structure``, or None if it is composition-only."""
        if self.structure is None:
            return None
        from pymatgen.core import Structure

        return Structure.from_dict(self.structure)

    def to_json(self) -> dict:
        """The fields as a JSON-able dict (inverse of ``from_json``)."""
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> Candidate:
        """Candidate from a ``to_json`` dict."""
        return cls(**d)


def structure_hash(structure) -> str:
    """Cheap canonical hash: reduced formula + space group + volume/atom + sorted distances.

    Symmetry-equivalent settings of one crystal hash equal; it is a prefilter for
    ``StructureMatcher``, not a replacement.
    """
    import numpy as np

    try:
        from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

        sg = SpacegroupAnalyzer(structure, symprec=0.1).get_space_group_number()
    except Exception:  # symmetry search can fail on distorted cells
        sg = 0
    vol = round(structure.volume / len(structure), 1)
    try:
        dm = structure.distance_matrix
        nn = np.sort(np.where(dm > 1e-6, dm, np.inf).min(axis=1))
        fp = [round(float(x), 1) for x in nn]
    except Exception:
        fp = []
    return stable_hash([structure.composition.reduced_formula, len(structure), sg, vol, fp], 14)


@dataclass(frozen=True)
class Request:
    """One candidate sent to one oracle."""

    id: str
    candidate: Candidate
    oracle: str
    iteration: int

    @staticmethod
    def make_id(candidate_id: str, oracle: str, iteration: int) -> str:
        """Deterministic request id (``r-...``) from candidate id, oracle name and iteration."""
        return "r-" + stable_hash([candidate_id, oracle, iteration], 14)


@dataclass
class OracleResult:
    """What ``Oracle.evaluate`` returns: property values and optional 1-sigma uncertainties."""

    properties: dict[str, float]
    uncertainties: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    cost: float | None = None  # overrides the oracle's nominal cost (e.g. measured core-hours)


@dataclass
class Observation:
    """What came back for one request. ``status`` is success, or failed with ``reason``."""

    request_id: str
    candidate_id: str
    oracle: str
    oracle_version: str
    fidelity: int
    status: Status
    properties: dict[str, float] = field(default_factory=dict)
    uncertainties: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    cost: float = 0.0
    wall_time_s: float = 0.0
    reason: str | None = None

    @property
    def ok(self) -> bool:
        """True if the evaluation succeeded."""
        return self.status == Status.SUCCESS

    def value(self, prop: str) -> float | None:
        """Value of property ``prop`` as a float, or None when it is missing or not finite (NaN, inf)."""
        v = self.properties.get(prop)
        if v is None or not math.isfinite(v):
            return None
        return float(v)

    def to_json(self) -> dict:
        """The fields as a JSON-able dict, ``status`` as its string value (inverse of ``from_json``)."""
        d = asdict(self)
        d["status"] = self.status.value
        return d

    @classmethod
    def from_json(cls, d: dict) -> Observation:
        """Observation from a ``to_json`` dict (the dict is not modified)."""
        d = dict(d)
        d["status"] = Status(d["status"])
        return cls(**d)
