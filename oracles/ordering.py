"""Ordering of disordered structures (partial occupancies) before an ML-potential calculation.

A structure with partially occupied sites (OBELiX's beta-Li3PS4, Li4GeS4, Li2MnCl4) cannot be
handed to an ML potential as it is. ``order_structure`` does what a person would:

1. finds the smallest supercell in which every group of equivalent partially occupied sites
   holds a whole number of atoms (within ``occupancy_tolerance``) with the composition, and
   hence the charge balance, unchanged; no supercell up to ``max_atoms`` atoms: a failure;
2. enumerates orderings in it with pymatgen's ``OrderDisorderedStructureTransformation``,
   ranked by Ewald energy (oxidation states guessed from the composition), and keeps the
   ``n_candidates`` lowest that are structurally distinct (``StructureMatcher``);
3. picks among those by the ML potential's energy (a static energy per atom, or a short
   fixed-cell relaxation with ``ml_relax``): the Ewald ranking is a point-charge model,
   the potential sees the real chemistry.

What was chosen (supercell, Ewald rank, both energies of every candidate) is returned as a
JSON-ready dict for the observation's ``extra["ordering"]``. ``OrderingSettings.enabled``
false turns the whole step off, and a disordered structure then fails with a reason.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from matloop.core.records import OracleError


class OrderingSettings(BaseModel):
    """How disordered structures are ordered (a science setting of the MLIP-MD and NEB oracles)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="order disordered structures automatically; false: they fail")
    max_atoms: int = Field(200, ge=1, description="largest ordered supercell (atoms); none fits: a failure")
    occupancy_tolerance: float = Field(
        0.25, gt=0, lt=0.5,
        description="a group of equivalent sites whose total occupancy is this close to a whole number is "
        "rounded to it (pymatgen's occ_tol); the rounded composition must equal the scaled one",
    )
    n_candidates: int = Field(
        4, ge=1, description="distinct lowest-Ewald orderings compared by the ML potential's energy"
    )
    n_enumerated: int = Field(
        50, ge=1, description="lowest-Ewald orderings enumerated before removing symmetry-equivalent ones"
    )
    ml_relax: bool = Field(
        False, description="compare candidates after a short fixed-cell relaxation (else: static energies)"
    )


def _site_groups(structure) -> dict[tuple, int]:
    """Number of sites per distinct species-and-occupancy mapping (pymatgen groups sites the same way)."""
    groups: dict[tuple, int] = defaultdict(int)
    for site in structure:
        key = tuple(sorted((str(sp), round(float(occ), 6)) for sp, occ in site.species.items()))
        groups[key] += 1
    return groups


def integral_scale(structure, occupancy_tolerance: float = 0.25, max_atoms: int = 200) -> int:
    """The smallest number of cells in which the partial occupancies become whole atoms.

    Each group of sites with equal species and occupancies must hold, per species, a total
    within ``occupancy_tolerance`` of a whole number, and the rounded totals must add up to
    the scaled composition (so rounding never changes the stoichiometry or the charge).

    Raises:
        OracleError: when no scale keeps the ordered cell within ``max_atoms`` atoms.
    """
    groups = _site_groups(structure)
    composition = {str(el): float(amt) for el, amt in structure.composition.items()}
    n_ordered = sum(composition.values())
    scale = 1
    while n_ordered * scale <= max_atoms + 1e-6:
        totals: dict[str, float] = defaultdict(float)
        ok = True
        for key, n_sites in groups.items():
            for species, occ in key:
                amount = occ * n_sites * scale
                if abs(amount - round(amount)) > occupancy_tolerance:
                    ok = False
                totals[species] += round(amount)
        if ok and all(abs(totals[sp] - amt * scale) < 1e-6 for sp, amt in composition.items()):
            return scale
        scale += 1
    raise OracleError(
        f"no ordered supercell of {structure.composition.reduced_formula} within {max_atoms} atoms "
        f"(occupancies {sorted({occ for key in groups for _, occ in key if occ < 1})}); raise ordering.max_atoms"
    )


def _diagonal_for(lattice, scale: int) -> list[int]:
    """The diagonal repetitions with product ``scale`` whose supercell is the most compact (largest shortest width)."""
    import numpy as np

    m = lattice.matrix
    vol = abs(np.linalg.det(m))
    widths = np.array([vol / np.linalg.norm(np.cross(m[(i + 1) % 3], m[(i + 2) % 3])) for i in range(3)])
    best, best_width = [scale, 1, 1], -1.0
    for a, b in itertools.product(range(1, scale + 1), repeat=2):
        if scale % (a * b):
            continue
        reps = [a, b, scale // (a * b)]
        w = float(np.min(widths * np.array(reps)))
        if w > best_width:
            best, best_width = reps, w
    return best


def _with_oxidation_states(structure):
    """``structure`` decorated with the most likely oxidation states of its composition (None if no guess)."""
    guesses = structure.composition.oxi_state_guesses(max_sites=-50)
    if not guesses:
        return None
    s = structure.copy()
    s.add_oxidation_state_by_element({el: round(v) if float(v).is_integer() else v for el, v in guesses[0].items()})
    return s


def order_structure(
    structure,
    energy_ev_per_atom: Callable[[Any], float],
    settings: OrderingSettings | None = None,
):
    """An ordered version of ``structure`` and what was chosen (see the module docstring).

    Args:
        structure: a pymatgen ``Structure``; an ordered one is returned unchanged with ``None``.
        energy_ev_per_atom: the ML potential's energy per atom of an ordered ``Structure``.
        settings: ``OrderingSettings`` (defaults when None).

    Returns:
        ``(ordered_structure, record)``; ``record`` is None for an already ordered structure.

    Raises:
        OracleError: ordering disabled, no supercell within ``max_atoms``, or no ordering found.
    """
    from pymatgen.analysis.structure_matcher import StructureMatcher
    from pymatgen.transformations.standard_transformations import OrderDisorderedStructureTransformation

    s = settings or OrderingSettings()
    if structure.is_ordered:
        return structure, None
    if not s.enabled:
        raise OracleError("disordered structure (partial occupancies) and ordering.enabled is false")
    scale = integral_scale(structure, s.occupancy_tolerance, s.max_atoms)
    reps = _diagonal_for(structure.lattice, scale)
    cell = structure * reps if scale > 1 else structure.copy()
    decorated = _with_oxidation_states(cell)
    transform = OrderDisorderedStructureTransformation(
        no_oxi_states=decorated is None, occ_tol=s.occupancy_tolerance
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ranked = transform.apply_transformation(decorated or cell, return_ranked_list=s.n_enumerated)
        except (ValueError, IndexError) as exc:
            raise OracleError(f"ordering failed in a {'x'.join(map(str, reps))} supercell: {exc}") from exc
    if not ranked:
        raise OracleError("ordering found no ordered structure")

    matcher = StructureMatcher()
    distinct: list[tuple[int, dict]] = []
    for rank, entry in enumerate(ranked):
        if any(matcher.fit(entry["structure"], kept["structure"]) for _, kept in distinct):
            continue
        distinct.append((rank, entry))
        if len(distinct) >= s.n_candidates:
            break

    candidates = []
    for rank, entry in distinct:
        plain = entry["structure"].copy()
        plain.remove_oxidation_states()
        e = float(energy_ev_per_atom(plain))
        if not math.isfinite(e):
            raise OracleError("the ML potential gave a non-finite energy for an ordering")
        candidates.append((e, rank, float(entry["energy"]), plain))
    e_best, rank_best, _, chosen = min(candidates, key=lambda c: c[0])
    record = {
        "supercell": reps,
        "n_atoms": len(chosen),
        "n_enumerated": len(ranked),
        "chosen_ewald_rank": rank_best,
        "candidates": [
            {"ewald_rank": r, "ewald_energy_ev": ew, "ml_energy_ev_per_atom": e, "ml_above_best_ev_per_atom": e - e_best}
            for e, r, ew, _ in candidates
        ],
        "oxidation_states": decorated is not None,
        "ml_relax": s.ml_relax,
    }
    return chosen, record


def ml_energy_function(calc, relax: bool = False, fmax: float = 0.1, max_steps: int = 50) -> Callable[[Any], float]:
    """``energy_ev_per_atom(structure)`` with an ASE calculator: static, or after a fixed-cell FIRE relaxation."""
    from pymatgen.io.ase import AseAtomsAdaptor

    def energy(structure) -> float:
        atoms = AseAtomsAdaptor.get_atoms(structure)
        atoms.calc = calc
        if relax:
            from ase.optimize import FIRE

            FIRE(atoms, logfile=None).run(fmax=fmax, steps=max_steps)
        return float(atoms.get_potential_energy()) / len(atoms)

    return energy
