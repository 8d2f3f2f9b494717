"""Through the real CLI: a pool with an unknown element, resuming after the campaign file changed, and the help texts."""

from __future__ import annotations

import argparse
import sqlite3

import pytest

from matloop.loop.cli import build_parser
from matloop.loop.store import Store

from .inputs import POOL, campaign, cli, write


def _n_candidates(store) -> int:
    db = sqlite3.connect(str(store))
    try:
        return db.execute("SELECT COUNT(*) FROM candidates").fetchone()[0]
    finally:
        db.close()


def test_unknown_element_is_refused_before_the_store_is_written_and_the_fixed_pool_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, campaign(tmp_path))
    (tmp_path / "pool.csv").write_text(POOL + "Xx2O3,0.1\n")
    rc, _, err = cli("validate", path)
    assert rc == 2 and "Traceback" not in err
    assert "pool.csv" in err and "row 10" in err and "Xx" in err, err
    rc, _, err = cli("run", path, "--quiet")
    assert rc == 2 and "Traceback" not in err and "row 10" in err, err
    store = tmp_path / "store.sqlite"
    assert not store.exists() or _n_candidates(store) == 0  # nothing half-built
    (tmp_path / "pool.csv").write_text(POOL + "Y2O3,0.1\n")  # the fixed CSV
    rc, out, err = cli("run", path, "--quiet")
    assert rc == 0, err
    assert _n_candidates(store) == 9


def test_on_bad_row_skip_drops_and_counts_the_unknown_element(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = campaign(tmp_path)
    spec["sources"][0]["settings"]["on_bad_row"] = "skip"
    path = write(tmp_path, spec)
    (tmp_path / "pool.csv").write_text(POOL + "Xx2O3,0.1\n")
    rc, out, err = cli("validate", path)
    assert rc == 0, err
    rc, out, err = cli("run", path)
    assert rc == 0, err
    assert "8 candidates, 8 new, 1 unparseable entries skipped (first: row 10" in out, out
    store = Store(tmp_path / "store.sqlite")
    try:
        assert sorted(c.formula for c in store.candidates()) == sorted(line.split(",")[0]
                                                                        for line in POOL.splitlines()[1:])
    finally:
        store.close()


def test_resume_with_a_changed_campaign_is_refused_with_a_diff(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, campaign(tmp_path))
    assert cli("run", path, "--quiet")[0] == 0
    store = Store(tmp_path / "store.sqlite")
    kept = store.get_meta("campaign_spec")
    store.close()
    assert kept["yaml"] == path.read_text() and kept["resolved"]["budget"]["iterations"] == 1
    assert cli("run", path, "--quiet")[0] == 0  # unchanged: resumes

    write(tmp_path, campaign(tmp_path, budget={"iterations": 2}))
    rc, _, err = cli("run", path, "--quiet")
    assert rc == 2 and "Traceback" not in err
    assert "budget.iterations: 1 -> 2" in err and "--allow-changes" in err, err
    rc, out, err = cli("run", path, "--allow-changes")
    assert rc == 0, err
    assert "budget.iterations: 1 -> 2" in out and "iter   1" in out, out

    # what is searched or optimised may not change, even with --allow-changes
    changed = campaign(tmp_path, budget={"iterations": 3}, objective={"property": "target", "goal": "maximize"})
    write(tmp_path, changed)
    rc, _, err = cli("run", path, "--allow-changes", "--quiet")
    assert rc == 2 and "Traceback" not in err
    assert 'objective.goal: "minimize" -> "maximize"' in err, err
    assert "budget.iterations: 2 -> 3" in err.split("would accept")[1], err  # the safe one is listed apart
    store = Store(tmp_path / "store.sqlite")
    assert len(store.iterations("agent")) == 2  # the refused runs planned nothing
    store.close()


def test_resume_refuses_a_changed_pool_path_and_the_override_counts_as_a_change(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, campaign(tmp_path))
    assert cli("run", path, "--quiet")[0] == 0
    (tmp_path / "other.csv").write_text(POOL)
    rc, _, err = cli("run", path, "--quiet", "--allow-changes", "--set", "sources.0.settings.path=other.csv")
    assert rc == 2 and 'sources[0].settings.path: "pool.csv" -> "other.csv"' in err, err


def _options(parser: argparse.ArgumentParser):
    for action in parser._actions:  # argparse has no public list of a parser's options
        if isinstance(action, argparse._SubParsersAction):
            for name, subparser in action.choices.items():
                yield from ((f"{name} {a}", h) for a, h in _options(subparser))
        elif action.option_strings and action.dest not in ("help", "version"):
            yield action.option_strings[-1], action.help or ""


def test_every_option_states_its_default():
    # `matloop report`'s options are defined in loop/report.py (add_arguments), outside this check
    missing = [opt for opt, text in _options(build_parser())
               if not opt.startswith("report ") and not ("default" in text or "required" in text)]
    assert not missing, missing


def test_benchmark_help_lists_the_registered_strategies(capsys):
    from matloop.loop.benchmark import STRATEGIES
    from matloop.loop.mf_benchmark import AGENTS

    with pytest.raises(SystemExit):
        build_parser().parse_args(["benchmark", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name in (*STRATEGIES, *AGENTS):
        assert name in text
