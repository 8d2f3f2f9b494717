"""Faults at run time, through the real CLI: a store in use or damaged, site jobs after a kill,
impossible numbers, deeply nested lab results, a lab refusing the token, a campaign that only
fails, and the same picks whatever order results arrive in."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from pymatgen.core import Lattice, Structure

from matloop.core.records import Candidate, Observation, Request, Status
from matloop.loop.store import Store
from matloop.oracles.lab import FolderOracle
from matloop.oracles.labsim import LabService

from .helpers import run_and_kill_mid_iteration, write_campaign


def matloop(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "matloop.loop.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def no_traceback(proc: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-3000:]


@pytest.fixture
def finished(tmp_path, grid_csv) -> tuple[Path, Path]:
    """A small lookup campaign, run to its end: (campaign file, store)."""
    path = write_campaign(tmp_path, grid_csv, budget={"evaluations": 8})
    proc = matloop("run", str(path), "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return path, tmp_path / "store.sqlite"


# -- 1. one run per store -------------------------------------------------------------------------
def test_second_run_is_refused_naming_the_holder_and_a_dead_holders_lock_is_taken_over(finished, tmp_path):
    path, store_path = finished
    holder = Store(store_path)
    holder.acquire_run_lock()  # what a running `matloop run` holds
    try:
        proc = matloop("run", str(path), "--set", "budget.evaluations=12")
        no_traceback(proc)
        assert proc.returncode == 2
        assert f"pid {os.getpid()} on host {socket.gethostname()}" in proc.stderr
        # reading commands work while a run holds the store
        for args in (("status", str(store_path)), ("export", str(store_path), "--format", "json")):
            assert matloop(*args).returncode == 0
    finally:
        holder.close()
    with sqlite3.connect(str(store_path)) as db:
        assert db.execute("SELECT COUNT(*) FROM requests").fetchone()[0] == 8  # the refused run added nothing

    # a run killed with -9 leaves its lock file behind: the next run takes it over
    code = (f"from matloop.loop.store import Store; import time; s = Store({str(store_path)!r}); "
            "s.acquire_run_lock(); print('locked', flush=True); time.sleep(60)")
    dead = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert dead.stdout.readline().strip() == "locked"
    assert matloop("run", str(path)).returncode == 2  # alive: refused
    dead.send_signal(signal.SIGKILL)
    dead.wait()
    assert json.loads((tmp_path / "store.sqlite.lock").read_text())["pid"] == dead.pid  # the stale marker
    proc = matloop("run", str(path), "--set", "budget.evaluations=12", "--allow-changes")  # a bigger budget: safe
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"pid {dead.pid}" in proc.stdout and "gone" in proc.stdout
    with sqlite3.connect(str(store_path)) as db:
        assert db.execute("SELECT COUNT(*) FROM observations").fetchone()[0] == 12


# -- 2. a damaged store ------------------------------------------------------------------------------
def cli(capsys, *args: str) -> tuple[int, str]:
    """``matloop ARGS`` in this process (the CLI's own entry point): exit status and stderr."""
    from matloop.loop.cli import main

    code = main(list(args))
    return code, capsys.readouterr().err


def test_damaged_or_foreign_store_is_refused_with_what_can_be_salvaged(finished, tmp_path, capsys):
    path, store_path = finished
    data = store_path.read_bytes()
    truncated = tmp_path / "truncated.sqlite"
    truncated.write_bytes(data[:4096])  # truncate -s 4096: only SQLite's own first page is left
    csv_store = tmp_path / "results.sqlite"
    csv_store.write_text("composition,target\nFe,1\n")
    for bad in (truncated, csv_store):
        for args in (("status", str(bad)), ("export", str(bad), "--format", "csv"), ("ask", str(bad)),
                     ("tell", str(bad), str(csv_store))):
            code, err = cli(capsys, *args)
            assert code == 2 and f"{bad}: not a matloop store, or damaged" in err, (args, err)
    proc = matloop("run", str(path), "--store", str(truncated))
    no_traceback(proc)
    assert proc.returncode == 2 and "not a matloop store, or damaged" in proc.stderr
    assert "not an SQLite database" in cli(capsys, "status", str(csv_store))[1]
    assert "nothing to salvage" in cli(capsys, "status", str(truncated))[1]
    assert truncated.stat().st_size == 4096  # refused, not touched

    half = tmp_path / "half.sqlite"
    half.write_bytes(data[: len(data) // 2 // 4096 * 4096])  # the early pages (meta first) survive
    code, err = cli(capsys, "export", str(half), "--format", "json")
    assert code == 2 and "Readable: meta: " in err and "python -m matloop.loop.store salvage" in err
    out = tmp_path / "salvaged.json"
    proc = subprocess.run([sys.executable, "-m", "matloop.loop.store", "salvage", str(half), str(out)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    salvaged = json.loads(out.read_text())
    assert {r["key"] for r in salvaged["meta"]} >= {"schema_version", "campaign"}

    foreign = tmp_path / "other.sqlite"
    with sqlite3.connect(str(foreign)) as db:
        db.execute("CREATE TABLE samples (id INTEGER)")
    code, err = cli(capsys, "export", str(foreign), "--format", "csv")
    assert code == 2 and "without the tables" in err


# -- 4. numbers are checked at the store ----------------------------------------------------------
def test_impossible_numbers_become_failed_observations_with_the_reason(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    cand = Candidate.from_composition("NaCl")
    store.add_candidates([cand])
    cases = {
        "negative-cost": ({"gap_ev": 1.0}, {}, -10.0, "cost=-10 is negative"),
        "nan-cost": ({"gap_ev": 1.0}, {}, float("nan"), "cost=nan is not a finite number"),
        "negative-sigma": ({"gap_ev": 1.0}, {"gap_ev": -0.2}, 1.0, "uncertainty of gap_ev=-0.2 is negative"),
        "huge": ({"score": 1e308}, {}, 1.0, "score=1e+308 is outside the sane range"),
        "fine": ({"gap_ev": 1.0}, {"gap_ev": 0.1}, 1.0, None),
    }
    for rid, (props, sigma, cost, _) in cases.items():
        store.start_iteration(len(store.iterations()), {}, [Request(rid, cand, "lab", 0)])
        obs = Observation(rid, cand.id, "lab", "v1", 0, Status.SUCCESS, props, sigma, cost=cost)
        assert store.add_observation(obs)
        assert obs.ok == (rid == "fine")  # the caller's copy says what was stored
    stored = {o.request_id: o for o in store.observations()}
    for rid, (props, _, cost, problem) in cases.items():
        o = stored[rid]
        if problem is None:
            assert o.ok and o.properties == props and o.cost == 1.0
            continue
        assert o.status == Status.FAILED and problem in o.reason and o.reason.startswith("rejected numbers")
        assert o.properties == {} and o.extra["rejected"]["properties"] == props
        assert o.cost >= 0 and o.cost == o.cost  # what the budget is charged is a real, non-negative number
    store.close()


# -- 5. a deeply nested result file --------------------------------------------------------------
def test_deeply_nested_folder_result_fails_alone_and_the_others_are_read(tmp_path):
    oracle = FolderOracle(name="robot", settings={"outbox": "out", "inbox": "in", "properties": ["gap_ev"],
                                                   "settle_s": 0.0}, site={"base_dir": tmp_path})
    cands = [Candidate.from_composition(f) for f in ("NaCl", "KCl", "LiF", "MgO")]
    reqs = [Request(Request.make_id(c.id, "robot", 0), c, "robot", 0) for c in cands]
    handles = oracle.submit(reqs)
    (tmp_path / "in" / f"{reqs[0].id}.json").write_text("[" * 200_000 + "]" * 200_000)
    for i, r in enumerate(reqs[1:]):
        (tmp_path / "in" / f"{r.id}.json").write_text(json.dumps({"gap_ev": 1.0 + i}))
    ready = oracle.poll(handles)
    assert len(ready) == 4
    by_id = {o.request_id: o for o in oracle.collect(ready)}
    assert by_id[reqs[0].id].status == Status.FAILED and "nested too deeply" in by_id[reqs[0].id].reason
    assert [by_id[r.id].properties["gap_ev"] for r in reqs[1:]] == [1.0, 2.0, 3.0]


# -- 7. a campaign that only fails stops ---------------------------------------------------------
def test_run_stops_after_consecutive_failures_with_the_most_common_reason(tmp_path, grid_csv):
    table = tmp_path / "other.csv"
    table.write_text("composition,target\nAu,1.0\n")  # covers none of the pool: every lookup fails
    path = write_campaign(
        tmp_path, grid_csv, batch_size=2,
        oracles=[{"name": "table", "kind": "lookup", "cost": 1,
                  "settings": {"table": str(table), "key_column": "composition", "columns": {"target": "target"}}}],
        budget={"evaluations": 40, "max_consecutive_failures": 5},
    )
    proc = matloop("run", str(path))
    no_traceback(proc)
    assert proc.returncode == 4, proc.stderr[-2000:]
    assert "6 evaluations in a row failed" in proc.stdout and "most common reason (6 of 6)" in proc.stdout
    with sqlite3.connect(str(tmp_path / "store.sqlite")) as db:
        assert db.execute("SELECT COUNT(*) FROM observations").fetchone()[0] == 6  # not the 40 of the budget


# -- 6. a lab refusing the token pauses the campaign -------------------------------------------
def test_refused_token_pauses_without_failing_and_the_fixed_run_resumes(tmp_path, grid_csv, monkeypatch):
    token = tmp_path / "token"
    token.write_text("wrong\n")
    with LabService(grid_csv, "composition", {"target": "target"}, token="s3cret", seed=3,
                    measurement="overpotential") as lab:
        lab_oracle = {"name": "lab", "kind": "http", "cost": 1,
                      "settings": {"url": lab.url, "measurement": "overpotential", "properties": ["target"],
                                   "token_file": "token", "poll_interval_s": 0.1}}
        path = write_campaign(tmp_path, grid_csv, oracles=[lab_oracle], budget={"evaluations": 8})
        proc = matloop("run", str(path))
        no_traceback(proc)
        assert proc.returncode == 3, proc.stderr[-2000:]
        assert "refused the credentials" in proc.stderr and "token file token" in proc.stderr
        with sqlite3.connect(str(tmp_path / "store.sqlite")) as db:
            assert db.execute("SELECT COUNT(*) FROM observations").fetchone()[0] == 0  # nothing failed
        token.write_text("s3cret\n")
        proc = matloop("run", str(path))
        assert proc.returncode == 0, proc.stderr[-2000:]
        with sqlite3.connect(str(tmp_path / "store.sqlite")) as db:
            rows = db.execute("SELECT status, COUNT(*) FROM observations GROUP BY status").fetchall()
        assert rows == [("success", 8)] and lab.n_experiments_started == 8

        # a token source that holds nothing is an error before anything is sent
        token.unlink()
        fresh = write_campaign(tmp_path, grid_csv, oracles=[lab_oracle], store=str(tmp_path / "fresh.sqlite"))
        proc = matloop("run", str(fresh))
        no_traceback(proc)
        assert proc.returncode == 2 and f"token file {tmp_path / 'token'} is unreadable" in proc.stderr
        monkeypatch.delenv("MATLOOP_NO_SUCH_TOKEN", raising=False)
        env_oracle = {**lab_oracle, "settings": {**lab_oracle["settings"], "token_file": None,
                                                 "token_env": "MATLOOP_NO_SUCH_TOKEN"}}
        fresh = write_campaign(tmp_path, grid_csv, oracles=[env_oracle], store=str(tmp_path / "fresh.sqlite"))
        proc = matloop("run", str(fresh))
        assert proc.returncode == 2 and "MATLOOP_NO_SUCH_TOKEN holding the token is not set" in proc.stderr
        assert lab.n_posts == 8


# -- 12. the same picks whatever order results arrive in, and after a kill -----------------------
def _request_order(store: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(str(store)) as db:
        return db.execute("SELECT candidate_id, oracle FROM requests ORDER BY seq").fetchall()


def test_same_seed_same_picks_whatever_the_arrival_order_and_after_kill_and_resume(tmp_path, grid_csv, monkeypatch):
    monkeypatch.setenv("MATLOOP_TEST_LAB_TOKEN", "s3cret")
    orders = []
    for run, lab_seed in enumerate((1, 2, 3)):  # each lab finishes the experiments in another order
        folder = tmp_path / f"run{run}"
        folder.mkdir()
        with LabService(grid_csv, "composition", {"target": "target"}, token="s3cret", latency_s=(0.05, 0.6),
                        seed=lab_seed) as lab:
            path = write_campaign(
                folder, grid_csv, batch_size=4, budget={"evaluations": 12}, features={"composition": ["fractions"]},
                agent={"acquisition": {"kind": "thompson", "init": 4, "shortlist": 40}},  # draws every plan
                oracles=[{"name": "lab", "kind": "http", "cost": 1,
                          "settings": {"url": lab.url, "measurement": "m", "properties": ["target"],
                                       "token_env": "MATLOOP_TEST_LAB_TOKEN", "poll_interval_s": 0.02}}],
            )
            if run == 2:  # killed mid-iteration, then resumed
                run_and_kill_mid_iteration(path, folder / "store.sqlite", min_observations=5)
            proc = matloop("run", str(path), "--quiet")
            assert proc.returncode == 0, proc.stderr[-2000:]
        orders.append(_request_order(folder / "store.sqlite"))
    assert len(orders[0]) == 12
    assert orders[1] == orders[0]
    assert orders[2] == orders[0]


# -- 3. site jobs never run twice ------------------------------------------------------------------
SLOW_SCRIPT = """
import hashlib, json, sys, time
from pathlib import Path
with open(Path(__file__).with_name("starts.log"), "a") as f:
    f.write(sys.argv[1] + "\\n")
time.sleep(2.0)
digest = hashlib.sha256(open(sys.argv[1]).read().encode()).hexdigest()
json.dump({"score": int(digest[:6], 16) / 16**6}, open(sys.argv[2], "w"))
"""


def rocksalt_pool(folder: Path) -> Path:
    rows = ["composition,structure"]
    for a in ("Li", "Na", "K", "Rb"):
        for b in ("F", "Cl", "Br"):
            s = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.0), [a, b], [[0, 0, 0], [0.5, 0.5, 0.5]])
            cif = folder / f"{a}{b}.cif"
            s.to(filename=str(cif))
            rows.append(f"{a}{b},{cif}")
    pool = folder / "pool.csv"
    pool.write_text("\n".join(rows) + "\n")
    return pool


def test_command_jobs_are_adopted_after_kill_never_started_twice(tmp_path):
    pool = rocksalt_pool(tmp_path)
    (tmp_path / "slow.py").write_text(SLOW_SCRIPT)
    spec = {
        "name": "site", "seed": 2,
        "objective": {"property": "score", "goal": "maximize"},
        "sources": [{"kind": "file", "settings": {"path": "pool.csv", "composition_column": "composition",
                                                  "structure_column": "structure"}}],
        "features": {"composition": ["magpie"], "structure": []},
        "oracles": [{"name": "site", "kind": "command", "cost": 1, "timeout_s": 60,
                     "settings": {"command": [sys.executable, "{base_dir}/slow.py", "{structure}", "{output}"],
                                  "workdir": "jobs", "properties": ["score"]}}],
        "agent": {"acquisition": {"init": 3, "shortlist": 20}},
        "batch_size": 3, "budget": {"evaluations": 6}, "store": "store.sqlite", "executor": {"kind": "local", "workers": 3},
    }
    path = tmp_path / "campaign.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    store = tmp_path / "store.sqlite"
    at_kill = run_and_kill_mid_iteration(path, store, min_observations=1, timeout_s=240)
    assert len((tmp_path / "starts.log").read_text().split()) > at_kill  # scripts were running at the kill
    proc = matloop("run", str(path), "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    with sqlite3.connect(str(store)) as db:
        n_req = db.execute("SELECT COUNT(*) FROM requests").fetchone()[0]
        statuses = db.execute("SELECT status FROM observations").fetchall()
    starts = (tmp_path / "starts.log").read_text().split()
    assert n_req == len(statuses) == 6 and all(s == ("success",) for s in statuses)
    assert len(starts) == 6, starts  # each request's script started exactly once


# -- 11. timeouts on Dask workers ------------------------------------------------------------------
def test_oracle_timeout_is_enforced_on_dask_worker_threads(grid_csv):
    from matloop.loop.dask_executor import DaskExecutor
    from matloop.oracles.lookup import LookupOracle

    def lookup(latency_s: float) -> LookupOracle:
        settings = {"table": str(grid_csv), "key_column": "composition", "columns": {"target": "target"},
                    "latency_s": latency_s}
        return LookupOracle(name="table", settings=settings, timeout_s=1.5)

    cands = [Candidate.from_composition(c) for c in ("Fe0.5Ni0.5", "Co1")]
    reqs = [Request(Request.make_id(c.id, "table", 0), c, "table", 0) for c in cands]
    executor = DaskExecutor(workers=1)
    try:
        t0 = time.monotonic()
        hung = executor.submit(lookup(60.0), reqs[0]).result()  # a job that would hang for a minute
        waited = time.monotonic() - t0
        after = executor.submit(lookup(0.1), reqs[1]).result()  # the worker still takes jobs
    finally:
        executor.shutdown()
    assert hung.status == Status.FAILED and hung.reason == "timeout after 1.5 s"
    assert hung.extra["dask_worker"].startswith("tcp://")  # it ran (and timed out) on the worker
    assert waited < 20
    assert after.ok and after.properties["target"] == pytest.approx(0.94)


JOB_SCRIPT = """
import json, sys, time
from pathlib import Path
with open(Path(__file__).with_name("starts.log"), "a") as f:
    f.write(Path.cwd().name + "\\n")
time.sleep(6.0)
json.dump({"score": 0.5}, open(sys.argv[1], "w"))
"""


def test_command_job_of_a_killed_run_is_waited_for_or_failed_never_restarted(tmp_path):
    from matloop.oracles.lab import CommandOracle

    (tmp_path / "job.py").write_text(JOB_SCRIPT)
    settings = {"command": [sys.executable, "{base_dir}/job.py", "{output}"], "workdir": "jobs",
                "properties": ["score"]}
    make = ("from pymatgen.core import Lattice, Structure\n"
            "from matloop.core.records import Candidate, Request\n"
            "from matloop.oracles.lab import CommandOracle\n"
            "s = Structure.from_spacegroup('Fm-3m', Lattice.cubic(5.64), ['Na', 'Cl'], [[0, 0, 0], [0.5, 0.5, 0.5]])\n"
            "cand = Candidate.from_structure(s)\n"
            f"oracle = CommandOracle(name='site', settings={settings!r}, site={{'base_dir': {str(tmp_path)!r}}})\n")
    namespace: dict = {}
    exec(make, namespace)  # the same oracle and candidate, in the process that resumes
    oracle, cand = namespace["oracle"], namespace["cand"]
    starts = tmp_path / "starts.log"
    for rid in ("r-lost", "r-adopted"):
        runner = subprocess.Popen([sys.executable, "-c", make + f"oracle.run(Request({rid!r}, cand, 'site', 0))"])
        t_end = time.monotonic() + 120
        while rid not in (starts.read_text() if starts.exists() else "") and time.monotonic() < t_end:
            time.sleep(0.05)
        runner.kill()  # the run dies; its site script does not (own session)
        runner.wait()
        job = tmp_path / "jobs" / rid
        marker = json.loads((job / "job.json").read_text())
        assert marker["host"] == socket.gethostname() and marker["started_at"] <= time.time()
        if rid == "r-lost":
            os.killpg(int((job / "job.pid").read_text()), signal.SIGKILL)  # and the job is lost too

    assert not (tmp_path / "jobs" / "r-adopted" / "exit_status").exists()  # its script is still running
    adopted = oracle.run(Request("r-adopted", cand, "site", 0))
    assert adopted.ok and adopted.properties == {"score": 0.5}, adopted.reason
    lost = oracle.run(Request("r-lost", cand, "site", 0))
    assert lost.status == Status.FAILED and "ended without an exit status" in lost.reason
    assert "not started again" in lost.reason
    assert starts.read_text().split() == ["r-lost", "r-adopted"]  # each started once
