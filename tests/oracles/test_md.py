"""MLIP-MD ion-migration tier: Arrhenius and Nernst-Einstein math, MSD statistics, MD runs."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
from pydantic import ValidationError
from pymatgen.core import Lattice, Structure

from matloop.oracles.md import (
    KB_EV_PER_K,
    MlipMdOracle,
    MlipMdSettings,
    arrhenius_fit,
    framework_centres,
    nernst_einstein_conductivity,
    run_nvt,
    stop_reason,
    supercell_for,
    tracer_diffusivity,
)
from matloop.core.records import Candidate, OracleError, Request, Status


def li2o_primitive() -> Structure:
    s = Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.61), ["O", "Li"], [[0, 0, 0], [0.25, 0.25, 0.25]])
    return s.get_primitive_structure()


def request(structure: Structure) -> Request:
    return Request("r-md", Candidate.from_structure(structure, source="test"), "mlip-md", 0)


# -- Arrhenius -----------------------------------------------------------------------------
TEMPS = [600.0, 800.0, 1000.0, 1200.0]


def synthetic_d(ea_ev: float, d0: float, temps=TEMPS) -> np.ndarray:
    return d0 * np.exp(-ea_ev / (KB_EV_PER_K * np.asarray(temps)))


def test_arrhenius_recovers_exact_activation_energy():
    d = synthetic_d(0.25, 1e-3)
    fit = arrhenius_fit(TEMPS, d, 0.1 * d)
    assert fit.activation_energy_ev == pytest.approx(0.25, abs=1e-10)
    assert fit.ln_prefactor == pytest.approx(math.log(1e-3), abs=1e-9)
    assert fit.r_squared == pytest.approx(1.0, abs=1e-12)
    assert fit.chi2_reduced == pytest.approx(0.0, abs=1e-15)
    assert fit.diffusivity(300.0) == pytest.approx(1e-3 * math.exp(-0.25 / (KB_EV_PER_K * 300)), rel=1e-9)
    # 10 % errors on each D over 600-1200 K: the standard error of Ea is ~0.01 eV
    assert 0.003 < fit.activation_energy_sigma_ev < 0.03
    assert fit.n_points == 4


def test_arrhenius_two_points_propagate_their_sigmas():
    d = synthetic_d(0.4, 1e-2, temps=[800.0, 1200.0])
    fit = arrhenius_fit([800.0, 1200.0], d, 0.1 * d)
    assert fit.activation_energy_ev == pytest.approx(0.4, abs=1e-10)
    # sigma(Ea) = sqrt(2) * 0.1 / (x1 - x2) with x = 1/(kT)
    dx = 1 / (KB_EV_PER_K * 800) - 1 / (KB_EV_PER_K * 1200)
    assert fit.activation_energy_sigma_ev == pytest.approx(math.sqrt(2) * 0.1 / dx, rel=1e-9)
    assert math.isnan(fit.chi2_reduced)


def test_arrhenius_weights_ignore_a_point_with_huge_error():
    temps = TEMPS + [1400.0]
    d = synthetic_d(0.25, 1e-3, temps)
    d[-1] *= 50  # outlier
    sig = 0.05 * d
    sig[-1] = 1e4 * d[-1]
    fit = arrhenius_fit(temps, d, sig)
    assert fit.activation_energy_ev == pytest.approx(0.25, abs=1e-4)


def test_arrhenius_noisy_data_within_its_error_bar():
    rng = np.random.default_rng(7)
    temps = np.linspace(700, 1500, 6)
    d = synthetic_d(0.3, 5e-3, temps) * np.exp(rng.normal(0, 0.15, size=6))
    fit = arrhenius_fit(temps, d, 0.15 * d)
    assert abs(fit.activation_energy_ev - 0.3) < 3 * fit.activation_energy_sigma_ev
    unweighted = arrhenius_fit(temps, d)
    assert abs(unweighted.activation_energy_ev - 0.3) < 3 * unweighted.activation_energy_sigma_ev


def test_arrhenius_rejects_bad_input():
    with pytest.raises(ValueError):
        arrhenius_fit([800.0], [1e-5], [1e-6])
    with pytest.raises(ValueError):
        arrhenius_fit([800.0, 900.0], [1e-5, -1e-5], [1e-6, 1e-6])
    with pytest.raises(ValueError, match="three"):
        arrhenius_fit([800.0, 900.0], [1e-5, 2e-5])


def test_nernst_einstein_hand_computed():
    # n = 1e22 cm^-3, D = 1e-8 cm^2/s, 300 K: n e^2 D / (kB T) = 6.1977e-4 S/cm
    sigma = nernst_einstein_conductivity(1e-8, 1e22, 300.0)
    assert sigma == pytest.approx(6.1977e-4, rel=1e-4)
    assert nernst_einstein_conductivity(1e-8, 1e22, 300.0, charge=2) == pytest.approx(4 * sigma)
    assert nernst_einstein_conductivity(1e-8, 1e22, 300.0, haven_ratio=0.5) == pytest.approx(2 * sigma)


# -- MSD statistics ------------------------------------------------------------------------
def random_walk(d_a2_per_fs: float, dt_fs: float, n_frames: int, n_ions: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    steps = rng.normal(0.0, math.sqrt(2 * d_a2_per_fs * dt_fs), size=(n_frames - 1, n_ions, 3))
    return np.concatenate([np.zeros((1, n_ions, 3)), np.cumsum(steps, axis=0)])


def test_tracer_diffusivity_of_a_random_walk():
    """The library's diffusivity of a known random walk, with a fixed framework and with none."""
    d_true = 1e-3  # A^2/fs = 1e-4 cm^2/s
    walk = random_walk(d_true, 20.0, 800, 40)  # frames 20 fs apart: 2 fs steps, every 10th kept
    for framework in (0, 8):
        frames = np.concatenate([walk, np.zeros((800, framework, 3))], axis=1)
        mobile = np.arange(40 + framework) < 40
        res = tracer_diffusivity(frames, mobile, np.eye(3) * 20.0, 2.0, 10, hop_distance_a=2.0)
        assert res.diffusivity_cm2_per_s == pytest.approx(1e-4, rel=0.15)
        assert 0 < res.library_sigma_cm2_per_s <= res.sigma_cm2_per_s < 0.5 * res.diffusivity_cm2_per_s
        # N_ion * 6 D t / d^2 = 40 * 6 * 1e-3 * 15980 / 4, to the accuracy of D
        assert res.n_hops == pytest.approx(40 * 6 * 1e-3 * 15980 / 4, rel=0.15)
        assert res.relative_error == res.sigma_cm2_per_s / res.diffusivity_cm2_per_s


def test_tracer_diffusivity_of_a_run_shorter_than_the_lag_window_says_so():
    walk = random_walk(1e-3, 20.0, 30, 10)  # 0.6 ps: the library fits lags from 1 ps
    with pytest.raises(OracleError, match="too short"):
        tracer_diffusivity(walk, np.ones(10, dtype=bool), np.eye(3) * 20.0, 2.0, 10, hop_distance_a=2.0)


# -- the adaptive stopping rule --------------------------------------------------------------
def test_stop_rule_ends_on_hops_or_error_else_extends_until_a_cap():
    s = MlipMdSettings(target_hops=100, target_relative_error=0.2, max_production_steps=10000, max_md_wall_s=600)
    assert stop_reason(150, 0.5, 2000, 10.0, s) == "hop target"
    assert stop_reason(40, 0.1, 2000, 10.0, s) == "error target"
    assert stop_reason(40, 0.5, 2000, 10.0, s) is None  # extend
    assert stop_reason(40, 0.5, 10000, 10.0, s) == "step cap"
    assert stop_reason(40, 0.5, 2000, 601.0, s) == "time cap"
    assert stop_reason(40, math.inf, 2000, 10.0, MlipMdSettings(max_md_wall_s=None)) is None  # no time cap
    assert stop_reason(0, math.inf, 20, 0.0, MlipMdSettings(adaptive=False)) == "fixed length"


def test_melt_guard_watches_cations_and_group_centres_not_rotating_anions():
    symbols = ["Li", "Li", "P", "S", "S", "S", "S"]
    assert framework_centres(symbols, "Li").tolist() == [False, False, True, False, False, False, False]
    # a framework of the anion alone (Li3N) is judged on it
    assert framework_centres(["Li", "Li", "Li", "N"], "Li").tolist() == [False, False, False, True]
    assert framework_centres(["Li", "Mn", "Cl", "Cl"], "Li").tolist() == [False, True, False, False]


def test_supercell_grows_the_thinnest_direction():
    assert supercell_for(np.eye(3) * 4.0, 2, 16) == [2, 2, 2]
    # c twice a: a and b grow first
    assert supercell_for(np.diag([3.0, 3.0, 6.0]), 2, 16) == [3, 3, 1]
    assert supercell_for(np.eye(3) * 10.0, 100, 64) == [1, 1, 1]


# -- the MD driver with ASE's EMT (fast, exact physics of a known potential) ---------------
class NanCalculator:
    """ASE calculator that returns NaN energies: stands for a model that breaks down."""

    def __new__(cls):
        from ase.calculators.calculator import Calculator, all_changes

        class _Nan(Calculator):
            implemented_properties = ("energy", "forces")

            def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
                super().calculate(atoms, properties, system_changes)
                self.results = {"energy": float("nan"), "forces": np.zeros((len(atoms), 3))}

        return _Nan()


@pytest.mark.parametrize("thermostat", ["bussi", "langevin"])
def test_nvt_holds_temperature_with_emt(thermostat):
    from ase.build import bulk
    from ase.calculators.emt import EMT

    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2))
    s = MlipMdSettings(
        temperatures_k=[600, 900], thermostat=thermostat, equilibration_steps=60, production_steps=200,
        sample_every_steps=5, bussi_taut_fs=20.0, friction_per_fs=0.05,
    )
    times, frames, mean_t = run_nvt(atoms, EMT(), 600.0, s, np.random.default_rng(1))
    assert frames.shape == (41, 32, 3)
    assert times[-1] == pytest.approx(400.0)  # 200 steps of 2 fs
    assert mean_t == pytest.approx(600.0, rel=0.2)
    # centre-of-mass drift removed
    assert np.abs(frames.mean(axis=1) - frames[0].mean(axis=0)).max() < 1e-8


def test_nvt_explosion_guard_trips_on_nan_energy():
    from ase.build import bulk

    atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
    s = MlipMdSettings(equilibration_steps=20, production_steps=20, guard_every_steps=5)
    with pytest.raises(OracleError, match="exploded"):
        run_nvt(atoms, NanCalculator(), 600.0, s, np.random.default_rng(0))


def test_nvt_explosion_guard_trips_on_close_atoms():
    from ase.build import bulk
    from ase.calculators.emt import EMT

    atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
    s = MlipMdSettings(equilibration_steps=20, production_steps=20, min_distance_a=3.0)
    with pytest.raises(OracleError, match="apart"):
        run_nvt(atoms, EMT(), 600.0, s, np.random.default_rng(0))


# -- the oracle ----------------------------------------------------------------------------
def test_settings_validate_and_version_ignores_site():
    with pytest.raises(ValidationError, match="temperatures_k"):
        MlipMdOracle(settings={"temperatures_k": [1000.0]})
    with pytest.raises(ValidationError, match="thermostat"):
        MlipMdOracle(settings={"thermostat": "nose"})
    a = MlipMdOracle(site={"torch_threads": 1})
    b = MlipMdOracle(site={"torch_threads": 2, "device": "cpu"})
    assert a.version == b.version
    with pytest.raises(ValueError, match=r"device is a site setting, not science: give it as site\.device"):
        MlipMdOracle(settings={"device": "cpu"})
    assert MlipMdOracle(settings={"temperatures_k": [1200, 900]}).settings.temperatures_k == [900.0, 1200.0]
    clone = pickle.loads(pickle.dumps(a))
    assert clone.version == a.version


@pytest.mark.parametrize(
    ("settings", "expected"),
    [({}, ("chgnet", "0.3.0")), ({"model": "chgnet:r2scan"}, ("chgnet", "r2scan")),
     ({"model": "sevennet"}, ("sevennet", "7net-0")), ({"model": "chgnet", "model_version": "0.2.0"}, ("chgnet", "0.2.0"))],
)
def test_model_is_the_mlip_oracles_setting(settings, expected):
    """The same model and model_version keys as the mlip oracle, older md spellings (backend:model) included."""
    s = MlipMdOracle(settings=settings).settings
    assert (s.model, s.model_version) == expected


def test_candidate_without_mobile_ion_fails():
    s = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    obs = MlipMdOracle().run(request(s))
    assert obs.status == Status.FAILED
    assert "no Li" in obs.reason


def test_overlapping_atoms_fail_before_md():
    s = Structure(Lattice.cubic(4.0), ["Li", "F"], [[0, 0, 0], [0.05, 0, 0]])
    obs = MlipMdOracle().run(request(s))
    assert obs.status == Status.FAILED
    assert "overlap" in obs.reason


def test_oracle_success_path_with_emt_liquid_copper(monkeypatch):
    """The whole pipeline (relax, supercell, adaptive MD at three T, library MSD, Arrhenius,
    Nernst-Einstein) on hot EMT copper, where every atom is mobile and hops are plentiful.

    The first 300-step chunk (0.6 ps) is shorter than the library's 1 ps lag window, so every
    temperature is extended once and then stops on its hop or error target (3000 K is left
    out: EMT copper stays a superheated crystal there, 0.7 hops in 6 ps)."""
    from ase.calculators.emt import EMT

    import matloop.oracles.md as md

    monkeypatch.setattr(md, "load_calculator", lambda *args, **kwargs: EMT())
    cu = Structure.from_spacegroup("Fm-3m", Lattice.cubic(3.61), ["Cu"], [[0, 0, 0]])
    oracle = MlipMdOracle(
        settings=dict(
            mobile_ion="Cu", temperatures_k=[3750, 4500, 5250], supercell=[2, 2, 2], equilibration_steps=50,
            production_steps=300, sample_every_steps=5, min_hops=3, bussi_taut_fs=20.0, target_hops=10,
            max_production_steps=3000,
        )
    )
    obs = oracle.run(request(cu))
    assert obs.ok, obs.reason
    extra = obs.extra
    assert extra["n_atoms"] == 32 and extra["n_mobile"] == 32
    assert extra["hop_distance_a"] == pytest.approx(3.61 / math.sqrt(2), rel=0.02)  # fcc nearest neighbours
    assert [r["flag"] for r in extra["temperatures"]] == [None, None, None]
    assert {r["stop"] for r in extra["temperatures"]} <= {"hop target", "error target"}
    steps = [r["production_steps"] for r in extra["temperatures"]]
    assert all(n >= 600 and n % 300 == 0 for n in steps), steps  # extended in whole chunks
    d = [r["diffusivity_cm2_per_s"] for r in extra["temperatures"]]
    # liquid-metal diffusivities (1.2 ps per temperature is too short to order them reliably)
    assert all(1e-6 < x < 1e-3 for x in d)
    fit = extra["arrhenius"]
    assert fit["n_points"] == 3
    assert obs.properties["migration_energy_ev"] == fit["activation_energy_ev"]
    assert obs.uncertainties["migration_energy_ev"] == fit["activation_energy_sigma_ev"] > 0
    d300 = math.exp(fit["ln_prefactor"] - fit["activation_energy_ev"] / (KB_EV_PER_K * 300.0))
    assert obs.properties["diffusivity_cm2_per_s_300k"] == pytest.approx(d300, rel=1e-9)
    assert obs.properties["conductivity_s_per_cm_300k"] == pytest.approx(
        nernst_einstein_conductivity(d300, extra["mobile_ion_density_per_cm3"], 300.0), rel=1e-9
    )
    # 32 atoms in (2 x 3.6 A)^3: 8.6e22 cm^-3
    assert extra["mobile_ion_density_per_cm3"] == pytest.approx(32 / (7.2e-8) ** 3, rel=0.05)


@pytest.mark.slow  # stochastic at 12 atoms: of three 1-2 ps runs one fit, one got a negative MSD slope at 1800 K,
# one melted at 1800 K with 0.2 hops at 1500 K; the default suite runs the whole tier with EMT copper above
def test_short_chgnet_md_on_li2o():
    """2 ps of CHGNet MD per temperature on 12-atom Li2O (superionic above ~1200 K) gives a fit.

    One real MLIP run through the whole oracle: ordering check, relaxation, MD, the library's
    diffusivity (2 ps: lags from its 1 ps window to the end), Arrhenius and Nernst-Einstein.
    """
    pytest.importorskip("chgnet")
    oracle = MlipMdOracle(
        settings=dict(
            temperatures_k=[1500, 1800],
            supercell=[2, 2, 1],
            equilibration_steps=20,
            production_steps=1000,
            adaptive=False,
            sample_every_steps=5,
            min_hops=0.5,
            # 8 Li x 201 frames: the library fits lags from its fixed 1 ps up to the whole 2 ps run (with the
            # default min_obs 30 it would stop at 53 frames, below 1 ps; 600 steps left a 1.0-1.2 ps window
            # whose slope came out negative in one run of three)
            msd_min_observations=8,
            bussi_taut_fs=20.0,
        )
    )
    obs = oracle.run(request(li2o_primitive()))
    assert obs.ok, obs.reason
    assert 0.0 < obs.properties["migration_energy_ev"] < 3.0
    assert obs.uncertainties["migration_energy_ev"] > 0
    assert obs.properties["diffusivity_cm2_per_s_300k"] > 0
    assert obs.properties["conductivity_s_per_cm_300k"] > 0
    runs = obs.extra["temperatures"]
    assert [r["temperature_k"] for r in runs] == [1500, 1800]
    assert [r["stop"] for r in runs] == ["fixed length"] * 2
    assert obs.extra["n_atoms"] == 12 and obs.extra["n_mobile"] == 8
    # Li-Li distance in antifluorite Li2O is a/2 = 2.3 A (CHGNet cell within 3 %)
    assert obs.extra["hop_distance_a"] == pytest.approx(2.3, rel=0.04)
    assert all(abs(r["mean_temperature_k"] - r["temperature_k"]) < 0.3 * r["temperature_k"] for r in runs)
    assert obs.extra["ordering"] is None  # an ordered structure is used as it is


@pytest.mark.slow
def test_li2o_migration_energy_from_longer_md():
    """Li2O superionic phase: CHGNet MD gives a Li migration energy of a few tenths of an eV."""
    pytest.importorskip("chgnet")
    oracle = MlipMdOracle(
        settings=dict(
            temperatures_k=[1400, 1600, 1800],
            supercell=[2, 2, 2],
            equilibration_steps=500,
            production_steps=3000,
            sample_every_steps=10,
        )
    )
    obs = oracle.run(request(li2o_primitive()))
    assert obs.ok, obs.reason
    assert 0.05 < obs.properties["migration_energy_ev"] < 1.5
    assert obs.extra["arrhenius"]["n_points"] >= 2
