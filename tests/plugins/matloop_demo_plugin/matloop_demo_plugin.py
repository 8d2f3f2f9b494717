"""Example oracle plug-in: the density of a crystal structure, from pymatgen.

A campaign refers to it by its registered name only (``kind: demo-density``); the name is
declared in this distribution's ``pyproject.toml`` under ``[project.entry-points."matloop.oracles"]``.
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
