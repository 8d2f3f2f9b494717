"""GPAW PBE and HSE06 tiers on two-atom silicon, with small but real calculations.

Settings are cut down to keep the module near two minutes on two cores (200 eV cutoff,
Gamma-centred 4x4x4 mesh, which contains X), so the expected numbers are wider than the
converged ones: PBE indirect gap 0.69 eV on this mesh (0.6 converged), HSE06 1.31 eV
(about 1.15 converged), direct gap at Gamma 2.5 (PBE) and 3.3 (HSE06).
"""

from __future__ import annotations

import importlib.util
import multiprocessing as mp
import pickle
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from matloop.oracles.efficiency import shockley_queisser_efficiency
from matloop.oracles.gpaw import BandEdges, GpawHse06Oracle, GpawPbeOracle, band_edges
from matloop.core.records import Candidate, Request, Status

needs_gpaw = pytest.mark.skipif(
    importlib.util.find_spec("gpaw") is None, reason="GPAW is not installed (scripts/setup.sh builds it)"
)

# kpt_density 1.9 per 1/A gives the 4x4x4 mesh on primitive Si (a = 5.43 A) and on ASE's
# elemental Si reference, so the formation energy compares like with like.
FAST = {"ecut_ev": 200.0, "kpt_density": 1.9, "smearing_width_ev": 0.01}


def silicon() -> Candidate:
    from ase.build import bulk
    from pymatgen.io.ase import AseAtomsAdaptor

    return Candidate.from_structure(AseAtomsAdaptor.get_structure(bulk("Si", "diamond", a=5.43)), source="test")


def request(candidate: Candidate, oracle: str) -> Request:
    return Request(id=Request.make_id(candidate.id, oracle, 0), candidate=candidate, oracle=oracle, iteration=0)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("gpaw-cache")


@pytest.fixture(scope="module")
def pbe(cache_dir):
    """PBE on the mesh plus a band path, with the Si elemental reference (computed and cached)."""
    path = {"band_path": True, "band_path_labels": "GX", "band_path_npoints": 8}
    oracle = GpawPbeOracle(settings={**FAST, **path}, site={"cache_dir": str(cache_dir)})
    obs = oracle.run(request(silicon(), "pbe"))
    assert obs.ok, obs.reason
    return obs


@pytest.fixture(scope="module")
def hse_nscf(cache_dir):
    oracle = GpawHse06Oracle(settings=FAST, site={"cache_dir": str(cache_dir)})
    obs = oracle.run(request(silicon(), "hse"))
    assert obs.ok, obs.reason
    return obs


# -- band edges from eigenvalues (no GPAW) ----------------------------------------------------
def test_band_edges_indirect_gap_and_indices():
    # 1 spin, 3 k-points, 3 bands; 2 occupied: VBM at k0 (1.0), CBM at k2 (1.5)
    e = np.array([[[0.0, 1.0, 3.0], [-0.5, 0.5, 2.0], [-1.0, 0.2, 1.5]]])
    edges = band_edges(e, [2], fermi_level_ev=1.2)
    assert (edges.vbm_ev, edges.cbm_ev) == (1.0, 1.5)
    assert edges.gap_ev == pytest.approx(0.5)
    assert edges.direct_gap_ev == pytest.approx(1.3)  # at k2: 1.5 - 0.2
    assert (edges.k_vbm, edges.k_cbm, edges.metallic) == (0, 2, False)


def test_band_edges_overlap_fractional_offset_and_spin():
    e = np.array([[[0.0, 2.0, 3.0], [0.0, 1.0, 1.5]]])  # band 1 at k0 (2.0) above band 2 at k1 (1.5)
    overlap = band_edges(e, [2], 0.0)
    assert overlap.metallic and overlap.gap_ev == 0.0
    assert band_edges(e, None, fermi_level_ev=0.7) == BandEdges(0.7, 0.7, 0.0, 0.0, True)
    # only bands 3..4 stored (offset 3): 4 occupied -> valence is array band 0
    window = np.array([[[1.0, 2.0], [0.8, 2.4]]])
    assert band_edges(window, [4], 0.0, band_offset=3).gap_ev == pytest.approx(1.0)
    # spin-polarized: up has 2 occupied, down 1; VBM from up, CBM from down
    up = [[0.0, 1.0, 4.0]]
    down = [[0.0, 2.5, 3.0]]
    sp = band_edges(np.array([up, down]), [2, 1], 0.0)
    assert (sp.spin_vbm, sp.spin_cbm, sp.gap_ev) == (0, 1, pytest.approx(1.5))


# -- settings and installation --------------------------------------------------------------
def test_settings_validation_and_version_ignores_site_settings(tmp_path):
    with pytest.raises(ValidationError):
        GpawHse06Oracle(settings={"mode": "nscf", "bulk_reference": "bulk.cif"})
    with pytest.raises(ValidationError):
        GpawPbeOracle(settings={"ecut": 300})  # unknown key
    with pytest.raises(ValidationError, match=r"log_dir is a site setting, not science: give it as site\.log_dir"):
        GpawPbeOracle(settings={"log_dir": str(tmp_path)})
    a = GpawPbeOracle(site={"cache_dir": str(tmp_path / "a")})
    b = GpawPbeOracle(site={"cache_dir": str(tmp_path / "b"), "log_dir": str(tmp_path)})
    c = GpawPbeOracle(settings={"ecut_ev": 450})
    assert a.version == b.version != c.version
    assert b.cache_folder == tmp_path / "b" / "gpaw"
    assert pickle.loads(pickle.dumps(a)).version == a.version
    assert {"formation_energy_ev_per_atom", "e_above_hull_ev_per_atom", "sq_efficiency_percent"} <= set(a.properties)
    hse = GpawHse06Oracle().properties
    assert "sq_efficiency_percent" in hse
    assert "formation_energy_ev_per_atom" not in hse and "e_above_hull_ev_per_atom" not in hse  # off by default
    shipped = GpawPbeOracle(settings={"hull": {"source": "shipped"}})
    assert shipped.version != GpawPbeOracle(settings={"hull": {"source": "mp-api"}}).version
    off = {"formation_energy": False}
    assert GpawPbeOracle(settings=off).version == GpawPbeOracle(settings={**off, "hull": {"source": "auto"}}).version


# -- the MP2020 scale (stand-in references, no GPAW) ---------------------------------------------
def _formation(formula_structure, energy_ev: float, refs_ev_per_atom: dict[str, float]):
    """``_add_formation_energy`` on a stand-in ground state and stand-in GPAW elemental references."""
    from pymatgen.io.ase import AseAtomsAdaptor

    oracle = GpawPbeOracle(settings={"hull": {"source": "shipped"}})
    oracle.elemental_reference = lambda el, run: {
        "energy_ev_per_atom": refs_ev_per_atom[el], "source": "stand-in", "kpts": [1, 1, 1], "cached": True, "file": "",
    }
    props, extra = {}, {}
    oracle._add_formation_energy(None, {"atoms": AseAtomsAdaptor.get_atoms(formula_structure), "energy_ev": energy_ev},
                                 props, extra)
    return props, extra


def test_pbe_formation_energy_gets_the_mp2020_corrections_and_a_hull_distance():
    from pymatgen.core import Lattice, Structure

    from matloop.oracles.hull import ReferenceHull

    nacl = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    nacl = nacl.get_primitive_structure()
    # raw PBE formation energy -1.5 eV/atom; MP2020 adds -0.614 eV per Cl
    props, extra = _formation(nacl, 2 * -1.5 + -1.0 + -2.0, {"Na": -1.0, "Cl": -2.0})
    assert extra["pbe_formation_energy_ev_per_atom"] == pytest.approx(-1.5)
    assert extra["mp2020_correction_ev_per_atom"] == pytest.approx(-0.614 / 2, abs=1e-3)
    assert props["formation_energy_ev_per_atom"] == pytest.approx(-1.5 - 0.307, abs=1e-3)
    mp_nacl = ReferenceHull.shipped().find_phase("NaCl").formation_energy_ev_per_atom
    assert props["e_above_hull_ev_per_atom"] == pytest.approx(props["formation_energy_ev_per_atom"] - mp_nacl, abs=1e-6)
    assert extra["decomposition"] == [{"formula": "NaCl", "fraction": 1.0}]
    assert extra["hull_reference"] == ReferenceHull.shipped().version


def test_gga_u_compositions_get_no_mp2020_formation_energy():
    from pymatgen.core import Lattice, Structure

    feo = Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.3), ["Fe", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    props, extra = _formation(feo.get_primitive_structure(), -14.0, {"Fe": -5.0, "O": -4.5})
    assert props == {}
    assert "GGA+U" in extra["formation_energy_error"] and "Fe" in extra["formation_energy_error"]
    assert extra["pbe_formation_energy_ev_per_atom"] == pytest.approx((-14.0 + 9.5) / 2)


def test_missing_gpaw_is_a_failed_observation(monkeypatch):
    req = request(silicon(), "pbe")  # before the patch: ASE registers GPAW's file formats on first use
    monkeypatch.setitem(sys.modules, "gpaw", None)  # `import gpaw` now raises ImportError
    obs = GpawPbeOracle().run(req)
    assert obs.status == Status.FAILED
    assert obs.reason.startswith("GPAW is not installed: run `make setup`")


def test_composition_only_candidate_fails():
    obs = GpawPbeOracle().run(request(Candidate.from_composition("Si"), "pbe"))
    assert not obs.ok and "needs a structure" in obs.reason


# -- real calculations ----------------------------------------------------------------------
@needs_gpaw
def test_pbe_silicon_gap_edges_and_band_path(pbe):
    p = pbe.properties
    assert 0.5 < p["gap_ev"] < 0.75
    # the Gamma-X path has a point at 6/7 of the way, near the conduction minimum (0.85), which the mesh misses
    assert pbe.extra["band_path_gap_ev"] < pbe.extra["mesh_gap_ev"] - 0.02
    assert p["gap_ev"] == pytest.approx(min(pbe.extra["band_path_gap_ev"], pbe.extra["mesh_gap_ev"]))
    assert 2.2 < p["direct_gap_ev"] < 2.8  # at Gamma
    assert p["cbm_ev"] - p["vbm_ev"] == pytest.approx(p["gap_ev"])
    assert pbe.extra["vbm_kpt"] == [0.0, 0.0, 0.0]
    assert pbe.extra["kpts"] == [4, 4, 4] and pbe.extra["occupied_bands"] == [4]
    assert pbe.extra["converged"] and 3 <= pbe.extra["n_iterations"] < 40
    assert -6.0 < p["total_energy_ev_per_atom"] < -4.5  # GPAW's energy of Si is about -5.4 eV/atom


@needs_gpaw
def test_pbe_formation_energy_of_an_element_is_zero_and_reference_is_cached(pbe, cache_dir):
    assert pbe.properties["formation_energy_ev_per_atom"] == pytest.approx(0.0, abs=2e-3)
    assert pbe.properties["e_above_hull_ev_per_atom"] == pytest.approx(0.0, abs=2e-3)
    assert pbe.properties["sq_efficiency_percent"] == pytest.approx(
        100 * shockley_queisser_efficiency(pbe.properties["gap_ev"]), rel=1e-9
    )
    ref = pbe.extra["elemental_references"]["Si"]
    assert ref["source"] == "bulk:diamond" and ref["kpts"] == [4, 4, 4] and not ref["cached"]
    assert Path(ref["file"]).is_file() and Path(ref["file"]).parent.parent == cache_dir / "gpaw"
    again = GpawPbeOracle(settings=FAST, site={"cache_dir": str(cache_dir)}).elemental_reference("Si")
    assert again["cached"] and again["energy_ev_per_atom"] == ref["energy_ev_per_atom"]
    other = GpawPbeOracle(settings={**FAST, "ecut_ev": 210.0}, site={"cache_dir": str(cache_dir)})
    assert other._reference_key("Si", "bulk:diamond") != Path(ref["file"]).stem  # settings change the key


@needs_gpaw
def test_hse06_nscf_opens_the_silicon_gap(hse_nscf, pbe):
    p = hse_nscf.properties
    assert 1.0 < p["gap_ev"] < 1.45
    assert p["gap_ev"] > p["pbe_gap_ev"] + 0.3
    assert p["pbe_gap_ev"] == pytest.approx(pbe.extra["mesh_gap_ev"], abs=1e-3)
    # HSE06 lowers the VBM and raises the CBM
    assert hse_nscf.extra["vbm_shift_ev"] < -0.1 and hse_nscf.extra["cbm_shift_ev"] > 0.1
    assert p["direct_gap_ev"] > pbe.properties["direct_gap_ev"] + 0.4


@needs_gpaw
def test_hse06_band_edge_correction_from_a_bulk_file_matches_nscf(hse_nscf, cache_dir, tmp_path):
    cand = silicon()
    bulk_file = tmp_path / "Si_bulk.cif"
    cand.pmg_structure().to(filename=str(bulk_file))
    oracle = GpawHse06Oracle(
        settings={**FAST, "mode": "band_edge_correction", "bulk_reference": str(bulk_file)},
        site={"cache_dir": str(cache_dir)},
    )
    obs = oracle.run(request(cand, "hse-bec"))
    assert obs.ok, obs.reason
    assert obs.properties["gap_ev"] == pytest.approx(hse_nscf.properties["gap_ev"], abs=0.1)
    assert obs.properties["pbe_gap_ev"] == pytest.approx(hse_nscf.properties["pbe_gap_ev"], abs=1e-3)
    assert obs.extra["bulk_reference"]["cached"] is False
    assert list((cache_dir / "gpaw" / "hse06_shifts").glob("Si-*.json"))
    assert len(obs.extra["bulk_reference"]["edge_kpt_indices"]) == 2  # HSE06 at Gamma and X only, not all 8


@needs_gpaw
def test_unconverged_scf_is_a_failed_observation_from_a_worker_process(tmp_path):
    oracle = GpawPbeOracle(settings={**FAST, "maxiter": 2, "formation_energy": False}, site={"cache_dir": str(tmp_path)})
    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        obs = pool.submit(oracle.run, request(silicon(), "pbe")).result()  # pickles the oracle
    assert obs.status == Status.FAILED
    assert obs.reason.startswith("SCF not converged in 2 iterations"), obs.reason
    assert obs.oracle_version == oracle.version


@needs_gpaw
def test_silicon_carbide_formation_energy(tmp_path):
    from ase.build import bulk
    from pymatgen.io.ase import AseAtomsAdaptor

    sic = Candidate.from_structure(AseAtomsAdaptor.get_structure(bulk("SiC", "zincblende", a=4.36)))
    # carbon needs 300 eV: at 200 eV this gives -0.42 eV/atom
    obs = GpawPbeOracle(settings={**FAST, "ecut_ev": 300.0}, site={"cache_dir": str(tmp_path)}).run(request(sic, "pbe"))
    assert obs.ok, obs.reason
    # PBE about -0.23 eV/atom (Materials Project -0.2, experiment -0.38 against graphite)
    assert -0.33 < obs.properties["formation_energy_ev_per_atom"] < -0.15
    # MP -0.205 eV/atom; GPAW's carbon reference is diamond, MP's graphite (~0.1 eV/atom lower in PBE)
    assert abs(obs.properties["e_above_hull_ev_per_atom"]) < 0.1
    assert obs.extra["decomposition"] == [{"formula": "SiC", "fraction": 1.0}]
    refs = obs.extra["elemental_references"]
    assert {el: r["source"] for el, r in refs.items()} == {"C": "bulk:diamond", "Si": "bulk:diamond"}
    assert refs["C"]["kpts"] == [6, 6, 6] and refs["Si"]["kpts"] == [4, 4, 4]  # same density, own cells
    assert 1.2 < obs.properties["gap_ev"] < 2.1  # indirect; 1.4 converged, the 5x5x5 mesh misses X


def test_elemental_references_are_the_real_crystals_and_molecules():
    """Se and Te are helical chains (ASE calls them hcp), As/Sb/Bi A7, P black phosphorus, Ga alpha-Ga,
    Br and I diatomics: nearest-neighbour distances and volumes of the experimental structures."""
    oracle = GpawPbeOracle(settings={})
    expected = {  # element: (atoms in cell, nearest neighbour A, volume per atom A^3 or None for molecules)
        "Se": (3, 2.37, 27.3), "Te": (3, 2.83, 34.0), "As": (2, 2.52, 21.5), "Sb": (2, 2.91, 30.2),
        "Bi": (2, 3.07, 35.4), "P": (4, 2.22, 19.0), "Ga": (4, 2.48, 19.6), "Sn": (2, 2.81, 34.2),
        "Br": (2, 2.28, None), "I": (2, 2.67, None),
    }
    for element, (n, nn, vol) in expected.items():
        atoms, spinpol, source, is_molecule = oracle._reference_atoms(element)
        assert set(atoms.get_chemical_symbols()) == {element} and len(atoms) == n, element
        d = atoms.get_all_distances(mic=True)
        assert np.min(d[d > 0.1]) == pytest.approx(nn, abs=0.02), element
        assert is_molecule == (vol is None), element
        if vol is not None:
            assert atoms.get_volume() / n == pytest.approx(vol, rel=0.01), element


@needs_gpaw
def test_zinc_selenide_formation_energy_matches_the_materials_project(tmp_path):
    """A selenide end to end: the trigonal Se reference plus MP2020's Se correction land on MP's value
    (GPAW -0.925 vs MP -0.947 eV/atom at these settings)."""
    from ase.build import bulk
    from pymatgen.io.ase import AseAtomsAdaptor

    znse = Candidate.from_structure(AseAtomsAdaptor.get_structure(bulk("ZnSe", "zincblende", a=5.67)))
    settings = {"ecut_ev": 300.0, "kpt_density": 2.0, "smearing_width_ev": 0.05}
    obs = GpawPbeOracle(settings=settings, site={"cache_dir": str(tmp_path)}).run(request(znse, "pbe"))
    assert obs.ok, obs.reason
    assert obs.properties["formation_energy_ev_per_atom"] == pytest.approx(-0.947, abs=0.06)
    assert abs(obs.properties["e_above_hull_ev_per_atom"]) < 0.06
    assert obs.extra["elemental_references"]["Se"]["source"] == "crystal:P3_121"


@needs_gpaw
def test_iron_is_a_spin_polarized_metal(tmp_path):
    from ase.build import bulk
    from pymatgen.io.ase import AseAtomsAdaptor

    fe = Candidate.from_structure(AseAtomsAdaptor.get_structure(bulk("Fe")))
    settings = {"ecut_ev": 250.0, "kpt_density": 1.6, "smearing_width_ev": 0.1, "formation_energy": False}
    obs = GpawPbeOracle(settings=settings, site={"cache_dir": str(tmp_path)}).run(request(fe, "pbe"))
    assert obs.ok, obs.reason
    assert obs.extra["spin_polarized"] and obs.extra["metallic"]
    assert 2.0 < obs.extra["magnetic_moment_mub"] < 2.6  # PBE 2.2-2.3, experiment 2.2
    assert obs.properties["gap_ev"] == 0.0 and obs.properties["vbm_ev"] == obs.properties["cbm_ev"]


@needs_gpaw
def test_relaxation_finds_the_pbe_lattice_constant(tmp_path):
    from ase.build import bulk
    from pymatgen.core import Structure
    from pymatgen.io.ase import AseAtomsAdaptor

    stretched = Candidate.from_structure(AseAtomsAdaptor.get_structure(bulk("Si", "diamond", a=5.60)))
    settings = {**FAST, "ecut_ev": 300.0, "relax": True, "formation_energy": False}
    obs = GpawPbeOracle(settings=settings, site={"cache_dir": str(tmp_path)}).run(request(stretched, "pbe"))
    assert obs.ok, obs.reason
    relaxed = Structure.from_dict(obs.extra["relaxed_structure"])
    a = (4 * relaxed.volume) ** (1 / 3)  # conventional cubic edge from the 2-atom cell
    assert 5.42 < a < 5.52  # PBE 5.47 A (experiment 5.43)


@needs_gpaw
def test_slme_of_direct_gap_gaas_approaches_its_shockley_queisser_limit(tmp_path):
    """Opt-in SLME from the RPA absorption: GaAs (direct gap) absorbs strongly above its gap, so a
    0.5 um film reaches nearly the detailed-balance limit of its own gap; the absorption
    coefficient 0.5 eV above the gap is of the measured order (1e4-1e5 /cm)."""
    from ase.build import bulk
    from pymatgen.io.ase import AseAtomsAdaptor

    gaas = Candidate.from_structure(AseAtomsAdaptor.get_structure(bulk("GaAs", "zincblende", a=5.65)), source="test")
    settings = {"ecut_ev": 250.0, "kpts": (6, 6, 6), "smearing_width_ev": 0.01, "empty_bands": 12,
                "formation_energy": False, "slme": True, "optics_ecut_ev": 20.0}
    obs = GpawPbeOracle(settings=settings, site={"cache_dir": str(tmp_path)}).run(request(gaas, "pbe"))
    assert obs.ok, obs.reason
    p = obs.properties
    assert p["direct_gap_ev"] == pytest.approx(p["gap_ev"], abs=1e-6)  # direct at Gamma
    assert 0.3 < p["gap_ev"] < 0.9  # PBE underestimates GaAs (1.52 eV measured)
    assert 0.85 * p["sq_efficiency_percent"] < p["slme_percent"] < p["sq_efficiency_percent"] + 0.2
    assert 1e4 < obs.extra["slme"]["alpha_per_cm_at_gap_plus_0.5_ev"] < 3e5
