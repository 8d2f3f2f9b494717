"""Oracle plug-ins from other distributions, found through entry points; campaign YAML can
name them but cannot construct Python objects.

The demo plug-in (tests/plugins/matloop_demo_plugin) is built and installed by pip into a
temporary folder, and used from subprocesses that put that folder on PYTHONPATH: a real
installed distribution, seen by ``importlib.metadata`` like any other.
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .helpers import write_campaign

PLUGIN_SRC = Path(__file__).resolve().parents[1] / "plugins" / "matloop_demo_plugin"
MATLOOP_SCRIPT = Path(sys.executable).parent / "matloop"


def _pip_install(src: Path, target: Path) -> None:
    if importlib.util.find_spec("pip") is None or importlib.util.find_spec("setuptools") is None:
        pytest.skip("pip and setuptools are needed in this environment to build the demo plug-in offline")
    # build from a copy: setuptools writes build/ and *.egg-info beside the sources
    work = target.parent / (target.name + "-src")
    shutil.copytree(src, work)
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    res = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--target", str(target), str(work)],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("plugin") / "site"
    _pip_install(PLUGIN_SRC, target)
    assert list(target.glob("matloop_demo_plugin-0.1.0.dist-info/entry_points.txt"))
    return target


@pytest.fixture(scope="module")
def twin_dir(tmp_path_factory) -> Path:
    """A second distribution (another name, another module) claiming the same oracle name."""
    src = tmp_path_factory.mktemp("twin") / "matloop_demo_plugin_twin"
    src.mkdir()
    (src / "matloop_demo_plugin_twin.py").write_text((PLUGIN_SRC / "matloop_demo_plugin.py").read_text())
    toml = (PLUGIN_SRC / "pyproject.toml").read_text()
    toml = toml.replace('name = "matloop-demo-plugin"', 'name = "matloop-demo-plugin-twin"')
    toml = toml.replace('"matloop_demo_plugin:DensityOracle"', '"matloop_demo_plugin_twin:DensityOracle"')
    toml = toml.replace('py-modules = ["matloop_demo_plugin"]', 'py-modules = ["matloop_demo_plugin_twin"]')
    assert toml.count("matloop_demo_plugin_twin") == 2 and "matloop-demo-plugin-twin" in toml
    (src / "pyproject.toml").write_text(toml)
    target = src.parent / "site"
    _pip_install(src, target)
    return target


def _run(args, *paths: Path, cwd=None):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(p) for p in paths)}
    return subprocess.run(args, capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


def _matloop(*args, paths=(), cwd=None):
    cmd = [str(MATLOOP_SCRIPT)] if MATLOOP_SCRIPT.exists() else [sys.executable, "-m", "matloop.loop.cli"]
    return _run([*cmd, *map(str, args)], *paths, cwd=cwd)


@pytest.fixture(scope="module")
def mgo_cif(tmp_path_factory) -> tuple[Path, float]:
    from pymatgen.core import Lattice, Structure

    s = Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.212), ["Mg", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    folder = tmp_path_factory.mktemp("cifs")
    path = folder / "MgO.cif"
    s.to(filename=str(path))
    return path, float(s.density)


def _density_campaign(tmp_path, mgo_cif, prop="density_g_per_cm3"):
    path, _ = mgo_cif
    return write_campaign(
        tmp_path, path,
        objective={"property": prop, "goal": "maximize"},
        sources=[{"kind": "file", "settings": {"path": str(path.parent), "format": "cif_dir"}}],
        oracles=[{"name": "density", "kind": "demo-density", "cost": 1}],
        budget={"evaluations": 1},
    )


def test_registry_loads_installed_plugin(plugin_dir):
    code = (
        "from matloop.core.registry import oracle_class, names\n"
        "cls = oracle_class('demo-density')\n"
        "print(cls.__module__, cls.__name__, cls.kind, list(cls.properties), 'demo-density' in names('matloop.oracles'))"
    )
    res = _run([sys.executable, "-c", code], plugin_dir)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["matloop_demo_plugin", "DensityOracle", "demo-density", "['density_g_per_cm3']", "True"]
    # without the install folder on the path the name is unknown: it came from the distribution
    res = _run([sys.executable, "-c", code])
    assert res.returncode != 0 and "unknown oracle kind 'demo-density'" in res.stderr


def test_evaluate_prints_density(plugin_dir, mgo_cif):
    path, density = mgo_cif
    res = _matloop("evaluate", "--oracle", "demo-density", path, paths=[plugin_dir])
    assert res.returncode == 0, res.stdout + res.stderr
    out = json.loads(res.stdout)
    assert out["status"] == "success" and out["formula"] == "MgO"
    assert out["properties"]["density_g_per_cm3"] == pytest.approx(density, rel=1e-9)
    assert 3.5 < density < 3.7  # rock-salt MgO, a = 4.212 angstrom
    assert out["properties_units"] == {"density_g_per_cm3": "g/cm^3"}


def test_campaign_naming_plugin_validates(plugin_dir, mgo_cif, tmp_path):
    res = _matloop("validate", _density_campaign(tmp_path, mgo_cif), paths=[plugin_dir])
    assert res.returncode == 0, res.stdout + res.stderr
    assert "OK" in res.stdout
    # the plug-in's declared properties are checked against the objective
    (tmp_path / "bad").mkdir()
    res = _matloop("validate", _density_campaign(tmp_path / "bad", mgo_cif, prop="gap_ev"), paths=[plugin_dir])
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "does not report 'gap_ev'" in res.stderr and "density_g_per_cm3" in res.stderr


def test_duplicate_name_from_two_distributions_is_an_error(plugin_dir, twin_dir, mgo_cif, tmp_path):
    code = (
        "from matloop.core.registry import RegistryError, oracle_class\n"
        "try:\n"
        "    oracle_class('demo-density')\n"
        "except RegistryError as exc:\n"
        "    print('RegistryError:', exc)\n"
    )
    res = _run([sys.executable, "-c", code], plugin_dir, twin_dir)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("RegistryError: duplicate matloop.oracles name 'demo-density'")
    assert "matloop_demo_plugin:DensityOracle" in res.stdout and "matloop_demo_plugin_twin:DensityOracle" in res.stdout
    # each alone is fine
    res = _run([sys.executable, "-c", code], twin_dir)
    assert res.returncode == 0 and res.stdout == ""
    # and a campaign naming it reports the clash instead of picking one
    res = _matloop("validate", _density_campaign(tmp_path, mgo_cif), paths=[plugin_dir, twin_dir])
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "duplicate matloop.oracles name 'demo-density'" in res.stderr


@pytest.mark.parametrize("command", ["validate", "run"])
def test_yaml_python_tags_refused(tmp_path, grid_csv, command):
    marker = tmp_path / "pwned"
    good = yaml.safe_load(write_campaign(tmp_path, grid_csv).read_text())
    text = yaml.safe_dump(good, sort_keys=False)
    text = text.replace("name: grid", f"name: !!python/object/apply:os.system ['touch {marker}']", 1)
    text += "extra: !!python/object:matloop.oracles.lookup.LookupOracle {name: x}\n"
    path = tmp_path / "evil.yaml"
    path.write_text(text)
    res = _matloop(command, path)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    assert str(path) in res.stderr and "python/object/apply:os.system" in res.stderr
    assert not marker.exists()
    assert not (tmp_path / "store.sqlite").exists()
