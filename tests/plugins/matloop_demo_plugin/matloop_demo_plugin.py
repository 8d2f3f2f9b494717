"""Example plug-in: an oracle (the density of a crystal structure, from pymatgen) and an ML
potential for the MLIP oracles (ASE's effective-medium theory, as a stand-in for MACE & co.).

A campaign refers to them by their registered names only (``kind: demo-density``; ``kind:
mlip`` with ``model: demo-emt``); the names are declared in this distribution's
``pyproject.toml`` under ``[project.entry-points."matloop.oracles"]`` and
``[project.entry-points."matloop.calculators"]``.
"""

from __future__ import annotations

from matloop.core.oracle import Oracle
from matloop.core.records import Candidate, OracleResult


class DensityOracle(Oracle):
    """Reports ``density_g_per_cm3`` of the candidate's structure (no settings)."""

    kind = "demo-density"
    properties = ("density_g_per_cm3",)
    needs_structure = True
    inline = True  # a few arithmetic operations: run in the planning process

    def evaluate(self, candidate: Candidate) -> OracleResult:
        structure = candidate.pmg_structure()
        return OracleResult(properties={"density_g_per_cm3": float(structure.density)})


def emt_calculator(model_name: str | None, device: str):
    """ASE's EMT potential (Al, Cu, Ag, Au, Ni, Pd, Pt; CPU only, no weights: both arguments are unused)."""
    from ase.calculators.emt import EMT

    return EMT()
