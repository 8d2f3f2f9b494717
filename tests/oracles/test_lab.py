"""Lab oracles against real components: an HTTP lab on loopback, real folders, real processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from pydantic import ValidationError
from pymatgen.core import Lattice, Structure

from matloop.oracles.lab import CommandOracle, FolderOracle, HttpOracle, LabHandle
from matloop.oracles.labsim import FAILURE_REASONS, LabService
from matloop.core.records import CampaignPaused, Candidate, Request, Status
from matloop.core.registry import oracle_class

TABLE = {"Fe2O3": 2.1, "NiO": 3.7, "ZnO": 3.3, "TiO2": 3.0, "MgO": 7.8, "CuO": 1.4}
TOKEN = "s3cret-token"


def make_request(candidate: Candidate, oracle: str = "lab") -> Request:
    return Request(id=Request.make_id(candidate.id, oracle, 0), candidate=candidate, oracle=oracle, iteration=0)


@pytest.fixture(scope="module")
def nacl() -> Candidate:
    """Rock-salt NaCl (8 atoms), built once: the first symmetry analysis is slow to import."""
    structure = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    return Candidate.from_structure(structure)


@pytest.fixture
def table(tmp_path) -> Path:
    path = tmp_path / "lab.csv"
    lines = ["composition,gap,gap_sd"] + [f"{f},{v},0.1" for f, v in TABLE.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def token_file(tmp_path) -> Path:
    path = tmp_path / "token.txt"
    path.write_text(TOKEN + "\n")
    return path


def lab(table, **kw) -> LabService:
    kw.setdefault("uncertainty_columns", {"gap_ev": "gap_sd"})
    return LabService(table, "composition", {"gap_ev": "gap"}, TOKEN, **kw)


def http_oracle(url: str, **settings) -> HttpOracle:
    base = {"url": url, "measurement": "uv-vis", "properties": ["gap_ev"], "poll_interval_s": 0.0,
            "retries": 1, "backoff_s": 0.01, "timeout_s": 2.0, "budget_s": 3.0}
    return HttpOracle(name="lab", settings={**base, **settings}, cost=5.0, fidelity=2)


def wait_all(oracle, handles: list[LabHandle], limit_s: float = 10.0) -> list:
    """Poll until every handle is ready; observations in arrival order."""
    arrived, seen = [], set()
    t_end = time.monotonic() + limit_s
    while len(seen) < len(handles) and time.monotonic() < t_end:
        for obs in oracle.collect(oracle.poll(handles)):
            if obs.request_id not in seen:
                seen.add(obs.request_id)
                arrived.append(obs)
        time.sleep(0.02)
    assert len(seen) == len(handles), [h.last_error for h in handles if not h.done()]
    return arrived


# -- http ---------------------------------------------------------------------------------------
def test_http_results_arrive_eventually_and_out_of_order(table, token_file):
    requests = [make_request(Candidate.from_composition(f)) for f in TABLE]
    with lab(table, latency_s=(0.05, 0.8), seed=3) as service:
        oracle = http_oracle(service.url, token_file=str(token_file))
        handles = oracle.submit(requests, executor=None)
        assert service.n_experiments_started == len(requests)
        assert oracle.poll(handles) == []  # nothing is ready at once
        arrived = wait_all(oracle, handles)
    submitted_order = [r.id for r in requests]
    assert [h.request.id for h in sorted(handles, key=lambda h: h.finished_at)] != submitted_order
    assert [o.request_id for o in arrived] != submitted_order
    by_id = {h.request.id: h for h in handles}
    for obs in arrived:
        assert obs.status == Status.SUCCESS
        formula = by_id[obs.request_id].request.candidate.formula
        assert obs.properties == {"gap_ev": TABLE[formula]}
        assert obs.uncertainties == {"gap_ev": 0.1}
        assert (obs.oracle, obs.oracle_version, obs.fidelity, obs.cost) == ("lab", oracle.version, 2, 5.0)
        assert 0.05 <= obs.wall_time_s <= 0.8


def test_http_resubmission_after_crash_starts_no_second_experiment(table, token_file):
    requests = [make_request(Candidate.from_composition(f)) for f in list(TABLE)[:4]]
    with lab(table, latency_s=(0.2, 0.4), seed=0) as service:
        first = http_oracle(service.url, token_file=str(token_file)).submit(requests, executor=None)
        assert service.n_experiments_started == 4
        submitted_at = {h.request.id: h.submitted_at for h in first}
        # crash: the handles are lost; a fresh oracle object resubmits the stored requests
        resumed = http_oracle(service.url, token_file=str(token_file))
        handles = resumed.submit(requests, executor=None)
        assert service.n_posts == 8
        assert service.n_experiments_started == 4
        assert {h.request.id: h.submitted_at for h in handles} == submitted_at  # the lab's original times
        arrived = wait_all(resumed, handles)
        assert service.n_experiments_started == 4
    assert all(o.ok for o in arrived)
    assert all(o.wall_time_s >= 0.2 for o in arrived)


def test_http_unauthenticated_requests_are_refused(table, monkeypatch):
    requests = [make_request(Candidate.from_composition(f)) for f in ("NiO", "ZnO")]
    with lab(table) as service:
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"{service.url}/requests/anything", timeout=2)
        assert err.value.code == 401
        no_token = http_oracle(service.url)
        monkeypatch.setenv("MATLOOP_TEST_LAB_TOKEN", "wrong-token")
        wrong_token = http_oracle(service.url, token_env="MATLOOP_TEST_LAB_TOKEN")
        for oracle in (no_token, wrong_token):  # a refused token pauses the campaign; it fails no request
            with pytest.raises(CampaignPaused, match=r"refused the credentials .*HTTP 401.*run again"):
                oracle.submit(requests, executor=None)
        assert service.n_unauthorised == 3  # one probe above, then the first request of each oracle
        assert service.n_experiments_started == 0
        monkeypatch.setenv("MATLOOP_TEST_LAB_TOKEN", TOKEN)  # fixed: the same requests are asked and answered
        handles = wrong_token.submit(requests, executor=None)
        assert all(o.ok for o in wait_all(wrong_token, handles))


def test_http_missing_token_leaves_requests_pending_until_it_appears(table, tmp_path):
    requests = [make_request(Candidate.from_composition("MgO"))]
    token_path = tmp_path / "later-token.txt"
    with lab(table) as service:
        oracle = http_oracle(service.url, token_file=str(token_path))
        handles = oracle.submit(requests, executor=None)
        assert not handles[0].submitted and "unreadable" in handles[0].last_error
        assert oracle.poll(handles) == [] and service.n_posts == 0  # the lab is not even asked
        token_path.write_text(TOKEN)
        (obs,) = wait_all(oracle, handles)
    assert obs.ok and obs.properties == {"gap_ev": TABLE["MgO"]}


def test_http_injected_failures_become_failed_observations(table, token_file):
    formulas = list(TABLE) + ["Al2O3"]  # Al2O3 is not in the lab's table
    requests = [make_request(Candidate.from_composition(f)) for f in formulas]
    with lab(table, failure_rate=0.5, seed=1) as service:
        oracle = http_oracle(service.url, token_file=str(token_file))
        observations = wait_all(oracle, oracle.submit(requests, executor=None))
    by_formula = {r.candidate.formula: o for r in requests for o in observations if o.request_id == r.id}
    failed = [o for o in observations if not o.ok]
    assert any(o.ok for o in observations) and len(failed) >= 2
    for obs in failed:
        assert obs.reason.startswith("lab reported failure: ")
        assert obs.cost == 5.0  # the experiment ran
    assert not by_formula["Al2O3"].ok
    random_failures = [o for o in failed if o.reason[len("lab reported failure: "):] in FAILURE_REASONS]
    assert len(random_failures) >= 1


def test_http_malformed_result_is_a_failed_observation(table, token_file):
    with lab(table) as service:  # the lab reports gap_ev; this oracle expects something else
        oracle = http_oracle(service.url, token_file=str(token_file), properties=["density_g_cm3"])
        (obs,) = wait_all(oracle, oracle.submit([make_request(Candidate.from_composition("ZnO"))], executor=None))
    assert obs.status == Status.FAILED
    assert "malformed result" in obs.reason and "density_g_cm3" in obs.reason


def test_http_lab_down_stays_pending_then_recovers_after_lab_restart(table, token_file):
    requests = [make_request(Candidate.from_composition(f)) for f in ("NiO", "CuO", "TiO2")]
    service = lab(table, latency_s=(0.5, 1.0)).start()
    port = service.port
    oracle = http_oracle(service.url, token_file=str(token_file), budget_s=2.0)
    handles = oracle.submit(requests, executor=None)
    assert all(h.submitted for h in handles)
    service.stop()  # the lab goes down
    t0 = time.monotonic()
    assert oracle.poll(handles) == []
    assert time.monotonic() - t0 < 2.5
    assert all(not h.done() for h in handles)
    assert "unreachable" in handles[0].last_error
    # it comes back on the same address but has lost its records: the oracle resubmits (404)
    with lab(table, port=port) as restarted:
        arrived = wait_all(oracle, handles)
        assert restarted.n_experiments_started == 3
    assert all(o.ok for o in arrived)


def test_http_poll_is_bounded_when_the_lab_hangs(tmp_path, token_file):
    import socket

    with socket.socket() as hung:  # accepts connections (backlog) but never answers
        hung.bind(("127.0.0.1", 0))
        hung.listen(8)
        url = f"http://127.0.0.1:{hung.getsockname()[1]}"
        oracle = http_oracle(url, token_file=str(token_file), timeout_s=30.0, retries=3, budget_s=1.0)
        requests = [make_request(Candidate.from_composition(f)) for f in ("NiO", "ZnO")]
        t0 = time.monotonic()
        handles = oracle.submit(requests, executor=None)
        assert oracle.poll(handles) == []
        assert time.monotonic() - t0 < 3.5  # two calls of at most budget_s each
    assert all(not h.submitted for h in handles)
    assert "timed out" in handles[0].last_error and "not tried" in handles[1].last_error


def test_labsim_runs_as_a_module(table, token_file):
    proc = subprocess.Popen(
        [sys.executable, "-m", "matloop.oracles.labsim", "--table", str(table), "--key-column", "composition",
         "--column", "gap_ev=gap", "--token-file", str(token_file), "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("lab service on http://127.0.0.1:"), proc.stderr.read() if not line else line
        oracle = http_oracle(line.split()[-1], token_file=str(token_file))
        (obs,) = wait_all(oracle, oracle.submit([make_request(Candidate.from_composition("CuO"))], executor=None))
        assert obs.ok and obs.properties == {"gap_ev": TABLE["CuO"]}
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_http_settings_are_validated():
    with pytest.raises(ValidationError):
        HttpOracle(settings={"url": "ftp://lab", "measurement": "x", "properties": ["a"]})
    with pytest.raises(ValidationError):  # the token itself never goes into settings
        HttpOracle(settings={"url": "http://lab", "measurement": "x", "properties": ["a"], "token": "t"})


# -- folder -------------------------------------------------------------------------------------
def folder_oracle(tmp_path, **settings) -> FolderOracle:
    base = {"outbox": "outbox", "inbox": "inbox", "properties": ["gap_ev"], "settle_s": 60.0}
    (tmp_path / "inbox").mkdir(exist_ok=True)
    return FolderOracle(name="robot", settings={**base, **settings}, site={"base_dir": tmp_path}, cost=2.0)


def write_result(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(text)
    os.replace(tmp, path)


def test_folder_request_files_valid_result_and_idempotent_resubmission(tmp_path, nacl):
    oracle = folder_oracle(tmp_path)
    request = make_request(nacl)
    (h,) = oracle.submit([request], executor=None)
    request_file = tmp_path / "outbox" / f"{request.id}.json"
    assert sorted(p.name for p in (tmp_path / "outbox").iterdir()) == [".matloop-sent", request_file.name]
    sent = json.loads(request_file.read_text())
    assert sent["idempotency_key"] == request.id and sent["candidate_id"] == request.candidate.id
    assert (sent["formula"], sent["properties"]) == ("NaCl", ["gap_ev"])
    assert Structure.from_str(sent["structure_cif"], fmt="cif").composition.reduced_formula == "NaCl"
    assert oracle.poll([h]) == []

    # crash; the robot has already taken the request file away; a fresh oracle resubmits
    request_file.unlink()
    (h2,) = folder_oracle(tmp_path).submit([request], executor=None)
    assert not request_file.exists()
    assert h2.submitted and h2.submitted_at == h.submitted_at

    write_result(tmp_path / "inbox" / f"{request.id}.json",
                 json.dumps({"properties": {"gap_ev": 8.5}, "uncertainties": {"gap_ev": 0.2}}))
    (obs,) = oracle.collect(oracle.poll([h2]))
    assert obs.ok and obs.properties == {"gap_ev": 8.5} and obs.uncertainties == {"gap_ev": 0.2}
    assert (obs.oracle, obs.oracle_version, obs.cost) == ("robot", oracle.version, 2.0)
    assert obs.wall_time_s >= 0.0


def test_folder_malformed_results_are_failed_with_the_file_named(tmp_path):
    oracle = folder_oracle(tmp_path, settle_s=0.0)
    r1, r2, r3 = (make_request(Candidate.from_composition(f)) for f in ("NiO", "ZnO", "CuO"))
    handles = oracle.submit([r1, r2, r3], executor=None)
    inbox = tmp_path / "inbox"
    write_result(inbox / f"{r1.id}.json", json.dumps({"properties": {"band_gap": 1.0}}))  # wrong name
    write_result(inbox / f"{r2.id}.json", "gap_ev: 3.3\n")  # not JSON, settled
    write_result(inbox / f"{r3.id}.json", json.dumps({"status": "failed", "reason": "furnace fault"}))
    observations = {o.request_id: o for o in oracle.collect(oracle.poll(handles))}
    assert len(observations) == 3 and not any(o.ok for o in observations.values())
    assert str(inbox / f"{r1.id}.json") in observations[r1.id].reason and "gap_ev" in observations[r1.id].reason
    assert observations[r2.id].reason.startswith(f"malformed result file {inbox / f'{r2.id}.json'}: does not parse")
    assert "furnace fault" in observations[r3.id].reason


def test_folder_partial_results_stay_pending_until_complete(tmp_path):
    oracle = folder_oracle(tmp_path)
    r1, r2 = (make_request(Candidate.from_composition(f)) for f in ("NiO", "ZnO"))
    h1, h2 = oracle.submit([r1, r2], executor=None)
    inbox = tmp_path / "inbox"
    (inbox / f"{r1.id}.json.part").write_text('{"gap_ev": 3.7}')  # robot still writing, by name
    (inbox / f"{r2.id}.json").write_text('{"properties": {"gap_e')  # being written in place
    assert oracle.poll([h1, h2]) == []
    assert ".part" in h1.last_error
    assert "still being written" in h2.last_error
    os.replace(inbox / f"{r1.id}.json.part", inbox / f"{r1.id}.json")
    (inbox / f"{r2.id}.json").write_text('{"properties": {"gap_ev": 3.3}}')
    observations = {o.request_id: o for o in oracle.collect(oracle.poll([h1, h2]))}
    assert observations[r1.id].properties == {"gap_ev": 3.7}
    assert observations[r2.id].properties == {"gap_ev": 3.3}


def test_folder_csv_protocol(tmp_path, nacl):
    import csv

    oracle = folder_oracle(tmp_path, format="csv", cif="file")
    request = make_request(nacl)
    (h,) = oracle.submit([request], executor=None)
    (row,) = csv.DictReader((tmp_path / "outbox" / f"{request.id}.csv").open())
    assert row["idempotency_key"] == request.id and row["structure_cif"] == ""
    assert Structure.from_file(row["structure_cif_path"]).composition.reduced_formula == "NaCl"
    result = tmp_path / "inbox" / f"{request.id}.csv"
    result.write_text("gap_ev,gap_ev_std\n8.4,0.3")  # no final newline: the last row may be cut off
    assert oracle.poll([h]) == [] and "newline" in h.last_error
    result.write_text("gap_ev,gap_ev_std\n8.45,0.3\n")
    (obs,) = oracle.collect(oracle.poll([h]))
    assert obs.properties == {"gap_ev": 8.45} and obs.uncertainties == {"gap_ev": 0.3}


# -- command ------------------------------------------------------------------------------------
DENSITY_SCRIPT = """
import json, sys
from pymatgen.core import Structure
s = Structure.from_file(sys.argv[1])
result = {"properties": {"density_g_cm3": s.density}, "uncertainties": {"density_g_cm3": 0.01}}
json.dump(result, open(sys.argv[2], "w"))
print("computed density")
"""
POSCAR_SCRIPT = """
import json, sys
lines = open(sys.argv[1]).read().splitlines()
json.dump({"n_atoms": sum(int(x) for x in lines[6].split())}, open("out.json", "w"))
"""
FAIL_SCRIPT = "import sys; print('segmentation fault in vasp', file=sys.stderr); sys.exit(3)"
SLEEP_SCRIPT = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
open(sys.argv[1], "w").write(f"{child.pid}")
time.sleep(60)
"""


def command_oracle(tmp_path, script: str, args: list[str], **settings) -> CommandOracle:
    (tmp_path / "job.py").write_text(script)
    base = {"command": [sys.executable, "{base_dir}/job.py", *args], "workdir": "jobs", "properties": ["density_g_cm3"]}
    return CommandOracle(name="site", settings={**base, **settings}, site={"base_dir": tmp_path})


def test_command_oracle_runs_the_script_on_a_cif(tmp_path, nacl):
    structure = nacl.pmg_structure()
    request = make_request(nacl, oracle="site")
    oracle = command_oracle(tmp_path, DENSITY_SCRIPT, ["{structure}", "{output}"])
    obs = oracle.run(request)
    assert obs.ok, obs.reason
    assert obs.properties["density_g_cm3"] == pytest.approx(structure.density, rel=1e-6)
    assert obs.uncertainties == {"density_g_cm3": 0.01}
    job = tmp_path / "jobs" / request.id
    assert obs.extra["job_dir"] == str(job.resolve())
    assert (job / "structure.cif").exists() and "computed density" in (job / "stdout.log").read_text()


def test_command_oracle_writes_poscar_and_reads_a_flat_dict(tmp_path, nacl):
    structure = nacl.pmg_structure()
    oracle = command_oracle(tmp_path, POSCAR_SCRIPT, ["{structure}"], structure_format="poscar",
                            properties=["n_atoms"], output="out.json")
    obs = oracle.run(make_request(nacl, oracle="site"))
    assert obs.ok, obs.reason
    assert obs.properties == {"n_atoms": float(len(structure))}


def test_command_oracle_failing_command_is_a_failed_observation(tmp_path, nacl):
    request = make_request(nacl, oracle="site")
    obs = command_oracle(tmp_path, FAIL_SCRIPT, []).run(request)
    assert obs.status == Status.FAILED
    log = tmp_path / "jobs" / request.id / "stderr.log"
    assert "exited with code 3" in obs.reason and str(log.resolve()) in obs.reason
    assert "segmentation fault in vasp" in obs.reason


@pytest.mark.parametrize("script, expected", [
    ("pass", "wrote no"),
    ("open('result.json', 'w').write('{\"density_g_cm3\": ')", "malformed output"),
    ("open('result.json', 'w').write('{\"density_g_cm3\": \"high\"}')", "not a number"),
])
def test_command_oracle_missing_or_malformed_output(tmp_path, nacl, script, expected):
    obs = command_oracle(tmp_path, script, []).run(make_request(nacl, oracle="site"))
    assert obs.status == Status.FAILED and expected in obs.reason and "stdout.log" in obs.reason


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"  # a killed, not yet reaped process is a zombie


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_command_oracle_timeout_kills_the_process_group(tmp_path, nacl):
    pid_file = tmp_path / "grandchild.pid"
    oracle = command_oracle(tmp_path, SLEEP_SCRIPT, [str(pid_file)], timeout_s=2.0)
    t0 = time.monotonic()
    obs = oracle.run(make_request(nacl, oracle="site"))
    assert time.monotonic() - t0 < 10
    assert obs.status == Status.FAILED and "timed out after 2 s" in obs.reason
    grandchild = int(pid_file.read_text())
    t_end = time.monotonic() + 5
    while _alive(grandchild) and time.monotonic() < t_end:
        time.sleep(0.05)
    assert not _alive(grandchild)


def test_command_oracle_needs_a_structure(tmp_path):
    request = make_request(Candidate.from_composition("NaCl"), oracle="site")
    obs = command_oracle(tmp_path, DENSITY_SCRIPT, []).run(request)
    assert obs.status == Status.FAILED and "needs a structure" in obs.reason
    assert not (tmp_path / "jobs").exists()


def test_lab_oracles_are_registered():
    assert oracle_class("http") is HttpOracle
    assert oracle_class("folder") is FolderOracle
    assert oracle_class("command") is CommandOracle
