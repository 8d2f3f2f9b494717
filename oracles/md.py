"""MLIP molecular-dynamics tier: migration energy, diffusivity and conductivity of a mobile ion.

``MlipMdOracle`` relaxes the cell with the MLIP, builds a supercell, and runs NVT molecular
dynamics (ASE ``Bussi`` or ``Langevin``) at several temperatures. At each temperature it
draws Maxwell-Boltzmann velocities, equilibrates, then records the unwrapped positions of
the production run and computes the tracer diffusivity of the mobile ion from its mean
squared displacement (MSD). A weighted least-squares Arrhenius fit of ``ln D`` against
``1/(k_B T)`` gives the migration (activation) energy with its standard error, and the
extrapolated 300 K diffusivity; the Nernst-Einstein relation turns that into a conductivity.

Statistics, stated once:

* ``D = slope / 6`` of the multiple-time-origin MSD of the mobile ions (centre-of-mass
  drift of the whole cell removed) fitted linearly over lags of 10-50 % of the production
  window (short lags are ballistic/vibrational, long lags have few time origins).
* ``sigma_D`` is the larger of the block-average standard error (the production window cut
  into ``n_blocks`` blocks, ``D`` fitted in each, ``std / sqrt(n)``) and the counting floor
  ``D / sqrt(n_hops)``.
* ``n_hops = N_ion * 6 D t / d_hop**2`` is the number of hops the diffusive MSD amounts to,
  with ``d_hop`` the shortest distance between mobile-ion sites of the relaxed cell.
  Temperatures with fewer than ``min_hops`` hops, or whose framework melted (framework MSD
  above ``max_framework_msd_a2``), are flagged and left out of the fit; with fewer than two
  usable temperatures the evaluation fails with a reason ("too few hops"), never a number.
* Nernst-Einstein with Haven ratio 1 (tracer = charge diffusivity, no correlated hops) and
  the Arrhenius line extrapolated to 300 K (no phase change assumed below the MD range).

An MD run that explodes (non-finite energy, runaway temperature, atoms closer than
``min_distance_a``) fails the whole evaluation with ``OracleError``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
from pydantic import Field, field_validator

from matloop.core.oracle import Oracle
from matloop.core.records import Candidate, OracleError, OracleResult

from .mlip import (
    MlipModelSettings,
    check_elements,
    compute_threads,
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


def msd_by_lag(displacements: np.ndarray) -> np.ndarray:
    """Multiple-time-origin MSD: ``msd[k] = <|r(i + k) - r(i)|^2>`` over origins ``i`` and ions.

    Args:
        displacements: ``n_frames x n_ions x 3`` unwrapped positions (A).
    """
    r = np.asarray(displacements, dtype=float)
    n = len(r)
    out = np.zeros(n)
    for k in range(1, n):
        diff = r[k:] - r[:-k]
        out[k] = float(np.mean(np.sum(diff * diff, axis=-1)))
    return out


def msd_slope(times_fs: np.ndarray, positions: np.ndarray, fit_window: tuple[float, float] = (0.1, 0.5)) -> float:
    """Slope (A^2/fs) of the multi-origin MSD over lags between the ``fit_window`` fractions."""
    times_fs = np.asarray(times_fs, dtype=float)
    msd = msd_by_lag(positions)
    lags = times_fs - times_fs[0]
    span = lags[-1]
    sel = (lags >= fit_window[0] * span) & (lags <= fit_window[1] * span)
    if sel.sum() < 2:
        sel = lags > 0
    if sel.sum() < 2:
        raise ValueError("too few frames to fit an MSD slope")
    slope, _ = np.polyfit(lags[sel], msd[sel], 1)
    return float(slope)


@dataclass(frozen=True)
class Diffusivity:
    """Tracer diffusivity of one trajectory with its block-averaged error."""

    diffusivity_cm2_per_s: float
    sigma_cm2_per_s: float
    block_diffusivities_cm2_per_s: tuple[float, ...]
    n_hops: float


def tracer_diffusivity(
    times_fs: np.ndarray,
    positions: np.ndarray,
    hop_distance_a: float,
    n_blocks: int = 4,
    dim: int = 3,
) -> Diffusivity:
    """``D = slope / (2 dim)`` of the mobile ions' MSD, with block-averaged uncertainty.

    Args:
        times_fs: ``n_frames`` sample times.
        positions: ``n_frames x n_ions x 3`` unwrapped positions (A), drift removed.
        hop_distance_a: distance of one hop, for the hop count ``N_ion 2 dim D t / d^2``.
        n_blocks: contiguous blocks for the error; each needs at least 4 frames.
    """
    times_fs = np.asarray(times_fs, dtype=float)
    positions = np.asarray(positions, dtype=float)
    d_a2_fs = msd_slope(times_fs, positions) / (2 * dim)
    d = d_a2_fs * A2_PER_FS_TO_CM2_PER_S
    n_frames = len(times_fs)
    n_blocks = max(1, min(n_blocks, n_frames // 4))
    blocks = []
    if n_blocks >= 2:
        for idx in np.array_split(np.arange(n_frames), n_blocks):
            blocks.append(msd_slope(times_fs[idx], positions[idx]) / (2 * dim) * A2_PER_FS_TO_CM2_PER_S)
    duration_fs = times_fs[-1] - times_fs[0]
    n_ions = positions.shape[1]
    n_hops = max(0.0, n_ions * 2 * dim * d_a2_fs * duration_fs / hop_distance_a**2)
    sigma_blocks = float(np.std(blocks, ddof=1) / math.sqrt(len(blocks))) if len(blocks) >= 2 else abs(d)
    sigma_count = abs(d) / math.sqrt(n_hops) if n_hops > 0 else abs(d)
    return Diffusivity(
        diffusivity_cm2_per_s=d,
        sigma_cm2_per_s=max(sigma_blocks, sigma_count),
        block_diffusivities_cm2_per_s=tuple(blocks),
        n_hops=n_hops,
    )


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
    production_steps: int = Field(10000, ge=20, description="steps analysed, per temperature")
    sample_every_steps: int = Field(10, ge=1, description="stride (steps) between recorded frames")
    thermostat: Literal["bussi", "langevin"] = Field(
        "bussi", description="bussi: stochastic velocity rescaling (gentle on dynamics); langevin: friction + noise"
    )
    friction_per_fs: float = Field(0.01, gt=0, description="Langevin friction (1/fs)")
    bussi_taut_fs: float = Field(100.0, gt=0, description="Bussi thermostat time constant (fs)")
    n_blocks: int = Field(4, ge=2, description="blocks of the production window for the diffusivity error")
    min_hops: float = Field(
        20.0, ge=0, description="temperatures with fewer estimated hops are flagged and left out of the fit"
    )
    max_framework_msd_a2: float = Field(
        2.0, gt=0, description="framework (non-mobile) MSD (A^2) above which a temperature counts as melted"
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

    @field_validator("temperatures_k")
    @classmethod
    def _positive(cls, v: list[float]) -> list[float]:
        if any(t <= 0 for t in v):
            raise ValueError("temperatures must be positive")
        return sorted(v)


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
    flag: str | None  # None, "too few hops" or "framework melted"
    seconds_per_step: float


def run_nvt(atoms, calc, temperature_k: float, s: MlipMdSettings, rng: np.random.Generator):
    """Equilibrate then run production at ``temperature_k``; returns times, positions, temperatures.

    Positions are the unwrapped trajectory (ASE integrators never wrap) with the centre-of-mass
    displacement of the whole cell removed.

    Raises:
        OracleError: on an exploding run (see the module docstring).
    """
    from ase import units
    from ase.md.bussi import Bussi
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary

    atoms.calc = calc
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature_k, rng=rng)
    Stationary(atoms)
    dt = s.timestep_fs * units.fs
    if s.thermostat == "langevin":
        dyn = Langevin(atoms, dt, temperature_K=temperature_k, friction=s.friction_per_fs / units.fs, fixcm=False, rng=rng)
        # (fixcm=True is deprecated in ASE: it biases small cells; the analysis removes the drift)
    else:
        dyn = Bussi(atoms, dt, temperature_K=temperature_k, taut=s.bussi_taut_fs * units.fs, rng=rng)

    def guard():
        e = atoms.get_potential_energy()
        if not math.isfinite(e) or not np.all(np.isfinite(atoms.positions)):
            raise OracleError(f"MD exploded at {temperature_k:g} K: non-finite energy or positions")
        t_inst = atoms.get_temperature()
        if t_inst > s.max_temperature_ratio * temperature_k:
            raise OracleError(f"MD exploded at {temperature_k:g} K: instantaneous temperature {t_inst:.0f} K")
        d = min_distance_a(atoms)
        if d < s.min_distance_a:
            raise OracleError(f"MD exploded at {temperature_k:g} K: atoms {d:.2f} A apart")

    dyn.attach(guard, interval=s.guard_every_steps)
    if s.equilibration_steps:
        dyn.run(s.equilibration_steps)

    masses = atoms.get_masses()[:, None]
    frames, temps, steps = [], [], []
    start = dyn.nsteps  # ASE keeps counting steps across runs

    def record():
        step = dyn.nsteps - start
        if step % s.sample_every_steps or (steps and steps[-1] == step):
            return
        pos = atoms.get_positions()
        com = (masses * pos).sum(0) / masses.sum()
        frames.append(pos - com)
        temps.append(atoms.get_temperature())
        steps.append(step)

    record()
    dyn.attach(record, interval=1)
    dyn.run(s.production_steps)
    times_fs = np.asarray(steps, dtype=float) * s.timestep_fs
    # judged on the second half: the first may still relax towards T after a short equilibration
    mean_t = float(np.mean(temps[len(temps) // 2 :]))
    if abs(mean_t - temperature_k) > s.max_temperature_drift * temperature_k:
        raise OracleError(
            f"MD temperature off target at {temperature_k:g} K: production mean {mean_t:.0f} K "
            f"(limit {s.max_temperature_drift:.0%}; runaway heating or a thermostat too weak for the run)"
        )
    return times_fs, np.asarray(frames), mean_t


class MlipMdOracle(Oracle):
    """Ion migration from MLIP molecular dynamics: Arrhenius migration energy, D and sigma at 300 K."""

    kind = "mlip-md"
    properties = ("migration_energy_ev", "diffusivity_cm2_per_s_300k", "conductivity_s_per_cm_300k")
    code_version = "1"
    Settings = MlipMdSettings
    needs_structure = True
    #: the model when the settings leave ``model`` unset
    default_model = "chgnet"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.settings = self.settings.with_defaults(self.default_model)

    def evaluate(self, candidate: Candidate) -> OracleResult:
        """Relax, run NVT MD at each temperature and fit the Arrhenius line (see the module docstring)."""
        with compute_threads(self.site.torch_threads):
            return self._evaluate(candidate)

    def _evaluate(self, candidate: Candidate) -> OracleResult:
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
        runs: list[TemperatureRun] = []
        for temp in s.temperatures_k:
            atoms = cell0.copy()
            t0 = time.perf_counter()
            times_fs, frames, mean_t = run_nvt(atoms, md_calc, temp, s, rng)
            per_step = (time.perf_counter() - t0) / max(1, s.equilibration_steps + s.production_steps)
            diff = tracer_diffusivity(times_fs, frames[:, mobile], hop_distance, n_blocks=s.n_blocks)
            fw = frames[:, ~mobile]
            fw_msd = float(np.mean(np.sum((fw[-1] - fw[0]) ** 2, axis=-1))) if fw.shape[1] else 0.0
            flag = None
            if fw_msd > s.max_framework_msd_a2:
                flag = "framework melted"
            elif diff.n_hops < s.min_hops or diff.diffusivity_cm2_per_s <= 0:
                flag = "too few hops"
            runs.append(
                TemperatureRun(
                    temperature_k=temp,
                    mean_temperature_k=mean_t,
                    diffusivity_cm2_per_s=diff.diffusivity_cm2_per_s,
                    sigma_cm2_per_s=diff.sigma_cm2_per_s,
                    n_hops=diff.n_hops,
                    framework_msd_a2=fw_msd,
                    flag=flag,
                    seconds_per_step=per_step,
                )
            )

        usable = [r for r in runs if r.flag is None]
        summary = "; ".join(f"{r.temperature_k:g} K: {r.n_hops:.1f} hops{f' ({r.flag})' if r.flag else ''}" for r in runs)
        if len(usable) < 2:
            raise OracleError(
                f"too few hops: {len(usable)} of {len(runs)} temperatures usable (need 2, min_hops {s.min_hops:g}): {summary}"
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
                "model": model_provenance(s.model, s.model_version),
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
