"""MLIP nudged-elastic-band tier: the percolating migration barrier of a mobile ion.

``MlipNebOracle`` is the cheap barrier tier between the MLIP relaxation and MLIP molecular
dynamics. For one structure it

1. orders it when it is disordered (``matloop.oracles.ordering``, recorded in
   ``extra["ordering"]``) and relaxes atoms and cell with the ML potential (OBELiX's CIFs carry
   deliberate positional noise that the relaxation removes);
2. builds the migration graph of the mobile ion with pymatgen-analysis-diffusion
   (``MigrationGraph.with_distance``): mobile-ion sites are nodes, hops shorter than the cutoff
   are edges, and symmetry-equivalent hops share one label. With ``max_hop_distance_a`` unset
   the cutoff is the shortest (in 0.25 A steps) at which the mobile-ion network percolates,
   plus ``hop_distance_margin_a``;
3. computes each distinct hop's barrier with a vacancy-mediated climbing-image NEB: the
   library's ``MigrationHop.get_sc_structures`` gives the start and end supercells (every
   lattice vector at least ``min_image_distance_a`` long, so a hop does not see its own
   periodic images), the end points are relaxed at fixed cell, the band is initialised by
   IDPP interpolation (ASE) and optimised with climbing image by FIRE or BFGS to ``fmax``;
   a hop's barrier is the band's highest energy above its lower end point;
4. reports ``migration_energy_ev``, the percolating barrier: the lowest threshold ``E`` such
   that the hops with barriers up to ``E`` form a network spanning the crystal (pymatgen's
   Larsen dimensionality of the thresholded migration graph is at least 1). Its
   dimensionality (1D, 2D, 3D) and the thresholds at which 2D and 3D networks form, with
   every hop's barrier, go to ``extra``.

Uncertainty (``partner_model``, default SevenNet): every converged band is re-evaluated by a
second potential (single points on the same images), the percolating barrier is recomputed
with its hop barriers, and the spread of the two estimates, ``|E_a - E_a'| / sqrt(2)``, is the
standard uncertainty of ``migration_energy_ev`` (both values in ``extra["uncertainty"]``).
It measures model disagreement only: both potentials share the softening of pretrained
universal potentials, so it is a lower bound on the error against experiment.

A hop whose NEB fails (atoms collide, non-finite energies) is left out of the network and
named in ``extra["hops"]``; without a spanning network the evaluation fails with a reason.
"""

from __future__ import annotations

import math
import time
import warnings
from typing import Literal

import numpy as np
from pydantic import Field

from matloop.core.records import Candidate, OracleError, OracleResult

from .mlip import (
    MlipModelOracle,
    MlipModelSettings,
    atoms_to_structure,
    check_elements,
    load_calculator,
    min_distance_a,
    model_provenance,
    relax_atoms,
    resolve_device,
)
from .ordering import OrderingSettings, ml_energy_function, order_structure

#: dimensionality names of the percolating network
DIMENSION_NAMES = {1: "1D", 2: "2D", 3: "3D"}


class MlipNebSettings(MlipModelSettings):
    """Science settings of the NEB barrier oracle (``model``, ``model_version`` as for ``mlip``)."""

    mobile_ion: str = Field("Li", description="element whose migration barrier is computed")
    ordering: OrderingSettings = Field(
        default_factory=OrderingSettings, description="ordering of disordered structures (see matloop.oracles.ordering)"
    )
    relax: bool = Field(True, description="relax atoms and cell with the MLIP before building the hops")
    relax_fmax: float = Field(0.05, gt=0, description="force threshold of that relaxation (eV/A)")
    relax_max_steps: int = Field(300, ge=1, description="FIRE steps of that relaxation")
    max_hop_distance_a: float | None = Field(
        None, gt=0,
        description="longest hop (A) in the migration graph; None: the shortest cutoff at which the mobile-ion "
        "network percolates, plus hop_distance_margin_a",
    )
    hop_distance_margin_a: float = Field(
        0.3, ge=0, description="added to the percolation cutoff when max_hop_distance_a is unset (A)"
    )
    hop_search_limit_a: float = Field(
        7.0, gt=0, description="no percolating network with hops up to this length (A) is a failure"
    )
    max_hops: int = Field(12, ge=1, description="distinct hops computed, shortest first; longer ones are left out")
    symprec: float = Field(0.1, gt=0, description="symmetry tolerance for equivalent hops (A)")
    min_image_distance_a: float = Field(
        7.0, gt=0, description="shortest supercell lattice vector of a hop's NEB (A): distance to its periodic image"
    )
    max_supercell_atoms: int = Field(240, ge=2, description="largest NEB supercell (atoms)")
    n_images: int = Field(5, ge=1, description="moving images between the two end points")
    spring_constant: float = Field(0.1, gt=0, description="NEB spring constant (eV/A^2)")
    fmax: float = Field(0.1, gt=0, description="force threshold of the NEB and of the end-point relaxations (eV/A)")
    max_steps: int = Field(150, ge=1, description="optimiser steps of the NEB (and of each end-point relaxation)")
    climb: bool = Field(True, description="climbing-image NEB")
    optimizer: Literal["fire", "bfgs"] = Field("fire", description="optimiser of the band")
    min_distance_a: float = Field(0.6, ge=0, description="two atoms closer than this (A) in an image fail the hop")
    partner_model: str | None = Field(
        "sevennet",
        description="second potential that re-evaluates every converged band (single points): the percolating "
        "barrier on its energies gives the uncertainty of migration_energy_ev (two-model spread); None: no "
        "uncertainty",
    )


# -- percolation -----------------------------------------------------------------------------
def _graph_dimension(migration_graph, barriers: dict, threshold: float) -> int:
    """Larsen dimensionality of the migration graph keeping hops with barrier <= ``threshold``."""
    from copy import deepcopy

    from pymatgen.analysis.dimensionality import get_dimensionality_larsen

    sg = deepcopy(migration_graph.m_graph)
    cut = [
        (u, v, k)
        for u, v, k, d in sg.graph.edges(keys=True, data=True)
        if barriers.get(d["hop_label"]) is None or barriers[d["hop_label"]] > threshold
    ]
    sg.graph.remove_edges_from(cut)
    return int(get_dimensionality_larsen(sg)) if sg.graph.number_of_edges() else 0


def percolating_barriers(migration_graph, barriers: dict) -> dict[int, float]:
    """The lowest barrier threshold at which the network reaches each dimensionality (1, 2, 3).

    Args:
        migration_graph: a ``MigrationGraph`` whose edges carry ``hop_label``.
        barriers: hop label -> barrier (eV); a label missing or None is a hop left out.

    Returns:
        ``{dimension: threshold}`` for each dimensionality reached (empty: no spanning network).
    """
    reached: dict[int, float] = {}
    for threshold in sorted({b for b in barriers.values() if b is not None}):
        dim = _graph_dimension(migration_graph, barriers, threshold)
        for d in range(1, dim + 1):
            reached.setdefault(d, threshold)
        if dim == 3:
            break
    return reached


def migration_graph_for(structure, s: MlipNebSettings):
    """The migration graph at the settings' cutoff, and that cutoff (see the module docstring)."""
    from pymatgen.analysis.diffusion.neb.full_path_mapper import MigrationGraph
    from pymatgen.analysis.dimensionality import get_dimensionality_larsen

    def graph(cutoff: float):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return MigrationGraph.with_distance(structure, s.mobile_ion, max_distance=cutoff, symprec=s.symprec)

    if s.max_hop_distance_a is not None:
        return graph(s.max_hop_distance_a), s.max_hop_distance_a
    cutoff = 1.5
    while cutoff <= s.hop_search_limit_a + 1e-9:
        mg = graph(cutoff)
        if mg.unique_hops and get_dimensionality_larsen(mg.m_graph) >= 1:
            cutoff += s.hop_distance_margin_a
            return (graph(cutoff) if s.hop_distance_margin_a else mg), cutoff
        cutoff += 0.25
    raise OracleError(
        f"no percolating {s.mobile_ion} network with hops up to {s.hop_search_limit_a:g} A "
        f"in {structure.composition.reduced_formula}"
    )


# -- one hop ---------------------------------------------------------------------------------
def _moving_first(structure, position, tol: float = 1e-3):
    """``structure`` with the site at ``position`` (fractional) moved to index 0."""
    d = structure.lattice.get_all_distances(structure.frac_coords, [position])[:, 0]
    i = int(np.argmin(d))
    if d[i] > tol:
        raise OracleError("hop end point not found in its supercell")
    s = structure.copy()
    site = s[i]
    s.remove_sites([i])
    s.insert(0, site.species, site.frac_coords)
    return s


def hop_endpoints(hop, s: MlipNebSettings):
    """Start and end ``ase.Atoms`` of a vacancy hop, index-aligned, in a supercell of ``min_image_distance_a``."""
    from pymatgen.io.ase import AseAtomsAdaptor

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start, end, base = hop.get_sc_structures(
            vac_mode=True, min_atoms=1, max_atoms=s.max_supercell_atoms, min_length=s.min_image_distance_a
        )
    # the library removes the other end point from each copy, so the moving ion's index
    # differs between them: put it first in both (the remaining sites are in the same order)
    sc_mat = np.rint(base.lattice.matrix @ np.linalg.inv(hop.isite.lattice.matrix))
    to_sc = np.linalg.inv(sc_mat)
    start = _moving_first(start, np.dot(hop.isite.frac_coords, to_sc))
    end = _moving_first(end, np.dot(hop.esite.frac_coords, to_sc))
    return AseAtomsAdaptor.get_atoms(start), AseAtomsAdaptor.get_atoms(end)


def neb_barrier(start, end, calc, s: MlipNebSettings) -> dict:
    """Climbing-image NEB between two index-aligned end points; the hop's barrier and band.

    Raises:
        OracleError: non-finite energies, or atoms closer than ``min_distance_a`` in the band.
    """
    from ase.mep import NEB
    from ase.optimize import BFGS, FIRE

    t0 = time.perf_counter()
    ends = []
    for atoms in (start, end):
        atoms.calc = calc
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            FIRE(atoms, logfile=None).run(fmax=s.fmax, steps=s.max_steps)
        ends.append(float(atoms.get_potential_energy()))
    images = [start] + [start.copy() for _ in range(s.n_images)] + [end]
    for image in images[1:-1]:
        image.calc = calc
    band = NEB(images, k=s.spring_constant, climb=s.climb, method="improvedtangent", allow_shared_calculator=True)
    band.interpolate(method="idpp", mic=True)
    opt = (FIRE if s.optimizer == "fire" else BFGS)(band, logfile=None)

    def guard():
        for image in images[1:-1]:
            if min_distance_a(image) < s.min_distance_a:
                raise OracleError(f"NEB band collapsed: atoms {min_distance_a(image):.2f} A apart")

    opt.attach(guard, interval=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        converged = bool(opt.run(fmax=s.fmax, steps=s.max_steps))
    energies = [ends[0]] + [float(im.get_potential_energy()) for im in images[1:-1]] + [ends[1]]
    if not all(math.isfinite(e) for e in energies):
        raise OracleError("NEB gave non-finite energies")
    guard()
    e_low = min(ends)
    return {
        "images": images,
        "barrier_ev": max(0.0, max(energies) - e_low),
        "forward_barrier_ev": max(energies) - ends[0],
        "reverse_barrier_ev": max(energies) - ends[1],
        "energies_ev": [e - ends[0] for e in energies],
        "converged": converged,
        "n_steps": int(opt.nsteps),
        "n_atoms": len(start),
        "wall_s": time.perf_counter() - t0,
    }


def partner_barrier(images, calc) -> float:
    """Barrier of a converged band (``images``, end points included) re-evaluated by ``calc``:
    single points on the same geometries, highest image above the lower end point.

    The partner's energies on the first potential's path bound the partner's own saddle from
    above; the difference between the two barriers measures how far the potentials disagree
    about this hop, not a second NEB.
    """
    energies = []
    for image in images:
        a = image.copy()
        a.calc = calc
        energies.append(float(a.get_potential_energy()))
    if not all(math.isfinite(e) for e in energies):
        raise OracleError("the partner potential gave non-finite energies on the band")
    return max(0.0, max(energies) - min(energies[0], energies[-1]))


def _partner_calculator(s: MlipNebSettings, structure, device: str):
    """The partner potential for the barrier's uncertainty, or ``(None, why not)``."""
    if s.partner_model is None:
        return None, "partner_model is None: no uncertainty"
    if s.partner_model == s.model:
        return None, f"partner_model equals model ({s.model}): no uncertainty"
    try:
        calc = load_calculator(s.partner_model, None, device, stress=False)
        check_elements([str(el) for el in structure.composition.elements], s.partner_model, calc)
    except (OracleError, ImportError) as exc:
        return None, f"partner {s.partner_model} unavailable: {exc}"
    return calc, f"two-model spread: |{s.model} - {s.partner_model}| / sqrt(2) on the {s.model} bands"


class MlipNebOracle(MlipModelOracle):
    """Percolating migration barrier of a mobile ion from ML-potential climbing-image NEB (module docstring)."""

    kind = "mlip-neb"
    properties = ("migration_energy_ev",)
    code_version = "2"
    Settings = MlipNebSettings
    needs_structure = True
    def _evaluate(self, candidate: Candidate) -> OracleResult:
        """Order, relax, build the migration graph, NEB every distinct hop and find the percolating barrier."""
        from pymatgen.io.ase import AseAtomsAdaptor

        s = self.settings
        t_start = time.perf_counter()
        structure = candidate.pmg_structure()
        if s.mobile_ion not in {str(el) for el in structure.composition.elements}:
            raise OracleError(f"no {s.mobile_ion} in {structure.composition.reduced_formula}")
        device = resolve_device(self.site.device)
        calc = load_calculator(s.model, s.model_version, device)
        fixed_cell_calc = load_calculator(s.model, s.model_version, device, stress=False)
        check_elements([str(el) for el in structure.composition.elements], s.model, calc)
        structure, ordering = order_structure(
            structure, ml_energy_function(fixed_cell_calc, relax=s.ordering.ml_relax), s.ordering
        )
        atoms = AseAtomsAdaptor.get_atoms(structure)
        if min_distance_a(atoms) < s.min_distance_a:
            raise OracleError(f"atoms overlap: shortest distance {min_distance_a(atoms):.3f} A")
        if s.relax:
            relax_atoms(atoms, calc, fmax=s.relax_fmax, max_steps=s.relax_max_steps, relax_cell=True)
            structure = atoms_to_structure(atoms)

        mg, cutoff = migration_graph_for(structure, s)
        hops = sorted(mg.unique_hops.items(), key=lambda kv: kv[1]["hop_distance"])
        partner, partner_note = _partner_calculator(s, structure, device)
        barriers: dict = {}
        partner_barriers: dict = {}
        records = []
        for n, (label, info) in enumerate(hops):
            record = {"label": label, "distance_a": float(info["hop_distance"])}
            images = None
            if n >= s.max_hops:
                record["skipped"] = f"beyond max_hops {s.max_hops}"
                barriers[label] = None
            else:
                try:
                    start, end = hop_endpoints(info["hop"], s)
                    band = neb_barrier(start, end, fixed_cell_calc, s)
                    images = band.pop("images")
                    record.update(band)
                    barriers[label] = record["barrier_ev"]
                except OracleError as exc:
                    record["failed"] = str(exc)
                    barriers[label] = None
                if images is not None and partner is not None:
                    try:
                        record["partner_barrier_ev"] = partner_barriers[label] = partner_barrier(images, partner)
                    except OracleError as exc:  # the hop keeps its barrier; the spread leaves this hop out
                        record["partner_failed"] = str(exc)
            records.append(record)

        reached = percolating_barriers(mg, barriers)
        summary = ", ".join(
            f"{r['distance_a']:.2f} A: " + (f"{r['barrier_ev']:.3f} eV" if "barrier_ev" in r else r.get("failed") or r["skipped"])
            for r in records
        )
        if not reached:
            raise OracleError(f"no spanning network of computed hops (cutoff {cutoff:.2f} A; hops {summary})")
        dim = max(d for d, b in reached.items() if b == reached[1])
        uncertainties = {}
        spread = {"partner_model": None if partner is None else model_provenance(s.partner_model, None),
                  "note": partner_note}
        if partner is not None:
            # the same network with the partner's barriers; hops it could not evaluate keep CHGNet's
            other = percolating_barriers(mg, {k: partner_barriers.get(k, v) for k, v in barriers.items()})
            if 1 in other:
                spread["partner_migration_energy_ev"] = other[1]
                # sample standard deviation of two estimates: |a - b| / sqrt(2)
                uncertainties["migration_energy_ev"] = abs(reached[1] - other[1]) / math.sqrt(2.0)
        return OracleResult(
            properties={"migration_energy_ev": reached[1]},
            uncertainties=uncertainties,
            extra={
                "uncertainty": spread,
                "dimensionality": DIMENSION_NAMES[dim],
                "percolation_thresholds_ev": {DIMENSION_NAMES[d]: b for d, b in sorted(reached.items())},
                "hops": records,
                "hop_cutoff_a": cutoff,
                "n_unique_hops": len(hops),
                "all_hops_converged": all(r.get("converged", False) for r in records if "barrier_ev" in r),
                "relaxed_structure": structure.as_dict(),
                "ordering": ordering,
                "model": model_provenance(s.model, s.model_version),
                "neb_wall_s": time.perf_counter() - t_start,
            },
        )
