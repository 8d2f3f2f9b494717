"""Reference hull: shipped table, stability, energy scales, coating-screen properties."""

from __future__ import annotations

import csv
import gzip
import math
import os
import sys
from pathlib import Path

import pytest

from matloop.core.records import OracleError
from matloop.oracles.hull import (
    ReferenceHull,
    corrected_formation_energy,
    legacy_to_mp2020_shift_ev_per_atom,
    mlip_needs_mp2020,
    mp2020_correction_ev,
    mp_calculation_parameters,
    mp_elemental_energies_ev_per_atom,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def hull() -> ReferenceHull:
    return ReferenceHull.shipped()


def _e(hull, formula):
    phase = hull.find_phase(formula)
    assert phase is not None, f"{formula} missing from the shipped table"
    return phase.formation_energy_ev_per_atom


# -- the shipped table -----------------------------------------------------------------------
def test_shipped_table_loads_offline(hull):
    assert ReferenceHull.shipped() is hull  # cached per process
    assert len(hull.phases) > 10_000
    assert {"Li", "O", "Na", "Cl", "Fe", "La", "Zr"} <= hull.elements
    assert hull.version.startswith("mp-2019-snapshot/MP2020/") and len(hull.content_hash) == 12
    path = ROOT / "oracles" / "data" / "mp_hull.csv.gz"
    assert path.stat().st_size < 1.5e6
    assert (ROOT / "oracles" / "data" / "README.md").exists()


@pytest.mark.parametrize("formula", ["NaCl", "LiF", "Li2O", "CaF2", "Li3PO4"])
def test_reference_phases_lie_on_the_hull(hull, formula):
    s = hull.stability(formula, _e(hull, formula))
    assert abs(s.e_above_hull_ev_per_atom) < 1e-6
    assert s.decomposition == ((formula, 1.0),)
    assert s.is_stable and s.hull_version == hull.version
    assert any(p.startswith(f"{formula}:") for p in s.reference_phases)


def test_below_the_hull_is_a_negative_distance(hull):
    s = hull.stability("NaCl", _e(hull, "NaCl") - 0.1)
    assert s.e_above_hull_ev_per_atom == pytest.approx(-0.1, abs=1e-6)
    assert s.is_stable


def test_higher_energy_decomposes_into_real_phases(hull):
    # a made-up Li2MgO2 at -2.0 eV/atom: above Li2O + MgO
    s = hull.stability("Li2MgO2", -2.0)
    expected = (2 * 3 * _e(hull, "Li2O") + 2 * 2 * _e(hull, "MgO")) / 10  # Li4Mg2O4 = 2 Li2O + 2 MgO
    assert s.e_above_hull_ev_per_atom == pytest.approx(-2.0 - expected, abs=1e-6)
    assert s.e_above_hull_ev_per_atom > 0
    assert {f for f, _ in s.decomposition} == {"Li2O", "MgO"}
    assert sum(x for _, x in s.decomposition) == pytest.approx(1.0)


@pytest.mark.parametrize("e_form", [-2.8, -2.0, -1.0])
def test_rocksalt_caf_is_far_above_the_hull(hull, e_form):
    # Ca(I) monofluoride: any plausible energy leaves it above Ca + CaF2
    s = hull.stability("CaF", e_form)
    assert s.e_above_hull_ev_per_atom > 0.2
    assert {f for f, _ in s.decomposition} == {"Ca", "CaF2"}


def test_missing_elements_are_named(hull):
    with pytest.raises(OracleError, match="Ra"):
        hull.stability("RaO", -2.0)


def test_from_csv_round_trip(tmp_path):
    p = tmp_path / "h.csv"
    p.write_text("formula,formation_energy_ev_per_atom,id\nLi2O,-2.0,x-1\nLi2O2,-1.6,x-2\n")
    h = ReferenceHull.from_csv(p)
    assert h.stability("Li2O", -2.0).e_above_hull_ev_per_atom == pytest.approx(0.0, abs=1e-9)
    s = h.stability("LiO", -1.5)
    assert s.decomposition == (("Li2O2", 1.0),)
    assert s.e_above_hull_ev_per_atom == pytest.approx(0.1)
    p.write_text("formula,formation_energy_ev_per_atom,id\nLi2O,-2.01,x-1\nLi2O2,-1.6,x-2\n")
    assert ReferenceHull.from_csv(p).version != h.version


# -- energy scales ---------------------------------------------------------------------------
def test_mp_parameters_follow_gga_u_rules():
    assert mp_calculation_parameters("Fe2O3") == {
        "run_type": "GGA+U",
        "hubbards": {"Fe": 5.3},
        "is_hubbard": True,
        "software": "vasp",
    }
    assert mp_calculation_parameters("FeS")["run_type"] == "GGA"
    assert mp_calculation_parameters("LiCoO2")["hubbards"] == {"Co": 3.32}


def test_mp2020_corrections_match_the_published_values():
    assert mp2020_correction_ev("Fe2O3") == pytest.approx(2 * -2.256 + 3 * -0.687, abs=1e-3)
    assert mp2020_correction_ev("NaCl") == pytest.approx(-0.614, abs=1e-3)
    assert mp2020_correction_ev("Na") == 0.0


def test_corrected_formation_energy_applies_corrections_to_compound_only():
    mu = mp_elemental_energies_ev_per_atom()
    raw_total = 2 * mu["Fe"] + 3 * mu["O"] - 5 * 1.0  # a compound 1 eV/atom below its elements, uncorrected
    e = corrected_formation_energy("Fe2O3", raw_total)
    assert e == pytest.approx(-1.0 + (2 * -2.256 + 3 * -0.687) / 5, abs=1e-3)
    assert corrected_formation_energy("Fe2O3", raw_total, apply_mp2020=False) == pytest.approx(-1.0)
    with pytest.raises(OracleError, match="reference energy for O"):
        corrected_formation_energy("Fe2O3", raw_total, {"Fe": 0.0})


def test_mlip_energy_scales():
    assert mlip_needs_mp2020("chgnet", "0.3.0") is False
    assert mlip_needs_mp2020("sevennet", "7net-0") is True
    with pytest.raises(OracleError):
        mlip_needs_mp2020("chgnet", "r2scan")


def test_legacy_shift_matches_the_two_schemes():
    # bromides were uncorrected before MP2020, Fe in oxides got -2.733 eV instead of -2.256
    assert legacy_to_mp2020_shift_ev_per_atom("KBr") == pytest.approx(-0.534 / 2, abs=1e-3)
    assert legacy_to_mp2020_shift_ev_per_atom("Fe2O3") == pytest.approx(
        (2 * (2.733 - 2.256) + 3 * (0.70229 - 0.687)) / 5, abs=1e-3
    )
    assert legacy_to_mp2020_shift_ev_per_atom("Li") == 0.0


# -- coating-screen properties ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("formula", "v_min", "v_max"),
    [("Li2O", 0.0, 2.91), ("LiF", 0.0, 6.4), ("Li3PO4", 0.69, 4.21)],  # Richards et al. 2016, Table 1
)
def test_electrochemical_windows_of_known_coatings(hull, formula, v_min, v_max):
    lo, hi = hull.electrochemical_window(formula, _e(hull, formula))
    assert lo == pytest.approx(v_min, abs=0.3)
    assert hi == pytest.approx(v_max, abs=0.4)


def test_li_free_oxide_window_is_open_above(hull):
    # reduced to LiAl5O8 + Al at ~1.2 V, never oxidised by Li removal
    lo, hi = hull.electrochemical_window("Al2O3", _e(hull, "Al2O3"))
    assert 0.5 < lo < 2.0 and math.isinf(hi)


def test_window_of_a_metastable_electrolyte(hull):
    # cubic LLZO (above the hull) evaluated as if on it: 0.05-2.91 V in Richards et al.
    assert hull.find_phase("Li7La3Zr2O12").on_hull is False
    lo, hi = hull.electrochemical_window("Li7La3Zr2O12", _e(hull, "Li7La3Zr2O12"))
    assert lo == pytest.approx(0.05, abs=0.2) and hi == pytest.approx(2.91, abs=0.3)


def test_interface_reactions(hull):
    # Li2O is stable against Li metal; LiCoO2 is reduced by it
    assert hull.interface_reaction_energy("Li2O", _e(hull, "Li2O"), "Li").ev_per_atom_min == pytest.approx(0, abs=1e-6)
    energy, ratio, products = hull.interface_reaction_energy("LiCoO2", _e(hull, "LiCoO2"), "Li")
    assert energy < -0.3 and 0 < ratio < 1
    assert "Li2O" in products and "Co" in products
    # Li3PO4 coats LiCoO2 without reacting; Li2O and Li3PS4 react to Li2S + Li3PO4
    assert hull.interface_reaction_energy("Li3PO4", _e(hull, "Li3PO4"), "LiCoO2").ev_per_atom_min == pytest.approx(
        0, abs=1e-6
    )
    r = hull.interface_reaction_energy("Li2O", _e(hull, "Li2O"), "Li3PS4")
    assert r.ev_per_atom_min < -0.2 and set(r.products) == {"Li2S", "Li3PO4"}
    # a metastable partner's own decomposition is not a reaction
    r = hull.interface_reaction_energy("Li2O", _e(hull, "Li2O"), "Li7La3Zr2O12")
    assert r.ev_per_atom_min == pytest.approx(0, abs=1e-6)


def test_missing_partner_is_reported(hull):
    with pytest.raises(OracleError, match="not in the reference"):
        hull.interface_reaction_energy("Li2O", _e(hull, "Li2O"), "Li11Co3O17")


# -- optional sources ------------------------------------------------------------------------
def test_from_mp_api(tmp_path):
    key = os.environ.get("MP_API_KEY")
    if not key:
        pytest.skip("MP_API_KEY not set")
    pytest.importorskip("mp_api")
    h = ReferenceHull.from_mp_api("Li-O", key, cache_dir=tmp_path)
    assert (tmp_path / "mp-Li-O.json").exists()
    s = h.stability("Li2O", h.find_phase("Li2O").formation_energy_ev_per_atom)
    assert abs(s.e_above_hull_ev_per_atom) < 1e-6
    assert h.version.startswith("mp-api:Li-O/MP2020/")


def test_from_mp_api_with_a_stand_in_client(tmp_path, monkeypatch):
    """The query, formation energies and JSON cache, with a stand-in for mp_api (no network)."""
    import types

    from pymatgen.entries.computed_entries import ComputedEntry

    calls = []

    class FakeRester:
        def __init__(self, key):
            assert key == "k"

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def get_entries_in_chemsys(self, elements, **kwargs):
            calls.append((elements, kwargs))
            return [
                ComputedEntry("Li", -1.9, entry_id="mp-135"),
                ComputedEntry("O2", -9.8, entry_id="mp-12957"),
                ComputedEntry("Li2O", -14.3, entry_id="mp-1960"),
            ]

    client = types.ModuleType("mp_api.client")
    client.MPRester = FakeRester
    monkeypatch.setitem(sys.modules, "mp_api", types.ModuleType("mp_api"))
    monkeypatch.setitem(sys.modules, "mp_api.client", client)
    h = ReferenceHull.from_mp_api("O-Li", "k", cache_dir=tmp_path)
    assert calls == [(["Li", "O"], {"compatible_only": True, "additional_criteria": {"thermo_types": ["GGA_GGA+U"]}})]
    li2o = h.find_phase("Li2O")
    assert li2o.id == "mp-1960"
    assert li2o.formation_energy_ev_per_atom == pytest.approx((-14.3 - 2 * -1.9 - -4.9) / 3)
    again = ReferenceHull.from_mp_api(["Li", "O"], "k", cache_dir=tmp_path)  # from the cache
    assert len(calls) == 1 and again.version == h.version and h.version.startswith("mp-api:Li-O/")
    with pytest.raises(OracleError, match="Na"):
        h.stability("Na2O", -2.0)


@pytest.fixture(scope="module")
def optimade_li_o():
    """An OPTIMADE reference server on 127.0.0.1 serving Li-O phases with a provider energy field."""
    from pymatgen.core import Lattice, Structure

    from matloop.agents.generation.enumeration import reference_server

    li = Structure(Lattice.cubic(3.44), ["Li", "Li"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    o2 = Structure(Lattice.cubic(6.0), ["O", "O"], [[0, 0, 0], [0.2, 0, 0]])
    li2o = Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.6), ["O", "Li"], [[0, 0, 0], [0.25, 0.25, 0.25]])
    li2o2 = Structure(Lattice.hexagonal(3.1, 7.6), ["Li", "Li", "O", "O"],
                      [[0, 0, 0], [1 / 3, 2 / 3, 0.25], [1 / 3, 2 / 3, 0.65], [1 / 3, 2 / 3, 0.85]])
    lio2 = Structure(Lattice.cubic(4.0), ["Li", "O", "O"], [[0, 0, 0], [0.5, 0.5, 0.4], [0.5, 0.5, 0.75]])
    items = [("li", li, {"formation_energy": 0.0}), ("o2", o2, {"formation_energy": 0.0}),
             ("li2o", li2o, {"formation_energy": -2.07}), ("li2o2", li2o2, {"formation_energy": -1.65}),
             ("lio2", lio2, {"formation_energy": -0.90}),
             ("no-energy", li2o, {})]  # an entry without the field is skipped
    try:
        with reference_server(items, provider_fields=["formation_energy"], page_limit=2) as url:
            yield url
    except (ImportError, RuntimeError) as exc:
        pytest.skip(f"optimade[server] is not available: {exc}")


def test_from_optimade_builds_the_hull_pages_through_and_caches(optimade_li_o, tmp_path, monkeypatch):
    h = ReferenceHull.from_optimade(optimade_li_o, "Li-O", "_exmpl_formation_energy", cache_dir=tmp_path)
    assert sorted(p.formula for p in h.phases) == ["Li", "Li2O", "LiO", "LiO2", "O"]  # 2 per page: followed links
    assert h.version.startswith("optimade:") and "Li-O/MP2020/" in h.version
    assert h.stability("Li2O", -2.07).e_above_hull_ev_per_atom == pytest.approx(0.0, abs=1e-9)
    s = h.stability("LiO2", -0.90)  # above the LiO-O2 tie line: -1.65 * (1/3) / (1/2) = -1.10 at x_O = 2/3
    assert s.e_above_hull_ev_per_atom == pytest.approx(0.20, abs=1e-6)
    # the cache answers without asking the provider again
    import urllib.request

    def offline(*a, **k):
        raise OSError("network used although the system is cached")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    again = ReferenceHull.from_optimade(optimade_li_o, "Li-O", "_exmpl_formation_energy", cache_dir=tmp_path)
    assert again.content_hash == h.content_hash is not None
    monkeypatch.undo()
    with pytest.raises(OracleError, match="returned no entries"):
        ReferenceHull.from_optimade(optimade_li_o, "Li-O", "_exmpl_no_such_field")


def test_optimade_hull_source_in_an_oracle(optimade_li_o, tmp_path, monkeypatch):
    from pydantic import ValidationError

    from matloop.oracles.hull import HullSettings, resolve_hull_source
    from matloop.oracles.mlip import MlipOracle

    monkeypatch.delenv("MP_API_KEY", raising=False)
    with pytest.raises(ValidationError, match="optimade_energy_field"):
        HullSettings(source="optimade", optimade_url=optimade_li_o)
    hull = {"optimade_url": optimade_li_o, "optimade_energy_field": "_exmpl_formation_energy"}
    assert resolve_hull_source("auto", optimade_li_o) == "optimade"  # auto: configured provider, no MP key
    oracle = MlipOracle(settings={"hull": hull}, site={"cache_dir": str(tmp_path)})
    assert oracle.hull_source() == "optimade"
    assert oracle.version != MlipOracle(settings={}).version  # the reference enters the version
    h = oracle.reference_hull(["Li", "O"])
    assert h.source.startswith("optimade:") and h.find_phase("Li2O") is not None
    with pytest.raises(OracleError, match="no phases for element.*Na"):
        oracle.reference_hull(["Li", "O", "Na"])


def test_build_script_on_a_subset(tmp_path):
    src = ROOT.parent / "shared" / "data" / "mp" / "mp-formation.csv"
    if not src.exists():
        pytest.skip(f"MP snapshot not found at {src} (only on the project's machines)")
    sys.path.insert(0, str(ROOT / "scripts"))
    from build_reference_hull import main
    from pymatgen.core import Composition

    keep = {"Li", "O", "P"}
    with open(src, newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if {str(e) for e in Composition(r["composition"]).elements} <= keep]
    sub = tmp_path / "sub.csv"
    with open(sub, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["task_id", "composition", "formation_energy_per_atom"])
        w.writeheader()
        w.writerows(rows)
    out = tmp_path / "hull.csv.gz"
    assert main([str(sub), "--out", str(out), "--partners", "Li3PO4"]) == 0
    text = gzip.decompress(out.read_bytes()).decode()
    assert "Li2O," in text and "Li3PO4," in text
    h = ReferenceHull.from_csv(out)
    assert h.find_phase("Li2O").id == "mp-1960"


# -- real CHGNet energies on the MP2020 scale --------------------------------------------------
@pytest.fixture(scope="module")
def chgnet_model():
    chgnet = pytest.importorskip("chgnet.model")
    return chgnet.CHGNet.load(verbose=False, use_device="cpu")


@pytest.mark.parametrize(
    ("formula", "species", "a", "fractional"),
    [
        ("NaCl", ["Na", "Cl"], 5.69, [[0, 0, 0], [0.5, 0.5, 0.5]]),  # rocksalt
        ("Li2O", ["O", "Li"], 4.61, [[0, 0, 0], [0.25, 0.25, 0.25]]),  # antifluorite
        ("MnO", ["Mn", "O"], 4.44, [[0, 0, 0], [0.5, 0.5, 0.5]]),  # rocksalt, GGA+U in MP
    ],
)
def test_chgnet_energies_need_no_mp2020_correction(chgnet_model, hull, formula, species, a, fractional):
    from pymatgen.core import Lattice, Structure

    structure = Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), species, fractional).get_primitive_structure()
    energy_ev = float(chgnet_model.predict_structure(structure)["e"]) * len(structure)
    reference = _e(hull, formula)
    e_form = corrected_formation_energy(structure, energy_ev, apply_mp2020=mlip_needs_mp2020("chgnet", "0.3.0"))
    # measured: NaCl +0.03, Li2O +0.06, MnO +0.06 eV/atom (relaxed cells give the same)
    assert e_form == pytest.approx(reference, abs=0.1)
    twice = corrected_formation_energy(structure, energy_ev, apply_mp2020=True)
    assert abs(twice - reference) > 0.15  # corrections counted twice
