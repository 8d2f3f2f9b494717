"""MLIP relaxation oracle (CHGNet by default): formation energies against Materials Project, hulls,
failures, the model setting and its older spellings, site settings apart from the version."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

pytest.importorskip("chgnet")

from pymatgen.core import Lattice, Structure  # noqa: E402

from matloop.core.oracle import SiteSettings  # noqa: E402
from matloop.core.records import Candidate, InputError, OracleError, Request, Status  # noqa: E402
from matloop.core.registry import oracle_class  # noqa: E402
from matloop.oracles import mlip  # noqa: E402
from matloop.oracles.mlip import (  # noqa: E402
    MlipOracle,
    formation_energy_ev_per_atom,
    hull_energies,
    load_reference_entries,
)

MP_FORMATION_CSV = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "mp" / "mp-formation.csv"

# Materials Project formation energies (eV/atom) of the ground states, mp-22862 (NaCl) and
# mp-1265 (MgO); neither is in the shared mp-formation.csv subset.
MP_NACL = -2.10
MP_MGO = -3.05


def rocksalt(a: str, b: str, lattice_a: float) -> Structure:
    s = Structure.from_spacegroup("Fm-3m", Lattice.cubic(lattice_a), [a, b], [[0, 0, 0], [0.5, 0.5, 0.5]])
    return s.get_primitive_structure()


def antifluorite(cation: str, anion: str, lattice_a: float) -> Structure:
    s = Structure.from_spacegroup("Fm-3m", Lattice.cubic(lattice_a), [anion, cation], [[0, 0, 0], [0.25, 0.25, 0.25]])
    return s.get_primitive_structure()


def request(structure: Structure) -> Request:
    return Request("r-test", Candidate.from_structure(structure, source="test"), "mlip", 0)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    """The site's cache root; the MLIP references go to its mlip-references subfolder."""
    return tmp_path_factory.mktemp("mlip-cache")


@pytest.fixture(scope="module")
def site(cache_dir) -> SiteSettings:
    return SiteSettings(cache_dir=str(cache_dir), device="cpu")


@pytest.fixture(scope="module")
def oracle(site) -> MlipOracle:
    return MlipOracle(site=site)


@pytest.fixture(scope="module")
def nacl_obs(oracle):
    # lattice constant 4 % off the CHGNet optimum so the relaxation has work to do
    return oracle.run(request(rocksalt("Na", "Cl", 5.85)))


def test_nacl_formation_energy_matches_materials_project(nacl_obs):
    assert nacl_obs.status == Status.SUCCESS, nacl_obs.reason
    e_form = nacl_obs.properties["formation_energy_ev_per_atom"]
    assert e_form < 0
    assert abs(e_form - MP_NACL) < 0.3
    assert nacl_obs.properties["e_above_hull_ev_per_atom"] == pytest.approx(0.0, abs=1e-6)


def test_nacl_relaxation_is_recorded(nacl_obs):
    extra = nacl_obs.extra
    assert extra["converged"] is True
    assert extra["n_steps"] >= 1
    assert extra["fmax_ev_per_a"] <= 0.05
    relaxed = Structure.from_dict(extra["relaxed_structure"])
    # rocksalt NaCl, experimental a = 5.64 A; CHGNet (PBE-trained) lands within 3 %
    a_conv = (relaxed.volume / len(relaxed) * 8) ** (1 / 3)
    assert 5.55 < a_conv < 5.85
    assert extra["elemental_reference_rules"]["Na"].startswith("bcc")
    assert extra["initial_energy_ev_per_atom"] > nacl_obs.properties["energy_ev_per_atom"]


def test_mgo_formation_energy_matches_materials_project(oracle):
    obs = oracle.run(request(rocksalt("Mg", "O", 4.21)))
    assert obs.status == Status.SUCCESS, obs.reason
    e_form = obs.properties["formation_energy_ev_per_atom"]
    assert abs(e_form - MP_MGO) < 0.3
    assert obs.properties["e_above_hull_ev_per_atom"] >= 0
    assert obs.properties["e_above_hull_ev_per_atom"] < 0.02


def test_li2o_formation_energy_matches_shared_mp_table(oracle):
    if not MP_FORMATION_CSV.exists():
        pytest.skip(f"shared MP data not found at {MP_FORMATION_CSV}")
    import pandas as pd

    table = pd.read_csv(MP_FORMATION_CSV)
    row = table[table.task_id == "mp-1960"]  # Li2O, antifluorite
    assert len(row) == 1
    obs = oracle.run(request(antifluorite("Li", "O", 4.61)))
    assert obs.status == Status.SUCCESS, obs.reason
    assert abs(obs.properties["formation_energy_ev_per_atom"] - float(row.formation_energy_per_atom.iloc[0])) < 0.3


def test_lower_reference_entry_puts_candidate_above_hull(site, nacl_obs):
    # a NaCl phase 0.1 eV/atom below the candidate must put it exactly 0.1 eV/atom above the hull
    e = nacl_obs.properties["energy_ev_per_atom"]
    oracle = MlipOracle(settings={"extra_entries": [{"formula": "NaCl", "energy_per_atom": e - 0.1}]}, site=site)
    obs = oracle.run(request(rocksalt("Na", "Cl", 5.85)))
    assert obs.ok, obs.reason
    assert obs.properties["e_above_hull_ev_per_atom"] == pytest.approx(0.1, abs=2e-3)
    assert obs.properties["formation_energy_ev_per_atom"] == pytest.approx(
        nacl_obs.properties["formation_energy_ev_per_atom"], abs=2e-3
    )


def test_pickle_round_trip_gives_same_result(oracle, nacl_obs):
    clone = pickle.loads(pickle.dumps(oracle))
    assert clone.version == oracle.version
    assert clone.settings == oracle.settings
    obs = clone.run(request(rocksalt("Na", "Cl", 5.85)))
    assert obs.properties["energy_ev_per_atom"] == pytest.approx(nacl_obs.properties["energy_ev_per_atom"], abs=1e-5)


def test_overlapping_atoms_fail_with_reason(oracle):
    s = Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.02, 0, 0]])
    obs = oracle.run(request(s))
    assert obs.status == Status.FAILED
    assert "overlap" in obs.reason


def test_element_outside_model_fails_with_reason(oracle):
    s = Structure(Lattice.cubic(4.0), ["Cm", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    obs = oracle.run(request(s))
    assert obs.status == Status.FAILED
    assert "Cm" in obs.reason and "not covered" in obs.reason


def test_composition_only_candidate_fails(oracle):
    obs = oracle.run(Request("r", Candidate.from_composition("NaCl"), "mlip", 0))
    assert obs.status == Status.FAILED
    assert "needs a structure" in obs.reason


def test_exploding_relaxation_is_caught(oracle):
    # NaCl built at a = 8.5 A contracts by more than a factor 1.2 in volume: the guard trips
    from pymatgen.io.ase import AseAtomsAdaptor

    atoms = AseAtomsAdaptor.get_atoms(rocksalt("Na", "Cl", 8.5))
    calc = mlip.load_calculator("chgnet", None, "cpu")
    with mlip.compute_threads(1), pytest.raises(OracleError, match="exploded"):
        mlip.relax_atoms(atoms, calc, fmax=0.05, max_steps=200, relax_cell=True, max_volume_ratio=1.2)


def test_elemental_references_are_cached_on_disk(cache_dir, nacl_obs, monkeypatch):
    files = list((cache_dir / "mlip-references").glob("elemental-chgnet-0.3.0-v*.json"))
    assert len(files) == 1
    cached = json.loads(files[0].read_text())
    assert {"Na", "Cl"} <= set(cached)
    assert cached["Cl"]["rule"].startswith("dimer")

    def no_model(*args, **kwargs):
        raise AssertionError("the model must not be loaded for cached references")

    monkeypatch.setattr(mlip, "load_calculator", no_model)
    refs = mlip.elemental_references(["Na", "Cl"], cache_dir=cache_dir / "mlip-references")
    assert refs["Na"]["energy_ev_per_atom"] == cached["Na"]["energy_ev_per_atom"]


def test_version_ignores_site_settings(cache_dir):
    a = MlipOracle(site={"cache_dir": str(cache_dir), "torch_threads": 1})
    b = MlipOracle(site={"cache_dir": "/elsewhere", "torch_threads": 2, "device": "cpu", "base_dir": "/tmp"})
    c = MlipOracle(settings={"fmax": 0.01}, site={"cache_dir": str(cache_dir)})
    assert a.version == b.version
    assert a.version != c.version


def test_unknown_setting_is_rejected():
    with pytest.raises(Exception, match="extra"):
        MlipOracle(settings={"fmax_typo": 0.1})


@pytest.mark.parametrize("key", ["device", "torch_threads", "cache_dir"])
def test_site_keys_in_settings_name_their_new_place(key):
    with pytest.raises(ValueError, match=rf"{key} is a site setting, not science: give it as site\.{key}"):
        MlipOracle(settings={key: "cpu" if key == "device" else 1})


# -- the model setting -----------------------------------------------------------------------
def test_one_oracle_under_three_kind_names():
    """mlip, chgnet and sevennet are one oracle; the older kinds only change the default model."""
    mlip_cls, chgnet_cls, sevennet_cls = (oracle_class(k) for k in ("mlip", "chgnet", "sevennet"))
    assert mlip_cls is MlipOracle and issubclass(chgnet_cls, MlipOracle) and issubclass(sevennet_cls, MlipOracle)
    for cls in (chgnet_cls, sevennet_cls):  # data only: no code of their own
        assert not [k for k, v in vars(cls).items() if callable(v) or isinstance(v, property)]
    for cls, model, version in [(mlip_cls, "chgnet", "0.3.0"), (chgnet_cls, "chgnet", "0.3.0"),
                                (sevennet_cls, "sevennet", "7net-0")]:
        s = cls().settings
        assert (s.model, s.model_version) == (model, version)
    # equal science under kind mlip and kind sevennet: only the kind name in the version differs
    a, b = MlipOracle(settings={"model": "sevennet"}), sevennet_cls()
    assert a.version.split("-", 1)[1] == b.version.split("-", 1)[1]


@pytest.mark.parametrize(
    ("kind", "model", "expected"),
    [
        ("chgnet", "r2scan", ("chgnet", "r2scan")),
        ("chgnet", "0.3.0", ("chgnet", "0.3.0")),
        ("chgnet", "0.2.0", ("chgnet", "0.2.0")),
        ("sevennet", "7net-0", ("sevennet", "7net-0")),
        ("mlip", "chgnet:r2scan", ("chgnet", "r2scan")),
        ("mlip", "sevennet", ("sevennet", "7net-0")),
    ],
)
def test_older_model_spellings_still_work(kind, model, expected):
    s = oracle_class(kind)(settings={"model": model}).settings
    assert (s.model, s.model_version) == expected


def test_model_and_model_version_are_validated():
    with pytest.raises(ValueError, match="unknown model 'mace'.*matloop.calculators"):
        MlipOracle(settings={"model": "mace"})
    with pytest.raises(ValueError, match="names version 'r2scan' but model_version is '0.3.0'"):
        MlipOracle(settings={"model": "chgnet:r2scan", "model_version": "0.3.0"})
    obs = MlipOracle(settings={"model_version": "9.9.9"}).run(request(rocksalt("Na", "Cl", 5.64)))
    assert not obs.ok and "CHGNet has no pretrained model '9.9.9'" in obs.reason


def test_a_plugin_calculator_is_found_through_the_registry(monkeypatch, site):
    """A ``matloop.calculators`` entry point: factory(model_name, device) -> ASE calculator."""
    from ase.calculators.emt import EMT

    from matloop.core import registry

    calls = []

    def emt_factory(model_name, device):
        calls.append((model_name, device))
        return EMT()

    real_names, real_factory = registry.names, registry.calculator_factory
    monkeypatch.setattr(mlip, "names", lambda group: [*real_names(group), "emt"] if group == registry.CALCULATORS
                        else real_names(group))
    monkeypatch.setattr(mlip, "calculator_factory", lambda name: emt_factory if name == "emt" else real_factory(name))
    monkeypatch.setattr(mlip, "distribution", lambda group, name: "emt-plugin 1.0")
    oracle = MlipOracle(settings={"model": "emt", "model_version": "effective-medium", "formation_energy": False},
                        site=site)
    assert oracle.properties == ("energy_ev_per_atom",)
    cu = Structure.from_spacegroup("Fm-3m", Lattice.cubic(3.7), ["Cu"], [[0, 0, 0]])
    obs = oracle.run(request(cu))
    assert obs.ok, obs.reason
    assert calls == [("effective-medium", "cpu")]
    assert set(obs.properties) == {"energy_ev_per_atom"}
    assert obs.extra["model"] == "emt (emt-plugin 1.0) model effective-medium"
    assert 3.55 < Structure.from_dict(obs.extra["relaxed_structure"]).lattice.a < 3.65  # EMT copper: 3.59 A


def test_relative_references_resolve_against_the_site_base_dir(tmp_path, monkeypatch):
    (tmp_path / "refs.csv").write_text("formula,energy_per_atom\nNaCl,-3.5\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    oracle = MlipOracle(settings={"references": "refs.csv"}, site={"base_dir": str(tmp_path)})
    assert [(e.formula, e.energy_ev_per_atom) for e in oracle.reference_entries()] == [("NaCl", -3.5)]
    with pytest.raises(InputError, match="not found"):
        MlipOracle(settings={"references": "refs.csv"}).reference_entries()


# -- pure functions ------------------------------------------------------------------------
def test_hull_energies_of_a_synthetic_binary():
    entries = [("Li", 0.0), ("O", 0.0), ("Li2O", -2.0), ("LiO", -1.0), ("LiO2", -0.5)]
    e_hull = hull_energies(entries)
    # Li2O is on the hull; LiO (x_O = 1/2) lies 0.5 above the Li2O-O tie line at -1.5;
    # LiO2 (x_O = 2/3) lies above the same line at -1.0 by 0.5
    assert e_hull == pytest.approx([0.0, 0.0, 0.0, 0.5, 0.5], abs=1e-9)


def test_hull_energies_use_references_and_require_elements():
    assert hull_energies([("LiO", -1.0)], references=[("Li", 0.0), ("O", 0.0), ("Li2O", -2.0)]) == pytest.approx([0.5])
    with pytest.raises(ValueError, match="O"):
        hull_energies([("LiO", -1.0)], references=[("Li", 0.0)])


def test_formation_energy_of_a_synthetic_compound():
    assert formation_energy_ev_per_atom("Li2O", -5.0, {"Li": -2.0, "O": -5.0}) == pytest.approx(-5.0 + (2 * 2 + 5) / 3)


def test_reference_entries_from_json_and_csv(tmp_path):
    (tmp_path / "refs.json").write_text(json.dumps([{"formula": "Li2O", "energy_per_atom": -4.9}]))
    (tmp_path / "refs.csv").write_text("formula,energy_ev_per_atom\nLi2O,-4.9\nLiO2,-4.5\n")
    (tmp_path / "bad.csv").write_text("formula,energy\nLi2O,-4.9\n")
    assert load_reference_entries(tmp_path / "refs.json")[0].energy_ev_per_atom == -4.9
    assert [e.formula for e in load_reference_entries(tmp_path / "refs.csv")] == ["Li2O", "LiO2"]
    with pytest.raises(InputError, match="bad.csv"):
        load_reference_entries(tmp_path / "bad.csv")
    with pytest.raises(InputError, match="not found"):
        load_reference_entries(tmp_path / "missing.json")


@pytest.mark.slow
def test_sevennet_shares_the_code_path(site):
    pytest.importorskip("sevenn")
    oracle = oracle_class("sevennet")(site=site)
    obs = oracle.run(request(rocksalt("Na", "Cl", 5.85)))
    assert obs.ok, obs.reason
    assert abs(obs.properties["formation_energy_ev_per_atom"] - MP_NACL) < 0.3
    assert "sevennet" in obs.extra["model"]
    assert oracle.version.startswith("sevennet-")


def test_campaign_phases_join_the_hull(site, nacl_obs):
    """Phases the campaign computed earlier are on the hull of later evaluations (and survive pickling)."""
    o = MlipOracle("mlip", site=site)
    lower = nacl_obs.properties["energy_ev_per_atom"] - 0.15
    o.observe_phases([("NaCl", lower)])
    o = pickle.loads(pickle.dumps(o))
    obs = o.run(request(rocksalt("Na", "Cl", 5.64)))
    assert obs.ok, obs.reason
    assert obs.properties["e_above_hull_ev_per_atom"] == pytest.approx(0.15, abs=0.02)


def test_installed_plugin_calculator_runs_through_matloop_evaluate(tmp_path):
    """The demo plug-in, installed as a real distribution, gives the MLIP oracle ``model: demo-emt``."""
    import importlib.util
    import os
    import shutil
    import subprocess
    import sys

    if importlib.util.find_spec("pip") is None or importlib.util.find_spec("setuptools") is None:
        pytest.skip("pip and setuptools are needed to build the demo plug-in offline")
    src = tmp_path / "src"
    shutil.copytree(Path(__file__).resolve().parents[1] / "plugins" / "matloop_demo_plugin", src)
    target = tmp_path / "site"
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    res = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--target",
                          str(target), str(src)], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    cu = tmp_path / "Cu.cif"
    Structure.from_spacegroup("Fm-3m", Lattice.cubic(3.7), ["Cu"], [[0, 0, 0]]).to(filename=str(cu))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(target), os.environ.get("PYTHONPATH")) if p)
    res = subprocess.run([sys.executable, "-m", "matloop.loop.cli", "evaluate", "--oracle", "mlip", str(cu),
                          "--set", "model=demo-emt", "--set", "formation_energy=false"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    out = json.loads(res.stdout)
    assert out["status"] == "success" and list(out["properties"]) == ["energy_ev_per_atom"]
    assert out["extra"]["model"] == "demo-emt (matloop-demo-plugin 0.1.0) model default"
    assert out["oracle_description"]["settings"]["model"] == "demo-emt"
