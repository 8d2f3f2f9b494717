"""Bad input through the real command line: status 2, file and row/YAML path named, no traceback."""

import json
import subprocess
import sys

import pytest

from .helpers import write_campaign


def matloop(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "matloop.loop.cli", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=600)


def assert_clean_error(res, *needles):
    assert res.returncode == 2, res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    for n in needles:
        assert n in res.stderr, res.stderr


def test_validate_ok(tmp_path, grid_csv):
    res = matloop("validate", write_campaign(tmp_path, grid_csv))
    assert res.returncode == 0 and "OK" in res.stdout


def test_malformed_yaml(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("name: [unclosed\n")
    assert_clean_error(matloop("validate", p), str(p), "malformed YAML", "line")


def test_unknown_key_and_wrong_type(tmp_path, grid_csv):
    p = write_campaign(tmp_path, grid_csv, batch_size="many", extra_key=1)
    assert_clean_error(matloop("validate", p), "batch_size (line", "extra_key (line", "unknown key")


def test_missing_pool_file(tmp_path, grid_csv):
    p = write_campaign(tmp_path, grid_csv, sources=[{"kind": "file", "settings": {"path": str(tmp_path / "none.csv")}}])
    assert_clean_error(matloop("run", p, "--quiet"), "none.csv", "not found")


def test_empty_pool(tmp_path, grid_csv):
    empty = tmp_path / "empty.csv"
    empty.write_text("composition,target\n")
    p = write_campaign(tmp_path, grid_csv, sources=[{"kind": "file", "settings": {"path": str(empty)}}])
    assert_clean_error(matloop("run", p, "--quiet"), "empty.csv", "empty")


def test_unparseable_composition_names_row(tmp_path, grid_csv):
    bad = tmp_path / "bad.csv"
    bad.write_text("composition,target\nFe2O3,1\nNotAnElement42,2\n")
    p = write_campaign(tmp_path, grid_csv, sources=[{"kind": "file", "settings": {"path": str(bad)}}])
    assert_clean_error(matloop("run", p, "--quiet"), "bad.csv", "row 3", "unparseable")


def test_unparseable_rows_skipped_by_rule(tmp_path, grid_csv):
    from matloop.agents.generation.sources import FileSource

    bad = tmp_path / "bad.csv"
    bad.write_text("composition,target\nFe2O3,1\nNotAnElement42,2\nNiO,3\n")
    with pytest.warns(UserWarning, match="skipped 1 unparseable"):
        cands = FileSource("f", {"path": str(bad), "on_bad_row": "skip"}).load()
    assert [c.formula for c in cands] == ["Fe2O3", "NiO"]


def test_nan_and_inf_labels_become_failed_observations(tmp_path, grid_csv):
    """A NaN/inf label is not a value: the lookup reports a failed observation naming it."""
    from matloop.oracles.lookup import LookupOracle
    from matloop.core.records import Candidate, Request, Status

    t = tmp_path / "t.csv"
    t.write_text("composition,y\nFe2O3,nan\nNiO,inf\nZnO,1.5\n")
    o = LookupOracle("t", {"table": str(t), "columns": {"y": "y"}})
    for formula, ok in (("Fe2O3", False), ("NiO", False), ("ZnO", True)):
        c = Candidate.from_composition(formula)
        obs = o.run(Request("r", c, "t", 0))
        assert (obs.status == Status.SUCCESS) == ok
        if not ok:
            assert "not finite" in obs.reason


def test_benchmark_rejects_nan_labels(tmp_path):
    t = tmp_path / "t.csv"
    t.write_text("composition,y\nFe2O3,1\nNiO,nan\nZnO,1.5\n")
    res = matloop("benchmark", "--dataset", t, "--composition-column", "composition", "--target-column", "y",
                  "--goal", "max", "--out", tmp_path / "out")
    assert_clean_error(res, "t.csv")


def test_status_and_export(tmp_path, grid_csv):
    p = write_campaign(tmp_path, grid_csv, budget={"evaluations": 8})
    assert matloop("run", p, "--quiet").returncode == 0
    store = tmp_path / "store.sqlite"
    st = matloop("status", store)
    assert st.returncode == 0 and "table" in st.stdout and "spend per oracle" in st.stdout
    js = matloop("export", store, "--format", "json")
    rows = json.loads(js.stdout)
    assert len(rows) == 8 and {"candidate_id", "formula", "source", "oracle", "fidelity", "status", "cost"} <= set(rows[0])
    csv_out = matloop("export", store, "--format", "csv")
    assert csv_out.stdout.splitlines()[0].startswith("seq,iteration,arm,candidate_id,formula")
    assert len(csv_out.stdout.splitlines()) == 9


def test_missing_store(tmp_path):
    assert_clean_error(matloop("status", tmp_path / "nope.sqlite"), "nope.sqlite", "not found")


def test_store_of_other_campaign(tmp_path, grid_csv):
    p = write_campaign(tmp_path, grid_csv, budget={"evaluations": 4})
    assert matloop("run", p, "--quiet").returncode == 0
    p2 = write_campaign(tmp_path, grid_csv, name="other", budget={"evaluations": 4})
    assert_clean_error(matloop("run", p2, "--quiet"), "belongs to campaign 'grid'")


def test_evaluate_takes_site_settings_apart_from_science(tmp_path):
    """`--site device=cpu` is how the site is set; `--set device=cpu` is refused naming the new place."""
    cif = tmp_path / "nacl.cif"
    cif.write_text("data_NaCl\n_cell_length_a 5.64\n_cell_length_b 5.64\n_cell_length_c 5.64\n"
                   "_cell_angle_alpha 90\n_cell_angle_beta 90\n_cell_angle_gamma 90\n"
                   "_symmetry_space_group_name_H-M 'P 1'\nloop_\n_atom_site_label\n_atom_site_type_symbol\n"
                   "_atom_site_fract_x\n_atom_site_fract_y\n_atom_site_fract_z\nNa1 Na 0 0 0\nCl1 Cl 0.5 0.5 0.5\n")
    r = matloop("evaluate", "--oracle", "mlip", "--set", "device=cpu", cif)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "site.device" in r.stderr
    r = matloop("evaluate", "--oracle", "mlip", "--site", "colour=blue", cif)
    assert r.returncode == 2 and "colour" in r.stderr and "Traceback" not in r.stderr


def test_status_counts_what_each_constraint_removes(tmp_path, grid_csv):
    """A constraint that bites shows up in `matloop status` with met / removed counts per arm."""
    import sqlite3

    p = write_campaign(tmp_path, grid_csv, budget={"evaluations": 8},
                       constraints=[{"property": "target", "max": 0.5}])
    assert matloop("run", p, "--quiet").returncode == 0
    store = tmp_path / "store.sqlite"
    values = [json.loads(v)["target"] for (v,) in sqlite3.connect(store).execute("SELECT properties FROM observations")]
    met = sum(v <= 0.5 for v in values)
    st = matloop("status", store)
    assert st.returncode == 0 and "constraints" in st.stdout
    row = next(line for line in st.stdout.splitlines() if "target <= 0.5" in line)
    assert [int(x) for x in row.replace("│", " ").split()[-4:]] == [len(values), met, len(values) - met, 0]
