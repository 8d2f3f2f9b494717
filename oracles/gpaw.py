"""GPAW plane-wave DFT tiers: PBE (gaps, energies) and HSE06 gaps on top of PBE.

``GpawPbeOracle`` runs one self-consistent PBE calculation (optionally after a relaxation)
and reports band edges from the k-mesh (plus a band path when asked), the Shockley-Queisser
limit of its gap, and the formation energy and energy above the hull on the Materials Project
scale (below).

``GpawHse06Oracle`` adds HSE06 on the PBE ground state, in one of two ways:

- ``nscf``: non-self-consistent HSE06 eigenvalues at every k-point of the mesh;
- ``band_edge_correction``: the screening scheme "PBE + HSE band-edge correction": HSE06
  minus PBE shifts of the VBM and CBM, computed at the two band-edge k-points of a bulk
  calculation (``bulk_reference``, else the candidate itself) and cached, are added to the
  candidate's PBE edges. For defect or other large cells this costs about one bulk
  calculation per bulk, not one hybrid calculation per cell.

Stability on the reference hull
-------------------------------
The hull is the one of the MLIP tier (``hull.ReferenceHull``: the shipped Materials Project
table or live entries, the ``hull`` setting), on the MP2020 scale. GPAW's total energies are on
GPAW's own absolute scale, so MP's elemental energies cannot be subtracted from them; the
raw PBE formation energy is taken against GPAW elemental references computed with the same
settings (cached on disk), and the MP2020 corrections are added to it per atom
(``hull.mp2020_correction_ev``: the oxide/peroxide/superoxide, sulfide and anion corrections
MP adds to its raw PBE energies). This treats GPAW's raw PBE formation energy as equal to the
raw PBE (VASP) formation energy MP corrected, which holds to the PAW-setup and convergence
differences of the two codes, typically a few 0.01 eV/atom at converged settings and more at
coarse ones (the elemental references use the same cut-off, so much of it cancels; a metal
reference on a coarse k-mesh does not). Two things are not approximated but refused, with a
reason in ``extra["formation_energy_error"]`` and neither property reported:

* compositions MP computes with GGA+U (oxides and fluorides of Co, Cr, Fe, Mn, Mo, Ni, V, W):
  MP2020 puts them on the scale through fitted GGA+U corrections that plain PBE has no
  counterpart of (errors of several 0.1 eV/atom);
* elements without a GPAW elemental reference (give one in ``elemental_references``).

The alternative, the MLIP tier's recipe (MP's elemental energies as chemical potentials), needs
energies on VASP's absolute scale, which no GPAW calculation gives.

GPAW is imported inside ``evaluate`` only, so this module imports without it; a missing
GPAW becomes a failed observation that says how to install it. Calculations run serially
unless GPAW runs under MPI (``gpaw.mpi.world.size > 1``); then only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from matloop.core.oracle import Oracle, OracleSettings
from matloop.core.records import Candidate, OracleError, OracleResult, stable_hash

from .efficiency import shockley_queisser_efficiency, slme
from .hull import HullSettings, ReferenceHullMixin, mp2020_correction_ev, mp_calculation_parameters

NOT_INSTALLED = (
    "GPAW is not installed: run `make setup` (installs the `dft` extra: libxc/openblas/fftw + siteconfig) "
    "or see scripts/setup.sh"
)

#: Elements whose candidates are computed spin-polarized when ``spinpol`` is left to auto.
MAGNETIC_ELEMENTS = frozenset(
    "V Cr Mn Fe Co Ni Cu Ce Pr Nd Sm Eu Gd Tb Dy Ho Er Tm Yb".split()
)
#: Initial moments (Bohr magnetons) of the ferromagnetic elemental references.
REFERENCE_MAGMOMS = {"Fe": 2.5, "Co": 1.8, "Ni": 0.7}
#: Elemental references that are molecules (ASE's g2 geometries) and their initial moments.
MOLECULE_REFERENCES = {"H": ("H2", 0.0), "N": ("N2", 0.0), "O": ("O2", 1.0), "F": ("F2", 0.0), "Cl": ("Cl2", 0.0),
                       "Br": ("Br2", 0.0), "I": ("I2", 0.0)}
#: diatomics missing from ASE's g2 collection: experimental gas-phase bond lengths (A), NIST CCCBDB.
#: Solid Br2 and I2 are MP's reference states; PBE binds their molecular crystals by only a few
#: tens of meV/atom, so the molecule stands in for the crystal as O2 and Cl2 do.
DIATOMIC_BOND_ANGSTROM = {"Br2": 2.281, "I2": 2.666}
#: elemental crystals whose ASE reference state is missing or not the real structure (ASE lists
#: Se and Te as "hcp", which ase.build.bulk would turn into a two-atom hcp metal): space group,
#: hexagonal/orthorhombic lattice (a, b, c in A) and one Wyckoff position, from the experimental
#: structures (Se, Te: Cherin & Unger 1967/Adenis 1989; As, Sb, Bi: Schiferl & Barrett 1969;
#: black P: Brown & Rundqvist 1965; Ga, In, Sn as noted). Reduced to the primitive cell.
CRYSTAL_REFERENCES: dict[str, tuple[str, tuple[float, float, float], tuple[float, float, float]]] = {
    "Se": ("P3_121", (4.3662, 4.3662, 4.9536), (0.2254, 0.0, 1 / 3)),
    "Te": ("P3_121", (4.4572, 4.4572, 5.9290), (0.2633, 0.0, 1 / 3)),
    "As": ("R-3m", (3.7598, 3.7598, 10.5475), (0.0, 0.0, 0.22727)),
    "Sb": ("R-3m", (4.3084, 4.3084, 11.2740), (0.0, 0.0, 0.23349)),
    "Bi": ("R-3m", (4.5460, 4.5460, 11.8623), (0.0, 0.0, 0.23389)),
    "P": ("Cmce", (3.3136, 10.478, 4.3763), (0.0, 0.10168, 0.08056)),
    "Ga": ("Cmce", (4.5192, 7.6586, 4.5258), (0.0, 0.1549, 0.0810)),  # alpha-Ga, Sharma & Donohue 1962
    "In": ("I4/mmm", (3.2523, 3.2523, 4.9461), (0.0, 0.0, 0.0)),  # ASE's "bct" state is not built by bulk()
    "Sn": ("Fd-3m", (6.4892, 6.4892, 6.4892), (0.0, 0.0, 0.0)),  # alpha-Sn, the 0 K ground state
}
#: ASE reference states that ``ase.build.bulk`` turns into the real elemental crystal.
BULK_REFERENCE_LATTICES = ("fcc", "bcc", "hcp", "diamond")
#: Bump when the reference recipe changes; part of every cache key.
REFERENCE_RECIPE = "1"


class GpawPbeSettings(OracleSettings):
    """Science settings of the GPAW PBE tier (plane-wave mode, Fermi-Dirac smearing)."""

    ecut_ev: float = Field(500.0, gt=50, description="plane-wave cutoff energy (eV)")
    kpt_density: float = Field(
        3.5,
        gt=0,
        description="k-points per reciprocal Angstrom along each reciprocal vector "
        "(ASE convention, 2*pi included); gives a Gamma-centred mesh. Used when `kpts` is unset "
        "and always for the elemental references",
    )
    kpts: tuple[int, int, int] | None = Field(
        None, description="explicit Gamma-centred k-mesh for the candidate; overrides kpt_density"
    )
    smearing_width_ev: float = Field(
        0.05, gt=0, description="Fermi-Dirac smearing width (eV); energies are extrapolated to zero width"
    )
    spinpol: bool | None = Field(
        None,
        description="spin-polarized calculation; None = automatic (on when the structure has V-Cu or a "
        "lanthanide; initial moments from the structure's `magmom` site property, else 3 muB on those)",
    )
    empty_bands: int = Field(
        8, ge=2, description="unoccupied bands in the calculation; all but the top half of them are converged"
    )
    maxiter: int = Field(300, ge=1, description="maximum number of SCF iterations")
    energy_tol_ev_per_electron: float = Field(5e-4, gt=0, description="SCF convergence: energy change (eV/electron)")
    density_tol: float = Field(1e-4, gt=0, description="SCF convergence: density change (electrons/electron)")
    eigenstates_tol: float = Field(4e-8, gt=0, description="SCF convergence: eigenstate residual (eV^2/electron)")
    relax: bool = Field(False, description="relax the structure (BFGS) before the final calculation")
    relax_cell: bool = Field(True, description="when relaxing, relax the cell too (FrechetCellFilter)")
    fmax_ev_per_angstrom: float = Field(0.05, gt=0, description="relaxation force threshold (eV/A)")
    max_relax_steps: int = Field(100, ge=1, description="relaxation step limit; exceeding it fails the evaluation")
    band_path: bool = Field(
        False, description="also compute eigenvalues along a band path (non-self-consistent) and take the "
        "edges over mesh and path"
    )
    band_path_npoints: int = Field(60, ge=2, description="k-points on the band path")
    band_path_labels: str | None = Field(
        None, description="special points of the band path in ASE notation, e.g. 'GXWKGLUWLK,UX'; None = "
        "ASE's standard path for the lattice"
    )
    formation_energy: bool = Field(
        True,
        description="report formation_energy_ev_per_atom (GPAW elemental references plus the MP2020 corrections: "
        "the Materials Project scale) and e_above_hull_ev_per_atom on the reference hull (see hull); references "
        "are computed once per element and settings and cached",
    )
    hull: HullSettings = Field(
        default_factory=HullSettings,
        description="the reference hull of e_above_hull_ev_per_atom: source (auto | shipped | mp-api)",
    )
    elemental_references: dict[str, str] = Field(
        default_factory=dict,
        description="element -> structure file (CIF/POSCAR) for elements without a built-in reference "
        "(built in: fcc/bcc/hcp/diamond elements of ASE's reference states, and H2 N2 O2 F2 Cl2); "
        "relative paths are taken from the campaign file's folder",
    )
    molecule_box_angstrom: float = Field(10.0, gt=4, description="edge of the box for molecular references (A)")
    slme: bool = Field(
        False,
        description="also report slme_percent: the spectroscopic limited maximum efficiency (Yu & Zunger 2012) "
        "from the RPA optical absorption of the ground state (gpaw.response, no local fields); on the HSE06 tier "
        "the unoccupied bands are scissor-shifted to the HSE06 gap. Costs a linear-response run: tiny cells only",
    )
    slme_thickness_um: float = Field(0.5, gt=0, description="film thickness for slme_percent (micrometres)")
    optics_ecut_ev: float = Field(30.0, gt=0, description="plane-wave cutoff of the response function (eV)")
    optics_eta_ev: float = Field(0.1, gt=0, description="Lorentzian broadening of the absorption spectrum (eV)")

    @field_validator("elemental_references")
    @classmethod
    def _known_elements(cls, v: dict[str, str]) -> dict[str, str]:
        from ase.data import atomic_numbers

        bad = [el for el in v if el not in atomic_numbers]
        if bad:
            raise ValueError(f"unknown elements {bad}")
        return v


class GpawHse06Settings(GpawPbeSettings):
    """GPAW PBE settings plus how HSE06 is applied on top of the PBE ground state."""

    mode: Literal["nscf", "band_edge_correction"] = Field(
        "nscf",
        description="nscf: HSE06 eigenvalues on the whole k-mesh; band_edge_correction: HSE06-PBE shifts "
        "of VBM and CBM from a bulk calculation added to the candidate's PBE edges",
    )
    bulk_reference: str | None = Field(
        None,
        description="band_edge_correction only: structure file of the bulk host whose shifts are applied "
        "(for defect/large cells; its k-mesh comes from kpt_density; a relative path is taken from the "
        "campaign file's folder); None = the candidate itself",
    )
    formation_energy: bool = Field(
        False, description="also report the PBE formation energy and energy above the hull (see the PBE tier)"
    )

    @model_validator(mode="after")
    def _mode_options(self) -> GpawHse06Settings:
        if self.mode == "nscf" and self.bulk_reference is not None:
            raise ValueError("bulk_reference is used by mode 'band_edge_correction' only")
        if self.mode == "nscf" and self.band_path:
            raise ValueError("band_path needs mode 'band_edge_correction' (nscf hybrids need a uniform k-mesh)")
        return self


# -- band edges -------------------------------------------------------------------------------
@dataclass
class BandEdges:
    """Band edges from eigenvalues ``e_skn`` (eV) with ``nocc_s`` occupied bands per spin.

    ``spin_vbm``/``k_vbm`` (and cbm) index the arrays the edges came from; ``metallic`` is
    True when the count of occupied bands is not integral or the bands overlap.
    """

    vbm_ev: float
    cbm_ev: float
    gap_ev: float
    direct_gap_ev: float
    metallic: bool
    spin_vbm: int = -1
    k_vbm: int = -1
    spin_cbm: int = -1
    k_cbm: int = -1


def band_edges(e_skn: np.ndarray, nocc_s: list[int] | None, fermi_level_ev: float, band_offset: int = 0) -> BandEdges:
    """Edges of ``e_skn`` (``nspins x nkpts x nbands``, eV); band ``n`` of the array is ``n + band_offset``.

    ``nocc_s`` None means fractional occupation (a metal): gap 0 with both edges at the
    Fermi level. Bands that overlap across k-points also give gap 0 (and ``metallic``).
    """
    if nocc_s is None:
        return BandEdges(fermi_level_ev, fermi_level_ev, 0.0, 0.0, True)
    vbm, cbm, direct = -np.inf, np.inf, np.inf
    where_v = where_c = (-1, -1)
    for s, nocc in enumerate(nocc_s):
        iv, ic = nocc - 1 - band_offset, nocc - band_offset
        if iv < 0 or ic >= e_skn.shape[2]:
            raise OracleError(f"too few bands for the band edges (spin {s}: {nocc} occupied)")
        ev, ec = e_skn[s, :, iv], e_skn[s, :, ic]
        if ev.max() > vbm:
            vbm, where_v = float(ev.max()), (s, int(ev.argmax()))
        if ec.min() < cbm:
            cbm, where_c = float(ec.min()), (s, int(ec.argmin()))
        direct = min(direct, float((ec - ev).min()))
    gap = cbm - vbm
    metallic = gap <= 0
    return BandEdges(
        vbm_ev=vbm,
        cbm_ev=cbm,
        gap_ev=max(gap, 0.0),
        direct_gap_ev=max(direct, 0.0),
        metallic=metallic,
        spin_vbm=where_v[0],
        k_vbm=where_v[1],
        spin_cbm=where_c[0],
        k_cbm=where_c[1],
    )


def occupied_bands(calc) -> list[int] | None:
    """Occupied bands per spin from the electron count (and total moment); None when not integral."""
    n_electrons = float(calc.get_number_of_electrons())
    if calc.get_number_of_spins() == 1:
        counts = [n_electrons / 2]
    else:
        moment = float(calc.get_magnetic_moment())
        counts = [(n_electrons + moment) / 2, (n_electrons - moment) / 2]
    if any(abs(c - round(c)) > 0.02 for c in counts):
        return None
    return [int(round(c)) for c in counts]


def eigenvalues_skn(calc) -> np.ndarray:
    """All IBZ eigenvalues (eV) as ``nspins x nkpts x nbands``."""
    nk = len(calc.get_ibz_k_points())
    return np.array(
        [[calc.get_eigenvalues(kpt=k, spin=s) for k in range(nk)] for s in range(calc.get_number_of_spins())]
    )


# -- the GPAW runner ---------------------------------------------------------------------------
def import_gpaw():
    """Import GPAW with its C extension and PAW setups, or raise ``OracleError`` saying how to install."""
    try:
        import gpaw
        import gpaw.cgpaw  # noqa: F401 - fails when the C extension is missing
    except ImportError as exc:
        raise OracleError(f"{NOT_INSTALLED} ({exc})") from exc
    if getattr(gpaw, "GPAW_NO_C_EXTENSION", False):
        raise OracleError(f"{NOT_INSTALLED} (GPAW was built without its C extension)")
    if not gpaw.setup_paths:
        # gpaw < 26 does not look into the gpaw-data wheel by itself
        try:
            import gpaw_data
        except ImportError as exc:
            raise OracleError("GPAW PAW setups not found: pip install gpaw-data") from exc
        gpaw.setup_paths.append(str(gpaw_data.datapath()))
    return gpaw


def _versions() -> dict[str, str]:
    import gpaw

    try:
        import gpaw_data

        data = getattr(gpaw_data, "__version__", "?")
    except ImportError:
        data = "?"
    return {"gpaw": gpaw.__version__, "gpaw_data": data}


def _check_setups(symbols) -> None:
    import gpaw

    for el in sorted(set(symbols)):
        if not any(
            (Path(p) / f"{el}.PBE{ext}").is_file() for p in gpaw.setup_paths for ext in (".gz", "")
        ):
            raise OracleError(f"no GPAW PBE PAW setup for {el} in {list(map(str, gpaw.setup_paths))}")


class _Run:
    """One evaluation: settings, a log folder and timings; builds and runs GPAW calculators."""

    def __init__(self, settings: GpawPbeSettings, label: str, log_dir: Path):
        self.s = settings
        self.label = label
        self.log_dir = log_dir
        self.timings_s: dict[str, float] = {}
        from gpaw.mpi import world

        self.world = world

    def log_file(self, stage: str) -> str:
        return str(self.log_dir / f"{self.label}-{stage}.txt")

    def kpts_for(self, atoms, explicit: tuple[int, int, int] | None = None) -> tuple[int, int, int]:
        if explicit is not None:
            return tuple(int(k) for k in explicit)
        if not atoms.pbc.any():
            return (1, 1, 1)
        from ase.calculators.calculator import kptdensity2monkhorstpack

        return tuple(int(k) for k in kptdensity2monkhorstpack(atoms, self.s.kpt_density, even=False))

    def calculator(self, kpts, stage: str, spinpol: bool):
        from gpaw import GPAW, PW

        s = self.s
        return GPAW(
            mode=PW(s.ecut_ev),
            xc="PBE",
            kpts={"size": kpts, "gamma": True},
            occupations={"name": "fermi-dirac", "width": s.smearing_width_ev},
            nbands=-s.empty_bands,  # occupied + empty_bands
            convergence={
                "energy": s.energy_tol_ev_per_electron,
                "density": s.density_tol,
                "eigenstates": s.eigenstates_tol,
                "bands": -(s.empty_bands // 2),  # all bands but the top half of the empty ones
            },
            maxiter=s.maxiter,
            spinpol=spinpol,
            txt=self.log_file(stage),
        )

    @contextlib.contextmanager
    def stage(self, name: str, what: str):
        """Times a stage and turns GPAW's known failures into ``OracleError``."""
        from gpaw import KohnShamConvergenceError

        t0 = time.perf_counter()
        try:
            yield
        except KohnShamConvergenceError as exc:
            kind = "too few bands for the band-convergence criterion" if "TooFewBands" in type(exc).__name__ else (
                f"SCF not converged in {self.s.maxiter} iterations"
            )
            raise OracleError(f"{kind} ({name}, {what})") from exc
        finally:
            self.timings_s[name] = self.timings_s.get(name, 0.0) + time.perf_counter() - t0

    def ground_state(self, atoms, stage: str, what: str, *, spinpol: bool, kpts=None, relax: bool | None = None,
                     relax_cell: bool | None = None):
        """PBE ground state of ``atoms`` (relaxed first when asked); returns the converged calculator."""
        kpts = self.kpts_for(atoms, kpts)
        calc = self.calculator(kpts, stage, spinpol)
        atoms.calc = calc
        relax = self.s.relax if relax is None else relax
        relax_cell = self.s.relax_cell if relax_cell is None else relax_cell
        with self.stage(stage, what):
            if relax:
                from ase.filters import FrechetCellFilter
                from ase.optimize import BFGS

                target = FrechetCellFilter(atoms) if relax_cell and atoms.pbc.all() else atoms
                logfile = self.log_file(stage + "-relax") if self.world.rank == 0 else None
                opt = BFGS(target, logfile=logfile)
                if not opt.run(fmax=self.s.fmax_ev_per_angstrom, steps=self.s.max_relax_steps):
                    raise OracleError(
                        f"relaxation not converged in {self.s.max_relax_steps} steps "
                        f"(fmax {self.s.fmax_ev_per_angstrom} eV/A; {stage}, {what})"
                    )
            atoms.get_potential_energy()
        return calc, kpts

    def edges(self, calc) -> tuple[BandEdges, np.ndarray, list[int] | None]:
        e_skn = eigenvalues_skn(calc)
        nocc = occupied_bands(calc)
        return band_edges(e_skn, nocc, float(calc.get_fermi_level())), e_skn, nocc

    def band_path_edges(self, calc, atoms, nocc, what: str) -> tuple[BandEdges, np.ndarray]:
        """Edges along a band path (fixed PBE density), with the path's k-points (fractional)."""
        path = atoms.cell.bandpath(self.s.band_path_labels, npoints=self.s.band_path_npoints, pbc=atoms.pbc)
        with self.stage("band_path", what):
            bs_calc = calc.fixed_density(kpts=path.kpts, symmetry="off", txt=self.log_file("band-path"))
            e_skn = eigenvalues_skn(bs_calc)
        return band_edges(e_skn, nocc, float(calc.get_fermi_level())), path.kpts

    def hse_eigenvalues(self, calc, n1: int, n2: int, kpt_indices: list[int] | None, what: str):
        """PBE and non-self-consistent HSE06 eigenvalues (eV), bands ``n1..n2-1``, as ``s x k x n``."""
        with self.stage("hse06", what):
            try:
                from gpaw.new.pw.nschse import NonSelfConsistentHybridXCCalculator
            except ImportError:  # gpaw < 25
                from gpaw.hybrids.eigenvalues import non_self_consistent_eigenvalues

                e_dft, v_dft, v_hyb = non_self_consistent_eigenvalues(calc, "HSE06", n1, n2, kpt_indices)
                return np.asarray(e_dft), np.asarray(e_dft - v_dft + v_hyb)
            hyb = NonSelfConsistentHybridXCCalculator.from_dft_calculation(
                calc.dft, "HSE06", log=self.log_file("hse06")
            )
            e_dft, e_hyb = hyb.calculate(calc.dft.ibzwfs, n1, n2, kpt_indices)
            return np.asarray(e_dft), np.asarray(e_hyb)


def _atoms_of(structure, spinpol: bool | None):
    """ASE atoms from a pymatgen structure, with initial moments when spin-polarized."""
    from pymatgen.io.ase import AseAtomsAdaptor

    atoms = AseAtomsAdaptor.get_atoms(structure)
    symbols = atoms.get_chemical_symbols()
    if spinpol is None:
        spinpol = any(el in MAGNETIC_ELEMENTS for el in symbols)
    magmoms = structure.site_properties.get("magmom")
    if spinpol:
        if magmoms is None or not np.any(np.asarray(magmoms, float)):
            magmoms = [3.0 if el in MAGNETIC_ELEMENTS else 0.0 for el in symbols]
            if not any(magmoms):
                magmoms = [1.0] * len(symbols)
        atoms.set_initial_magnetic_moments(np.asarray(magmoms, float))
    else:
        atoms.set_initial_magnetic_moments(None)
    return atoms, bool(spinpol)


def _read_structure(p: Path):
    from pymatgen.core import Structure

    if not p.is_file():
        raise OracleError(f"structure file not found: {p}")
    try:
        return Structure.from_file(str(p))
    except Exception as exc:  # pymatgen raises many kinds for bad files
        raise OracleError(f"cannot read structure {p}: {exc}") from exc


class _DiskCache:
    """JSON records in ``folder``; one writer per key (file lock), rank 0 only under MPI."""

    def __init__(self, folder: Path, world):
        self.folder = folder
        self.world = world

    def get_or_compute(self, kind: str, key: str, compute) -> tuple[dict, bool]:
        path = self.folder / kind / f"{key}.json"
        if path.is_file():
            return json.loads(path.read_text()), True
        if self.world.size > 1:
            record = compute()  # every rank computes (GPAW is collective); rank 0 writes
            if self.world.rank == 0:
                self._write(path, record)
            self.world.barrier()
            return record, False
        import fcntl

        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # another worker may be computing the same record
            if path.is_file():
                return json.loads(path.read_text()), True
            record = compute()
            self._write(path, record)
        return record, False

    @staticmethod
    def _write(path: Path, record: dict) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(record, indent=1, sort_keys=True))
        os.replace(tmp, path)


# -- the oracles -------------------------------------------------------------------------------
#: properties that need ``formation_energy``
_HULL_PROPERTIES = ("formation_energy_ev_per_atom", "e_above_hull_ev_per_atom")


class GpawPbeOracle(ReferenceHullMixin, Oracle):
    """PBE band gap, band edges, total and formation energy, stability and efficiency limit from GPAW.

    Properties (eV, eV/atom, %): ``gap_ev`` and ``direct_gap_ev`` (k-mesh, plus the band path
    when ``band_path``), ``vbm_ev``/``cbm_ev`` (absolute, against the cell's average
    electrostatic potential), ``total_energy_ev_per_atom`` (GPAW's energy, relative to its
    atomic references), ``sq_efficiency_percent`` (Shockley-Queisser limit of ``gap_ev`` under
    AM1.5G), ``formation_energy_ev_per_atom`` and ``e_above_hull_ev_per_atom`` (MP2020 scale,
    see the module docstring; omitted with a reason in ``extra`` where they cannot be given).
    """

    kind = "gpaw-pbe"
    properties = (
        "gap_ev",
        "direct_gap_ev",
        "vbm_ev",
        "cbm_ev",
        "total_energy_ev_per_atom",
        "sq_efficiency_percent",
        "formation_energy_ev_per_atom",
        "e_above_hull_ev_per_atom",
    )
    code_version = "1"
    Settings = GpawPbeSettings
    needs_structure = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        props = type(self).properties
        if not self.settings.formation_energy:  # declare what this instance reports
            props = tuple(p for p in props if p not in _HULL_PROPERTIES)
        self.properties = props + (("slme_percent",) if self.settings.slme else ())

    @property
    def cache_folder(self) -> Path:
        """Where elemental references and HSE06 shifts are cached: ``<site cache_dir>/gpaw``."""
        return self.site.cache_folder("gpaw")

    # -- entry point -------------------------------------------------------------------------
    def evaluate(self, candidate: Candidate) -> OracleResult:
        """PBE (and, for HSE06, hybrid) band edges and energies of ``candidate``'s structure."""
        import_gpaw()
        structure = candidate.pmg_structure()
        if structure is None:
            raise OracleError(f"{self.kind} needs a structure")
        if not structure.is_ordered:
            raise OracleError("GPAW needs an ordered structure; this one has partial occupancies")
        _check_setups(el.symbol for el in structure.composition.elements)
        if self.settings.formation_energy:  # fail before the SCF when no hull can be given
            self.reference_hull(el.symbol for el in structure.composition.elements)
        with self._log_dir() as log_dir, _single_threaded_blas():
            run = _Run(self.settings, _safe(candidate.id), log_dir)
            props, extra = self._compute(run, structure, candidate.formula)
        extra.update(
            timings_s={k: round(v, 3) for k, v in run.timings_s.items()},
            mpi_ranks=run.world.size,
            versions=_versions(),
        )
        if self.site.log_dir:
            extra["log_dir"] = str(log_dir)
        return OracleResult(properties=props, extra=extra)

    @contextlib.contextmanager
    def _log_dir(self):
        if self.site.log_dir:
            path = self.site.resolve(self.site.log_dir)
            path.mkdir(parents=True, exist_ok=True)
            yield path
        else:
            with tempfile.TemporaryDirectory(prefix="matloop-gpaw-") as tmp:
                yield Path(tmp)

    # -- PBE ------------------------------------------------------------------------------------
    def _pbe(self, run: _Run, structure, what: str) -> dict[str, Any]:
        """PBE ground state + edges of one structure: everything later stages need."""
        atoms, spinpol = _atoms_of(structure, self.settings.spinpol)
        calc, kpts = run.ground_state(atoms, "pbe", what, spinpol=spinpol, kpts=self.settings.kpts)
        mesh, e_skn, nocc = run.edges(calc)
        out = {
            "atoms": atoms,
            "calc": calc,
            "kpts": kpts,
            "nocc": nocc,
            "mesh": mesh,
            "edges": mesh,
            "spinpol": spinpol,
            "energy_ev": float(atoms.get_potential_energy()),
        }
        if self.settings.band_path:
            path, _ = run.band_path_edges(calc, atoms, nocc, what)
            out["path"] = path
            out["edges"] = _union(mesh, path)
        return out

    def _pbe_extra(self, pbe: dict[str, Any]) -> dict[str, Any]:
        calc, atoms = pbe["calc"], pbe["atoms"]
        s = self.settings
        ibz = calc.get_ibz_k_points()
        mesh: BandEdges = pbe["mesh"]
        extra: dict[str, Any] = {
            "converged": True,
            "n_iterations": int(calc.get_number_of_iterations()),
            "convergence": {
                "energy_ev_per_electron": s.energy_tol_ev_per_electron,
                "density": s.density_tol,
                "eigenstates_ev2_per_electron": s.eigenstates_tol,
                "maxiter": s.maxiter,
            },
            "kpts": list(pbe["kpts"]),
            "n_kpts_ibz": len(ibz),
            "nbands": int(calc.get_number_of_bands()),
            "occupied_bands": pbe["nocc"],
            "fermi_level_ev": float(calc.get_fermi_level()),
            "spin_polarized": pbe["spinpol"],
            "metallic": pbe["edges"].metallic,
            "mesh_gap_ev": mesh.gap_ev,
        }
        if pbe["spinpol"]:
            extra["magnetic_moment_mub"] = float(calc.get_magnetic_moment())
        if not mesh.metallic:
            extra["vbm_kpt"] = [round(float(x), 6) for x in ibz[mesh.k_vbm]]
            extra["cbm_kpt"] = [round(float(x), 6) for x in ibz[mesh.k_cbm]]
        if "path" in pbe:
            extra["band_path_gap_ev"] = pbe["path"].gap_ev
        if s.relax:
            from pymatgen.io.ase import AseAtomsAdaptor

            extra["relaxed_structure"] = AseAtomsAdaptor.get_structure(atoms).as_dict()
        return extra

    def _compute(self, run: _Run, structure, what: str) -> tuple[dict[str, float], dict[str, Any]]:
        pbe = self._pbe(run, structure, what)
        edges: BandEdges = pbe["edges"]
        n_atoms = len(pbe["atoms"])
        props = {
            "gap_ev": edges.gap_ev,
            "direct_gap_ev": edges.direct_gap_ev,
            "vbm_ev": edges.vbm_ev,
            "cbm_ev": edges.cbm_ev,
            "total_energy_ev_per_atom": pbe["energy_ev"] / n_atoms,
            "sq_efficiency_percent": sq_efficiency_percent(edges.gap_ev),
        }
        extra = self._pbe_extra(pbe)
        self._add_slme(run, pbe, props, extra, edges.gap_ev, edges.direct_gap_ev, scissor_ev=0.0)
        self._add_formation_energy(run, pbe, props, extra)
        return props, extra

    # -- SLME ----------------------------------------------------------------------------------
    def _add_slme(self, run: _Run, pbe: dict[str, Any], props: dict, extra: dict, gap_ev: float,
                  direct_gap_ev: float, scissor_ev: float) -> None:
        """``slme_percent`` from the RPA absorption of the ground state (opt-in setting ``slme``).

        The dielectric function comes from ``gpaw.response.df.DielectricFunction`` (optical
        limit, no local-field effects, direction-averaged); the absorption coefficient is
        alpha = 4 pi kappa E / (h c) with kappa the extinction coefficient; the efficiency is
        ``efficiency.slme`` on the same AM1.5G spectrum as the Shockley-Queisser limit.
        """
        if not self.settings.slme:
            return
        if pbe["nocc"] is None or not gap_ev > 0:
            raise OracleError("slme needs a gapped ground state; this one is metallic")
        from gpaw.response.df import DielectricFunction

        s = self.settings
        t0 = time.perf_counter()
        gpw = run.log_dir / f"{run.label}-optics.gpw"
        # gpaw.response counts a state as partly filled when its Fermi-Dirac occupation exceeds a
        # tiny tolerance, so the SCF's 0.05 eV smearing makes a 0.6 eV-gap semiconductor "metallic"
        # (and forbids the scissor); a non-self-consistent pass at 1 meV width fixes the occupations.
        calc = pbe["calc"].fixed_density(occupations={"name": "fermi-dirac", "width": 0.001},
                                         txt=run.log_file("optics-nscf"))
        calc.write(str(gpw), mode="all")
        energies = np.linspace(0.0, max(5.0, gap_ev + 3.0), 301)
        df = DielectricFunction(str(gpw), frequencies=energies, ecut=s.optics_ecut_ev, eta=s.optics_eta_ev,
                                intraband=False, hilbert=False, eshift=scissor_ev or None,
                                txt=run.log_file("optics"))
        eps = np.mean([df.get_dielectric_function(direction=d, filename=None)[0] for d in "xyz"], axis=0)
        kappa = np.sqrt(np.maximum((np.abs(eps) - eps.real) / 2.0, 0.0))
        hc_ev_cm = 1.239841984e-4  # h c in eV cm
        alpha_per_cm = 4.0 * np.pi * kappa * energies / hc_ev_cm
        props["slme_percent"] = 100.0 * slme(energies, alpha_per_cm, s.slme_thickness_um, gap_ev, direct_gap_ev)
        extra["slme"] = {"thickness_um": s.slme_thickness_um, "scissor_ev": scissor_ev,
                         "alpha_per_cm_at_gap_plus_0.5_ev": float(np.interp(gap_ev + 0.5, energies, alpha_per_cm))}
        gpw.unlink(missing_ok=True)
        run.timings_s["optics"] = time.perf_counter() - t0

    # -- formation energy ---------------------------------------------------------------------
    def _add_formation_energy(self, run: _Run, pbe: dict[str, Any], props: dict, extra: dict) -> None:
        """Formation energy and energy above the hull on the MP2020 scale (see the module docstring)."""
        from pymatgen.io.ase import AseAtomsAdaptor

        if not self.settings.formation_energy:
            return
        atoms = pbe["atoms"]
        symbols = atoms.get_chemical_symbols()
        try:
            refs = {el: self.elemental_reference(el, run) for el in sorted(set(symbols))}
        except OracleError as exc:
            extra["formation_energy_error"] = str(exc)
            return
        e_refs = sum(refs[el]["energy_ev_per_atom"] for el in symbols)
        raw = (pbe["energy_ev"] - e_refs) / len(symbols)
        extra["pbe_formation_energy_ev_per_atom"] = raw
        extra["elemental_references"] = {
            el: {k: r[k] for k in ("energy_ev_per_atom", "source", "kpts", "cached", "file")} for el, r in refs.items()
        }
        structure = AseAtomsAdaptor.get_structure(atoms)
        comp = structure.composition
        hubbards = mp_calculation_parameters(comp)["hubbards"]
        if hubbards:
            extra["formation_energy_error"] = (
                f"the Materials Project computes {comp.reduced_formula} with GGA+U (U on {', '.join(hubbards)}), "
                "whose MP2020 corrections plain PBE has no counterpart of: no formation energy or energy above the "
                "hull on the MP2020 scale"
            )
            return
        correction = mp2020_correction_ev(structure) / len(symbols)
        e_form = raw + correction
        stab = self.reference_hull(sorted(set(symbols))).stability(comp, e_form)
        props["formation_energy_ev_per_atom"] = e_form
        props["e_above_hull_ev_per_atom"] = stab.e_above_hull_ev_per_atom
        extra["mp2020_correction_ev_per_atom"] = correction
        extra["decomposition"] = [{"formula": f, "fraction": x} for f, x in stab.decomposition]
        extra["hull_reference"] = stab.hull_version
        extra["hull_phases"] = list(stab.reference_phases)

    def _reference_key(self, element: str, source: str) -> str:
        s = self.settings
        science = {
            "element": element,
            "source": source,
            "ecut_ev": s.ecut_ev,
            "kpt_density": s.kpt_density,
            "smearing_width_ev": s.smearing_width_ev,
            "tolerances": [s.energy_tol_ev_per_electron, s.density_tol, s.eigenstates_tol],
            "relax": [s.relax, s.relax_cell, s.fmax_ev_per_angstrom] if s.relax else False,
            "molecule_box_angstrom": s.molecule_box_angstrom if element in MOLECULE_REFERENCES else None,
            "recipe": REFERENCE_RECIPE,
            **_versions(),
        }
        return f"{element}-{stable_hash(science, 16)}"

    def elemental_reference(self, element: str, run: _Run | None = None) -> dict[str, Any]:
        """Energy per atom of the elemental reference, from the disk cache or computed now.

        Returns the cached record plus ``cached`` (whether it was on disk) and ``file``.
        """
        if run is None:
            import_gpaw()
            with self._log_dir() as log_dir, _single_threaded_blas():
                return self.elemental_reference(element, _Run(self.settings, f"ref-{element}", log_dir))
        atoms, spinpol, source, is_molecule = self._reference_atoms(element)
        key = self._reference_key(element, source)
        cache = _DiskCache(self.cache_folder, run.world)

        def compute() -> dict[str, Any]:
            calc, kpts = run.ground_state(
                atoms, f"ref-{element}", f"reference {source}", spinpol=spinpol,
                kpts=(1, 1, 1) if is_molecule else None, relax_cell=False if is_molecule else None,
            )
            return {
                "element": element,
                "source": source,
                "energy_ev_per_atom": float(atoms.get_potential_energy()) / len(atoms),
                "kpts": list(kpts),
                "n_atoms": len(atoms),
                "cell": atoms.cell.tolist(),
                "n_iterations": int(calc.get_number_of_iterations()),
                **_versions(),
            }

        record, cached = cache.get_or_compute("elements", key, compute)
        return {**record, "cached": cached, "file": str(cache.folder / "elements" / f"{key}.json")}

    def _reference_atoms(self, element: str):
        """Atoms of the elemental reference: (atoms, spinpol, source label, is_molecule)."""
        from ase.build import bulk, molecule
        from ase.data import atomic_numbers, reference_states

        if element in self.settings.elemental_references:
            path = self.site.resolve(self.settings.elemental_references[element])
            structure = _read_structure(path)
            if {el.symbol for el in structure.composition.elements} != {element}:
                raise OracleError(f"elemental reference {path} for {element} is not pure {element}")
            atoms, spinpol = _atoms_of(structure, element in REFERENCE_MAGMOMS or None)
            label = f"file:{structure.composition.reduced_formula}:{stable_hash(structure.as_dict(), 10)}"
            return atoms, spinpol, label, False
        if element in MOLECULE_REFERENCES:
            name, moment = MOLECULE_REFERENCES[element]
            if name in DIATOMIC_BOND_ANGSTROM:
                from ase import Atoms

                atoms = Atoms(2 * [element], positions=[(0, 0, 0), (0, 0, DIATOMIC_BOND_ANGSTROM[name])])
            else:
                atoms = molecule(name)
            a = self.settings.molecule_box_angstrom
            atoms.set_cell([a, a * 1.05, a * 1.1])  # unequal edges keep degenerate orbitals apart
            atoms.center()
            atoms.pbc = True  # periodic box, Gamma only
            spinpol = moment > 0
            if spinpol:
                atoms.set_initial_magnetic_moments([moment] * len(atoms))
            return atoms, spinpol, f"molecule:{name}", True
        if element in CRYSTAL_REFERENCES:
            from pymatgen.core import Lattice, Structure

            group, (a, b, c), site = CRYSTAL_REFERENCES[element]
            hexagonal = group in ("P3_121", "R-3m")
            lattice = Lattice.hexagonal(a, c) if hexagonal else Lattice.orthorhombic(a, b, c)  # incl. tetragonal/cubic
            structure = Structure.from_spacegroup(group, lattice, [element], [site]).get_primitive_structure()
            atoms, _ = _atoms_of(structure, False)
            return atoms, False, f"crystal:{group}", False
        state = reference_states[atomic_numbers[element]]
        if state is None or state.get("symmetry") not in BULK_REFERENCE_LATTICES:
            sym = None if state is None else state.get("symmetry")
            raise OracleError(
                f"no built-in elemental reference for {element} (ASE reference state {sym!r}); "
                f"give one in settings.elemental_references"
            )
        atoms = bulk(element)  # ASE's experimental lattice constants
        spinpol = element in REFERENCE_MAGMOMS
        if spinpol:
            atoms.set_initial_magnetic_moments([REFERENCE_MAGMOMS[element]] * len(atoms))
        return atoms, spinpol, f"bulk:{state['symmetry']}", False


class GpawHse06Oracle(GpawPbeOracle):
    """HSE06 band gap on the PBE ground state (non-self-consistent, or PBE + HSE06 band-edge shifts).

    Properties (eV, %): ``gap_ev``, ``direct_gap_ev``, ``vbm_ev``, ``cbm_ev`` (HSE06 level),
    ``pbe_gap_ev`` and ``sq_efficiency_percent`` (Shockley-Queisser limit of the HSE06 gap);
    ``formation_energy_ev_per_atom`` and ``e_above_hull_ev_per_atom`` (PBE, as in the PBE tier)
    when ``formation_energy`` is on. ``extra`` holds the VBM/CBM shifts (``vbm_shift_ev``,
    ``cbm_shift_ev``) and the PBE edges.
    """

    kind = "gpaw-hse06"
    properties = ("gap_ev", "direct_gap_ev", "vbm_ev", "cbm_ev", "pbe_gap_ev", "sq_efficiency_percent",
                  "formation_energy_ev_per_atom", "e_above_hull_ev_per_atom")
    Settings = GpawHse06Settings

    def _compute(self, run: _Run, structure, what: str) -> tuple[dict[str, float], dict[str, Any]]:
        s: GpawHse06Settings = self.settings
        pbe = self._pbe(run, structure, what)
        pbe_edges: BandEdges = pbe["edges"]
        extra = self._pbe_extra(pbe)
        extra.update(mode=s.mode, pbe_vbm_ev=pbe_edges.vbm_ev, pbe_cbm_ev=pbe_edges.cbm_ev,
                     pbe_direct_gap_ev=pbe_edges.direct_gap_ev)
        props: dict[str, float] = {"pbe_gap_ev": pbe_edges.gap_ev}
        if pbe["nocc"] is None:
            raise OracleError(f"fractional occupations in PBE ({what}): HSE06 band edges are undefined for a metal")
        if s.mode == "nscf":
            nocc = pbe["nocc"]
            n1, n2 = min(nocc) - 1, max(nocc) + 1
            e_dft, e_hyb = run.hse_eigenvalues(pbe["calc"], n1, n2, None, what)
            hse = band_edges(e_hyb, nocc, pbe_edges.vbm_ev, band_offset=n1)
            props.update(gap_ev=hse.gap_ev, direct_gap_ev=hse.direct_gap_ev, vbm_ev=hse.vbm_ev, cbm_ev=hse.cbm_ev)
            extra.update(vbm_shift_ev=hse.vbm_ev - pbe_edges.vbm_ev, cbm_shift_ev=hse.cbm_ev - pbe_edges.cbm_ev,
                         hse_metallic=hse.metallic)
        else:
            shifts = self._edge_shifts(run, structure, pbe, what)
            dv, dc = shifts["vbm_shift_ev"], shifts["cbm_shift_ev"]
            vbm, cbm = pbe_edges.vbm_ev + dv, pbe_edges.cbm_ev + dc
            props.update(
                gap_ev=max(cbm - vbm, 0.0) if not pbe_edges.metallic else 0.0,
                direct_gap_ev=max(pbe_edges.direct_gap_ev + dc - dv, 0.0) if not pbe_edges.metallic else 0.0,
                vbm_ev=vbm,
                cbm_ev=cbm,
            )
            extra.update(vbm_shift_ev=dv, cbm_shift_ev=dc,
                         bulk_reference={k: shifts[k] for k in ("source", "kpts", "cached", "pbe_gap_ev",
                                                                "edge_kpt_indices")})
        props["sq_efficiency_percent"] = sq_efficiency_percent(props["gap_ev"])
        self._add_slme(run, pbe, props, extra, props["gap_ev"], props["direct_gap_ev"],
                       scissor_ev=props["gap_ev"] - pbe_edges.gap_ev)
        self._add_formation_energy(run, pbe, props, extra)
        return props, extra

    def _edge_shifts(self, run: _Run, structure, pbe: dict[str, Any], what: str) -> dict[str, Any]:
        """HSE06 minus PBE shifts of VBM and CBM at the PBE band-edge k-points of the bulk (cached)."""
        s: GpawHse06Settings = self.settings
        if s.bulk_reference:
            bulk = _read_structure(self.site.resolve(s.bulk_reference))
            source = f"file:{Path(s.bulk_reference).name}"
        else:
            bulk, source = structure, "candidate"
        key_science = {
            "structure": bulk.as_dict(),
            "settings": s.model_dump(
                mode="json",
                include={"ecut_ev", "kpt_density", "kpts", "smearing_width_ev", "spinpol", "empty_bands",
                         "energy_tol_ev_per_electron", "density_tol", "eigenstates_tol", "relax", "relax_cell",
                         "fmax_ev_per_angstrom"},
            ),
            "recipe": REFERENCE_RECIPE,
            **_versions(),
        }
        key = f"{bulk.composition.reduced_formula}-{stable_hash(key_science, 16)}"

        def compute() -> dict[str, Any]:
            if source == "candidate":
                bulk_pbe = pbe  # the candidate's own ground state: no second SCF
            else:
                atoms, spinpol = _atoms_of(bulk, s.spinpol)
                calc, kpts = run.ground_state(atoms, "bulk-pbe", f"bulk {source}", spinpol=spinpol)
                edges, _, nocc = run.edges(calc)
                bulk_pbe = {"calc": calc, "kpts": kpts, "nocc": nocc, "mesh": edges}
            mesh: BandEdges = bulk_pbe["mesh"]
            nocc = bulk_pbe["nocc"]
            if nocc is None or mesh.metallic:
                raise OracleError(f"bulk reference ({source}) has no PBE gap: band-edge correction needs a gapped bulk")
            kidx = sorted({mesh.k_vbm, mesh.k_cbm})
            n1, n2 = min(nocc) - 1, max(nocc) + 1
            e_dft, e_hyb = run.hse_eigenvalues(bulk_pbe["calc"], n1, n2, kidx, f"bulk {source}")
            iv, ic = kidx.index(mesh.k_vbm), kidx.index(mesh.k_cbm)
            bv, bc = nocc[mesh.spin_vbm] - 1 - n1, nocc[mesh.spin_cbm] - n1
            dv = float(e_hyb[mesh.spin_vbm, iv, bv] - e_dft[mesh.spin_vbm, iv, bv])
            dc = float(e_hyb[mesh.spin_cbm, ic, bc] - e_dft[mesh.spin_cbm, ic, bc])
            return {"vbm_shift_ev": dv, "cbm_shift_ev": dc, "source": source, "kpts": list(bulk_pbe["kpts"]),
                    "pbe_gap_ev": mesh.gap_ev, "edge_kpt_indices": kidx, **_versions()}

        cache = _DiskCache(self.cache_folder, run.world)
        record, cached = cache.get_or_compute("hse06_shifts", key, compute)
        return {**record, "cached": cached}


def sq_efficiency_percent(gap_ev: float) -> float:
    """Shockley-Queisser limit (%) of a single junction with this gap under AM1.5G (0 for a metal)."""
    return 100.0 * shockley_queisser_efficiency(gap_ev)


def _union(a: BandEdges, b: BandEdges) -> BandEdges:
    """Edges over two k-point sets of the same calculation (mesh and band path)."""
    if a.metallic and a.vbm_ev == a.cbm_ev:  # fractional occupations: both sets say metal
        return a
    vbm, cbm = max(a.vbm_ev, b.vbm_ev), min(a.cbm_ev, b.cbm_ev)
    gap = cbm - vbm
    return BandEdges(vbm, cbm, max(gap, 0.0), min(a.direct_gap_ev, b.direct_gap_ev), gap <= 0)


def _single_threaded_blas():
    """One BLAS thread while GPAW runs: GPAW parallelizes with MPI, and threaded OpenBLAS
    under it is ~10x slower on busy cores (measured: 50 s instead of 3 s for Si)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)[:64]
