"""Mutation operators, tournament selection and MutationGenerator on real structures."""

from __future__ import annotations

from collections import Counter
from functools import lru_cache

import numpy as np
import pytest
from pydantic import ValidationError
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Composition, Lattice, Structure

from matloop.core.protocols import CampaignState, Generator
from matloop.agents.generation.mutation import (
    MutationGenerator,
    SubstitutionTable,
    add_interstitial,
    displace_atoms,
    heredity,
    mutate_composition,
    remove_site,
    strain_lattice,
    substitute,
    swap_sites,
)
from matloop.agents.generation.validity import ValidityFilter
from matloop.core.records import Candidate


@lru_cache(maxsize=None)
def _spacegroup_structure(sg: str, lat: float, species: tuple, coords: tuple) -> Structure:
    return Structure.from_spacegroup(sg, Lattice.cubic(lat), list(species), [list(c) for c in coords])


def perovskite(a="Sr", b="Ti", x="O", lat=3.905) -> Structure:
    """Cubic ABX3 perovskite (5 sites); a fresh copy each call."""
    return _spacegroup_structure("Pm-3m", lat, (a, b, x), ((0, 0, 0), (0.5, 0.5, 0.5), (0.5, 0.5, 0))).copy()


def rocksalt(a="Na", x="Cl", lat=5.64) -> Structure:
    """Conventional rock-salt cell (8 sites); a fresh copy each call."""
    return _spacegroup_structure("Fm-3m", lat, (a, x), ((0, 0, 0), (0.5, 0.5, 0.5))).copy()


@pytest.fixture(scope="module")
def table():
    return SubstitutionTable()


def rng(seed=0):
    return np.random.default_rng(seed)


# -- operators ---------------------------------------------------------------------------------
def test_substitution_conserves_sites_and_follows_data_mined_probabilities(table):
    sto = perovskite()
    child, detail = substitute(sto, rng(1), table)
    assert len(child) == len(sto)
    assert len(child.composition.elements) == 3
    old, new = detail.split("->")
    assert child.composition[new] == sto.composition[old]
    # frequent replacements of Sr2+ are the ones the table ranks high (Ca, Ba, Eu, La, ...)
    els, p = table.targets("Sr", 2)
    top = {els[i] for i in np.argsort(-p)[:10]}
    counts = Counter()
    r = rng(2)
    for _ in range(60):
        els_, p_ = table.targets("Sr", 2)
        counts[els_[int(r.choice(len(els_), p=p_))]] += 1
    assert counts.most_common(1)[0][0] in top
    assert np.isclose(p.sum(), 1.0) and "Sr" not in els


def test_substitution_rescales_volume_by_radii(table):
    nacl = rocksalt()
    child, detail = substitute(nacl, rng(0), table)
    from ase.data import atomic_numbers, covalent_radii

    old, new = detail.split("->")
    ratio = child.volume / nacl.volume
    r = covalent_radii
    other = ({"Na", "Cl"} - {old}).pop()
    v = {e: r[atomic_numbers[e]] ** 3 for e in (new, old, other)}
    expect = (v[new] + v[other]) / (v[old] + v[other])
    assert np.isclose(ratio, expect)
    assert np.allclose(child.frac_coords, nacl.frac_coords)


def test_substitution_respects_allowed_elements():
    # Sr2+ always has an allowed substitute (Ca, Ba), so every draw must return a child that
    # introduces exactly one new element, and only from the allowed set
    t = SubstitutionTable(allowed={"Ca", "Ba", "Mg"})
    introduced = set()
    for seed in range(5):
        child, detail = substitute(perovskite(), rng(seed), t)
        assert child is not None, detail
        new = {e.symbol for e in child.composition.elements} - {"Sr", "Ti", "O"}
        assert len(new) == 1 and new <= {"Ca", "Ba", "Mg"}, detail
        introduced |= new
    assert introduced  # the allowed set is used, not merely respected by returning nothing


def test_swap_conserves_composition_and_moves_two_sites():
    sto = perovskite() * (2, 1, 1)
    child, _ = swap_sites(sto, rng(3))
    assert child.composition == sto.composition
    changed = [i for i in range(len(sto)) if sto[i].specie != child[i].specie]
    assert len(changed) == 2
    assert swap_sites(Structure(Lattice.cubic(3), ["Fe", "Fe"], [[0, 0, 0], [0.5, 0.5, 0.5]]), rng(0))[0] is None


def test_strain_conserves_fractional_coordinates():
    sto = perovskite()
    child, _ = strain_lattice(sto, rng(4), 0.05)
    assert np.allclose(child.frac_coords, sto.frac_coords)
    assert not np.allclose(child.lattice.matrix, sto.lattice.matrix)
    kept, _ = strain_lattice(sto, rng(4), 0.05, preserve_volume=True)
    assert np.isclose(kept.volume, sto.volume)


def test_displacement_conserves_lattice_and_composition():
    sto = perovskite()
    child, _ = displace_atoms(sto, rng(5), 0.2)
    assert np.allclose(child.lattice.matrix, sto.lattice.matrix)
    assert child.composition == sto.composition
    moved = np.linalg.norm(child.cart_coords - sto.cart_coords, axis=1)
    assert moved.max() > 0.01


def test_vacancy_and_interstitial():
    nacl = rocksalt()
    child, _ = remove_site(nacl, rng(0))
    assert len(child) == len(nacl) - 1
    child, _ = add_interstitial(nacl, rng(0))
    assert len(child) == len(nacl) + 1
    # the new atom sits in a void: farther from the others than 95 % of random points
    d = child.lattice.get_all_distances(child.frac_coords[-1:], child.frac_coords[:-1]).min()
    random_points = rng(1).random((200, 3))
    typical = nacl.lattice.get_all_distances(random_points, nacl.frac_coords).min(axis=1)
    assert d > np.quantile(typical, 0.95)


def test_heredity_averages_lattice_and_splices_parents():
    a = perovskite() * (1, 1, 2)
    b = perovskite("Ba", "Zr", "O", 4.19) * (1, 1, 2)
    child, detail = heredity(a, b, rng(6))
    ra, rb = a.get_reduced_structure(), b.get_reduced_structure()
    assert np.allclose(child.lattice.parameters, (np.array(ra.lattice.parameters) + np.array(rb.lattice.parameters)) / 2)
    els = {e.symbol for e in child.composition.elements}
    assert els <= {"Sr", "Ti", "Ba", "Zr", "O"}
    assert els & {"Sr", "Ti"} and els & {"Ba", "Zr"}  # a slab from each parent
    again, _ = heredity(a, b, rng(6))
    assert again == child


def test_composition_mutation_fractional_and_integer(table):
    for seed in range(6):
        c, detail = mutate_composition("Ni0.1Fe0.2Co0.6Mn0.1", rng(seed), table, 0.1)
        assert np.isclose(sum(c.fractional_composition.values()), 1.0)
        amounts = np.array(list(c.fractional_composition.values()))
        assert np.allclose(np.round(amounts * 10), amounts * 10, atol=1e-6)  # stays on the 0.1 grid
        c2, _ = mutate_composition("LiFePO4", rng(seed), table, 0.1)
        assert all(float(v).is_integer() for v in c2.values())
        assert c2 != Composition("LiFePO4")


# -- the generator -----------------------------------------------------------------------------
def campaign() -> CampaignState:
    structures = [perovskite(), perovskite("Ba", "Ti", "O", 4.0), perovskite("Ca", "Zr", "O", 4.1), rocksalt(),
                  rocksalt("K", "Cl", 6.29), rocksalt("Mg", "O", 4.21)]
    cands = [Candidate.from_structure(s) for s in structures] + [Candidate.from_composition("Ni0.1Fe0.2Co0.6Mn0.1")]
    fitness = {c.id: float(i) for i, c in enumerate(cands)}
    return CampaignState(candidates={c.id: c for c in cands}, fitness=fitness)


def test_generator_outputs_are_valid_novel_unique_with_provenance():
    state = campaign()
    gen = MutationGenerator("mut", {"rates": {"vacancy": 0.1, "interstitial": 0.1}})
    assert isinstance(gen, Generator)
    out = gen.generate(12, state, rng(0))
    assert len(out) == 12
    assert len({c.id for c in out}) == 12
    vf = ValidityFilter()
    sm = StructureMatcher()
    known = [c.pmg_structure() for c in state.candidates.values() if c.structure]
    ops = Counter()
    for c in out:
        assert c.source == "mut" and c.id not in state.candidates
        assert set(c.provenance["parents"]) <= set(state.candidates)
        ops[c.provenance["operator"]] += 1
        if c.structure is not None:
            s = c.pmg_structure()
            assert vf.check(s)[0]
            assert not any(s.composition.reduced_formula == k.composition.reduced_formula and sm.fit(s, k) for k in known)
    assert len(ops) >= 2
    y = gen.yields()
    assert sum(v["novel"] for v in y.values()) == 12
    assert all(v["valid"] <= v["attempted"] and v["novel"] <= v["unique"] <= v["valid"] for v in y.values())


def test_generator_is_reproducible_from_the_seed():
    state = campaign()
    a = MutationGenerator("mut").generate(6, state, rng(7))
    b = MutationGenerator("mut").generate(6, state, rng(7))
    c = MutationGenerator("mut").generate(6, state, rng(8))
    assert [x.id for x in a] == [x.id for x in b]
    assert [x.id for x in a] != [x.id for x in c]


def test_generator_respects_filters():
    state = campaign()
    # interstitials only, but no cell may grow: nothing can pass
    only = {"substitution": 0, "swap": 0, "strain": 0, "displacement": 0, "crossover": 0, "composition": 0, "interstitial": 1}
    gen = MutationGenerator("mut", {"rates": only, "validity": {"max_atoms": 5}, "max_attempts_per_candidate": 3})
    assert gen.generate(3, state, rng(0)) == []
    assert gen.stats["interstitial"]["attempted"] == 9 and gen.stats["interstitial"]["valid"] == 0
    # charge balance on: every structure returned is charge balanced
    gen = MutationGenerator("mut", {"rates": {"composition": 0.0}, "validity": {"charge_balance": True}})
    out = gen.generate(6, state, rng(1))
    from matloop.agents.generation.validity import charge_balanced

    assert out and all(charge_balanced(c.pmg_composition()) for c in out)


def test_tournament_prefers_fitness_and_diversity_spreads_parents():
    state = campaign()
    pool = [c for c in state.candidates.values() if c.structure is not None]
    best = max(pool, key=lambda c: state.fitness[c.id])
    worst = min(pool, key=lambda c: state.fitness[c.id])

    def picks(weight):
        gen = MutationGenerator("mut", {"diversity_weight": weight})
        gen._rank = gen._ranks(state)
        r, counts = rng(0), Counter()
        for _ in range(20):  # 20 batches of 6 selections
            uses = Counter()
            for _ in range(6):
                counts[gen._select(pool, r, uses).id] += 1
        return counts

    greedy = picks(0.0)
    assert greedy[best.id] > 3 * greedy[worst.id]
    spread = picks(2.0)
    assert spread[best.id] < greedy[best.id]
    assert len(spread) >= len(greedy)


def test_record_outcome_credits_the_operator():
    state = campaign()
    gen = MutationGenerator("mut")
    out = gen.generate(4, state, rng(3))
    gen.record_outcome(out[0].id, True)
    gen.record_outcome(out[1].id, False)
    gen.record_outcome("s-unknown", True)  # not ours: ignored
    y = gen.yields()
    assert sum(v["good"] for v in y.values()) == 1 and sum(v["bad"] for v in y.values()) == 1
    assert y[out[0].provenance["operator"]]["good"] >= 1


def test_settings_are_validated():
    with pytest.raises(ValidationError):
        MutationGenerator("m", {"rates": {"heredity": 1.0}})
    with pytest.raises(ValidationError):
        MutationGenerator("m", {"tournament": 3})


def test_registered_under_entry_point():
    from matloop.core.registry import load

    assert load("matloop.generators", "mutation") is MutationGenerator
