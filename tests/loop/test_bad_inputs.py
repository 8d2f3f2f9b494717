"""Every bad input of a table of them, through the real command line (``main([...])`` in process,
capturing the exit status and stderr): status 2, a message naming the file and the YAML path or
row, and never a traceback or a silent success.

The table (``CASES``) is also the count the closing note of issue 16 asks for: each case that
passes is a clean error; a failure says whether it was a traceback, a silent success or an unclear
message.
"""

from __future__ import annotations

import sqlite3

import pytest
import yaml

from .inputs import POOL, campaign, cli, write


def _oracle(**settings):
    base = {"table": "pool.csv", "columns": {"target": "target"}}
    base.update(settings)
    return [{"name": "table", "kind": "lookup", "settings": base}]


# (id, how to build the input -> argv, text the error must name)
def _yaml(**over):
    return lambda t: ("validate", write(t, campaign(t, **over)))


def _run(**over):
    return lambda t: ("run", write(t, campaign(t, **over)), "--quiet")


def _text(text):
    def build(t):
        campaign(t)
        return ("validate", write(t, text))
    return build


def _dup_key(t):
    text = yaml.safe_dump(campaign(t), sort_keys=False) + "seed: 2\n"
    return ("validate", write(t, text))


def _binary(t):
    campaign(t)
    p = t / "c.yaml"
    p.write_bytes(bytes(range(256)) * 4)
    return ("validate", p)


def _table(text):
    def build(t):
        spec = campaign(t)
        (t / "pool.csv").write_text(text)  # the pool and the lookup table
        return ("validate", write(t, spec))
    return build


def _pool(text, **settings):
    def build(t):
        spec = campaign(t)
        (t / "bad.csv").write_text(text)
        spec["sources"] = [{"kind": "file", "settings": {"path": "bad.csv", **settings}}]
        return ("run", write(t, spec), "--quiet")
    return build


def _args(*extra, cmd="run"):
    return lambda t: (cmd, write(t, campaign(t)), *extra)


def _store_args(*argv):
    def build(t):
        spec = campaign(t)
        rc, _, err = cli("run", write(t, spec), "--quiet")
        assert rc == 0, err
        return tuple(a.replace("STORE", str(t / "store.sqlite")).replace("TMP", str(t)) for a in argv)
    return build


def _evaluate(*extra):
    def build(t):
        from pymatgen.core import Lattice, Structure

        Structure(Lattice.cubic(4.2), ["Mg", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]]).to(filename=str(t / "mgo.cif"))
        return ("evaluate", t / "mgo.cif", "--oracle", "chgnet", *extra)
    return build


def _bench(*extra):
    def build(t):
        campaign(t)
        return ("benchmark", "--dataset", t / "pool.csv", "--composition-column", "composition",
                "--target-column", "target", "--goal", "min", "--out", t / "bench", *extra)
    return build


CASES = [
    # item 7: campaigns that cannot work
    ("key_column missing", _yaml(oracles=_oracle(key_column="formula")), ["key_column", "formula", "pool.csv"]),
    ("lookup column missing", _yaml(oracles=_oracle(columns={"target": "y"})), ["columns", "'y'"]),
    ("uncertainty column missing", _yaml(oracles=_oracle(uncertainty_columns={"target": "s"})), ["'s'"]),
    ("lookup label not a number", _table(POOL.replace("NiO,0.5", "NiO,n/a?")), ["pool.csv row 3 column 'target'",
                                                                            "not a number"]),
    ("lookup table missing", _yaml(oracles=_oracle(table="none.csv")), ["none.csv", "not found"]),
    ("pool file missing", _yaml(sources=[{"kind": "file", "settings": {"path": "none.csv"}}]), ["none.csv", "not found"]),
    ("pool column missing", _yaml(sources=[{"kind": "file", "settings": {"path": "pool.csv", "composition_column": "f"}}]),
     ["sources[0].settings.composition_column", "'f'"]),
    ("require_columns missing", _yaml(sources=[{"kind": "file", "settings": {"path": "pool.csv", "require_columns": ["q"]}}]),
     ["require_columns", "'q'"]),
    ("objective property unreported", _yaml(objective={"property": "gap_ev", "goal": "maximize"}), ["objective.property", "gap_ev"]),
    ("constraint property unreported", _yaml(constraints=[{"property": "gap_ev", "max": 1}]), ["constraints[0].property", "gap_ev"]),
    ("promote property unreported", _yaml(oracles=_oracle() + [
        {"name": "top", "kind": "lookup", "fidelity": 1, "settings": {"table": "pool.csv", "columns": {"target": "target"}},
         "promote": {"after": "table", "property": "gap_ev", "max": 1}}]), ["oracles[1].promote.property", "gap_ev"]),
    ("constraint min > max", _yaml(constraints=[{"property": "target", "min": 2, "max": 1}]), ["constraints[0]", "min"]),
    ("promote min > max", _yaml(oracles=_oracle() + [
        {"name": "top", "kind": "lookup", "fidelity": 1, "settings": {"table": "pool.csv", "columns": {"target": "target"}},
         "promote": {"after": "table", "property": "target", "min": 2, "max": 1}}]), ["oracles[1].promote", "min"]),
    ("promote after itself", _yaml(oracles=[
        {"name": "table", "kind": "lookup", "settings": {"table": "pool.csv", "columns": {"target": "target"}},
         "promote": {"after": "table", "top_k": 1}}]), ["oracles[0].promote.after"]),
    ("stop target nan", _yaml(stop=[{"kind": "target", "value": float("nan")}]), ["stop[0].value", "finite"]),
    ("stop target inf", _yaml(stop=[{"kind": "target", "value": float("inf")}]), ["stop[0].value", "finite"]),
    ("constraint max nan", _yaml(constraints=[{"property": "target", "max": float("nan")}]), ["constraints[0].max", "finite"]),
    ("window nan", _yaml(objective={"property": "target", "goal": "window", "window": [float("nan"), 1]}), ["objective.window"]),
    ("budget cost inf", _yaml(budget={"cost": float("inf")}), ["budget.cost", "finite"]),
    ("empty name", _yaml(name=""), ["name", "empty"]),
    ("blank name", _yaml(name="   "), ["name", "empty"]),
    ("empty oracle name", _yaml(oracles=[dict(_oracle()[0], name="")]), ["oracles[0].name", "empty"]),
    ("empty property", _yaml(objective={"property": "", "goal": "minimize"}), ["objective.property", "empty"]),
    ("seed -1", _yaml(seed=-1), ["seed", "greater than or equal to 0"]),
    ("duplicate YAML key", _dup_key, ["duplicate key 'seed'", "line"]),
    ("timeout nan", _yaml(oracles=[dict(_oracle()[0], timeout_s=float("nan"))]), ["oracles[0].timeout_s", "finite"]),
    ("timeout inf", _yaml(oracles=[dict(_oracle()[0], timeout_s=float("inf"))]), ["oracles[0].timeout_s", "finite"]),
    ("timeout 0", _yaml(oracles=[dict(_oracle()[0], timeout_s=0)]), ["oracles[0].timeout_s", "greater than 0"]),
    ("max_wait nan", _yaml(executor={"kind": "inline", "max_wait_s": float("nan")}), ["executor.max_wait_s", "finite"]),
    ("cost nan", _yaml(oracles=[dict(_oracle()[0], cost=float("nan"))]), ["oracles[0].cost", "finite"]),
    ("run on unworkable campaign", _run(oracles=_oracle(key_column="formula")), ["key_column", "formula"]),
    # item 9: unknown element in a pool
    ("unknown element", _pool(POOL + "Xx2O3,1.0\n"), ["bad.csv", "row 10", "Xx"]),
    ("unknown element, lower case", _pool(POOL + "xO,1.0\n"), ["bad.csv", "row 10"]),
    ("all rows bad, skip", _pool("composition,target\nXx2O3,1\nQq,2\n", on_bad_row="skip"), ["bad.csv", "empty"]),
    ("pool not a CSV", _pool("\x00\x01\x02garbage"), ["bad.csv"]),
    # item 10: other tracebacks
    ("store is a folder", lambda t: (t / "d").mkdir() or ("validate", write(t, campaign(t, store="d"))), ["store", "folder"]),
    ("store is a folder (run)", lambda t: (t / "d").mkdir() or ("run", write(t, campaign(t, store="d")), "--quiet"),
     ["store", "folder"]),
    ("--store is a folder", lambda t: (t / "d").mkdir() or ("run", write(t, campaign(t)), "--store", t / "d", "--quiet"),
     ["--store", "folder"]),
    ("store empty", _yaml(store=""), ["store", "empty"]),
    ("validate binary file", _binary, ["c.yaml"]),
    ("validate a folder", lambda t: ("validate", t), ["folder"]),
    ("yaml is a list", _text("- 1\n- 2\n"), ["mapping"]),
    ("yaml python tag", _text("name: !!python/object/apply:os.system ['true']\n"), ["c.yaml"]),
    ("--set index out of range", _args("--set", "oracles.5.cost=2", cmd="validate"), ["--set", "oracles.5"]),
    ("--set into a scalar", _args("--set", "seed.x=2", cmd="validate"), ["--set", "seed.x"]),
    ("--set non-integer index", _args("--set", "oracles.x.cost=2", cmd="validate"), ["--set", "oracles.x"]),
    ("--set without =", _args("--set", "seed", cmd="validate"), ["--set"]),
    ("--set empty key", _args("--set", "=3", cmd="validate"), ["--set"]),
    ("--set bad value", _args("--set", "seed=-4", cmd="validate"), ["seed"]),
    ("export into missing folder", _store_args("export", "STORE", "--out", "TMP/no/such/out.csv"), ["no/such"]),
    ("status --last -1", _store_args("status", "STORE", "--last", "-1"), ["--last"]),
    ("evaluate --timeout -5", _evaluate("--timeout", "-5"), ["--timeout"]),
    ("evaluate --timeout nan", _evaluate("--timeout", "nan"), ["--timeout"]),
    ("benchmark --budget 0", _bench("--budget", "0"), ["--budget"]),
    ("benchmark --seeds 0", _bench("--seeds", "0"), ["--seeds"]),
    ("benchmark --batch-size 0", _bench("--batch-size", "0"), ["--batch-size"]),
    ("benchmark --init -1", _bench("--init", "-1"), ["--init"]),
    ("benchmark --top-fraction 2", _bench("--top-fraction", "2"), ["--top-fraction"]),
    ("benchmark --top-fraction nan", _bench("--top-fraction", "nan"), ["--top-fraction"]),
    ("benchmark unknown strategy", _bench("--strategies", "random,magic"), ["magic"]),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_a_clean_error(tmp_path, monkeypatch, case):
    """Exit status 2, the file and YAML path or row named, no traceback, and a store that still opens."""
    _, build, needles = case
    monkeypatch.chdir(tmp_path)
    rc, out, err = cli(*build(tmp_path))
    assert "Traceback" not in err, err
    assert rc == 2, f"status {rc}\n{out}\n{err}"
    for n in needles:
        assert n in err, err
    store = tmp_path / "store.sqlite"
    if store.is_file():
        sqlite3.connect(str(store)).execute("SELECT COUNT(*) FROM candidates").fetchone()
