"""WyckoffGenerator: compositions decoded onto the Wyckoff templates of known structures."""

from __future__ import annotations

import numpy as np
import pytest
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Composition, Lattice, Structure
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

from matloop.agents.generation.validity import charge_balanced
from matloop.agents.generation.wyckoff import WyckoffGenerator, WyckoffTemplate, stoichiometry
from matloop.core.protocols import CampaignState
from matloop.core.records import Candidate, InputError


def rutile(x: float = 0.305) -> Structure:
    """TiO2 rutile (P4_2/mnm, O on 4f (x, x, 0): one free parameter)."""
    return Structure(Lattice.tetragonal(4.594, 2.959), ["Ti", "Ti", "O", "O", "O", "O"],
                     [[0, 0, 0], [0.5, 0.5, 0.5], [x, x, 0], [1 - x, 1 - x, 0], [0.5 + x, 0.5 - x, 0.5], [0.5 - x, 0.5 + x, 0.5]])


def perovskite() -> Structure:
    """Cubic SrTiO3 (Pm-3m, every site fixed by symmetry)."""
    return Structure(Lattice.cubic(3.905), ["Sr", "Ti", "O", "O", "O"],
                     [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])


def rocksalt(a: str, b: str, lat: float) -> Structure:
    h = lat / 2
    return Structure(Lattice([[0, h, h], [h, 0, h], [h, h, 0]]), [a, b], [[0, 0, 0], [0.5, 0.5, 0.5]])


def state_of(structures, compositions=()) -> CampaignState:
    cands = [Candidate.from_structure(s, source="pool") for s in structures]
    cands += [Candidate.from_composition(c, source="agent") for c in compositions]
    fit = {c.id: float(i) for i, c in enumerate(cands) if c.structure is not None}
    return CampaignState(candidates={c.id: c for c in cands}, fitness=fit)


def test_decoding_keeps_the_space_group_and_moves_only_free_parameters():
    tpl = WyckoffTemplate.from_structure(rutile())
    assert tpl.spacegroup == 136 and stoichiometry(rutile().composition) == (1, 2)
    tight = StructureMatcher(stol=0.02, scale=True)
    moved = 0
    for seed in range(4):
        st = tpl.decode({"Ti": "Sn", "O": "O"}, np.random.default_rng(seed), coordinate_sigma=0.2, lattice_sigma=0.02)
        assert st is not None
        assert st.composition.reduced_formula == "SnO2"
        assert SpacegroupAnalyzer(st, symprec=0.01).get_space_group_number() == 136
        template_sn = rutile().copy()
        template_sn.replace_species({"Ti": "Sn"})
        moved += not tight.fit(st.get_primitive_structure(), template_sn)
    assert moved >= 3  # the O x parameter is free, so decodings differ from the template
    # no free parameter: the decoded perovskite is the template's arrangement with new elements
    cubic = WyckoffTemplate.from_structure(perovskite())
    st = cubic.decode({"Sr": "Ba", "Ti": "Zr", "O": "O"}, np.random.default_rng(0), coordinate_sigma=0.3, lattice_sigma=0.0)
    bzo = perovskite()
    bzo.replace_species({"Sr": "Ba", "Ti": "Zr"})
    assert SpacegroupAnalyzer(st).get_space_group_number() == 221 and StructureMatcher().fit(st, bzo)


def test_generated_candidates_are_new_charge_balanced_and_on_a_template(tmp_path):
    pool = [rutile(), perovskite(), rocksalt("Na", "Cl", 5.64), rocksalt("Mg", "O", 4.21)]
    st = state_of(pool)
    first = WyckoffGenerator("wyckoff", {"avoid_formulas": None}).generate(4, st, np.random.default_rng(0))
    assert len(first) >= 3
    pool_formulas = {s.composition.reduced_formula for s in pool}
    for c in first:
        s = c.pmg_structure()
        assert c.formula not in pool_formulas
        assert charge_balanced(s.composition)
        tpl = c.provenance["template"]
        template = st.candidates[tpl["candidate"]].pmg_structure()
        assert stoichiometry(s.composition) == stoichiometry(template.composition)
        assert SpacegroupAnalyzer(s, symprec=0.01).get_space_group_number() == tpl["spacegroup"]
    # the same draw told that those formulas are known proposes none of them
    known = tmp_path / "known.csv"
    known.write_text("formula\n" + "\n".join(c.formula for c in first) + "\n")
    gen = WyckoffGenerator("wyckoff", {"avoid_formulas": str(known)})
    second = gen.generate(4, st, np.random.default_rng(0))
    assert second and not {c.formula for c in second} & {c.formula for c in first}
    assert gen.rejections["known formula"] > 0


def test_agent_compositions_are_decoded_first():
    st = state_of([perovskite(), rocksalt("Na", "Cl", 5.64)], compositions=["BaZrO3"])
    gen = WyckoffGenerator("wyckoff", {"compositions": "agent", "avoid_formulas": None})
    [c] = gen.generate(2, st, np.random.default_rng(0))
    assert c.formula == "BaZrO3" and c.provenance["detail"] == "agent composition"
    assert c.provenance["template"]["spacegroup"] == 221
    assert gen.generate(2, st, np.random.default_rng(1)) == []  # each agent composition is decoded once


def test_avoid_formulas_file_errors_name_the_file(tmp_path):
    with pytest.raises(InputError, match="missing.csv"):
        WyckoffGenerator("w", {"avoid_formulas": str(tmp_path / "missing.csv")})
    bad = tmp_path / "bad.csv"
    bad.write_text("name\nNaCl\n")
    with pytest.raises(InputError, match="formula"):
        WyckoffGenerator("w", {"avoid_formulas": str(bad)})


def test_prerelaxation_goes_through_the_mlip_oracle():
    st = state_of([rocksalt("Na", "Cl", 5.64), rocksalt("Mg", "O", 4.21)], compositions=["KBr"])
    # no volume rescaling: the raw sample keeps NaCl's cell, far too small for KBr
    settings = {"compositions": "agent", "avoid_formulas": None, "lattice_sigma": 0.02, "rescale_volume": False}
    [raw] = WyckoffGenerator("wyckoff", settings).generate(1, st, np.random.default_rng(0))
    gen = WyckoffGenerator("wyckoff", {**settings, "prerelax": True, "prerelax_settings": {"fmax": 0.2, "max_steps": 30}})
    [c] = gen.generate(1, st, np.random.default_rng(0))
    assert c.formula == "KBr" and c.provenance["operator"] == "wyckoff+prerelax"
    # the same draw, relaxed by CHGNet: expanded from the template's 5.64 Å toward KBr's own a = 6.6 Å
    assert (4 * raw.pmg_structure().volume) ** (1 / 3) < 6.0
    assert 6.2 < (4 * c.pmg_structure().volume) ** (1 / 3) < 7.2
