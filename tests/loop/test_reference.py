"""Help that answers: `matloop describe KIND`, `matloop schema`, one goal vocabulary."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from matloop.core.goals import Goal


def matloop(*args):
    return subprocess.run([sys.executable, "-m", "matloop.loop.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=600, env={**__import__("os").environ, "COLUMNS": "200"})


def test_describe_lookup_and_manual_settings():
    res = matloop("describe", "lookup")
    assert res.returncode == 0, res.stderr
    for word in ("oracle 'lookup'", "table", "key_column", "columns", "duplicates", "latency_s", "required"):
        assert word in res.stdout, word
    row = next(line for line in res.stdout.splitlines() if "latency_s" in line)
    assert "float" in row and " s " in row  # type and unit (from the name's suffix)
    manual = matloop("describe", "manual")
    assert "properties" in manual.stdout and "list[str]" in manual.stdout and "instructions" in manual.stdout


def test_describe_units_defaults_and_nested_settings():
    res = matloop("describe", "mlip")
    fmax = next(line for line in res.stdout.splitlines() if line.strip("│ ").startswith("fmax"))
    assert "0.05" in fmax and "eV/A" in fmax and "> 0" in fmax
    assert "hull.source" in res.stdout  # nested settings are listed with their dotted path
    gp = matloop("describe", "gp")
    assert "surrogate 'gp'" in gp.stdout and "agent.surrogate" in gp.stdout


def test_describe_lists_kinds_and_rejects_unknown():
    listing = matloop("describe")
    assert listing.returncode == 0 and "oracles:" in listing.stdout and "manual" in listing.stdout
    assert "generators:" in listing.stdout and "surrogates: gp, rf" in listing.stdout
    bad = matloop("describe", "nonesuch")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "unknown kind 'nonesuch'" in bad.stderr
    assert "lookup" in bad.stderr  # the known kinds are named


def test_schema_of_the_campaign_file(tmp_path):
    res = matloop("schema", "--out", tmp_path / "schema.json")
    assert res.returncode == 0, res.stderr
    schema = json.loads((tmp_path / "schema.json").read_text())
    assert json.loads(matloop("schema").stdout) == schema
    assert {"name", "objective", "sources", "oracles", "budget", "store"} <= set(schema["properties"])
    assert set(schema["required"]) == {"name", "sources", "oracles", "budget", "store"}
    assert "base_dir" not in schema["properties"]
    defs = schema["$defs"]
    assert {"maximize", "max", "minimize", "min", "window"} == set(defs["Objective"]["properties"]["goal"]["enum"])
    # each oracle kind's settings are checked against that kind's model
    clause = next(c for c in defs["OracleSpec"]["allOf"] if c["if"]["properties"]["kind"]["const"] == "manual")
    manual = defs[clause["then"]["properties"]["settings"]["$ref"].split("/")[-1]]
    assert manual["required"] == ["properties"] and manual["additionalProperties"] is False
    assert any(c["if"]["properties"]["kind"]["const"] == "file" for c in defs["SourceSpec"]["allOf"])


@pytest.mark.parametrize("word,kind", [("max", "max"), ("maximize", "max"), ("min", "min"), ("Minimize", "min")])
def test_one_goal_vocabulary(word, kind):
    assert Goal.parse(word) == Goal(kind)
    assert Goal.from_objective(word) == Goal(kind)


def test_benchmark_and_campaign_accept_both_goal_words(tmp_path, grid_csv):
    import yaml

    from .helpers import write_campaign

    p = write_campaign(tmp_path, grid_csv, objective={"property": "target", "goal": "max"})
    assert matloop("validate", p).returncode == 0
    spec = yaml.safe_load(p.read_text())
    spec["objective"]["goal"] = "maxi"
    p.write_text(yaml.safe_dump(spec))
    bad = matloop("validate", p)
    assert bad.returncode == 2 and "objective.goal" in bad.stderr
    small = tmp_path / "small.csv"
    small.write_text("".join(open(grid_csv).readlines()[:41]))  # 40 labelled compositions
    res = matloop("benchmark", "--dataset", small, "--composition-column", "composition", "--target-column",
                  "target", "--goal", "minimize", "--budget", "8", "--init", "4", "--batch-size", "4", "--seeds", "1",
                  "--strategies", "random", "--top-fraction", "0.1", "--out", tmp_path / "bench")
    assert res.returncode == 0, res.stderr
