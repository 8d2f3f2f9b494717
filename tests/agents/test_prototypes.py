from collections import Counter

from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

from matloop.agents.generation.prototypes import PrototypeSource


def test_charge_balanced_prototypes():
    cands = PrototypeSource("p", {"cations": ["Na", "Mg", "Sr", "Ti", "Li"], "anions": ["Cl", "O"]}).load()
    by = Counter(c.provenance["prototype"] for c in cands)
    formulas = {c.formula for c in cands}
    assert {"NaCl", "MgO", "SrTiO3", "Li2O"} <= formulas
    assert "NaO" not in formulas and "MgCl" not in formulas  # not charge balanced
    assert "MgCl2" in formulas  # fluorite AX2 balance
    assert by["perovskite"] >= 1
    for c in cands:
        s = c.pmg_structure()
        proto = c.provenance["prototype"]
        sg = SpacegroupAnalyzer(s, symprec=0.1).get_space_group_number()
        assert sg == {"rocksalt": 225, "zincblende": 216, "wurtzite": 186, "fluorite": 225, "antifluorite": 225,
                      "perovskite": 221, "half_heusler": 216}[proto], (c.formula, proto, sg)
        assert min(s.distance_matrix[0][1:]) > 1.5


def test_subset_is_seeded():
    kw = {"cations": ["Na", "K", "Mg", "Ca", "Sr", "Ti"], "anions": ["Cl", "O", "S"], "max_candidates": 10}
    a = [c.id for c in PrototypeSource("p", {**kw, "seed": 3}).load()]
    b = [c.id for c in PrototypeSource("p", {**kw, "seed": 3}).load()]
    assert a == b and len(a) == 10
