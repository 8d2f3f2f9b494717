"""Decode compositions onto symmetry-consistent Wyckoff templates learned from the known structures.

``WyckoffGenerator`` is a composition-conditioned decoder. A new composition comes from the
agent (a composition-only candidate in the campaign) or from one data-mined element
substitution of a fit known structure (tournament on fitness). It is decoded onto a template:
the space group, conventional lattice and occupied Wyckoff orbits of a known structure with the
same stoichiometry (anonymous formula), drawn with probability proportional to how well the
template's elements substitute into the new ones (the product of Hautier's data-mined
substitution probabilities over the element mapping: the likelihood ranking of Hautier et al.,
Inorg. Chem. 2011). Decoding keeps the symmetry: the lattice parameters are perturbed within
the template's crystal system and rescaled by the covalent volume of the new elements; every
orbit's representative is displaced only along the free parameters of its Wyckoff position
(the projector onto the subspace its site-symmetry group fixes), and the orbit is regenerated
with the space group's operations. So a sample is a new structure in the template's space
group with the template's Wyckoff multiplicities, not raw coordinates.

Known reduced formulas (``avoid_formulas``: the shipped reference hull table, or a CSV) are
never proposed: a known composition cannot be novel. Samples pass ``ValidityFilter``, are
deduplicated against each other and the campaign, and are optionally pre-relaxed by the
registered ``mlip`` oracle through the oracle contract.

pyxtal's ``random_crystal`` would build the same orbits, but pyxtal is not installed in the
project's environment; the orbit generation here is spglib's operations applied with numpy.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from matloop.core.protocols import CampaignState
from matloop.core.records import Candidate, Request

from .validity import Deduplicator, MatcherSettings, ValidityFilter, ValiditySettings, charge_balanced, known_formulas


class WyckoffSettings(BaseModel):
    """Settings of ``WyckoffGenerator``."""

    model_config = ConfigDict(extra="forbid")

    max_atoms: int = Field(16, ge=1, description="largest primitive cell used as a template or returned")
    compositions: Literal["substitution", "agent", "both"] = Field(
        "both",
        description="where new compositions come from: substitution of fit known structures, the campaign's "
        "composition-only candidates (the agent's compositions), or both (agent's first while undecoded ones remain)",
    )
    tournament_size: int = Field(3, ge=1, description="contestants per fitness tournament choosing a parent")
    symprec: float = Field(0.1, gt=0, description="spglib tolerance (Å) when reading a template's symmetry")
    coordinate_sigma_angstrom: float = Field(
        0.15, ge=0, description="standard deviation (Å) of the displacement of each orbit along its free parameters"
    )
    lattice_sigma: float = Field(0.02, ge=0, description="standard deviation of the log lattice lengths and angles")
    rescale_volume: bool = Field(True, description="scale the template cell by the covalent-radius volume ratio")
    substitution_min_probability: float = Field(1e-3, ge=0, description="ignore substitutions less probable than this")
    exclude_radioactive: bool = Field(True, description="never introduce elements without stable isotopes")
    charge_balance: bool = Field(True, description="only compositions with a charge-neutral assignment (smact)")
    avoid_formulas: str | None = Field(
        "reference",
        description="never propose a known reduced formula: 'reference' (the shipped Materials Project hull "
        "table), a CSV with a formula column, or None",
    )
    max_attempts_per_candidate: int = Field(30, ge=1, description="decodings allowed per requested candidate")
    prerelax: bool = Field(False, description="relax samples with the registered mlip oracle before returning them")
    prerelax_settings: dict = Field(
        default_factory=lambda: {"fmax": 0.1, "max_steps": 100},
        description="settings of the mlip oracle that pre-relaxes; formation_energy is off unless set",
    )
    validity: ValiditySettings = Field(default_factory=ValiditySettings, description="validity filter")
    matcher: MatcherSettings = Field(default_factory=MatcherSettings, description="duplicate criterion")


@dataclass
class WyckoffTemplate:
    """A known structure's symmetry: conventional lattice, operations, and occupied orbits.

    Attributes:
        spacegroup: international number.
        lattice: the conventional standard lattice (pymatgen ``Lattice``).
        rotations, translations: the space group's operations in fractional coordinates.
        orbits: per occupied orbit, (element, representative fractional coordinates, the
            projector onto its free parameters, multiplicity, Wyckoff symbol).
        stoichiometry: sorted reduced amounts (the anonymous formula).
    """

    spacegroup: int
    lattice: object
    rotations: np.ndarray
    translations: np.ndarray
    orbits: list[tuple[str, np.ndarray, np.ndarray, int, str]]
    stoichiometry: tuple[int, ...]

    @classmethod
    def from_structure(cls, structure, symprec: float = 0.1) -> WyckoffTemplate:
        """The template of ``structure`` (raises ``ValueError`` when spglib cannot read it)."""
        from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

        conv = SpacegroupAnalyzer(structure, symprec=symprec).get_refined_structure()
        sga = SpacegroupAnalyzer(conv, symprec=symprec)
        sym = sga.get_symmetrized_structure()
        ops = sga.get_symmetry_operations(cartesian=False)
        rot = np.array([op.rotation_matrix for op in ops])
        trans = np.array([op.translation_vector for op in ops])
        orbits = []
        for idx, wy in zip(sym.equivalent_indices, sym.wyckoff_symbols):
            x = sym.frac_coords[idx[0]]
            d = (np.einsum("kij,j->ki", rot, x) + trans - x + 0.5) % 1.0 - 0.5
            stab = rot[np.abs(d).max(axis=1) < 1e-3]
            projector = stab.mean(axis=0) if len(stab) else np.eye(3)
            orbits.append((sym[idx[0]].specie.symbol, x, projector, len(idx), wy))
        return cls(sga.get_space_group_number(), conv.lattice, rot, trans, orbits, stoichiometry(structure.composition))

    def elements(self) -> list[str]:
        """The template's elements, ordered by (amount, electronegativity) as ``mapping`` pairs them."""
        from pymatgen.core import Composition

        counts = Counter()
        for el, _, _, mult, _ in self.orbits:
            counts[el] += mult
        return _ordered(Composition(dict(counts)))

    def decode(self, mapping: dict[str, str], rng: np.random.Generator, coordinate_sigma: float,
               lattice_sigma: float, volume_scale: float = 1.0):
        """A structure with the template's symmetry and elements renamed by ``mapping``; None when an orbit collapses.

        The lattice lengths and angles get log-normal noise shared within the crystal system's
        constraints (equal lengths stay equal, 90 and 120 degree angles stay); each orbit's
        representative moves by a Gaussian displacement projected onto its free parameters.
        """
        from pymatgen.core import Lattice, Structure

        a, b, c, al, be, ga = self.lattice.parameters
        lengths = np.array([a, b, c])
        eps = rng.normal(0.0, lattice_sigma, 3)
        for i in range(3):  # equal lengths stay equal
            for j in range(i):
                if abs(lengths[i] - lengths[j]) < 1e-3 * lengths[j]:
                    eps[i] = eps[j]
                    break
        lengths = lengths * np.exp(eps) * volume_scale ** (1 / 3)
        angles = []
        for ang in (al, be, ga):
            special = any(abs(ang - v) < 1e-2 for v in (60.0, 90.0, 109.4712206, 120.0))
            angles.append(ang if special else float(np.clip(ang * np.exp(rng.normal(0.0, lattice_sigma)), 30, 150)))
        if all(abs(x - angles[0]) < 1e-6 for x in angles) and not abs(angles[0] - 90) < 1e-6:
            angles = [angles[0]] * 3  # rhombohedral setting: keep the three angles equal
        try:
            lattice = Lattice.from_parameters(*lengths, *angles)
        except Exception:  # perturbed angles that close no cell
            return None
        species, coords = [], []
        frac_sigma = coordinate_sigma / lengths
        for el, x, projector, mult, _ in self.orbits:
            x_new = x + projector @ (rng.normal(0.0, 1.0, 3) * frac_sigma)
            pts = (np.einsum("kij,j->ki", self.rotations, x_new) + self.translations) % 1.0
            uniq: list[np.ndarray] = []
            for p in pts:  # the orbit: images equal modulo lattice translations count once
                if not any(np.abs((p - q + 0.5) % 1.0 - 0.5).max() < 1e-3 for q in uniq):
                    uniq.append(p)
            if len(uniq) != mult:  # the displaced point fell on a higher-symmetry position
                return None
            species += [mapping[el]] * mult
            coords += uniq
        return Structure(lattice, species, coords)


def stoichiometry(composition) -> tuple[int, ...]:
    """Sorted reduced integer amounts: the anonymous formula (AB2 -> (1, 2))."""
    red = composition.reduced_composition
    return tuple(sorted(int(round(red[e])) for e in red.elements))


def _ordered(composition) -> list[str]:
    """Elements by (amount in the reduced formula, electronegativity, symbol)."""
    red = composition.reduced_composition

    def en(e):
        x = e.X
        return float(x) if x == x else 4.0

    return [str(e) for e in sorted(red.elements, key=lambda e: (red[e], en(e), str(e)))]


class WyckoffGenerator:
    """New compositions decoded onto Wyckoff templates of known structures (see the module docstring).

    Args:
        name: the campaign's name for this generator (becomes ``Candidate.source``).
        settings: dict validated against ``WyckoffSettings``.
        base_dir: folder a relative ``avoid_formulas`` path is taken from.

    Attributes:
        stats: counts of ``attempted`` decodings, ``valid``, ``unique`` and ``novel`` (returned)
            samples, and ``relax_rejected``.
        rejections: why attempts were rejected.
    """

    Settings: ClassVar[type[WyckoffSettings]] = WyckoffSettings

    def __init__(self, name: str = "wyckoff", settings: dict | None = None, base_dir=None):
        from .mutation import SubstitutionTable, _radioactive

        self.name = name
        self.settings = settings if isinstance(settings, WyckoffSettings) else WyckoffSettings(**(settings or {}))
        s = self.settings
        self.validity = ValidityFilter(s.validity)
        self.avoid = known_formulas(s.avoid_formulas, base_dir)
        self.exclude = _radioactive() if s.exclude_radioactive else set()
        self.table = SubstitutionTable(min_probability=s.substitution_min_probability)
        self.stats: Counter = Counter()
        self.rejections: Counter = Counter()
        self._templates: dict[str, WyckoffTemplate | None] = {}
        self._structures: dict = {}
        self._known = Deduplicator(matcher=s.matcher)
        self._decoded_compositions: set[str] = set()
        self.relaxer = self._prerelax_oracle() if s.prerelax else None

    # -- templates ---------------------------------------------------------------------------------
    def template(self, cand: Candidate) -> WyckoffTemplate | None:
        """The template of a known structured candidate (cached; None when it cannot serve)."""
        if cand.id not in self._templates:
            st = self._structure(cand)
            tpl = None
            if st.is_ordered and len(st) <= self.settings.max_atoms:
                try:
                    tpl = WyckoffTemplate.from_structure(st, self.settings.symprec)
                except Exception:  # spglib failures on odd cells: the structure is just not a template
                    tpl = None
            self._templates[cand.id] = tpl
        return self._templates[cand.id]

    def _structure(self, cand: Candidate):
        if cand.id not in self._structures:
            self._structures[cand.id] = cand.pmg_structure()
        return self._structures[cand.id]

    def _weight(self, source: list[str], target: list[str]) -> float:
        """Product over the element mapping of the data-mined substitution probabilities (identity: 1)."""
        w = 1.0
        for a, b in zip(source, target):
            if a == b:
                continue
            els, p = self.table.targets(a)
            w *= float(p[els.index(b)]) if b in els else 1e-4
        return w

    # -- compositions ------------------------------------------------------------------------------
    def _substituted(self, parent: Candidate, rng: np.random.Generator):
        """One element of ``parent`` replaced by a data-mined substitute; None when none is left."""
        from pymatgen.core import Composition

        from .mutation import _oxidation_states

        comp = self._structure(parent).composition.reduced_composition
        present = sorted(str(e) for e in comp.elements)
        oxi = _oxidation_states(comp)
        for element in rng.permutation(present):
            els, p = self.table.targets(str(element), oxi.get(str(element)))
            keep = [i for i, e in enumerate(els) if e not in present and e not in self.exclude]
            if keep:
                p = p[keep] / p[keep].sum()
                new = els[keep[int(rng.choice(len(keep), p=p))]]
                return Composition({(new if e == element else e): comp[e] for e in present}), f"{element}->{new}"
        return None, "no substitution"

    def _select(self, pool: list[Candidate], rank: dict[str, float], rng: np.random.Generator) -> Candidate:
        k = min(self.settings.tournament_size, len(pool))
        idx = rng.choice(len(pool), size=k, replace=False)
        return pool[int(max(idx, key=lambda i: rank.get(pool[i].id, 0.0)))]

    # -- the Generator contract --------------------------------------------------------------------
    def generate(self, n: int, state: CampaignState, rng: np.random.Generator) -> list[Candidate]:
        """Up to ``n`` valid decoded structures of new compositions, each with template, parent and composition origin."""
        s = self.settings
        self._known.remember(state.candidates)
        structured = [c for c in state.candidates.values() if c.structure is not None]
        if n <= 0 or not structured:
            return []
        by_stoich: dict[tuple[int, ...], list[Candidate]] = {}
        for c in structured:
            st = self._structure(c)
            if len(st) <= s.max_atoms and st.is_ordered:
                by_stoich.setdefault(stoichiometry(st.composition), []).append(c)
        fit = sorted((i for i in state.fitness if i in state.candidates and np.isfinite(state.fitness[i])),
                     key=lambda i: state.fitness[i])
        rank = {cid: (r + 1) / len(fit) for r, cid in enumerate(fit)}
        parents = [c for group in by_stoich.values() for c in group]
        if not parents:
            return []
        agent = [c for c in state.candidates.values() if c.structure is None] if s.compositions != "substitution" else []
        batch = Deduplicator(matcher=s.matcher)
        relaxed = Deduplicator(matcher=s.matcher)
        out: list[Candidate] = []
        for _ in range(n * s.max_attempts_per_candidate):
            if len(out) >= n:
                break
            self.stats["attempted"] += 1
            todo = [c for c in agent if c.id not in self._decoded_compositions]
            if todo and s.compositions in ("agent", "both"):
                origin = todo[int(rng.integers(len(todo)))]
                self._decoded_compositions.add(origin.id)
                from pymatgen.core import Composition

                comp, detail = Composition(origin.composition), "agent composition"
            elif s.compositions == "agent":
                break
            else:
                origin = self._select(parents, rank, rng)
                comp, detail = self._substituted(origin, rng)
            if comp is None:
                self.rejections[detail] += 1
                continue
            formula = comp.reduced_formula
            if formula in self.avoid:
                self.rejections["known formula"] += 1
                continue
            if s.charge_balance and not charge_balanced(comp):
                self.rejections["not charge balanced"] += 1
                continue
            templates = by_stoich.get(stoichiometry(comp), [])
            target = _ordered(comp)
            scored = []
            for t in templates:
                tpl = self.template(t)
                if tpl is not None:
                    scored.append((tpl, t, self._weight(tpl.elements(), target)))
            if not scored:
                self.rejections["no template of this stoichiometry"] += 1
                continue
            w = np.array([x for _, _, x in scored])
            tpl, tcand, _ = scored[int(rng.choice(len(scored), p=w / w.sum()))]
            source = tpl.elements()
            mapping = dict(zip(source, target))
            scale = 1.0
            if s.rescale_volume:
                from .mutation import _volume_scale

                old = [el for el, _, _, m, _ in tpl.orbits for _ in range(m)]
                scale = _volume_scale(old, [mapping[e] for e in old])
            st = tpl.decode(mapping, rng, s.coordinate_sigma_angstrom, s.lattice_sigma, scale)
            if st is None:
                self.rejections["orbit collapsed"] += 1
                continue
            st = st.get_primitive_structure()
            if len(st) > s.max_atoms:
                self.rejections["too many atoms"] += 1
                continue
            ok, reason = self.validity.check(st)
            if not ok:
                self.rejections[reason.split(":")[0]] += 1
                continue
            self.stats["valid"] += 1
            if not batch.add(st):
                continue
            self.stats["unique"] += 1
            if not self._known.is_novel(st):
                continue
            if s.prerelax:
                st = self._prerelax(st)
                if st is None or not self.validity.check(st)[0] or not self._known.is_novel(st) or not relaxed.add(st):
                    self.stats["relax_rejected"] += 1
                    continue
            prov = {
                "operator": "wyckoff" + ("+prerelax" if s.prerelax else ""),
                "parents": [origin.id] + ([tcand.id] if tcand.id != origin.id else []),
                "detail": detail,
                "template": {"candidate": tcand.id, "formula": tcand.formula, "spacegroup": tpl.spacegroup,
                             "wyckoff": [f"{mapping[el]}:{wy}" for el, _, _, _, wy in tpl.orbits]},
            }
            cand = Candidate.from_structure(st, source=self.name, provenance=prov)
            if cand.id in state.candidates or any(cand.id == c.id for c in out):
                continue
            self.stats["novel"] += 1
            out.append(cand)
        return out

    # -- pre-relaxation through the oracle contract ----------------------------------------------------
    def _prerelax_oracle(self):
        """The registered ``mlip`` oracle that pre-relaxes, built through the oracle contract."""
        from matloop.core.registry import oracle_class

        settings = {"formation_energy": False, **self.settings.prerelax_settings}
        return oracle_class("mlip")(name=f"{self.name}-prerelax", settings=settings, site={"device": "cpu"})

    def _prerelax(self, structure):
        """``structure`` relaxed by the mlip oracle (its ``relaxed_structure``); None when that fails."""
        from pymatgen.core import Structure

        cand = Candidate.from_structure(structure, source=self.name)
        obs = self.relaxer.run(Request(Request.make_id(cand.id, self.relaxer.name, 0), cand, self.relaxer.name, 0))
        return Structure.from_dict(obs.extra["relaxed_structure"]) if obs.ok else None
