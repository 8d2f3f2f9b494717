"""MLIP molecular-dynamics tier: migration energy, diffusivity and conductivity of a mobile ion.

``MlipMdOracle`` relaxes the cell with the MLIP, builds a supercell, and runs NVT molecular
dynamics (ASE ``Bussi`` or ``Langevin``) at several temperatures. At each temperature it
draws Maxwell-Boltzmann velocities, equilibrates, then records the unwrapped positions of
the production run and computes the tracer diffusivity of the mobile ion from its mean
squared displacement (MSD). A weighted least-squares Arrhenius fit of ``ln D`` against
``1/(k_B T)`` gives the migration (activation) energy with its standard error, and the
extrapolated 300 K diffusivity; the Nernst-Einstein relation turns that into a conductivity.

Statistics, stated once:

* ``D`` and its fit error come from pymatgen-analysis-diffusion's ``DiffusionAnalyzer``
  (all-time-origin MSD of the mobile ions over lags from 1 ps, framework drift removed);
  ``sigma_D`` is the larger of that error and the counting floor ``D / sqrt(n_hops)``, with
  ``n_hops = N_ion * 6 D t / d_hop**2`` and ``d_hop`` the shortest distance between
  mobile-ion sites of the relaxed cell.
* Adaptive length (``adaptive``, default): every temperature is equilibrated, then the
  production runs are extended in turn by ``production_steps`` until each reaches
  ``target_hops`` hops or a relative error of ``D`` below ``target_relative_error``, or its
  ``max_production_steps``, or the evaluation's ``max_md_wall_s`` ends them
  (``stop_reason``). So a slow low-temperature point is extended, not dropped; each
  temperature records why it stopped.
* A temperature whose framework melted (MSD of the non-mobile cations and group centres above
  ``max_framework_msd_a2``; rotating PS4/PO4 anions are not a melt, see
  ``framework_centres``), with fewer than ``min_hops`` hops, or too short for the library's
  lag window when it stopped, is flagged and left out of the fit; with fewer than two usable
  temperatures the evaluation fails with a reason ("too few hops"), never a number.
* Weighted Arrhenius fit of ``ln D`` (weights ``(D / sigma_D)**2``) with its covariance.
* Nernst-Einstein with Haven ratio 1 (tracer = charge diffusivity, no correlated hops) and
  the Arrhenius line extrapolated to 300 K (no phase change assumed below the MD range).

Learn-on-the-fly fine-tuning (the ``finetune`` setting, CHGNet only; off by default): after
relaxation and equilibration, snapshots of the equilibration runs at every temperature (every
``finetune.snapshot_every_steps`` steps) are scored by the force disagreement of CHGNet and a
partner potential (SevenNet by default); up to ``finetune.max_frames`` frames above
``finetune.disagreement_ev_per_a`` are labelled (GPAW PBE single points, or the partner), CHGNet
is fine-tuned on them once (weights cached per chemical system under the site's
``cache_dir/chgnet-finetune``) and every production run continues with the fine-tuned model
(``matloop.oracles.finetune.finetune_round``). With fewer than two uncertain frames production
keeps the pretrained model. ``extra["finetune"]`` records the round (frames, disagreements,
label source, force error before and after, the fine-tuned version ``<base>-ft-<key>``,
whether cached, seconds); ``extra["model"]`` names the weights production ran with. The
oracle's version ignores ``finetune`` while it is disabled, so earlier versions stand.

Disordered structures are ordered first (``matloop.oracles.ordering``; ``extra["ordering"]``).

An MD run that explodes (non-finite energy, runaway temperature, atoms closer than
``min_distance_a``) fails the whole evaluation with ``OracleError``.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from matloop.core.records import Candidate, OracleError, OracleResult

from .finetune import FinetuneSettings, finetune_round
from .mlip import (
    MlipModelOracle,
    MlipModelSettings,
    check_elements,
    known_models,
    load_calculator,
    min_distance_a,
    model_provenance,
    relax_atoms,
    resolve_device,
)
from .ordering import OrderingSettings, ml_energy_function, order_structure

#: Boltzmann constant in eV/K and in J/K, elementary charge in C
KB_EV_PER_K = 8.617333262e-5
KB_J_PER_K = 1.380649e-23
E_CHARGE_C = 1.602176634e-19
#: 1 A^2/fs = 1e-16 cm^2 / 1e-15 s
A2_PER_FS_TO_CM2_PER_S = 0.1
_ION_CHARGE = {"Li": 1, "Na": 1, "K": 1, "Ag": 1, "Cu": 1, "H": 1, "F": -1, "Mg": 2, "Zn": 2, "Ca": 2, "O": -2}


# -- pure functions ------------------------------------------------------------------------
@dataclass(frozen=True)
class ArrheniusFit:
    """``D(T) = D0 exp(-Ea / (k_B T))`` fitted to diffusivities.

    Attributes:
        activation_energy_ev: ``Ea``.
        activation_energy_sigma_ev: standard error of ``Ea``.
        ln_prefactor: ``ln D0`` with ``D0`` in the units of the input diffusivities.
        ln_prefactor_sigma: its standard error.
        covariance: 2 x 2 covariance of (``ln D0``, ``-Ea``).
        r_squared: weighted coefficient of determination of the line in ``ln D``.
        chi2_reduced: weighted residual sum of squares / (n - 2); NaN for two points.
        n_points: number of temperatures fitted.
    """

    activation_energy_ev: float
    activation_energy_sigma_ev: float
    ln_prefactor: float
    ln_prefactor_sigma: float
    covariance: tuple[tuple[float, float], tuple[float, float]]
    r_squared: float
    chi2_reduced: float
    n_points: int

    def diffusivity(self, temperature_k: float) -> float:
        """The fitted diffusivity at ``temperature_k`` (units of the input)."""
        return math.exp(self.ln_prefactor - self.activation_energy_ev / (KB_EV_PER_K * temperature_k))

    def ln_diffusivity_sigma(self, temperature_k: float) -> float:
        """Standard error of ``ln D`` at ``temperature_k`` from the parameter covariance."""
        x = 1.0 / (KB_EV_PER_K * temperature_k)
        (c00, c01), (_, c11) = self.covariance
        return math.sqrt(max(c00 + 2 * x * c01 + x * x * c11, 0.0))


def arrhenius_fit(
    temperatures_k: Sequence[float],
    diffusivities: Sequence[float],
    sigmas: Sequence[float] | None = None,
) -> ArrheniusFit:
    """Weighted least-squares fit of ``ln D = ln D0 - Ea x`` with ``x = 1 / (k_B T)``.

    Args:
        temperatures_k: at least two temperatures (K).
        diffusivities: positive diffusivities, any unit (``D0`` comes out in it).
        sigmas: 1-sigma errors of the diffusivities; the weight of a point is
            ``(D / sigma)**2`` (the variance of ``ln D`` is ``(sigma / D)**2``). None: equal
            weights and errors from the scatter (needs at least three points).

    The covariance uses the given sigmas as absolute errors, inflated by the reduced
    chi-square when that exceeds one (scatter larger than the error bars claim).
    """
    t = np.asarray(temperatures_k, dtype=float)
    d = np.asarray(diffusivities, dtype=float)
    if t.shape != d.shape or t.ndim != 1 or len(t) < 2:
        raise ValueError("need matching 1-d arrays of at least two temperatures and diffusivities")
    if np.any(d <= 0) or np.any(t <= 0) or not np.all(np.isfinite(d)):
        raise ValueError("temperatures and diffusivities must be positive and finite")
    x = 1.0 / (KB_EV_PER_K * t)
    y = np.log(d)
    n = len(t)
    if sigmas is None:
        if n < 3:
            raise ValueError("an unweighted fit needs at least three points for its error")
        w = np.ones(n)
    else:
        s = np.asarray(sigmas, dtype=float)
        if s.shape != t.shape or np.any(s <= 0) or not np.all(np.isfinite(s)):
            raise ValueError("sigmas must be positive, finite and one per point")
        w = (d / s) ** 2
    a = np.column_stack([np.ones(n), x])
    normal = a.T @ (w[:, None] * a)
    cov = np.linalg.inv(normal)
    beta = cov @ (a.T @ (w * y))
    resid = y - a @ beta
    rss = float(np.sum(w * resid**2))
    dof = n - 2
    chi2_red = rss / dof if dof > 0 else float("nan")
    if sigmas is None:
        cov = cov * chi2_red
    elif dof > 0 and chi2_red > 1:
        cov = cov * chi2_red
    ybar = float(np.sum(w * y) / np.sum(w))
    tss = float(np.sum(w * (y - ybar) ** 2))
    r2 = 1.0 - rss / tss if tss > 0 else float("nan")
    return ArrheniusFit(
        activation_energy_ev=float(-beta[1]),
        activation_energy_sigma_ev=float(math.sqrt(cov[1, 1])),
        ln_prefactor=float(beta[0]),
        ln_prefactor_sigma=float(math.sqrt(cov[0, 0])),
        covariance=((float(cov[0, 0]), float(cov[0, 1])), (float(cov[1, 0]), float(cov[1, 1]))),
        r_squared=r2,
        chi2_reduced=chi2_red,
        n_points=n,
    )


def nernst_einstein_conductivity(
    diffusivity_cm2_per_s: float,
    number_density_per_cm3: float,
    temperature_k: float,
    charge: int = 1,
    haven_ratio: float = 1.0,
) -> float:
    """Ionic conductivity (S/cm): ``n (z e)^2 D / (k_B T H_R)``.

    Args:
        number_density_per_cm3: mobile ions per cm^3.
        charge: ionic charge number ``z``.
        haven_ratio: ``D_tracer / D_charge``; 1 when ion hops are uncorrelated.
    """
    q = charge * E_CHARGE_C
    return number_density_per_cm3 * q * q * diffusivity_cm2_per_s / (KB_J_PER_K * temperature_k * haven_ratio)


@dataclass(frozen=True)
class Diffusivity:
    """Tracer diffusivity of one trajectory with its error and the hops it amounts to."""

    diffusivity_cm2_per_s: float
    sigma_cm2_per_s: float
    library_sigma_cm2_per_s: float
    n_hops: float

    @property
    def relative_error(self) -> float:
        """``sigma / D`` (infinite for a non-positive ``D``)."""
        return self.sigma_cm2_per_s / self.diffusivity_cm2_per_s if self.diffusivity_cm2_per_s > 0 else math.inf


def tracer_diffusivity(
    frames: np.ndarray,
    mobile: np.ndarray,
    lattice_matrix: np.ndarray,
    timestep_fs: float,
    sample_every_steps: int,
    hop_distance_a: float,
    min_observations: int = 30,
) -> Diffusivity:
    """Tracer diffusivity of the mobile ions from pymatgen-analysis-diffusion's ``DiffusionAnalyzer``.

    The library fits the all-time-origin MSD over lags from 1 ps (``smoothed="max"``) after
    removing the framework's mean drift, and gives the standard deviation of that fit. The
    reported ``sigma`` is the larger of that and the counting floor ``D / sqrt(n_hops)``
    (the fit's error ignores that few hops make a noisy MSD), with
    ``n_hops = N_ion * 6 D t / d_hop**2``.

    Args:
        frames: ``n_frames x n_atoms x 3`` unwrapped Cartesian positions (A), equally spaced.
        mobile: boolean mask of the mobile ions among the atoms.
        lattice_matrix: the (fixed) cell.
        timestep_fs, sample_every_steps: MD step and the stride between frames.
        hop_distance_a: length of one hop.
        min_observations: the library's ``min_obs``: lags are used up to
            ``N_ion * n_frames / min_observations`` frames.

    Raises:
        OracleError: "too short" when the run is shorter than the library's shortest lag
            window (it needs frames beyond 1 ps and enough time origins).
    """
    from pymatgen.analysis.diffusion.analyzer import DiffusionAnalyzer
    from pymatgen.core import Lattice, Structure

    frames = np.asarray(frames, dtype=float)
    mobile = np.asarray(mobile, dtype=bool)
    species = ["Li" if m else "Xe" for m in mobile]
    disp = np.transpose(frames - frames[0], (1, 0, 2))
    coords = frames[0]
    if mobile.all():
        # the library removes the framework's mean drift and needs a framework site; the frames
        # already have the cell's centre of mass removed, so a fixed ghost site changes nothing
        species.append("Xe")
        disp = np.concatenate([disp, np.zeros((1,) + disp.shape[1:])])
        coords = np.concatenate([coords, np.zeros((1, 3))])
    structure = Structure(Lattice(lattice_matrix), species, coords, coords_are_cartesian=True, validate_proximity=False)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            da = DiffusionAnalyzer(structure, disp, "Li", temperature=300, time_step=timestep_fs,
                                   step_skip=sample_every_steps, smoothed="max",
                                   min_obs=min_observations)
    except ValueError as exc:
        raise OracleError(f"too short for a diffusivity: {exc}") from exc
    d = float(da.diffusivity)
    duration_fs = (len(frames) - 1) * timestep_fs * sample_every_steps
    n_ions = int(mobile.sum())
    d_a2_fs = d / A2_PER_FS_TO_CM2_PER_S
    n_hops = max(0.0, n_ions * 6 * d_a2_fs * duration_fs / hop_distance_a**2)
    library_sigma = float(da.diffusivity_std_dev)
    sigma_count = abs(d) / math.sqrt(n_hops) if n_hops > 0 else abs(d)
    return Diffusivity(
        diffusivity_cm2_per_s=d,
        sigma_cm2_per_s=max(library_sigma, sigma_count),
        library_sigma_cm2_per_s=library_sigma,
        n_hops=n_hops,
    )


def stop_reason(
    n_hops: float, relative_error: float, production_steps: int, md_wall_s: float, s: "MlipMdSettings"
) -> str | None:
    """Why the production run at one temperature ends now, or None to extend it by another chunk.

    The adaptive rule: enough hops (``target_hops``) or a small enough relative error of
    ``D`` (``target_relative_error``) ends it; otherwise it runs on until the per-temperature
    step cap (``max_production_steps``) or the whole evaluation's time cap (``max_md_wall_s``).
    With ``adaptive`` off, one chunk of ``production_steps`` is the run.
    """
    if not s.adaptive:
        return "fixed length"
    if n_hops >= s.target_hops:
        return "hop target"
    if relative_error <= s.target_relative_error:
        return "error target"
    if production_steps >= s.max_production_steps:
        return "step cap"
    if s.max_md_wall_s is not None and md_wall_s >= s.max_md_wall_s:
        return "time cap"
    return None


def framework_centres(symbols: Sequence[str], mobile_ion: str) -> np.ndarray:
    """Mask of the framework atoms whose displacement tells a melt: the non-mobile cations and group centres.

    Anions of the most electronegative non-mobile element (S of PS4, O of PO4, Cl) are left
    out: a rotating PS4 group moves its S atoms by ~2 A while the crystal stands. A framework
    of that element alone (Li3N: N) is judged on it.
    """
    from pymatgen.core import Element

    symbols = np.asarray(symbols)
    others = sorted({s for s in symbols if s != mobile_ion})
    if not others:
        return np.zeros(len(symbols), dtype=bool)
    anion = max(others, key=lambda el: Element(el).X)
    centres = (symbols != mobile_ion) & (symbols != anion)
    return centres if centres.any() else symbols != mobile_ion



def supercell_for(lattice_matrix: np.ndarray, n_atoms: int, min_atoms: int) -> list[int]:
    """Diagonal repetitions with at least ``min_atoms`` atoms, growing the thinnest direction first.

    Growing the direction with the smallest perpendicular width keeps the supercell close to
    cubic, which maximises the distance between periodic images for a given size.
    """
    m = np.asarray(lattice_matrix, dtype=float)
    vol = abs(np.linalg.det(m))
    widths = np.array([vol / np.linalg.norm(np.cross(m[(i + 1) % 3], m[(i + 2) % 3])) for i in range(3)])
    reps = [1, 1, 1]
    while n_atoms * reps[0] * reps[1] * reps[2] < min_atoms:
        i = int(np.argmin(widths * np.array(reps)))
        reps[i] += 1
    return reps


# -- settings ------------------------------------------------------------------------------
class MlipMdSettings(MlipModelSettings):
    """Science settings of the MLIP molecular-dynamics oracle (``model``, ``model_version`` as for ``mlip``)."""

    mobile_ion: str = Field("Li", description="element whose diffusion is measured")
    temperatures_k: list[float] = Field(
        default_factory=lambda: [800.0, 1000.0, 1200.0, 1400.0],
        min_length=2,
        description="NVT temperatures (K); at least two must show enough hops",
    )
    supercell: list[int] | None = Field(
        None, min_length=3, max_length=3, description="explicit diagonal supercell; overrides supercell_min_atoms"
    )
    supercell_min_atoms: int = Field(64, ge=1, description="smallest supercell size (atoms) when supercell is unset")
    relax: bool = Field(True, description="relax atoms and cell with the MLIP before the MD")
    ordering: OrderingSettings = Field(
        default_factory=OrderingSettings,
        description="ordering of disordered structures (enabled, max_atoms, n_candidates, ...): see "
        "matloop.oracles.ordering",
    )
    timestep_fs: float = Field(2.0, gt=0, le=5, description="MD time step (fs)")
    equilibration_steps: int = Field(1000, ge=0, description="steps discarded before production, per temperature")
    production_steps: int = Field(
        5000, ge=20,
        description="production steps per chunk: the whole production run when adaptive is off, else the "
        "length by which a temperature's run is extended until a stopping rule holds",
    )
    adaptive: bool = Field(
        True,
        description="extend each temperature's production run chunk by chunk until target_hops or "
        "target_relative_error is reached, or max_production_steps / max_md_wall_s ends it",
    )
    target_hops: float = Field(100.0, gt=0, description="estimated hops that end a temperature's run (adaptive)")
    target_relative_error: float = Field(
        0.2, gt=0, description="relative error of D that ends a temperature's run (adaptive)"
    )
    max_production_steps: int = Field(
        50000, ge=20, description="cap on a temperature's production steps (adaptive)"
    )
    max_md_wall_s: float | None = Field(
        None, gt=0,
        description="time cap (s) on the MD of one evaluation (adaptive): runs still short of their targets "
        "then stop and are judged as they are; None: no cap",
    )
    sample_every_steps: int = Field(10, ge=1, description="stride (steps) between recorded frames")
    thermostat: Literal["bussi", "langevin"] = Field(
        "bussi", description="bussi: stochastic velocity rescaling (gentle on dynamics); langevin: friction + noise"
    )
    friction_per_fs: float = Field(0.01, gt=0, description="Langevin friction (1/fs)")
    bussi_taut_fs: float = Field(100.0, gt=0, description="Bussi thermostat time constant (fs)")
    msd_min_observations: int = Field(
        30, ge=1,
        description="DiffusionAnalyzer's min_obs: the MSD is fitted up to lags of N_ion * n_frames / this "
        "(a few mobile ions in a short run need less than the library's 30)",
    )
    min_hops: float = Field(
        20.0, ge=0, description="temperatures with fewer estimated hops are flagged and left out of the fit"
    )
    max_framework_msd_a2: float = Field(
        2.0, gt=0,
        description="MSD (A^2) of the framework's cations and group centres (framework_centres: rotating "
        "anion groups excluded) above which a temperature counts as melted",
    )
    max_temperature_drift: float = Field(
        0.3, gt=0, description="mean production temperature off target by more than this fraction is a failure"
    )
    max_temperature_ratio: float = Field(
        4.0, gt=1, description="any instantaneous temperature above this multiple of the target is an explosion"
    )
    min_distance_a: float = Field(0.6, ge=0, description="two atoms closer than this (A) during MD is an explosion")
    guard_every_steps: int = Field(10, ge=1, description="stride (steps) of the explosion checks")
    seed: int = Field(0, description="seed of the velocity draws and thermostat noise")
    finetune: FinetuneSettings = Field(
        default_factory=FinetuneSettings,
        description="learn-on-the-fly fine-tuning of CHGNet after equilibration (enabled, partner_model, "
        "disagreement_ev_per_a, max_frames, snapshot_every_steps, label: gpaw-pbe | partner, gpaw_ecut_ev, "
        "gpaw_kpt_density, epochs, learning_rate, seed): see matloop.oracles.finetune",
    )

    @field_validator("temperatures_k")
    @classmethod
    def _positive(cls, v: list[float]) -> list[float]:
        if any(t <= 0 for t in v):
            raise ValueError("temperatures must be positive")
        return sorted(v)

    @model_validator(mode="after")
    def _finetune_needs_chgnet(self) -> MlipMdSettings:
        ft = self.finetune
        if not ft.enabled:
            return self
        if self.model not in (None, "chgnet"):
            raise ValueError(f"finetune.enabled fine-tunes CHGNet: it needs model chgnet, not {self.model!r}")
        if ft.partner_model not in known_models() or ft.partner_model == "chgnet":
            raise ValueError(
                f"finetune.partner_model {ft.partner_model!r} must be a potential other than chgnet; known: "
                f"{', '.join(m for m in known_models() if m != 'chgnet')}"
            )
        return self


# -- the MD driver -------------------------------------------------------------------------
@dataclass
class TemperatureRun:
    """What one temperature gave."""

    temperature_k: float
    mean_temperature_k: float
    diffusivity_cm2_per_s: float
    sigma_cm2_per_s: float
    n_hops: float
    framework_msd_a2: float
    flag: str | None  # None, "too few hops", "too short" or "framework melted"
    seconds_per_step: float
    production_steps: int
    stop: str  # why the production run ended (stop_reason), or "framework melted"


class NvtRun:
    """NVT MD at one temperature that can be extended: equilibrates on construction, then ``extend``.

    Positions are the unwrapped trajectory (ASE integrators never wrap) with the centre-of-mass
    displacement of the whole cell removed, recorded every ``sample_every_steps``.

    Raises:
        OracleError: on an exploding run (see the module docstring), from construction or ``extend``.

    Args:
        snapshot_every_steps: keep an ``ase.Atoms`` copy of the equilibration every this many
            steps in ``snapshots`` (``info``: ``temperature_k``, ``step``); None: none kept.
    """

    def __init__(self, atoms, calc, temperature_k: float, s: MlipMdSettings, rng: np.random.Generator,
                 snapshot_every_steps: int | None = None):
        from ase import units
        from ase.md.bussi import Bussi
        from ase.md.langevin import Langevin
        from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary

        self.atoms, self.temperature_k, self.s = atoms, temperature_k, s
        atoms.calc = calc
        MaxwellBoltzmannDistribution(atoms, temperature_K=temperature_k, rng=rng)
        Stationary(atoms)
        dt = s.timestep_fs * units.fs
        if s.thermostat == "langevin":
            self.dyn = Langevin(atoms, dt, temperature_K=temperature_k, friction=s.friction_per_fs / units.fs,
                                fixcm=False, rng=rng)
            # (fixcm=True is deprecated in ASE: it biases small cells; the analysis removes the drift)
        else:
            self.dyn = Bussi(atoms, dt, temperature_K=temperature_k, taut=s.bussi_taut_fs * units.fs, rng=rng)
        self.dyn.attach(self._guard, interval=s.guard_every_steps)
        self.snapshots: list = []
        self._equilibrating = True
        if snapshot_every_steps:
            self.dyn.attach(self._snapshot, interval=snapshot_every_steps)
        t0 = time.perf_counter()
        if s.equilibration_steps:
            self.dyn.run(s.equilibration_steps)
        self.wall_s = time.perf_counter() - t0
        self._equilibrating = False
        self._masses = atoms.get_masses()[:, None]
        self._frames: list[np.ndarray] = []
        self._temps: list[float] = []
        self._steps: list[int] = []
        self._start = self.dyn.nsteps  # ASE keeps counting steps across runs
        self._record()
        self.dyn.attach(self._record, interval=1)

    def _guard(self):
        atoms, temperature_k, s = self.atoms, self.temperature_k, self.s
        e = atoms.get_potential_energy()
        if not math.isfinite(e) or not np.all(np.isfinite(atoms.positions)):
            raise OracleError(f"MD exploded at {temperature_k:g} K: non-finite energy or positions")
        t_inst = atoms.get_temperature()
        if t_inst > s.max_temperature_ratio * temperature_k:
            raise OracleError(f"MD exploded at {temperature_k:g} K: instantaneous temperature {t_inst:.0f} K")
        d = min_distance_a(atoms)
        if d < s.min_distance_a:
            raise OracleError(f"MD exploded at {temperature_k:g} K: atoms {d:.2f} A apart")

    def _snapshot(self):
        if self._equilibrating and self.dyn.nsteps > 0:  # step 0 is the common starting cell
            frame = self.atoms.copy()
            frame.info.update(temperature_k=self.temperature_k, step=int(self.dyn.nsteps))
            self.snapshots.append(frame)

    def use_calculator(self, calc) -> None:
        """Continue the run (the next ``extend``) with ``calc``: positions and velocities carry over."""
        self.atoms.calc = calc

    def _record(self):
        step = self.dyn.nsteps - self._start
        if step % self.s.sample_every_steps or (self._steps and self._steps[-1] == step):
            return
        pos = self.atoms.get_positions()
        com = (self._masses * pos).sum(0) / self._masses.sum()
        self._frames.append(pos - com)
        self._temps.append(self.atoms.get_temperature())
        self._steps.append(step)

    def extend(self, n_steps: int) -> None:
        """Run ``n_steps`` more production steps."""
        t0 = time.perf_counter()
        self.dyn.run(n_steps)
        self.wall_s += time.perf_counter() - t0

    @property
    def production_steps(self) -> int:
        """Production steps run so far."""
        return self.dyn.nsteps - self._start

    @property
    def times_fs(self) -> np.ndarray:
        """Times of the recorded frames (fs from the start of production)."""
        return np.asarray(self._steps, dtype=float) * self.s.timestep_fs

    @property
    def frames(self) -> np.ndarray:
        """``n_frames x n_atoms x 3`` recorded positions."""
        return np.asarray(self._frames)

    def mean_temperature(self) -> float:
        """Mean temperature of the second half of production.

        Raises:
            OracleError: when it is off target by more than ``max_temperature_drift``.
        """
        # judged on the second half: the first may still relax towards T after a short equilibration
        mean_t = float(np.mean(self._temps[len(self._temps) // 2 :]))
        if abs(mean_t - self.temperature_k) > self.s.max_temperature_drift * self.temperature_k:
            raise OracleError(
                f"MD temperature off target at {self.temperature_k:g} K: production mean {mean_t:.0f} K "
                f"(limit {self.s.max_temperature_drift:.0%}; runaway heating or a thermostat too weak for the run)"
            )
        return mean_t


def run_nvt(atoms, calc, temperature_k: float, s: MlipMdSettings, rng: np.random.Generator):
    """Equilibrate then run ``production_steps`` at ``temperature_k``; returns times, positions, mean T.

    Raises:
        OracleError: on an exploding run (see the module docstring).
    """
    run = NvtRun(atoms, calc, temperature_k, s, rng)
    run.extend(s.production_steps)
    return run.times_fs, run.frames, run.mean_temperature()



class MlipMdOracle(MlipModelOracle):
    """Ion migration from MLIP molecular dynamics: Arrhenius migration energy, D and sigma at 300 K."""

    kind = "mlip-md"
    properties = ("migration_energy_ev", "diffusivity_cm2_per_s_300k", "conductivity_s_per_cm_300k")
    code_version = "2"
    Settings = MlipMdSettings
    needs_structure = True

    def version_inputs(self) -> dict:
        """The science settings; ``finetune`` counts only when enabled.

        Disabled fine-tuning changes nothing, so settings without it keep the versions (and
        cached results) they had before the setting existed.
        """
        science = self.settings.model_dump(mode="json")
        if not self.settings.finetune.enabled:
            del science["finetune"]
        return science

    def _evaluate(self, candidate: Candidate) -> OracleResult:
        """Relax, run NVT MD at each temperature and fit the Arrhenius line (see the module docstring)."""
        from pymatgen.io.ase import AseAtomsAdaptor

        s = self.settings
        structure = candidate.pmg_structure()
        device = resolve_device(self.site.device)
        calc = load_calculator(s.model, s.model_version, device)
        md_calc = load_calculator(s.model, s.model_version, device, stress=False)
        check_elements([str(el) for el in structure.composition.elements], s.model, calc)
        structure, ordering = order_structure(structure, ml_energy_function(md_calc, relax=s.ordering.ml_relax), s.ordering)
        if s.mobile_ion not in {str(el) for el in structure.composition.elements}:
            raise OracleError(f"no {s.mobile_ion} in {structure.composition.reduced_formula}")
        unit = AseAtomsAdaptor.get_atoms(structure)
        if min_distance_a(unit) < s.min_distance_a:
            raise OracleError(f"atoms overlap: shortest distance {min_distance_a(unit):.3f} A")

        t_start = time.perf_counter()
        if s.relax:
            relax_atoms(unit, calc, fmax=0.05, max_steps=300, relax_cell=True, max_volume_ratio=2.0)
        reps = s.supercell or supercell_for(unit.cell.array, len(unit), s.supercell_min_atoms)
        cell0 = unit.repeat(reps)
        cell0.calc = None
        mobile = np.array([sym == s.mobile_ion for sym in cell0.get_chemical_symbols()])
        n_mobile = int(mobile.sum())
        hop_distance = _shortest_mobile_distance(cell0, mobile)
        volume_cm3 = cell0.get_volume() * 1e-24
        density = n_mobile / volume_cm3

        rng = np.random.default_rng(s.seed)
        symbols = cell0.get_chemical_symbols()
        centres = framework_centres(symbols, s.mobile_ion)
        # every temperature is equilibrated, then all are extended chunk by chunk in turn, so a
        # time cap shares the budget and slow (low-T) points are extended rather than dropped
        t_md = time.perf_counter()
        active: dict[float, NvtRun] = {}
        ft = s.finetune
        for temp in s.temperatures_k:
            active[temp] = NvtRun(cell0.copy(), md_calc, temp, s, rng,
                                  snapshot_every_steps=ft.snapshot_every_steps if ft.enabled else None)
        model_version, finetune = s.model_version, None
        if ft.enabled:
            t_ft = time.perf_counter()
            tuned, finetune = finetune_round(
                [f for run in active.values() for f in run.snapshots], md_calc,
                load_calculator(ft.partner_model, None, device), ft, s.model_version,
                self.site.cache_folder("chgnet-finetune"), device,
                self.site.resolve(self.site.log_dir) if self.site.log_dir else None,
            )
            if tuned is not None:
                model_version = finetune["version"]
                for run in active.values():
                    run.use_calculator(tuned)
            t_md += time.perf_counter() - t_ft  # the time cap counts MD, not the fine-tuning round
        done: dict[float, TemperatureRun] = {}
        while active:
            for temp, run in list(active.items()):
                run.extend(s.production_steps)
                frames = run.frames
                fw = frames[:, centres]
                fw_msd = float(np.mean(np.sum((fw[-1] - fw[0]) ** 2, axis=-1))) if fw.shape[1] else 0.0
                try:
                    diff = tracer_diffusivity(frames, mobile, cell0.cell.array, s.timestep_fs, s.sample_every_steps,
                                              hop_distance, min_observations=s.msd_min_observations)
                    short = None
                except OracleError as exc:
                    diff, short = Diffusivity(0.0, 0.0, 0.0, 0.0), str(exc)
                flag, stop = None, None
                if fw_msd > s.max_framework_msd_a2:
                    flag = stop = "framework melted"
                else:
                    stop = stop_reason(diff.n_hops, diff.relative_error, run.production_steps,
                                       time.perf_counter() - t_md, s)
                    if stop is not None and short:
                        flag = "too short"
                    elif stop is not None and (diff.n_hops < s.min_hops or diff.diffusivity_cm2_per_s <= 0):
                        flag = "too few hops"
                if stop is None:
                    continue
                del active[temp]
                done[temp] = TemperatureRun(
                    temperature_k=temp,
                    mean_temperature_k=run.mean_temperature(),
                    diffusivity_cm2_per_s=diff.diffusivity_cm2_per_s,
                    sigma_cm2_per_s=diff.sigma_cm2_per_s,
                    n_hops=diff.n_hops,
                    framework_msd_a2=fw_msd,
                    flag=flag,
                    seconds_per_step=run.wall_s / max(1, s.equilibration_steps + run.production_steps),
                    production_steps=run.production_steps,
                    stop=stop,
                )
        runs = [done[t] for t in s.temperatures_k]


        usable = [r for r in runs if r.flag is None]
        summary = "; ".join(f"{r.temperature_k:g} K: {r.n_hops:.1f} hops{f' ({r.flag})' if r.flag else ''}" for r in runs)
        if len(usable) < 2:
            tuned_note = f" (production with fine-tuned CHGNet {model_version})" if model_version != s.model_version else ""
            raise OracleError(
                f"too few hops: {len(usable)} of {len(runs)} temperatures usable (need 2, min_hops {s.min_hops:g}): "
                f"{summary}{tuned_note}"
            )
        fit = arrhenius_fit(
            [r.temperature_k for r in usable],
            [r.diffusivity_cm2_per_s for r in usable],
            [r.sigma_cm2_per_s for r in usable],
        )
        d300 = fit.diffusivity(300.0)
        charge = abs(_ION_CHARGE.get(s.mobile_ion, 1))
        sigma300 = nernst_einstein_conductivity(d300, density, 300.0, charge=charge, haven_ratio=1.0)
        return OracleResult(
            properties={
                "migration_energy_ev": fit.activation_energy_ev,
                "diffusivity_cm2_per_s_300k": d300,
                "conductivity_s_per_cm_300k": sigma300,
            },
            uncertainties={"migration_energy_ev": fit.activation_energy_sigma_ev},
            extra={
                "temperatures": [asdict(r) for r in runs],
                "arrhenius": asdict(fit),
                "log10_diffusivity_300k_sigma": fit.ln_diffusivity_sigma(300.0) / math.log(10),
                "supercell": list(reps),
                "n_atoms": len(cell0),
                "n_mobile": n_mobile,
                "hop_distance_a": hop_distance,
                "mobile_ion_density_per_cm3": density,
                "ion_charge": charge,
                "haven_ratio": 1.0,
                "model": model_provenance(s.model, model_version),
                **({"finetune": finetune} if finetune is not None else {}),
                "ordering": ordering,
                "md_wall_s": time.perf_counter() - t_start,
            },
        )


def _shortest_mobile_distance(atoms, mobile: np.ndarray) -> float:
    """Shortest distance between mobile-ion sites (A): the length of one hop."""
    idx = np.flatnonzero(mobile)
    if len(idx) < 2:  # a lone mobile ion hops to the site of its nearest image
        from ase.geometry import cell_to_cellpar

        return float(min(cell_to_cellpar(atoms.cell)[:3]))
    d = atoms.get_all_distances(mic=True)[np.ix_(idx, idx)]
    d[np.diag_indices_from(d)] = np.inf
    return float(d.min())
