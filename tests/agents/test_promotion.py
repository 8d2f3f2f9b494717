"""Funnel rungs see the structure their cheaper tier computed, down the whole chain."""

from __future__ import annotations

from pymatgen.core import Lattice, Structure

from matloop.agents.decision.promotion import tier_candidate
from matloop.core.records import Candidate, Observation, Status


def _zns(a: float) -> Structure:
    return Structure.from_spacegroup("F-43m", Lattice.cubic(a), ["Zn", "S"], [[0, 0, 0], [0.25, 0.25, 0.25]])


def _ok(cand: Candidate, oracle: str, extra: dict | None = None) -> Observation:
    return Observation(f"r-{oracle}", cand.id, oracle, "v1", 0, Status.SUCCESS, {"gap_ev": 1.0}, extra=extra or {})


def test_hse_after_a_pbe_single_point_gets_the_mlip_relaxed_structure():
    """The ZnS case: PBE (no relaxation) after CHGNet, HSE after PBE: HSE must see CHGNet's cell, as PBE did."""
    generated = Candidate.from_structure(_zns(6.0))  # 33 % too much volume, as generated
    relaxed = _zns(5.45).as_dict()
    after_of = {"pbe": "chgnet", "hse": "pbe"}
    observations = [_ok(generated, "chgnet", {"relaxed_structure": relaxed}), _ok(generated, "pbe")]
    pbe_sees = tier_candidate(generated, "pbe", after_of, observations)
    hse_sees = tier_candidate(generated, "hse", after_of, observations)
    assert pbe_sees.structure == relaxed and hse_sees.structure == relaxed
    assert hse_sees.id == generated.id  # the material's identity is unchanged
    # a rung after a tier that did relax takes that tier's relaxed cell
    pbe_relaxed = _zns(5.50).as_dict()
    observations[1] = _ok(generated, "pbe", {"relaxed_structure": pbe_relaxed})
    assert tier_candidate(generated, "hse", after_of, observations).structure == pbe_relaxed
    # an entry tier sees the candidate as generated
    assert tier_candidate(generated, "chgnet", after_of, observations).structure == generated.structure
