"""One suite over every registered oracle, as ASE runs one suite over its calculators.

Each kind registered under the ``matloop.oracles`` entry points must: declare properties with
a unit in their names; have a ``version`` that hashes its science settings and nothing of its
site; reject unknown, misplaced (site) and mistyped settings with a pydantic error; and turn a
failure inside an evaluation into a failed ``Observation`` with a reason, never an exception.

Only construction, versions, settings and one cheap failure per kind run here (no DFT, MD or
relaxation); real evaluations are in the per-oracle test modules. A kind added without a
case below still runs every check that its default settings allow.
"""

from __future__ import annotations

import json
import pickle
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pydantic import ValidationError
from pymatgen.core import Lattice, Structure

from matloop.core.oracle import SITE_KEYS, Oracle, SiteSettings
from matloop.core.records import Candidate, Observation, Request, Status
from matloop.core.registry import ORACLES, names, oracle_class

#: the units a property name may end with (lower case, ``_per_`` for a quotient)
UNITS = ("ev", "ev_per_atom", "ev_per_a", "mev", "v", "k", "s", "a", "a2", "gpa", "g_per_cm3", "cm2_per_s", "s_per_cm",
         "percent")
#: after the unit, the temperature the value refers to (``diffusivity_cm2_per_s_300k``) or the
#: phase it is measured against, as a formula (``interface_reaction_ev_per_atom_LiCoO2``)
_UNIT_NAME = re.compile(rf"^[a-z][a-z0-9_]*_({'|'.join(UNITS)})(_\d+k|_[A-Z][A-Za-z0-9]*)?$")
#: explicitly unitless quantities
UNITLESS_SUFFIXES = ("fraction", "ratio", "count")
_UNITLESS_NAME = re.compile(rf"^[a-z][a-z0-9_]*_({'|'.join(UNITLESS_SUFFIXES)})$")

KINDS = names(ORACLES)


def has_unit(name: str) -> bool:
    """True when ``name`` ends with a unit of ``UNITS`` (optionally ``_<T>k``) or a unitless suffix."""
    return bool(_UNIT_NAME.match(name) or _UNITLESS_NAME.match(name))


def nacl() -> Candidate:
    s = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    return Candidate.from_structure(s.get_primitive_structure(), source="contract")


def request(candidate: Candidate, oracle: Oracle) -> Request:
    return Request(Request.make_id(candidate.id, oracle.name, 0), candidate, oracle.name, 0)


def run_composition_only(oracle: Oracle, tmp_path: Path) -> Observation:
    """A composition-only candidate for an oracle that needs a structure."""
    assert oracle.needs_structure
    return oracle.run(request(Candidate.from_composition("NaCl"), oracle))


def run_structure(oracle: Oracle, tmp_path: Path) -> Observation:
    """``run`` on a real structure (for oracles whose evaluate fails on its own: async labs, manual, a failing command)."""
    return oracle.run(request(nacl(), oracle))


def run_missing_row(oracle: Oracle, tmp_path: Path) -> Observation:
    """A composition the lookup table does not hold."""
    return oracle.run(request(Candidate.from_composition("KBr"), oracle))


def malformed_robot_result(oracle: Oracle, tmp_path: Path) -> Observation:
    """The robot writes a result without the expected property: a failed observation on poll."""
    req = request(nacl(), oracle)
    (h,) = oracle.submit([req], executor=None)
    inbox = oracle.site.resolve(oracle.settings.inbox)
    inbox.mkdir(parents=True, exist_ok=True)
    (inbox / f"{req.id}.json").write_text(json.dumps({"properties": {"something_else_ev": 1.0}}))
    (obs,) = oracle.collect(oracle.poll([h]))
    return obs


@dataclass
class Case:
    """How to exercise one oracle kind cheaply.

    Attributes:
        settings: minimal valid science settings.
        science_change: settings that differ in one science value (must change the version).
        bad_type: settings with a value of the wrong type.
        fail: produces a failed observation from a built oracle, cheaply.
    """

    settings: dict = field(default_factory=dict)
    science_change: dict | None = None
    bad_type: dict | None = None
    fail: Callable[[Oracle, Path], Observation] | None = None


MLIP = Case({}, {"fmax": 0.01}, {"fmax": "tight"}, run_composition_only)
GPAW = Case({}, {"ecut_ev": 450.0}, {"ecut_ev": "high"}, run_composition_only)
CASES: dict[str, Case] = {
    "mlip": MLIP,
    "chgnet": MLIP,
    "sevennet": MLIP,
    "mlip-md": Case({}, {"seed": 1}, {"temperatures_k": "hot"}, run_composition_only),
    "mlip-neb": Case({}, {"fmax": 0.05}, {"n_images": "many"}, run_composition_only),
    "gpaw-pbe": GPAW,
    "gpaw-hse06": GPAW,
    "lookup": Case({"table": "table.csv", "columns": {"gap_ev": "gap"}}, {"duplicates": "min"},
                   {"latency_s": "slow"}, run_missing_row),
    "http": Case({"url": "http://127.0.0.1:9", "measurement": "uv-vis", "properties": ["gap_ev"]},
                 {"measurement": "photoluminescence"}, {"retries": "many"}, run_structure),
    "folder": Case({"outbox": "out", "inbox": "in", "properties": ["gap_ev"], "settle_s": 0.0}, {"format": "csv"},
                   {"settle_s": "soon"}, malformed_robot_result),
    "command": Case({"command": ["false"], "workdir": "jobs", "properties": ["gap_ev"]}, {"output": "out.json"},
                    {"timeout_s": "long"}, run_structure),
    "manual": Case({"properties": ["gap_ev"]}, {"instructions": "measure the gap"}, {"properties": "gap_ev"},
                   run_structure),
}


@pytest.fixture
def site(tmp_path) -> SiteSettings:
    """A site in a fresh folder, holding the lookup case's table."""
    (tmp_path / "table.csv").write_text("composition,gap\nNaCl,8.5\n")
    return SiteSettings(base_dir=tmp_path, device="cpu", cache_dir=str(tmp_path / "cache"))


def build(kind: str, settings: dict | None = None, site: SiteSettings | dict | None = None) -> Oracle:
    case = CASES.get(kind, Case())
    try:
        return oracle_class(kind)(name=f"{kind}-contract", settings=case.settings if settings is None else settings,
                                  site=site)
    except ValidationError as exc:
        if kind not in CASES:
            pytest.skip(f"{kind} needs settings: add a contract case for it ({exc.errors()[0]['msg']})")
        raise


def case_of(kind: str, what: str):
    value = getattr(CASES.get(kind, Case()), what)
    if value is None:
        pytest.skip(f"no {what} in the contract case of {kind}")
    return value


# -- the checks ---------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_is_an_oracle_with_validated_settings_and_a_site(kind, site):
    cls = oracle_class(kind)
    assert issubclass(cls, Oracle)
    assert cls.Settings.model_config.get("extra") == "forbid"
    oracle = build(kind, site=site)
    assert oracle.site.base_dir == site.base_dir
    assert build(kind, site={"device": "cpu"}).site.device == "cpu"  # a mapping works too
    json.dumps(oracle.describe())


@pytest.mark.parametrize("kind", KINDS)
def test_properties_carry_units_in_their_names(kind, site):
    oracle = build(kind, site=site)
    declared = set(type(oracle).properties) | set(oracle.properties)
    assert declared or kind in ("lookup", "http", "folder", "command", "manual"), "no properties declared"
    bad = sorted(p for p in declared if not has_unit(p))
    assert not bad, f"{kind}: property names without a unit suffix {bad} (units: {UNITS}; unitless: {UNITLESS_SUFFIXES})"


#: settings that switch on properties a kind declares only when asked
OPT_IN = {
    "mlip": {"li_window": True, "interface_partners": ["LiCoO2", "Li", "Li7La3Zr2O12", "Li3PS4"]},
    "gpaw-hse06": {"formation_energy": True},
}


@pytest.mark.parametrize("kind", sorted(OPT_IN))
def test_opt_in_properties_carry_units_in_their_names(kind, site):
    oracle = build(kind, OPT_IN[kind], site=site)
    assert set(oracle.properties) > set(build(kind, site=site).properties)
    bad = sorted(p for p in oracle.properties if not has_unit(p))
    assert not bad, f"{kind}: property names without a unit suffix {bad}"


@pytest.mark.parametrize("kind", KINDS)
def test_version_is_stable_for_equal_science(kind, site):
    a, b = build(kind, site=site), build(kind, site=site)
    assert a.version == b.version
    assert pickle.loads(pickle.dumps(a)).version == a.version


@pytest.mark.parametrize("kind", KINDS)
def test_version_changes_with_a_science_setting(kind, site):
    change = case_of(kind, "science_change")
    assert build(kind, {**CASES[kind].settings, **change}, site=site).version != build(kind, site=site).version


@pytest.mark.parametrize("kind", KINDS)
def test_version_ignores_the_site(kind, tmp_path):
    one = SiteSettings(base_dir=tmp_path / "a", device="cpu", torch_threads=1)
    other = SiteSettings(base_dir=tmp_path / "b", device="cuda", torch_threads=4, cache_dir="cache", log_dir="logs")
    assert build(kind, site=one).version == build(kind, site=other).version == build(kind).version


@pytest.mark.parametrize("kind", KINDS)
def test_unknown_settings_are_rejected(kind):
    settings = CASES.get(kind, Case()).settings
    with pytest.raises(ValidationError, match="no_such_setting"):
        oracle_class(kind)(settings={**settings, "no_such_setting": 1})


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("key", SITE_KEYS)
def test_site_keys_are_rejected_in_settings_with_their_place(kind, key):
    settings = CASES.get(kind, Case()).settings
    if key in oracle_class(kind).Settings.model_fields:
        pytest.skip(f"{kind} declares {key} as science")
    with pytest.raises(ValidationError, match=rf"{key} is a site setting, not science: give it as site\.{key}"):
        oracle_class(kind)(settings={**settings, key: "x"})


@pytest.mark.parametrize("kind", KINDS)
def test_mistyped_settings_are_rejected(kind):
    bad = case_of(kind, "bad_type")
    with pytest.raises(ValidationError):
        oracle_class(kind)(settings={**CASES[kind].settings, **bad})


@pytest.mark.parametrize("kind", KINDS)
def test_a_failure_is_a_failed_observation_with_a_reason(kind, site, tmp_path):
    fail = case_of(kind, "fail")
    oracle = build(kind, site=site)
    obs = fail(oracle, tmp_path)  # never raises
    assert isinstance(obs, Observation)
    assert obs.status == Status.FAILED and not obs.ok
    assert isinstance(obs.reason, str) and obs.reason.strip()
    assert (obs.oracle, obs.oracle_version, obs.fidelity) == (oracle.name, oracle.version, oracle.fidelity)
    assert obs.properties == {}
    json.dumps(obs.to_json())


def test_every_registered_kind_has_a_case():
    """New oracle kinds in this repository come with a contract case (plug-ins fall back to defaults)."""
    ours = {k for k in KINDS if oracle_class(k).__module__.startswith("matloop.")}
    assert ours <= set(CASES), f"add contract cases for {sorted(ours - set(CASES))}"


@pytest.mark.parametrize(
    ("name", "ok"),
    [("gap_ev", True), ("formation_energy_ev_per_atom", True), ("conductivity_s_per_cm_300k", True),
     ("overpotential_v", True), ("density_g_per_cm3", True), ("phase_fraction", True),
     ("interface_reaction_ev_per_atom_LiCoO2", True), ("sq_efficiency_percent", True),
     ("interface_reaction_ev_per_atom_licoo2", False),
     ("gap", False), ("energy", False), ("conductivity_300k", False), ("Gap_eV", False)],
)
def test_unit_rule(name, ok):
    assert has_unit(name) is ok
