"""Validity filter, deduplication and the validity/uniqueness/novelty report."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pytest
from pydantic import ValidationError
from pymatgen.core import Lattice, Structure
from pymatgen.core.operations import SymmOp

from matloop.agents.generation.validity import (
    Deduplicator,
    ValidityFilter,
    ValiditySettings,
    charge_balanced,
    sample_quality,
)
from matloop.core.records import Candidate


@lru_cache(maxsize=None)
def _spacegroup_structure(sg: str, lat: float, species: tuple, coords: tuple) -> Structure:
    return Structure.from_spacegroup(sg, Lattice.cubic(lat), list(species), [list(c) for c in coords])


def perovskite(a: str = "Sr", b: str = "Ti", x: str = "O", lat: float = 3.905) -> Structure:
    """Cubic ABX3 perovskite (5 sites); a fresh copy each call."""
    return _spacegroup_structure("Pm-3m", lat, (a, b, x), ((0, 0, 0), (0.5, 0.5, 0.5), (0.5, 0.5, 0))).copy()


def rocksalt(a: str = "Na", x: str = "Cl", lat: float = 5.64) -> Structure:
    """Conventional rock-salt cell (8 sites); a fresh copy each call."""
    return _spacegroup_structure("Fm-3m", lat, (a, x), ((0, 0, 0), (0.5, 0.5, 0.5))).copy()


def disguised_copy(s: Structure) -> Structure:
    """A supercell of ``s``, rotated, translated and with its sites shuffled."""
    c = s * (2, 1, 1)
    c.translate_sites(list(range(len(c))), [0.13, 0.29, 0.41])
    c.apply_operation(SymmOp.from_axis_angle_and_translation([1, 2, 3], 37.0))
    return Structure(c.lattice, c.species[::-1], c.frac_coords[::-1])


def test_real_structures_are_valid():
    vf = ValidityFilter()
    assert vf.check(perovskite()) == (True, None)
    assert vf.check(rocksalt()) == (True, None)


def test_overlapping_atoms_rejected_with_reason():
    s = perovskite()
    s.translate_sites([0], [0.45, 0.45, 0.45])  # Sr almost on top of Ti
    ok, reason = ValidityFilter().check(s)
    assert not ok and reason.startswith("distance: Sr-Ti")


def test_distance_to_own_periodic_image_counts():
    # one carbon atom in a cell with a 0.6 Å lattice vector: no pair of sites, but images collide
    s = Structure(Lattice.orthorhombic(0.6, 6, 6), ["C"], [[0, 0, 0]])
    ok, reason = ValidityFilter({"density_range_g_cm3": (0.0, 100.0)}).check(s)
    assert not ok and reason.startswith("distance: C-C 0.60")
    floor_only = {"density_range_g_cm3": (0.0, 100.0), "min_distance_factor": 0.0, "min_distance_angstrom": 0.5}
    assert ValidityFilter(floor_only).check(s)[0]


def test_absolute_floor_and_covalent_factor():
    s = perovskite()
    s.translate_sites([0], [0.35, 0.35, 0.35])  # Sr-Ti distance shrinks to 1.01 Å
    assert not ValidityFilter().check(s)[0]  # 0.5 x (1.95 + 1.60) = 1.78 Å
    assert ValidityFilter({"min_distance_factor": 0.0, "min_distance_angstrom": 0.5}).check(s)[0]


def test_max_atoms_and_density_and_disorder():
    assert ValidityFilter({"max_atoms": 10}).check(perovskite() * 3)[1] == "max_atoms: 135 sites > 10"
    exploded = perovskite()
    exploded.scale_lattice(exploded.volume * 20)
    ok, reason = ValidityFilter().check(exploded)
    assert not ok and reason.startswith("density")
    disordered = perovskite()
    disordered.replace(0, {"Sr": 0.5, "Ba": 0.5})
    assert ValidityFilter().check(disordered) == (False, "disordered: partial occupancies")


@pytest.mark.parametrize("method", ["smact", "pymatgen"])
def test_charge_balance(method):
    vf = ValidityFilter({"charge_balance": True, "charge_balance_method": method})
    assert vf.check(rocksalt())[0]
    assert vf.check(perovskite())[0]
    bad = perovskite("K", "Na", "Cl")  # K+ Na+ 3 Cl-: -1
    ok, reason = vf.check(bad)
    assert not ok and reason.startswith("charge_balance: KNaCl3")
    assert ValidityFilter().check(bad)[0]  # off by default
    assert charge_balanced("Fe") and not charge_balanced("NaCl2", method)


def test_settings_reject_unknown_and_bad_range():
    with pytest.raises(ValidationError):
        ValiditySettings(min_dist=1.0)
    with pytest.raises(ValidationError):
        ValiditySettings(density_range_g_cm3=(5.0, 1.0))


def test_symmetry_equivalent_copies_are_not_novel():
    sto = perovskite()
    d = Deduplicator([sto, rocksalt()])
    assert not d.is_novel(disguised_copy(sto))
    assert not d.is_novel(disguised_copy(rocksalt()))
    assert not d.is_novel(Candidate.from_structure(disguised_copy(sto)))
    assert d.is_novel(perovskite("Ba"))
    # same composition, different structure: CsCl-type NaCl is a new polymorph
    cscl_type = Structure(Lattice.cubic(3.3), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    assert d.is_novel(cscl_type)
    # a genuinely distorted perovskite (Ti off-centre by 0.25 of the cell) is new too
    polar = perovskite()
    polar.translate_sites([1], [0, 0, 0.25])
    assert d.is_novel(polar)


def test_add_returns_novelty_and_grows():
    d = Deduplicator()
    assert d.add(perovskite())
    assert not d.add(disguised_copy(perovskite()))
    assert d.add(perovskite("Ba"))
    assert len(d) == 2


def test_compositions_deduplicate_by_normalised_formula():
    d = Deduplicator([Candidate.from_composition("Fe0.5Ni0.5")])
    assert not d.is_novel("NiFe")
    assert d.is_novel("Ni0.6Fe0.4")
    # a composition-only entry does not hide structures of that composition
    assert d.is_novel(Structure(Lattice.cubic(3.5), ["Fe", "Ni"], [[0, 0, 0], [0.5, 0.5, 0.5]]))


def test_sample_quality_counts():
    sto = perovskite()
    broken = perovskite()
    broken.translate_sites([0], [0.45, 0.45, 0.45])
    q = sample_quality([sto, disguised_copy(sto), None, perovskite("Ba"), broken], known=[perovskite("Ba")])
    assert (q["n"], q["n_valid"], q["n_unique"], q["n_novel"]) == (5, 3, 2, 1)
    assert np.isclose(q["validity"], 0.6) and np.isclose(q["uniqueness"], 2 / 3) and np.isclose(q["novelty"], 0.5)
