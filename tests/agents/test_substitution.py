"""SubstitutionGenerator: the random data-mined substitution baseline."""

from __future__ import annotations

import numpy as np
from pymatgen.core import Lattice, Structure

from matloop.agents.generation.substitution import SubstitutionGenerator
from matloop.agents.generation.validity import known_formulas
from matloop.core.protocols import CampaignState
from matloop.core.records import Candidate


def rocksalt(a: str, b: str, lat: float) -> Structure:
    h = lat / 2
    return Structure(Lattice([[0, h, h], [h, 0, h], [h, h, 0]]), [a, b], [[0, 0, 0], [0.5, 0.5, 0.5]])


def perovskite() -> Structure:
    return Structure(Lattice.cubic(3.905), ["Sr", "Ti", "O", "O", "O"],
                     [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])


def state() -> CampaignState:
    cands = [Candidate.from_structure(s, source="pool") for s in (perovskite(), rocksalt("Na", "Cl", 5.64))]
    return CampaignState(candidates={c.id: c for c in cands})


def test_children_replace_one_element_of_a_parent_in_place():
    st = state()
    out = SubstitutionGenerator("baseline").generate(8, st, np.random.default_rng(0))
    assert len(out) == 8
    for c in out:
        parent = st.candidates[c.provenance["parents"][0]].pmg_structure()
        child = c.pmg_structure()
        old, new = c.provenance["detail"].split("->")
        assert {str(e) for e in child.composition.elements} == {str(e) for e in parent.composition.elements} - {old} | {new}
        assert len(child) == len(parent)
        assert np.allclose(child.lattice.matrix, parent.lattice.matrix)  # no volume rescaling: pymatgen's Substitutor
        assert c.id not in st.candidates
    assert len({c.provenance["parents"][0] for c in out}) == 2  # parents are drawn at random, both get used


def test_known_formulas_are_never_returned(tmp_path):
    reference = known_formulas("reference")
    assert {"NaCl", "SrTiO3", "KCl"} <= reference and len(reference) > 30000
    gen = SubstitutionGenerator("baseline", {"avoid_formulas": "reference"})
    out = gen.generate(5, state(), np.random.default_rng(0))
    assert out and all(c.formula not in reference for c in out)
    assert gen.rejections["known formula"] > 0
