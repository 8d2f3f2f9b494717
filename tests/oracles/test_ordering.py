"""Ordering of disordered structures: supercell, Ewald enumeration, choice by the ML potential."""

from __future__ import annotations

import pytest
from pymatgen.core import Lattice, Structure

from matloop.core.records import OracleError
from matloop.oracles.ordering import OrderingSettings, integral_scale, ml_energy_function, order_structure


def half_li_rocksalt() -> Structure:
    """Rock-salt primitive cell whose cation site is half Li, half Na: needs two cells to order."""
    s = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.3), [{"Li": 0.5, "Na": 0.5}, "Cl"],
                                  [[0, 0, 0], [0.5, 0.5, 0.5]])
    return s.get_primitive_structure()


def test_scale_makes_occupancies_whole_without_changing_the_composition():
    assert integral_scale(half_li_rocksalt()) == 2
    third = Structure(Lattice.cubic(4.0), [{"Li": 1 / 3}, "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    # one third of a Li rounds to nothing within 0.25 only when the composition allows it: it does not
    assert integral_scale(third, occupancy_tolerance=0.25) == 3
    with pytest.raises(OracleError, match="max_atoms"):
        integral_scale(third, max_atoms=3)


def test_orders_in_the_smallest_supercell_and_picks_the_lowest_ml_energy():
    from matloop.oracles.mlip import load_calculator

    calc = load_calculator("chgnet", "0.3.0", "cpu", stress=False)
    seen = []

    def energy(structure):
        e = ml_energy_function(calc)(structure)
        seen.append(e)
        return e

    ordered, record = order_structure(half_li_rocksalt(), energy, OrderingSettings(n_candidates=3))
    assert ordered.is_ordered
    assert ordered.composition == half_li_rocksalt().composition * 2
    assert len(ordered) == 4 and record["n_atoms"] == 4
    assert sorted(record["supercell"]) == [1, 1, 2]
    energies = [c["ml_energy_ev_per_atom"] for c in record["candidates"]]
    assert energies == seen and min(energies) == pytest.approx(ml_energy_function(calc)(ordered))
    assert record["candidates"][[c["ewald_rank"] for c in record["candidates"]].index(record["chosen_ewald_rank"])][
        "ml_above_best_ev_per_atom"] == 0.0


def test_ordered_input_is_returned_unchanged_and_disabled_ordering_fails():
    s = Structure(Lattice.cubic(4.0), ["Li", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    same, record = order_structure(s, lambda _: 0.0)
    assert same is s and record is None
    with pytest.raises(OracleError, match="ordering.enabled is false"):
        order_structure(half_li_rocksalt(), lambda _: 0.0, OrderingSettings(enabled=False))
