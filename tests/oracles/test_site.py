"""Site settings apart from science: every oracle built by the loop takes relative paths from the
campaign file's folder, whatever the working directory, and the site never enters the version."""

from __future__ import annotations

import json
import stat
import sys
import time
from pathlib import Path

import pytest
import yaml
from pymatgen.core import Lattice, Structure

from matloop.core.oracle import SiteSettings
from matloop.core.records import Candidate, Request
from matloop.loop.spec import load_campaign
from matloop.loop.tiers import build_oracles
from matloop.oracles.labsim import LabService

TOKEN = "relative-token"
DENSITY_SCRIPT = f"""#!{sys.executable}
import json, sys
from pymatgen.core import Structure
s = Structure.from_file(sys.argv[1])
json.dump({{"density_g_per_cm3": s.density}}, open(sys.argv[2], "w"))
"""


def make_request(candidate: Candidate, oracle: str) -> Request:
    return Request(id=Request.make_id(candidate.id, oracle, 0), candidate=candidate, oracle=oracle, iteration=0)


@pytest.fixture
def campaign_dir(tmp_path) -> Path:
    """A campaign folder whose files are named relative to it: table, token, robot folders, a script."""
    folder = tmp_path / "campaign"
    (folder / "bin").mkdir(parents=True)
    (folder / "pool.csv").write_text("composition,gap\nNaCl,8.5\nMgO,7.8\n")
    (folder / "token.txt").write_text(TOKEN + "\n")
    (folder / "refs.csv").write_text("formula,energy_per_atom\nNaCl,-3.5\n")
    script = folder / "bin" / "density.py"
    script.write_text(DENSITY_SCRIPT)
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return folder


def write_spec(folder: Path, lab_url: str, **site) -> Path:
    spec = {
        "name": "relative-paths",
        "objective": {"property": "gap_ev", "goal": "maximize", "oracle": "table"},
        "sources": [{"kind": "file", "settings": {"path": "pool.csv", "composition_column": "composition"}}],
        "oracles": [
            {"name": "table", "kind": "lookup", "settings": {"table": "pool.csv", "columns": {"gap_ev": "gap"}}},
            {"name": "lab", "kind": "http", "settings": {"url": lab_url, "measurement": "uv-vis",
                                                       "properties": ["gap_ev"], "token_file": "token.txt",
                                                       "poll_interval_s": 0.0, "retries": 0, "budget_s": 3.0}},
            {"name": "robot", "kind": "folder",
             "settings": {"outbox": "robot/out", "inbox": "robot/in", "properties": ["gap_ev"], "settle_s": 0.0}},
            {"name": "site-script", "kind": "command",
             "settings": {"command": ["bin/density.py", "{structure}", "{output}"], "workdir": "jobs",
                          "properties": ["density_g_per_cm3"]}},
            {"name": "mlip", "kind": "mlip", "settings": {"references": "refs.csv"}, **({"site": site} if site else {})},
        ],
        "budget": {"evaluations": 4},
        "store": "store.sqlite",
        "executor": {"kind": "inline"},
    }
    path = folder / "campaign.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.fixture
def elsewhere(tmp_path, monkeypatch) -> Path:
    """Run from a folder that is not the campaign's."""
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


@pytest.fixture(scope="module")
def nacl() -> Candidate:
    s = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    return Candidate.from_structure(s)


def test_every_oracle_gets_the_campaign_folder_as_base_dir(campaign_dir, elsewhere):
    spec = load_campaign(write_spec(campaign_dir, "http://127.0.0.1:9"))
    oracles = build_oracles(spec)
    assert {o.site.base_dir for o in oracles.values()} == {campaign_dir.resolve()}
    assert oracles["table"].table_path == campaign_dir.resolve() / "pool.csv"
    assert [(e.formula, e.energy_ev_per_atom) for e in oracles["mlip"].reference_entries()] == [("NaCl", -3.5)]


def test_relative_token_file_from_another_working_directory(campaign_dir, elsewhere, nacl):
    table = campaign_dir / "pool.csv"
    with LabService(table, "composition", {"gap_ev": "gap"}, TOKEN) as service:
        oracle = build_oracles(load_campaign(write_spec(campaign_dir, service.url)))["lab"]
        handles = oracle.submit([make_request(Candidate.from_composition("NaCl"), "lab")], executor=None)
        deadline = time.monotonic() + 10
        while not oracle.poll(handles) and time.monotonic() < deadline:
            time.sleep(0.05)
    (obs,) = oracle.collect(handles)
    assert obs.ok, obs.reason or handles[0].last_error
    assert obs.properties == {"gap_ev": 8.5}


def test_relative_robot_folders_from_another_working_directory(campaign_dir, elsewhere, nacl):
    oracle = build_oracles(load_campaign(write_spec(campaign_dir, "http://127.0.0.1:9")))["robot"]
    request = make_request(nacl, "robot")
    (h,) = oracle.submit([request], executor=None)
    assert (campaign_dir / "robot" / "out" / f"{request.id}.json").is_file()
    assert not list(elsewhere.iterdir())  # nothing written where the loop happened to run
    (campaign_dir / "robot" / "in" / f"{request.id}.json").write_text(json.dumps({"gap_ev": 8.4}))
    (obs,) = oracle.collect(oracle.poll([h]))
    assert obs.ok and obs.properties == {"gap_ev": 8.4}


def test_relative_command_executable_from_another_working_directory(campaign_dir, elsewhere, nacl):
    oracle = build_oracles(load_campaign(write_spec(campaign_dir, "http://127.0.0.1:9")))["site-script"]
    obs = oracle.run(make_request(nacl, "site-script"))
    assert obs.ok, obs.reason
    assert obs.properties["density_g_per_cm3"] == pytest.approx(nacl.pmg_structure().density, rel=1e-6)
    assert Path(obs.extra["job_dir"]).parent == campaign_dir.resolve() / "jobs"
    assert not list(elsewhere.iterdir())


def test_site_from_yaml_reaches_the_oracle_and_not_its_version(campaign_dir, elsewhere):
    plain = build_oracles(load_campaign(write_spec(campaign_dir, "http://127.0.0.1:9")))["mlip"]
    sited = build_oracles(load_campaign(write_spec(campaign_dir, "http://127.0.0.1:9", device="cpu", torch_threads=2,
                                                   cache_dir="cache")))["mlip"]
    assert (sited.site.device, sited.site.torch_threads) == ("cpu", 2)
    assert sited.site.cache_folder("mlip-references") == campaign_dir.resolve() / "cache" / "mlip-references"
    assert sited.version == plain.version


def test_site_settings_resolve_paths():
    site = SiteSettings(base_dir=Path("/data/campaign"))
    assert site.resolve("a/b.csv") == Path("/data/campaign/a/b.csv")
    assert site.resolve("/abs/t.csv") == Path("/abs/t.csv")
    assert site.resolve("~/t.csv") == Path.home() / "t.csv"
    assert SiteSettings().cache_folder("gpaw") == Path.home() / ".cache" / "matloop" / "gpaw"
    with pytest.raises(ValueError):
        SiteSettings(device="tpu")
    with pytest.raises(ValueError):
        SiteSettings(threads=2)


def test_generator_paths_are_taken_from_the_campaign_folder(campaign_dir, elsewhere):
    """A relative ase-db path in a generator source resolves against the campaign file's folder."""
    import ase.db
    from ase.build import bulk

    from matloop.loop.generation import GeneratorSources

    with ase.db.connect(str(campaign_dir / "known.db")) as db:
        db.write(bulk("NaCl", "rocksalt", a=5.64))
    path = write_spec(campaign_dir, "http://127.0.0.1:9")
    spec = yaml.safe_load(path.read_text())
    spec["sources"].append({"name": "db", "kind": "ase-db", "settings": {"path": "known.db"}, "n_initial": 1})
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    sources = GeneratorSources(load_campaign(path), scoreboard=None, say=lambda text: None)
    [(_, generator)] = sources.sources
    assert generator.path == campaign_dir.resolve() / "known.db"
