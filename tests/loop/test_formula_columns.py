"""Formula and key columns are read verbatim: "NaN" is sodium nitride, not a missing value.

pandas reads the strings NaN, NA, null, ... as missing in every column by default; a Materials
Project export holds NaN (mp-1195) as a formula. Pools, lookup tables and benchmark tables
must keep it, while an empty field stays missing and a label "nan" stays a missing label.
"""

from matloop.agents.generation.sources import FileSource
from matloop.core.records import Candidate, Request, Status
from matloop.loop import benchmark as bm
from matloop.oracles.lookup import LookupOracle


def test_file_source_keeps_sodium_nitride(tmp_path):
    p = tmp_path / "pool.csv"
    p.write_text("composition,note\nNaN,NA\nNaCl,\nLiF,x\n")
    cands = FileSource("f", {"path": str(p)}).load()
    assert [c.formula for c in cands] == ["NaN", "NaCl", "LiF"]
    assert cands[0].pmg_composition().as_dict() == {"Na": 1.0, "N": 1.0}


def test_lookup_oracle_finds_sodium_nitride_and_still_rejects_a_nan_label(tmp_path):
    t = tmp_path / "labels.csv"
    t.write_text("composition,y\nNaN,0.8\nNaCl,nan\n")
    o = LookupOracle("t", {"table": str(t), "columns": {"y": "y"}})
    assert o.input_problems() == []
    obs = o.run(Request("r", Candidate.from_composition("NaN"), "t", 0))
    assert obs.status == Status.SUCCESS and obs.properties["y"] == 0.8
    obs = o.run(Request("r2", Candidate.from_composition("NaCl"), "t", 0))
    assert obs.status != Status.SUCCESS and "not finite" in obs.reason


def test_benchmark_pool_keeps_sodium_nitride(tmp_path):
    formulas = ["NaN", "NaCl", "LiF", "KBr", "MgO", "CaO", "ZnO", "NiO", "CuO", "FeO", "CoO", "MnO", "SrO", "BaO"]
    p = tmp_path / "pool.csv"
    p.write_text("formula,y\n" + "".join(f"{f},{i}\n" for i, f in enumerate(formulas)))
    s = bm.benchmark_from_csv(p, "formula", "y", "min", strategies="random", seeds=1, budget=12, init=10,
                              batch_size=2, top_fraction=0.1)
    assert s["n_pool"] == len(formulas)  # NaN (the best label, 0) is in the pool, not dropped or refused
