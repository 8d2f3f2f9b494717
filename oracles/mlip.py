"""Machine-learned interatomic potential (MLIP) tier: relaxation, formation energy, hull energy.

``MlipOracle`` relaxes a structure with an ML potential (FIRE on atoms and, optionally, the
cell through ASE's ``FrechetCellFilter``, the same recipe as ``chgnet.model.StructOptimizer``),
then reports the energy per atom, the formation energy against elemental references
computed by the same model, and the energy above the convex hull. Which potential is a
science setting, ``model`` (atomate2's ``ForceFieldRelaxMaker(force_field_name=...)``: one
oracle, a parameter per force field): ``chgnet`` (CHGNet, default), ``sevennet`` (SevenNet),
or any ASE calculator a plug-in registers under the ``matloop.calculators`` entry-point
group, as a callable ``(model_name, device) -> ase.calculators.calculator.Calculator``.
``model_version`` picks the pretrained weights of that model.

The kinds ``chgnet`` and ``sevennet`` of campaigns written before ``kind: mlip`` are this
oracle under those names, with that model as the default (``ChgnetAlias``, ``SevennetAlias``).

Elemental references (the chemical potentials of the formation energy) follow one rule,
applied by ``elemental_references`` (trial structures from ``elemental_trial_structures``):

* diatomic gases in ASE's ``reference_states`` (H, N, O, F) and the halogens Cl, Br, I:
  an isolated dimer in a 12 A box (atoms relaxed, cell fixed) and a simple-cubic crystal of
  dimers (atoms and cell relaxed); the lower energy per atom wins;
* elements whose ``reference_states`` entry is fcc, bcc, hcp or diamond: that lattice from
  ``ase.build.bulk`` with its tabulated lattice constant, relaxed;
* every other element (B, P, S, Ga, As, Mn, Hg, noble gases, f-elements, ...): fcc, bcc,
  hcp, simple cubic and diamond lattices with a nearest-neighbour distance of twice the
  covalent radius, each relaxed; the lowest energy per atom wins. These are upper bounds
  on the true ground state (typically within 0.1-0.3 eV/atom), so formation energies of
  their compounds come out too negative by a fraction of that; supply better elemental
  entries through ``references`` where it matters (the lowest elemental entry is used).

References are relaxed with a fixed protocol (fmax 0.02 eV/A, at most 500 FIRE steps,
cell relaxed) independent of the candidate settings, and cached on disk per model and
element (``<site cache_dir>/mlip-references/elemental-<model>-<model_version>-v<protocol>.json``),
so each is computed once per machine; concurrent workers serialise on a lock file.

The model is loaded once per process (``load_calculator`` caches by model, version and
device) and never stored on the oracle, so the oracle pickles to worker processes.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import tempfile
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator

from matloop.core.oracle import Oracle, OracleSettings
from matloop.core.records import Candidate, InputError, OracleError, OracleResult
from matloop.core.registry import CALCULATORS, calculator_factory, distribution, names

#: bump when the elemental-reference rule or protocol changes (invalidates caches)
REFERENCE_PROTOCOL = 1
_REF_FMAX_EV_PER_A = 0.02
_REF_MAX_STEPS = 500
_DIATOMIC_HALOGENS = {"Cl": 1.99, "Br": 2.28, "I": 2.67}
_SIMPLE_LATTICES = ("fcc", "bcc", "hcp", "diamond")

#: the models built in, with the pretrained weights used when ``model_version`` is unset
BUILTIN_MODELS = {"chgnet": "0.3.0", "sevennet": "7net-0"}
#: CHGNet's pretrained weights (``CHGNet.load(model_name=...)``)
CHGNET_VERSIONS = ("0.3.0", "0.2.0", "r2scan")


def known_models() -> list[str]:
    """Every value ``model`` accepts: the built-in models and the registered calculators."""
    return sorted(set(BUILTIN_MODELS) | set(names(CALCULATORS)))


# -- settings ------------------------------------------------------------------------------
class ReferenceEntry(BaseModel):
    """One phase for the convex hull: a formula and its energy per atom from the same model."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    formula: str = Field(description="chemical formula, e.g. Li2O")
    energy_ev_per_atom: float = Field(
        validation_alias=AliasChoices("energy_ev_per_atom", "energy_per_atom"),
        description="total energy per atom (eV/atom) computed with the oracle's model",
    )


class MlipModelSettings(OracleSettings):
    """Which ML potential: the ``model`` and ``model_version`` settings of every MLIP oracle."""

    model: str | None = Field(
        None,
        description="the ML potential: chgnet (CHGNet), sevennet (SevenNet), or a calculator registered by a "
        "plug-in under the matloop.calculators entry points; None: the oracle kind's default (chgnet; "
        "sevennet for kind sevennet). Older spellings are read too: a CHGNet version alone (0.3.0, 0.2.0, "
        "r2scan) or a SevenNet name alone (7net-0, ...) sets both keys, and model:version "
        "(chgnet:r2scan) as well",
    )
    model_version: str | None = Field(
        None,
        description="the pretrained weights of that model: CHGNet 0.3.0 (default), 0.2.0 or r2scan; SevenNet "
        "7net-0 (default) or another sevenn model name or checkpoint; for a plug-in calculator, the "
        "model_name its factory is called with (None: the factory's default)",
    )

    @model_validator(mode="before")
    @classmethod
    def _older_spellings(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not isinstance(data.get("model"), str):
            return data
        text = data["model"]
        model, sep, version = text.partition(":")
        if not sep:
            if text in CHGNET_VERSIONS:
                model, version = "chgnet", text
            elif text.startswith("7net"):
                model, version = "sevennet", text
            else:
                return data
        given = data.get("model_version")
        if version and given not in (None, version):
            raise ValueError(f"model {text!r} names version {version!r} but model_version is {given!r}")
        return {**data, "model": model, "model_version": given or version or None}

    @field_validator("model")
    @classmethod
    def _known_model(cls, v: str | None) -> str | None:
        if v is not None and v not in known_models():
            raise ValueError(
                f"unknown model {v!r}; known: {', '.join(known_models())} (plug-ins add more through the "
                f"{CALCULATORS} entry points; pretrained weights go in model_version)"
            )
        return v

    def with_defaults(self, default_model: str):
        """These settings with ``model`` and ``model_version`` filled in (what the version hashes)."""
        model = self.model or default_model
        return self.model_copy(update={"model": model, "model_version": self.model_version or BUILTIN_MODELS.get(model)})


class MlipSettings(MlipModelSettings):
    """Science settings of the MLIP relaxation oracle."""

    relax: bool = Field(True, description="relax the structure before the final energy")
    fmax: float = Field(0.05, gt=0, description="force convergence threshold of the relaxation (eV/A)")
    max_steps: int = Field(300, ge=1, description="maximum FIRE steps of the relaxation")
    relax_cell: bool = Field(True, description="relax the cell as well as the atoms (FrechetCellFilter)")
    max_volume_ratio: float = Field(
        3.0, gt=1, description="a relaxation whose volume grows or shrinks by more than this factor is a failure"
    )
    min_distance_a: float = Field(
        0.5, ge=0, description="structures with two atoms closer than this (A), before or after relaxing, fail"
    )
    formation_energy: bool = Field(
        True,
        description="report formation_energy_ev_per_atom and e_above_hull_ev_per_atom (elemental references "
        "are relaxed once per element and cached); false: only the relaxation and energy_ev_per_atom "
        "(e.g. to pre-relax generated structures)",
    )
    references: str | None = Field(
        None,
        description="JSON or CSV of reference entries (formula, energy_per_atom) computed with the same model "
        "(a relative path is taken from the campaign file's folder); used for the hull and, for elements, as "
        "chemical potentials when lower than the built-in ones",
    )
    extra_entries: list[ReferenceEntry] = Field(
        default_factory=list, description="further hull entries given inline (formula, energy_per_atom)"
    )


# -- model loading -------------------------------------------------------------------------
def resolve_device(device: str = "auto") -> str:
    """``cuda`` when asked or when ``auto`` and a GPU is visible, else ``cpu``."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise OracleError("device 'cuda' requested but torch sees no CUDA device")
    return device


@contextlib.contextmanager
def compute_threads(threads: int = 1):
    """Limit torch and the BLAS/OpenMP pools (numpy, scipy) to ``threads`` inside the block.

    Both matter: FrechetCellFilter's 3x3 matrix functions in scipy spent longer in OpenBLAS
    thread contention than CHGNet spent on the forces when two pools competed for two cores.
    """
    import torch
    from threadpoolctl import threadpool_limits

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with threadpool_limits(limits=threads):
            yield
    finally:
        torch.set_num_threads(old)


@lru_cache(maxsize=4)
def _chgnet_model(model_version: str, device: str):
    from chgnet.model import CHGNet

    return CHGNet.load(model_name=model_version, use_device=device, verbose=False)


@lru_cache(maxsize=8)
def load_calculator(model: str, model_version: str | None, device: str, stress: bool = True):
    """An ASE calculator for a pretrained model, loaded once per process and device.

    Args:
        model: ``chgnet``, ``sevennet`` or a name registered under ``matloop.calculators``.
        model_version: the pretrained weights (None: the model's default).
        device: ``cpu`` or ``cuda`` (resolve ``auto`` with ``resolve_device`` first).
        stress: False for fixed-cell work (MD): CHGNet then skips the stress, whose second
            backward pass doubles the cost of a step; asking for stress still computes it.
    """
    version = model_version or BUILTIN_MODELS.get(model)
    quiet = io.StringIO()
    with contextlib.redirect_stdout(quiet), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if model == "chgnet":
            from chgnet.model.dynamics import CHGNetCalculator

            class _Calculator(CHGNetCalculator):
                # CHGNet's own calculator always predicts energy, forces, stress and magmoms
                def calculate(self, atoms=None, properties=None, system_changes=None, task=None):
                    props = set(properties or ["energy"])
                    if task is None:
                        task = "efs" if (stress or "stress" in props) else "ef"
                        task += "m" if "magmoms" in props else ""
                    super().calculate(atoms, properties, system_changes, task=task)

            try:
                chgnet = _chgnet_model(version, device)
            except ValueError as exc:
                raise OracleError(f"CHGNet has no pretrained model {version!r}; known: {', '.join(CHGNET_VERSIONS)}") from exc
            return _Calculator(model=chgnet, use_device=device, on_isolated_atoms="ignore")
        if model == "sevennet":
            try:
                from sevenn.calculator import SevenNetCalculator
            except ImportError as exc:
                raise OracleError("SevenNet is not installed (pip install sevenn)") from exc
            return SevenNetCalculator(version, device=device)
        return calculator_factory(model)(version, device)


def model_provenance(model: str, model_version: str | None) -> str:
    """The package (or plug-in distribution) and weights behind a model, for the record."""
    from importlib.metadata import PackageNotFoundError, version

    if model in BUILTIN_MODELS:
        package = {"chgnet": "chgnet", "sevennet": "sevenn"}[model]
        try:
            return f"{model} {version(package)} model {model_version}"
        except PackageNotFoundError:
            return f"{model} (not installed) model {model_version}"
    return f"{model} ({distribution(CALCULATORS, model)}) model {model_version or 'default'}"


# -- relaxation ----------------------------------------------------------------------------
@dataclass
class RelaxOutcome:
    """A relaxed ``ase.Atoms`` and what the relaxation did."""

    atoms: Any
    energy_ev_per_atom: float
    n_steps: int
    fmax_ev_per_a: float
    converged: bool
    volume_ratio: float


def min_distance_a(atoms) -> float:
    """Shortest interatomic distance (A) under periodic boundary conditions."""
    if len(atoms) < 2:
        atoms = atoms.repeat(2)  # one atom: the shortest distance is to one of its images
    d = atoms.get_all_distances(mic=True)
    d[np.diag_indices_from(d)] = np.inf
    return float(d.min())


def relax_atoms(
    atoms,
    calc,
    *,
    fmax: float,
    max_steps: int,
    relax_cell: bool,
    max_volume_ratio: float = 3.0,
    relax: bool = True,
) -> RelaxOutcome:
    """Relax ``atoms`` in place with FIRE (and FrechetCellFilter when ``relax_cell``).

    Raises:
        OracleError: on non-finite energies or positions, or a volume change beyond
            ``max_volume_ratio`` (an exploding relaxation), checked at every step.
    """
    from ase.filters import FrechetCellFilter
    from ase.optimize import FIRE

    atoms.calc = calc
    v0 = float(atoms.get_volume())

    def guard():
        if not np.all(np.isfinite(atoms.positions)) or not np.all(np.isfinite(atoms.cell.array)):
            raise OracleError("relaxation exploded: non-finite positions or cell")
        ratio = atoms.get_volume() / v0
        if not (1.0 / max_volume_ratio <= ratio <= max_volume_ratio):
            raise OracleError(f"relaxation exploded: volume changed by a factor {ratio:.3g} (limit {max_volume_ratio:g})")

    n_steps, converged = 0, False
    if relax:
        target = FrechetCellFilter(atoms) if relax_cell else atoms
        opt = FIRE(target, logfile=None)
        opt.attach(guard, interval=1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            converged = bool(opt.run(fmax=fmax, steps=max_steps))
        n_steps = int(opt.nsteps)
    energy = float(atoms.get_potential_energy())
    if not math.isfinite(energy):
        raise OracleError("model returned a non-finite energy")
    forces = atoms.get_forces()
    if not np.all(np.isfinite(forces)):
        raise OracleError("model returned non-finite forces")
    fmax_final = float(np.linalg.norm(forces, axis=1).max())
    guard()
    return RelaxOutcome(
        atoms=atoms,
        energy_ev_per_atom=energy / len(atoms),
        n_steps=n_steps,
        fmax_ev_per_a=fmax_final,
        converged=converged or (not relax),
        volume_ratio=float(atoms.get_volume() / v0),
    )


# -- elemental references ------------------------------------------------------------------
def elemental_trial_structures(symbol: str) -> list[tuple[str, Any, bool]]:
    """The trial structures of the elemental-reference rule (see the module docstring).

    Returns:
        ``(label, atoms, relax_cell)`` triples; the lowest relaxed energy per atom wins.
    """
    from ase import Atoms
    from ase.build import bulk
    from ase.data import atomic_numbers, covalent_radii, reference_states

    z = atomic_numbers[symbol]
    state = reference_states[z] or {}
    sym = state.get("symmetry")
    if sym == "diatom" or symbol in _DIATOMIC_HALOGENS:
        d = float(state.get("d", _DIATOMIC_HALOGENS.get(symbol, 2 * covalent_radii[z])))
        box = 12.0
        gas = Atoms(symbol * 2, positions=[[0, 0, 0], [0, 0, d]], cell=[box, box, box], pbc=True)
        gas.center()
        a = d + 2.5  # dimers about a van der Waals contact apart
        crystal = Atoms(symbol * 2, positions=[[0, 0, 0], [d / 3**0.5] * 3], cell=[a, a, a], pbc=True)
        return [("dimer-in-box", gas, False), ("dimer-crystal", crystal, True)]
    if sym in _SIMPLE_LATTICES:
        try:
            return [(f"{sym} (ASE reference state)", bulk(symbol), True)]
        except ValueError:  # e.g. Se, Te: ASE tabulates 'hcp' but needs an atomic basis
            pass
    d0 = 2.0 * float(covalent_radii[z])
    trials = [
        ("fcc", bulk(symbol, "fcc", a=d0 * 2**0.5), True),
        ("bcc", bulk(symbol, "bcc", a=2 * d0 / 3**0.5), True),
        ("hcp", bulk(symbol, "hcp", a=d0, c=d0 * (8 / 3) ** 0.5), True),
        ("sc", bulk(symbol, "sc", a=d0), True),
        ("diamond", bulk(symbol, "diamond", a=4 * d0 / 3**0.5), True),
    ]
    return trials


@contextlib.contextmanager
def _file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        try:
            import fcntl
        except ImportError:  # Windows: no lock; atomic writes still keep the file valid
            yield
            return
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _read_json(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}  # a corrupt cache is recomputed, not trusted


def _write_json_atomic(path: Path, data: dict) -> None:
    text = json.dumps(data, indent=1, sort_keys=True)  # serialise first: no half-written file
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def atoms_to_structure(atoms):
    """A plain pymatgen ``Structure`` of ``atoms`` (no calculator results as site properties)."""
    from pymatgen.core import Structure

    return Structure(
        atoms.cell.array, atoms.get_chemical_symbols(), atoms.positions, coords_are_cartesian=True, to_unit_cell=True
    )


def elemental_references(
    elements: Iterable[str],
    *,
    model: str = "chgnet",
    model_version: str | None = None,
    device: str = "auto",
    cache_dir: str | Path | None = None,
) -> dict[str, dict]:
    """Relaxed elemental references by element, computed once and cached on disk.

    Args:
        model, model_version: the ML potential (see ``MlipModelSettings``).
        cache_dir: the cache folder itself (default ``~/.cache/matloop/mlip-references``).

    Returns:
        element -> ``{"energy_ev_per_atom", "rule", "structure", "n_steps", "converged"}``
        where ``rule`` names the winning trial structure and ``structure`` is a pymatgen dict.
    """
    elements = sorted(set(elements))
    version = model_version or BUILTIN_MODELS.get(model) or "default"
    folder = Path(cache_dir) if cache_dir else Path.home() / ".cache" / "matloop" / "mlip-references"
    tag = f"{model}-{version}".replace("/", "_").replace(os.sep, "_")
    path = folder / f"elemental-{tag}-v{REFERENCE_PROTOCOL}.json"
    cached = _read_json(path)
    if all(el in cached for el in elements):
        return {el: cached[el] for el in elements}
    with _file_lock(path.with_suffix(".lock")):
        cached = _read_json(path)  # another process may have filled it meanwhile
        missing = [el for el in elements if el not in cached]
        if missing:
            calc = load_calculator(model, model_version, resolve_device(device))
            for el in missing:
                best = None
                for label, atoms, relax_cell in elemental_trial_structures(el):
                    try:
                        out = relax_atoms(
                            atoms, calc, fmax=_REF_FMAX_EV_PER_A, max_steps=_REF_MAX_STEPS, relax_cell=relax_cell
                        )
                    except OracleError:
                        continue  # an exploding trial lattice is simply not the ground state
                    if best is None or out.energy_ev_per_atom < best[1].energy_ev_per_atom:
                        best = (label, out)
                if best is None:
                    raise OracleError(f"no elemental reference for {el}: every trial structure failed")
                label, out = best
                cached[el] = {
                    "energy_ev_per_atom": out.energy_ev_per_atom,
                    "rule": label,
                    "structure": atoms_to_structure(out.atoms).as_dict(),
                    "n_steps": out.n_steps,
                    "converged": out.converged,
                }
            _write_json_atomic(path, cached)
    return {el: cached[el] for el in elements}


# -- convex hull ---------------------------------------------------------------------------
def load_reference_entries(path: str | Path) -> list[ReferenceEntry]:
    """Reference entries from JSON (a list of objects, or ``{formula: energy}``) or CSV.

    Columns / keys: ``formula`` and ``energy_per_atom`` (or ``energy_ev_per_atom``).

    Raises:
        InputError: naming the file (and row) when it is missing or malformed.
    """
    from pydantic import ValidationError

    path = Path(path)
    if not path.exists():
        raise InputError("reference entries not found", file=str(path))
    rows: list[dict]
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(path.read_text())
            if isinstance(data, dict) and "entries" in data:
                data = data["entries"]
            rows = [{"formula": k, "energy_per_atom": v} for k, v in data.items()] if isinstance(data, dict) else data
        else:
            import pandas as pd

            rows = pd.read_csv(path).to_dict("records")
    except (json.JSONDecodeError, ValueError) as exc:
        raise InputError(f"cannot parse: {exc}", file=str(path)) from exc
    entries = []
    for i, row in enumerate(rows):
        try:
            entries.append(ReferenceEntry.model_validate({k: row[k] for k in row if k in ("formula", "energy_per_atom", "energy_ev_per_atom")}))
        except (ValidationError, TypeError) as exc:
            raise InputError(f"bad reference entry: {exc}", file=str(path), where=f"entry {i}") from exc
    return entries


def _pd_entry(formula: str, energy_ev_per_atom: float):
    from pymatgen.analysis.phase_diagram import PDEntry
    from pymatgen.core import Composition

    comp = Composition(formula)
    return PDEntry(comp, float(energy_ev_per_atom) * comp.num_atoms, name=formula)


def hull_energies(
    entries: Sequence[tuple[str, float]],
    references: Sequence[tuple[str, float]] = (),
) -> list[float]:
    """Energy above the convex hull (eV/atom) of each entry against all entries and references.

    Each entry is placed on the hull of its own chemical system, built from every entry
    and reference whose elements are a subset of it (one ``PhaseDiagram`` per system).

    Args:
        entries: ``(formula, energy_ev_per_atom)`` pairs; all energies from one model.
        references: further phases that shape the hull but whose hull energy is not returned
            (e.g. elemental references).

    Raises:
        ValueError: when an element of some entry has no elemental entry in either list.
    """
    from pymatgen.analysis.phase_diagram import PhaseDiagram

    everything = [_pd_entry(f, e) for f, e in list(entries) + list(references)]
    present = {el for ent in everything if len(ent.composition.elements) == 1 for el in ent.composition.elements}
    diagrams: dict[frozenset, PhaseDiagram] = {}
    out = []
    for ent in everything[: len(entries)]:
        system = frozenset(ent.composition.elements)
        if system not in diagrams:
            lacking = system - present
            if lacking:
                raise ValueError(f"no elemental entry for {sorted(str(e) for e in lacking)} (needed by {ent.name})")
            pool = [x for x in everything if set(x.composition.elements) <= system]
            diagrams[system] = PhaseDiagram(pool)
        out.append(float(diagrams[system].get_e_above_hull(ent, allow_negative=False)))
    return out


def formation_energy_ev_per_atom(formula: str, energy_ev_per_atom: float, mu_ev_per_atom: dict[str, float]) -> float:
    """``E - sum_i x_i mu_i`` with ``x_i`` the atomic fractions of ``formula``."""
    from pymatgen.core import Composition

    frac = Composition(formula).fractional_composition
    return float(energy_ev_per_atom - sum(float(x) * mu_ev_per_atom[str(el)] for el, x in frac.items()))


# -- the oracles ---------------------------------------------------------------------------
class MlipOracle(Oracle):
    """MLIP relaxation, then energy, formation energy and energy above the hull per atom.

    The ML potential is the ``model`` setting (``MlipModelSettings``); the site gives the
    device, the torch threads, the reference cache's root and the folder that a relative
    ``references`` path is taken from.
    """

    kind = "mlip"
    properties = ("energy_ev_per_atom", "formation_energy_ev_per_atom", "e_above_hull_ev_per_atom")
    code_version = "1"
    Settings: ClassVar[type[OracleSettings]] = MlipSettings
    needs_structure = True
    #: the model when the settings leave ``model`` unset
    default_model: ClassVar[str] = "chgnet"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.settings = self.settings.with_defaults(self.default_model)
        if not self.settings.formation_energy:  # declare what this instance reports
            self.properties = ("energy_ev_per_atom",)

    # helpers -----------------------------------------------------------------------------
    def _calculator(self):
        s = self.settings
        return load_calculator(s.model, s.model_version, resolve_device(self.site.device))

    def reference_entries(self) -> list[ReferenceEntry]:
        """Entries from ``references`` (a relative path is taken from the site's ``base_dir``) and ``extra_entries``."""
        out = list(self.settings.extra_entries)
        # phases this campaign has already computed with the same model (see observe_phases)
        out += [ReferenceEntry(formula=f, energy_ev_per_atom=e) for f, e in getattr(self, "campaign_phases", [])]
        if self.settings.references:
            out += load_reference_entries(self.site.resolve(self.settings.references))
        return out

    def observe_phases(self, phases: list[tuple[str, float]]) -> None:
        """Phases known to the campaign (formula, energy per atom from this oracle's model).

        They join the convex hull of later evaluations, so ``e_above_hull_ev_per_atom`` is
        measured against every phase the campaign has computed so far, not only the
        elemental references. Called by the loop before each submission.
        """
        self.campaign_phases = [(str(f), float(e)) for f, e in phases]

    def chemical_potentials(self, elements: Iterable[str]) -> tuple[dict[str, float], dict[str, dict]]:
        """Per-element chemical potentials (eV/atom): the lower of the built-in reference and
        any elemental entry in ``references``; also returns the built-in reference records."""
        from pymatgen.core import Composition

        s = self.settings
        elements = sorted(set(elements))
        check_elements(elements, s.model, self._calculator())
        refs = elemental_references(
            elements,
            model=s.model,
            model_version=s.model_version,
            device=self.site.device,
            cache_dir=self.site.cache_folder("mlip-references"),
        )
        mu = {el: float(r["energy_ev_per_atom"]) for el, r in refs.items()}
        for entry in self.reference_entries():
            comp = Composition(entry.formula)
            if len(comp.elements) == 1 and str(comp.elements[0]) in mu:
                el = str(comp.elements[0])
                mu[el] = min(mu[el], entry.energy_ev_per_atom)
        return mu, refs

    def setup(self, candidates: list[Candidate]) -> None:
        """Compute (or load) the elemental references of the whole pool once, before workers start."""
        elements = {str(el) for c in candidates for el in c.pmg_composition().elements}
        if elements and self.settings.formation_energy:
            with compute_threads(self.site.torch_threads):
                self.chemical_potentials(elements)

    # the contract ------------------------------------------------------------------------
    def evaluate(self, candidate: Candidate) -> OracleResult:
        """Relax ``candidate``'s structure and report its energies (see the class docstring)."""
        with compute_threads(self.site.torch_threads):
            return self._evaluate(candidate)

    def _evaluate(self, candidate: Candidate) -> OracleResult:
        from pymatgen.io.ase import AseAtomsAdaptor

        s = self.settings
        structure = candidate.pmg_structure()
        if not structure.is_ordered:
            raise OracleError("disordered structure (partial occupancies); order it before an MLIP relaxation")
        elements = sorted({str(el) for el in structure.composition.elements})
        calc = self._calculator()
        check_elements(elements, s.model, calc)
        atoms = AseAtomsAdaptor.get_atoms(structure)
        d_min = min_distance_a(atoms)
        if d_min < s.min_distance_a:
            raise OracleError(f"atoms overlap: shortest distance {d_min:.3f} A < {s.min_distance_a} A")

        mu, refs = self.chemical_potentials(elements) if s.formation_energy else ({}, {})
        e_initial = None
        if s.relax:
            atoms.calc = calc
            e_initial = float(atoms.get_potential_energy()) / len(atoms)
        out = relax_atoms(
            atoms,
            calc,
            fmax=s.fmax,
            max_steps=s.max_steps,
            relax_cell=s.relax_cell,
            max_volume_ratio=s.max_volume_ratio,
            relax=s.relax,
        )
        d_min = min_distance_a(out.atoms)
        if d_min < s.min_distance_a:
            raise OracleError(f"relaxation collapsed: shortest distance {d_min:.3f} A < {s.min_distance_a} A")

        e = out.energy_ev_per_atom
        properties = {"energy_ev_per_atom": e}
        extra = {
            "relaxed_structure": atoms_to_structure(out.atoms).as_dict(),
            "n_steps": out.n_steps,
            "fmax_ev_per_a": out.fmax_ev_per_a,
            "converged": out.converged,
            "volume_ratio": out.volume_ratio,
            "initial_energy_ev_per_atom": e_initial,
            "model": model_provenance(s.model, s.model_version),
        }
        if s.formation_energy:
            formula = structure.composition.reduced_formula
            system = set(elements)
            hull_refs = list(mu.items())
            for entry in self.reference_entries():
                if {str(x) for x in _composition_elements(entry.formula)} <= system:
                    hull_refs.append((entry.formula, entry.energy_ev_per_atom))
            (e_hull,) = hull_energies([(formula, e)], hull_refs)
            properties["formation_energy_ev_per_atom"] = formation_energy_ev_per_atom(formula, e, mu)
            properties["e_above_hull_ev_per_atom"] = e_hull
            extra["chemical_potentials_ev_per_atom"] = mu
            extra["elemental_reference_rules"] = {el: r["rule"] for el, r in refs.items()}
        return OracleResult(properties=properties, extra=extra)


class ChgnetAlias(MlipOracle):
    """``kind: chgnet`` of campaigns written before ``kind: mlip``: ``MlipOracle``, CHGNet by default.

    Only the registered name (kept in the oracle version) differs; there is no other code.
    """

    kind = "chgnet"


class SevennetAlias(MlipOracle):
    """``kind: sevennet``: ``MlipOracle`` with SevenNet as the default model; nothing else differs."""

    kind = "sevennet"
    default_model = "sevennet"


def _composition_elements(formula: str):
    from pymatgen.core import Composition

    return Composition(formula).elements


def supported_atomic_numbers(model: str, calc) -> set[int] | None:
    """Atomic numbers the loaded model was trained on (CHGNet: 1-94; SevenNet: its type map).

    None for a plug-in calculator: its own errors then become the failure reason.
    """
    if model == "sevennet" and getattr(calc, "type_map", None):
        return {int(z) for z in calc.type_map}
    if model in BUILTIN_MODELS:
        return set(range(1, 95))
    return None


def check_elements(elements: Iterable[str], model: str, calc) -> None:
    """Raise ``OracleError`` naming the elements the model does not cover."""
    from pymatgen.core import Element

    known = supported_atomic_numbers(model, calc)
    if known is None:
        return
    bad = [el for el in elements if Element(el).Z not in known]
    if bad:
        raise OracleError(f"element(s) {bad} not covered by the {model} model")
