"""Random data-mined substitution of known structures: the baseline every generator must beat.

``SubstitutionGenerator`` picks a known structure at random (uniformly: no fitness, no
selection), guesses its oxidation states, picks one of its elements at random and replaces all
its sites by an element drawn from pymatgen's data-mined substitution probabilities
(``SubstitutionProbability``, Hautier et al., Inorg. Chem. 2011) conditioned on that species;
lattice and coordinates are kept, as pymatgen's ``Substitutor`` does (the oracle's relaxation
fixes the volume). The single-species conditional probabilities are used rather than
``SubstitutionPredictor.list_prediction``, which enumerates joint substitutions of every
species and costs 2-5 s per species set on this machine (measured: SrTiO3 5.3 s, LiFePO4
4.6 s) against microseconds for a cached table row. It is the
"random substitution" reference of S.U.N. benchmarks: a generator earns its place by finding
more stable, unique and novel structures per evaluation than this does with the same budget.
"""

from __future__ import annotations

from collections import Counter
from typing import ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from matloop.core.protocols import CampaignState
from matloop.core.records import Candidate

from .mutation import SubstitutionTable, _radioactive, substitute
from .validity import Deduplicator, MatcherSettings, ValidityFilter, ValiditySettings, known_formulas


class SubstitutionSettings(BaseModel):
    """Settings of ``SubstitutionGenerator``."""

    model_config = ConfigDict(extra="forbid")

    min_probability: float = Field(
        1e-3, ge=0, description="substitutions whose conditional probability is below this are not drawn"
    )
    rescale_volume: bool = Field(
        False, description="scale the cell by the covalent-radius volume ratio (off: as pymatgen's Substitutor)"
    )
    max_atoms: int = Field(64, ge=1, description="parents with more sites than this are not used")
    exclude_radioactive: bool = Field(True, description="never introduce elements without stable isotopes")
    avoid_formulas: str | None = Field(
        None,
        description="never return a child whose reduced formula is known: 'reference' (the shipped Materials "
        "Project hull table) or a CSV with a formula column. None (default): the plain baseline",
    )
    max_attempts_per_candidate: int = Field(20, ge=1, description="draws allowed per requested candidate")
    validity: ValiditySettings = Field(default_factory=ValiditySettings, description="validity filter")
    matcher: MatcherSettings = Field(default_factory=MatcherSettings, description="duplicate criterion")


class SubstitutionGenerator:
    """Children of uniformly random known structures by one data-mined species substitution.

    Args:
        name: the campaign's name for this generator (becomes ``Candidate.source``).
        settings: dict validated against ``SubstitutionSettings``.
        base_dir: folder a relative ``avoid_formulas`` path is taken from.

    Attributes:
        stats: counts of ``attempted`` draws, ``valid``, ``unique`` and ``novel`` (returned) children.
        rejections: why draws were rejected (no substitution available, validity, known formula).
    """

    Settings: ClassVar[type[SubstitutionSettings]] = SubstitutionSettings

    def __init__(self, name: str = "substitution", settings: dict | None = None, base_dir=None):
        self.name = name
        self.settings = settings if isinstance(settings, SubstitutionSettings) else SubstitutionSettings(**(settings or {}))
        s = self.settings
        self.validity = ValidityFilter(s.validity)
        self.avoid = known_formulas(s.avoid_formulas, base_dir)
        self.stats: Counter = Counter()
        self.rejections: Counter = Counter()
        self._known = Deduplicator(matcher=s.matcher)
        self._structures: dict = {}
        self.exclude = _radioactive() if s.exclude_radioactive else set()
        self.table = SubstitutionTable(min_probability=s.min_probability)

    def generate(self, n: int, state: CampaignState, rng: np.random.Generator) -> list[Candidate]:
        """Up to ``n`` valid substituted children new to the campaign, with parent id and substitution."""
        s = self.settings
        self._known.remember(state.candidates)
        parents = [c for c in state.candidates.values() if c.structure is not None]
        if n <= 0 or not parents:
            return []
        batch = Deduplicator(matcher=s.matcher)
        out: list[Candidate] = []
        for _ in range(n * s.max_attempts_per_candidate):
            if len(out) >= n:
                break
            parent = parents[int(rng.integers(len(parents)))]
            if parent.id not in self._structures:
                self._structures[parent.id] = parent.pmg_structure()
            st = self._structures[parent.id]
            if len(st) > s.max_atoms or not st.is_ordered:
                continue
            self.stats["attempted"] += 1
            child, detail = substitute(st, rng, self.table, self.exclude, s.rescale_volume)
            if child is None:
                self.rejections[detail] += 1
                continue
            ok, reason = self.validity.check(child)
            if not ok:
                self.rejections[reason.split(":")[0]] += 1
                continue
            if self.avoid and child.composition.reduced_formula in self.avoid:
                self.rejections["known formula"] += 1
                continue
            self.stats["valid"] += 1
            if not batch.add(child):
                continue
            self.stats["unique"] += 1
            if not self._known.is_novel(child):
                continue
            cand = Candidate.from_structure(child, source=self.name, provenance={
                "operator": "substitution", "parents": [parent.id], "detail": detail})
            if cand.id in state.candidates or any(cand.id == c.id for c in out):
                continue
            self.stats["novel"] += 1
            out.append(cand)
        return out
