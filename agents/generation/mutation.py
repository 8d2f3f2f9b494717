"""Evolutionary candidate generation: mutate and recombine the campaign's fittest materials.

Parents are chosen by tournament selection on fitness (``CampaignState.fitness``, higher is
better) with a diversity penalty, so that one formula does not take every slot of a batch.
Structure operators follow USPEX (Glass, Oganov & Hansen, CPC 2006; Lyakhov et al., CPC
2013): heredity (cut-and-splice crossover), lattice strain, atomic displacement, anti-site
swap, plus element substitution weighted by the data-mined substitution probabilities of
Hautier et al. (Inorg. Chem. 2011, pymatgen ``SubstitutionProbability``). Composition-only
candidates get composition mutations. Every child passes ``ValidityFilter`` and is new to
the campaign (``Deduplicator``) before it is returned.
"""

from __future__ import annotations

from collections import Counter
from functools import lru_cache
from typing import ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from matloop.core.records import Candidate

from matloop.core.protocols import CampaignState
from .validity import Deduplicator, MatcherSettings, ValidityFilter, ValiditySettings, known_formulas

STRUCTURE_OPERATORS = ("substitution", "swap", "strain", "displacement", "crossover", "vacancy", "interstitial")


class OperatorRates(BaseModel):
    """Relative rates of the operators (normalised over those applicable to the parents)."""

    model_config = ConfigDict(extra="forbid")

    substitution: float = Field(0.35, ge=0, description="element substitution by data-mined probabilities")
    swap: float = Field(0.1, ge=0, description="anti-site swap of two sites with different elements")
    strain: float = Field(0.1, ge=0, description="symmetric random lattice strain, fractional coordinates kept")
    displacement: float = Field(0.1, ge=0, description="Gaussian displacement of atoms, lattice kept")
    crossover: float = Field(0.35, ge=0, description="cut-and-splice heredity of two parents")
    vacancy: float = Field(0.0, ge=0, description="remove one site (off by default)")
    interstitial: float = Field(0.0, ge=0, description="add one atom in the largest void (off by default)")
    composition: float = Field(1.0, ge=0, description="composition mutation for composition-only parents")


class MutationSettings(BaseModel):
    """Settings of ``MutationGenerator``."""

    model_config = ConfigDict(extra="forbid")

    rates: OperatorRates = Field(default_factory=OperatorRates, description="relative operator rates")
    tournament_size: int = Field(3, ge=1, description="contestants per tournament")
    diversity_weight: float = Field(
        0.5, ge=0,
        description="penalty on a parent's rank-normalised fitness per earlier selection of its formula in this batch",
    )
    strain_sigma: float = Field(0.08, ge=0, description="standard deviation of the strain tensor components")
    strain_preserve_volume: bool = Field(False, description="rescale the strained cell to the parent's volume")
    displacement_sigma_angstrom: float = Field(0.3, ge=0, description="standard deviation of atomic displacements (Å)")
    substitution_min_probability: float = Field(
        1e-3, ge=0, description="ignore substitutions whose conditional probability is below this"
    )
    allowed_elements: list[str] | None = Field(
        None, description="elements a substitution may introduce (None: any in the substitution table)"
    )
    exclude_elements: list[str] = Field(default_factory=list, description="elements never introduced")
    exclude_radioactive: bool = Field(True, description="never introduce elements without stable isotopes")
    rescale_volume: bool = Field(True, description="scale the cell after substitution by the covalent-radius volume ratio")
    composition_step: float = Field(
        0.1, gt=0, le=1,
        description="fraction moved between two elements of a fractional composition (integer formulas move one atom)",
    )
    max_attempts_per_candidate: int = Field(30, ge=1, description="operator applications allowed per requested candidate")
    avoid_formulas: str | None = Field(
        None,
        description="never return a child whose reduced formula is known (it cannot be novel): 'reference' (the "
        "shipped Materials Project hull table) or a CSV with a formula column (relative to the campaign folder)",
    )
    validity: ValiditySettings = Field(default_factory=ValiditySettings, description="validity filter")
    matcher: MatcherSettings = Field(default_factory=MatcherSettings, description="duplicate criterion")


class SubstitutionTable:
    """Element-level view of pymatgen's ``SubstitutionProbability`` (loaded on first use).

    ``targets(element, oxidation_state)`` gives the elements that may replace ``element``
    with their normalised conditional probabilities. When the oxidation state is unknown
    (or absent from the table) the probabilities are averaged over the element's species.
    """

    def __init__(self, allowed: set[str] | None = None, min_probability: float = 1e-3):
        self.allowed = allowed
        self.min_probability = min_probability
        self._sp = None
        self._cache: dict[tuple[str, float | None], tuple[list[str], np.ndarray]] = {}

    def _table(self):
        if self._sp is None:
            self._sp = _substitution_probability()
            self._species = sorted(self._sp.species, key=str)
        return self._sp

    def targets(self, element: str, oxidation_state: float | None = None) -> tuple[list[str], np.ndarray]:
        """Elements that may replace ``element``, with their probabilities (cached per argument pair).

        Args:
            element: symbol of the element to replace.
            oxidation_state: its oxidation state; None, or a state missing from the table, averages
                over the element's species in the table.

        Returns:
            Sorted symbols whose probability is at least ``min_probability``, and their probabilities
            renormalised to sum to 1 (both empty when none qualify).
        """
        key = (element, oxidation_state)
        if key in self._cache:
            return self._cache[key]
        sp = self._table()
        own = [s for s in self._species if s.symbol == element]
        chosen = [s for s in own if oxidation_state is not None and s.oxi_state == oxidation_state] or own
        weights: dict[str, float] = {}
        for s1 in chosen:
            for s2 in self._species:
                if s2.symbol == element:
                    continue
                if self.allowed is not None and s2.symbol not in self.allowed:
                    continue
                weights[s2.symbol] = weights.get(s2.symbol, 0.0) + sp.cond_prob(s1, s2) / len(chosen)
        els = sorted(e for e, w in weights.items() if w >= self.min_probability)
        p = np.array([weights[e] for e in els], dtype=float)
        out = (els, p / p.sum() if p.size else p)
        self._cache[key] = out
        return out


@lru_cache(maxsize=1)
def _substitution_probability():
    """pymatgen's data-mined table (read-only; loaded once per process, ~2 s)."""
    from pymatgen.analysis.structure_prediction.substitution_probability import SubstitutionProbability

    return SubstitutionProbability()


def _oxidation_states(composition) -> dict[str, float]:
    try:
        guesses = composition.oxi_state_guesses(max_sites=-20)
    except Exception:  # large or odd compositions
        return {}
    return {str(k): float(v) for k, v in guesses[0].items()} if guesses else {}


def _volume_scale(old: list[str], new: list[str]) -> float:
    from ase.data import atomic_numbers, covalent_radii

    r_old = sum(covalent_radii[atomic_numbers[e]] ** 3 for e in old)
    r_new = sum(covalent_radii[atomic_numbers[e]] ** 3 for e in new)
    return r_new / r_old if r_old > 0 else 1.0


# -- operators: each returns (child or None, a short description) --------------------------


def substitute(structure, rng: np.random.Generator, table: SubstitutionTable, exclude: set[str] = frozenset(),
               rescale_volume: bool = True):
    """Replace every site of one element by another element, drawn from the substitution table.

    The number of sites and of distinct elements is kept (targets already present are skipped).
    """
    present = sorted({str(e) for e in structure.composition.elements})
    oxi = _oxidation_states(structure.composition)
    for element in rng.permutation(present):
        els, p = table.targets(str(element), oxi.get(str(element)))
        keep = [i for i, e in enumerate(els) if e not in present and e not in exclude]
        if not keep:
            continue
        p = p[keep] / p[keep].sum()
        new = els[keep[int(rng.choice(len(keep), p=p))]]
        child = structure.copy()
        child.replace_species({str(element): new})
        if rescale_volume:
            old_syms = [s.specie.symbol for s in structure]
            child.scale_lattice(structure.volume * _volume_scale(old_syms, [s.specie.symbol for s in child]))
        return child, f"{element}->{new}"
    return None, "no substitution available"


def swap_sites(structure, rng: np.random.Generator):
    """Exchange the elements of two sites holding different elements (composition kept)."""
    species = [s.specie.symbol for s in structure]
    if len(set(species)) < 2:
        return None, "one element only"
    i = int(rng.integers(len(structure)))
    others = [j for j, e in enumerate(species) if e != species[i]]
    j = others[int(rng.integers(len(others)))]
    child = structure.copy()
    child.replace(i, species[j])
    child.replace(j, species[i])
    return child, f"swap {i}<->{j}"


def strain_lattice(structure, rng: np.random.Generator, sigma: float, preserve_volume: bool = False):
    """Deform the cell by ``I + e`` with ``e`` a random symmetric strain; fractional coordinates are kept."""
    from pymatgen.core import Lattice, Structure

    e = rng.normal(0.0, sigma, size=(3, 3))
    e = (e + e.T) / 2
    m = structure.lattice.matrix @ (np.eye(3) + e)
    child = Structure(Lattice(m), structure.species, structure.frac_coords, site_properties=structure.site_properties)
    if preserve_volume:
        child.scale_lattice(structure.volume)
    return child, f"strain max|e|={np.abs(e).max():.3f}"


def displace_atoms(structure, rng: np.random.Generator, sigma_angstrom: float):
    """Move every atom by a Gaussian random vector (Å); the lattice is kept."""
    child = structure.copy()
    d = rng.normal(0.0, sigma_angstrom, size=(len(child), 3))
    for i in range(len(child)):
        child.translate_sites([i], d[i], frac_coords=False, to_unit_cell=True)
    return child, f"rms {np.sqrt((d ** 2).sum(1).mean()):.2f} Å"


def remove_site(structure, rng: np.random.Generator):
    """Vacancy: drop one random site (never the last one)."""
    if len(structure) < 2:
        return None, "single site"
    i = int(rng.integers(len(structure)))
    child = structure.copy()
    child.remove_sites([i])
    return child, f"vacancy {structure[i].specie}"


def add_interstitial(structure, rng: np.random.Generator, n_trials: int = 256):
    """Add one atom of an element present, at the best of ``n_trials`` random points (largest void)."""
    pts = rng.random((n_trials, 3))
    dist = structure.lattice.get_all_distances(pts, structure.frac_coords).min(axis=1)
    best = pts[int(np.argmax(dist))]
    els = [s.specie.symbol for s in structure]
    el = els[int(rng.integers(len(els)))]
    child = structure.copy()
    child.append(el, best)
    return child, f"interstitial {el} at {dist.max():.2f} Å"


def heredity(a, b, rng: np.random.Generator):
    """Cut-and-splice crossover (USPEX heredity).

    Both parents are Niggli-reduced and shifted by a random amount along a random lattice
    direction; the child takes parent ``a``'s atoms below a random cut and ``b``'s above
    it, in a cell whose lattice parameters are the parents' average.
    """
    from pymatgen.core import Lattice, Structure

    a, b = a.get_reduced_structure(), b.get_reduced_structure()
    params = (np.array(a.lattice.parameters) + np.array(b.lattice.parameters)) / 2
    try:
        lattice = Lattice.from_parameters(*params)
    except Exception:  # averaged angles that close no cell
        return None, "averaged lattice invalid"
    axis = int(rng.integers(3))
    cut = float(rng.uniform(0.25, 0.75))
    species, coords = [], []
    for parent, lower in ((a, True), (b, False)):
        f = parent.frac_coords.copy()
        f[:, axis] = (f[:, axis] - rng.random()) % 1.0
        take = f[:, axis] < cut if lower else f[:, axis] >= cut
        species += [parent[i].specie for i in np.flatnonzero(take)]
        coords += list(f[take])
    if not species:
        return None, "empty child"
    child = Structure(lattice, species, coords)
    return child, f"axis {axis} cut {cut:.2f}"


def mutate_composition(composition, rng: np.random.Generator, table: SubstitutionTable, step: float,
                       exclude: set[str] = frozenset()):
    """Move amount between two elements, or substitute one element (data-mined probabilities).

    Integer formulas (``LiFePO4``) move one atom; fractional ones (``Ni0.1Fe0.9``) move
    ``step`` of the total. An element whose amount reaches zero leaves the composition.
    """
    from pymatgen.core import Composition

    comp = Composition(composition)
    els = sorted(str(e) for e in comp.elements)
    integer = all(abs(comp[e] - round(comp[e])) < 1e-6 for e in els)
    if len(els) >= 2 and rng.random() < 0.5:
        i, j = rng.choice(len(els), size=2, replace=False)
        donor, acceptor = els[int(i)], els[int(j)]
        if integer:
            amounts = {e: int(round(comp[e])) for e in els}
            amounts[donor] -= 1
            amounts[acceptor] += 1
        else:
            frac = comp.fractional_composition
            amounts = {e: float(frac[e]) for e in els}
            delta = min(step, amounts[donor])
            amounts[donor] -= delta
            amounts[acceptor] += delta
            amounts = {e: round(x, 6) for e, x in amounts.items()}
        amounts = {e: x for e, x in amounts.items() if x > 1e-9}
        if len(amounts) == 0:
            return None, "empty"
        return Composition(amounts), f"{donor}->{acceptor}"
    oxi = _oxidation_states(comp) if integer else {}
    for element in rng.permutation(els):
        targets, p = table.targets(str(element), oxi.get(str(element)))
        keep = [k for k, e in enumerate(targets) if e not in els and e not in exclude]
        if not keep:
            continue
        p = p[keep] / p[keep].sum()
        new = targets[keep[int(rng.choice(len(keep), p=p))]]
        amounts = {(new if e == element else e): comp[e] for e in els}
        return Composition(amounts), f"{element}->{new}"
    return None, "no substitution available"


def _radioactive() -> set[str]:
    from pymatgen.core import Element

    return {e.symbol for e in Element if e.Z == 43 or e.Z == 61 or e.Z > 83}


class MutationGenerator:
    """Children of the fittest candidates by mutation and crossover.

    Args:
        name: the campaign's name for this generator (becomes ``Candidate.source``).
        settings: dict validated against ``MutationSettings``.

    Attributes:
        stats: per operator, counts of ``attempted``, ``valid``, ``unique``, ``novel``
            (returned) and, from ``record_outcome``, ``good`` and ``bad``.
    """

    Settings: ClassVar[type[MutationSettings]] = MutationSettings

    def __init__(self, name: str = "mutation", settings: dict | None = None, base_dir=None):
        self.name = name
        self.settings = settings if isinstance(settings, MutationSettings) else MutationSettings(**(settings or {}))
        s = self.settings
        self.avoid = known_formulas(s.avoid_formulas, base_dir)
        self.validity = ValidityFilter(s.validity)
        self.exclude = set(s.exclude_elements) | (_radioactive() if s.exclude_radioactive else set())
        allowed = set(s.allowed_elements) - self.exclude if s.allowed_elements is not None else None
        self.table = SubstitutionTable(allowed=allowed, min_probability=s.substitution_min_probability)
        self.stats: dict[str, Counter] = {op: Counter() for op in (*STRUCTURE_OPERATORS, "composition")}
        self.rejections: Counter = Counter()
        self._origin: dict[str, str] = {}
        self._known = Deduplicator(matcher=s.matcher)
        self._rank: dict[str, float] = {}

    # -- bookkeeping ---------------------------------------------------------------------------
    def record_outcome(self, candidate_id: str, good: bool) -> None:
        """Credit the operator that produced ``candidate_id`` with a good or bad outcome."""
        op = self._origin.get(candidate_id)
        if op is not None:
            self.stats[op]["good" if good else "bad"] += 1

    def yields(self) -> dict[str, dict[str, float]]:
        """Per operator: counts and the fractions valid/attempted, novel/attempted, good/novel."""
        out = {}
        for op, c in self.stats.items():
            if not c["attempted"]:
                continue
            out[op] = {
                **{k: int(c[k]) for k in ("attempted", "valid", "unique", "novel", "good", "bad")},
                "valid_rate": c["valid"] / c["attempted"],
                "novel_rate": c["novel"] / c["attempted"],
                "good_rate": c["good"] / c["novel"] if c["novel"] else 0.0,
            }
        return out

    # -- selection -----------------------------------------------------------------------------
    def _select(self, pool: list[Candidate], rng: np.random.Generator, uses: Counter) -> Candidate:
        """Tournament on rank-normalised fitness minus the diversity penalty of the formula."""
        k = min(self.settings.tournament_size, len(pool))
        idx = rng.choice(len(pool), size=k, replace=False)
        scores = [self._rank[pool[i].id] - self.settings.diversity_weight * uses[pool[i].formula] for i in idx]
        winner = pool[int(idx[int(np.argmax(scores))])]
        uses[winner.formula] += 1
        return winner

    def _ranks(self, state: CampaignState) -> dict[str, float]:
        ids = [i for i in state.fitness if i in state.candidates and np.isfinite(state.fitness[i])]
        order = sorted(ids, key=lambda i: state.fitness[i])
        rank = {cid: (r + 1) / len(order) for r, cid in enumerate(order)}
        return {cid: rank.get(cid, 0.0) for cid in state.candidates}

    # -- generation ----------------------------------------------------------------------------
    def generate(self, n: int, state: CampaignState, rng: np.random.Generator) -> list[Candidate]:
        """Up to ``n`` valid children new to the campaign, each with operator and parent ids."""
        s = self.settings
        self._known.remember(state.candidates)
        self._rank = self._ranks(state)
        with_fitness = [c for c in state.candidates.values() if c.id in state.fitness]
        pool = with_fitness or list(state.candidates.values())
        struct_pool = [c for c in pool if c.structure is not None]
        comp_pool = [c for c in pool if c.structure is None]
        rates = s.rates.model_dump()
        feasible = {
            op: w for op, w in rates.items() if w > 0 and (
                (op == "composition" and comp_pool)
                or (op == "crossover" and len(struct_pool) >= 2)
                or (op not in ("composition", "crossover") and struct_pool)
            )
        }
        if n <= 0 or not feasible:
            return []
        ops = sorted(feasible)
        p = np.array([feasible[o] for o in ops])
        p = p / p.sum()
        structures: dict[str, object] = {}
        uses: Counter = Counter()
        batch = Deduplicator(matcher=s.matcher)
        out: list[Candidate] = []
        out_ids: set[str] = set()
        for _ in range(n * s.max_attempts_per_candidate):
            if len(out) >= n:
                break
            op = ops[int(rng.choice(len(ops), p=p))]
            stats = self.stats[op]
            stats["attempted"] += 1
            if op == "composition":
                parent = self._select(comp_pool, rng, uses)
                child, detail = mutate_composition(parent.composition, rng, self.table, s.composition_step, self.exclude)
                parents = [parent.id]
                if child is None:
                    self.rejections[f"{op}: {detail}"] += 1
                    continue
                ok, reason = self.validity.check_composition(child)
            else:
                picks = [self._select(struct_pool, rng, uses)]
                if op == "crossover":
                    rest = [c for c in struct_pool if c.id != picks[0].id]
                    picks.append(self._select(rest, rng, uses))
                parents = [c.id for c in picks]
                ps = []
                for c in picks:
                    if c.id not in structures:
                        structures[c.id] = c.pmg_structure()
                    ps.append(structures[c.id])
                child, detail = self._apply(op, ps, rng)
                if child is None:
                    self.rejections[f"{op}: {detail}"] += 1
                    continue
                ok, reason = self.validity.check(child)
            if not ok:
                self.rejections[f"{op}: {reason.split(':')[0]}"] += 1
                continue
            if self.avoid and (child if op == "composition" else child.composition).reduced_formula in self.avoid:
                self.rejections[f"{op}: known formula"] += 1
                continue
            stats["valid"] += 1
            if not batch.add(child):
                continue
            stats["unique"] += 1
            if not self._known.is_novel(child):
                continue
            prov = {"operator": op, "parents": parents, "detail": detail}
            cand = (
                Candidate.from_composition(child, source=self.name, provenance=prov)
                if op == "composition"
                else Candidate.from_structure(child, source=self.name, provenance=prov)
            )
            if cand.id in state.candidates or cand.id in out_ids:
                continue  # a coarse-hash id collision with a different structure: skip, ids must be unique
            stats["novel"] += 1
            out.append(cand)
            out_ids.add(cand.id)
            self._origin[cand.id] = op
        return out

    def _apply(self, op: str, parents: list, rng: np.random.Generator):
        s = self.settings
        x = parents[0]
        if op == "substitution":
            return substitute(x, rng, self.table, self.exclude, s.rescale_volume)
        if op == "swap":
            return swap_sites(x, rng)
        if op == "strain":
            return strain_lattice(x, rng, s.strain_sigma, s.strain_preserve_volume)
        if op == "displacement":
            return displace_atoms(x, rng, s.displacement_sigma_angstrom)
        if op == "vacancy":
            return remove_site(x, rng)
        if op == "interstitial":
            return add_interstitial(x, rng)
        if op == "crossover":
            return heredity(parents[0], parents[1], rng)
        raise ValueError(f"unknown operator {op!r}")
