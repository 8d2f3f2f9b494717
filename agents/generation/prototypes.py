"""Prototype enumeration: decorate common structure types with charge-balanced elements.

Structures are built with pymatgen's ``Structure.from_spacegroup`` (no downloads). Lattice
constants are first guesses from ionic radii of the assigned oxidation states (atomic radii
where pymatgen has no ionic radius); the ML tier relaxes them.

Prototypes (site roles and charge-balance rule):

=============  ======  ==================  ===============================
name           SG      formula             balance
=============  ======  ==================  ===============================
rocksalt       225     AX                  q_A = -q_X
zincblende     216     AX                  q_A = -q_X
wurtzite       186     AX                  q_A = -q_X
fluorite       225     AX2                 q_A = -2 q_X
antifluorite   225     A2X                 2 q_A = -q_X
perovskite     221     ABX3                q_A + q_B = -3 q_X
half_heusler   216     ABX                 q_A + q_B = -q_X
=============  ======  ==================  ===============================
"""

from __future__ import annotations

import itertools
import math
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from matloop.core.records import Candidate

PrototypeName = Literal["rocksalt", "zincblende", "wurtzite", "fluorite", "antifluorite", "perovskite", "half_heusler"]


class PrototypeSettings(BaseModel):
    """Settings of ``PrototypeSource``: the prototypes to decorate and the elements allowed on each site role."""

    model_config = ConfigDict(extra="forbid")

    prototypes: list[PrototypeName] = Field(
        default_factory=lambda: ["rocksalt", "zincblende", "wurtzite", "fluorite", "antifluorite", "perovskite"],
        description="structure types to decorate",
    )
    cations: list[str] = Field(description="elements allowed on cation sites")
    anions: list[str] = Field(description="elements allowed on anion sites")
    charge_balance: bool = Field(True, description="keep only decorations balanced by common oxidation states")
    max_candidates: int | None = Field(None, ge=1, description="keep a seeded random subset of this size")
    seed: int = Field(0, description="seed for the subset")


def _ox_states(el: str, sign: int) -> list[int]:
    from pymatgen.core import Element

    states = Element(el).common_oxidation_states or Element(el).oxidation_states
    return sorted({int(s) for s in states if (s > 0 if sign > 0 else s < 0)})


def _radius(el: str, ox: int | None) -> float:
    import warnings

    from pymatgen.core import Element, Species

    r = None
    if ox is not None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                r = Species(el, ox).ionic_radius
        except Exception:
            r = None
    if r is None or not r or not math.isfinite(float(r)):
        r = Element(el).atomic_radius or 1.5
    return float(r)


def _fcc(a: float):
    from pymatgen.core import Lattice

    return Lattice([[0, a / 2, a / 2], [a / 2, 0, a / 2], [a / 2, a / 2, 0]])


def _build(proto: str, els: tuple[str, ...], oxs: tuple[int | None, ...]):
    """Primitive cell of the prototype (2-5 atoms) with a radius-based lattice guess."""
    from pymatgen.core import Lattice, Structure

    if proto in ("rocksalt", "zincblende", "wurtzite"):
        a_el, x_el = els
        d = _radius(a_el, oxs[0]) + _radius(x_el, oxs[1])
        if proto == "rocksalt":
            return Structure(_fcc(2 * d), [a_el, x_el], [[0, 0, 0], [0.5, 0.5, 0.5]])
        if proto == "zincblende":
            return Structure(_fcc(4 * d / math.sqrt(3)), [a_el, x_el], [[0, 0, 0], [0.25, 0.25, 0.25]])
        a = d / math.sqrt(3 / 8)
        return Structure.from_spacegroup(
            186, Lattice.hexagonal(a, a * math.sqrt(8 / 3)), [a_el, x_el], [[1 / 3, 2 / 3, 0], [1 / 3, 2 / 3, 0.375]]
        )
    if proto in ("fluorite", "antifluorite"):
        a_el, x_el = els
        d = _radius(a_el, oxs[0]) + _radius(x_el, oxs[1])
        lat = _fcc(4 * d / math.sqrt(3))
        if proto == "fluorite":
            return Structure(lat, [a_el, x_el, x_el], [[0, 0, 0], [0.25, 0.25, 0.25], [0.75, 0.75, 0.75]])
        return Structure(lat, [x_el, a_el, a_el], [[0, 0, 0], [0.25, 0.25, 0.25], [0.75, 0.75, 0.75]])
    if proto == "perovskite":
        a_el, b_el, x_el = els
        d = _radius(b_el, oxs[1]) + _radius(x_el, oxs[2])
        return Structure(
            Lattice.cubic(2 * d),
            [a_el, b_el, x_el, x_el, x_el],
            [[0.5, 0.5, 0.5], [0, 0, 0], [0.5, 0, 0], [0, 0.5, 0], [0, 0, 0.5]],
        )
    if proto == "half_heusler":
        a_el, b_el, x_el = els
        d = _radius(a_el, oxs[0]) + _radius(x_el, oxs[2])
        return Structure(
            _fcc(4 * d / math.sqrt(3)), [a_el, b_el, x_el], [[0.25, 0.25, 0.25], [0, 0, 0], [0.5, 0.5, 0.5]]
        )
    raise ValueError(proto)


def _decorations(proto: str, cations: list[str], anions: list[str], balance: bool):
    """Yield (elements, oxidation states) per site role."""
    if proto in ("rocksalt", "zincblende", "wurtzite", "fluorite", "antifluorite"):
        mult = {"fluorite": (1, 2), "antifluorite": (2, 1)}.get(proto, (1, 1))
        for a, x in itertools.product(cations, anions):
            if a == x:
                continue
            if not balance:
                yield (a, x), (None, None)
                continue
            for qa, qx in itertools.product(_ox_states(a, +1), _ox_states(x, -1)):
                if mult[0] * qa + mult[1] * qx == 0:
                    yield (a, x), (qa, qx)
                    break
    elif proto in ("perovskite", "half_heusler"):
        nx = 3 if proto == "perovskite" else 1
        for a, b in itertools.permutations(cations, 2):
            if proto == "half_heusler" and a > b:
                continue  # A and B sites are symmetric enough for screening: one order
            for x in anions:
                if x in (a, b):
                    continue
                if not balance:
                    yield (a, b, x), (None, None, None)
                    continue
                found = False
                for qa, qb, qx in itertools.product(_ox_states(a, +1), _ox_states(b, +1), _ox_states(x, -1)):
                    if qa + qb + nx * qx == 0:
                        yield (a, b, x), (qa, qb, qx)
                        found = True
                        break
                if found:
                    continue


class PrototypeSource:
    """Enumerates decorated prototypes once, at the start of a campaign."""

    def __init__(self, name: str, settings: dict):
        self.name = name
        self.settings = PrototypeSettings(**settings)

    def load(self) -> list[Candidate]:
        """Decorated prototypes (charge-balanced if set), one per structure id; a seeded subset if ``max_candidates``."""
        s = self.settings
        out: dict[str, Candidate] = {}
        for proto in s.prototypes:
            for els, oxs in _decorations(proto, s.cations, s.anions, s.charge_balance):
                struct = _build(proto, els, oxs)
                prov = {"operator": "prototype", "prototype": proto, "oxidation_states": list(oxs)}
                c = Candidate.from_structure(struct, source=self.name, provenance=prov)
                out.setdefault(c.id, c)
        cands = list(out.values())
        if s.max_candidates and len(cands) > s.max_candidates:
            rng = np.random.default_rng(s.seed)
            keep = sorted(rng.choice(len(cands), size=s.max_candidates, replace=False))
            cands = [cands[i] for i in keep]
        return cands
