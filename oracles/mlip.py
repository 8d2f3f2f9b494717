"""Machine-learned interatomic potential (MLIP) tier: relaxation, formation energy, stability.

``MlipOracle`` relaxes a structure with an ML potential (FIRE on atoms and, optionally, the
cell through ASE's ``FrechetCellFilter``, the same recipe as ``chgnet.model.StructOptimizer``),
then reports the energy per atom and, on the Materials Project scale, the formation energy
and the energy above the hull of known phases. Which potential is a science setting,
``model`` (atomate2's ``ForceFieldRelaxMaker(force_field_name=...)``: one oracle, a parameter
per force field): ``chgnet`` (CHGNet, default), ``sevennet`` (SevenNet), or any ASE
calculator a plug-in registers under the ``matloop.calculators`` entry-point group, as a
callable ``(model_name, device) -> ase.calculators.calculator.Calculator``.
``model_version`` picks the pretrained weights of that model.

The kinds ``chgnet`` and ``sevennet`` of campaigns written before ``kind: mlip`` are this
oracle under those names, with that model as the default (``ChgnetAlias``, ``SevennetAlias``).

Stability against a reference hull
----------------------------------
The relaxed total energy becomes a formation energy on the MP2020 scale
(``hull.corrected_formation_energy``): MP's own elemental energies as chemical potentials,
and the MP2020 corrections only for models trained on uncorrected energies
(``hull.mlip_needs_mp2020``: SevenNet-0 yes, CHGNet no). That formation energy is placed on
the reference hull of the ``hull`` setting (the table shipped with matloop, or live Materials
Project entries), joined by the phases this campaign computed with the same oracle
(``observe_phases``) and any ``references``/``extra_entries``, all converted the same way. So
``e_above_hull_ev_per_atom`` is the distance to the hull of known phases; the decomposition
products, with atom fractions, go to ``extra["decomposition"]`` and the reference's version to
``extra["hull_reference"]``; the reference's version is part of the oracle's ``version``.

The model's own elemental energies are not used: measured against MP's elemental energies,
formation energies land on the scale of the reference hull (matbench-discovery's recipe),
whereas the model's own elements would put every single evaluation on its own hull. Every
element of the shipped hull has an MP elemental energy (89 elements; the hull's 86 are among
them), so there is no element left for which the model's references would still be needed;
a candidate with an element the reference does not cover fails, naming the element.

Opt-in coating-screen properties, computed on the same hull with the candidate added:
``li_window`` (``li_window_min_v``, ``li_window_max_v``: the voltage range vs Li/Li+ over which
the phase takes up and gives up no Li) and ``interface_partners``
(``interface_reaction_ev_per_atom_<partner>``: the most negative reaction energy per atom of
a candidate-partner mixture; products in ``extra["interface_reactions"]``).

The model is loaded once per process (``load_calculator`` caches by model, version and
device) and never stored on the oracle, so the oracle pickles to worker processes.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator

from matloop.core.oracle import Oracle, OracleSettings
from matloop.core.records import Candidate, InputError, OracleError, OracleResult
from matloop.core.registry import CALCULATORS, calculator_factory, distribution, names

from .hull import (
    HullSettings,
    ReferenceHullMixin,
    ReferencePhase,
    corrected_formation_energy,
    mlip_needs_mp2020,
    mp_elemental_energies_ev_per_atom,
)

#: the models built in, with the pretrained weights used when ``model_version`` is unset
BUILTIN_MODELS = {"chgnet": "0.3.0", "sevennet": "7net-0"}
#: CHGNet's pretrained weights (``CHGNet.load(model_name=...)``)
CHGNET_VERSIONS = ("0.3.0", "0.2.0", "r2scan")
#: what ``li_window_max_v`` reports for a phase that never gives up Li (a Li-free phase):
#: an observation holds finite numbers only, and no cathode comes near this voltage
LI_WINDOW_OPEN_V = 10.0
#: campaign phases within this (eV/atom) of the candidate, with its formula, are the candidate itself
_SAME_PHASE_EV_PER_ATOM = 1e-6


def known_models() -> list[str]:
    """Every value ``model`` accepts: the built-in models and the registered calculators."""
    return sorted(set(BUILTIN_MODELS) | set(names(CALCULATORS)))


# -- settings ------------------------------------------------------------------------------
class ReferenceEntry(BaseModel):
    """One extra phase for the convex hull: a formula and its energy per atom from the same model."""

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


class MlipHullSettings(HullSettings):
    """The reference hull of the MLIP tier: its source, and how the model's energies join it."""

    include_campaign_phases: bool = Field(
        True,
        description="the phases this campaign computed with this oracle join the hull (converted to the "
        "reference's scale like the candidate), so a candidate also competes with the campaign's earlier finds",
    )
    mp2020_corrections: bool | None = Field(
        None,
        description="apply the MP2020 corrections to the model's energies; None: as the model needs (CHGNet "
        "0.3.0/0.2.0: no, its training energies include them; SevenNet-0: yes); a plug-in model must say",
    )


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
        description="report formation_energy_ev_per_atom and e_above_hull_ev_per_atom on the reference hull "
        "(see hull); false: only the relaxation and energy_ev_per_atom (e.g. to pre-relax generated structures)",
    )
    hull: MlipHullSettings = Field(
        default_factory=MlipHullSettings,
        description="the reference hull: source (auto | shipped | mp-api | optimade), optimade_url, optimade_energy_field, "
        "include_campaign_phases, "
        "mp2020_corrections",
    )
    li_window: bool = Field(
        False,
        description="also report li_window_min_v and li_window_max_v (V vs Li/Li+): the range over which the "
        "phase neither takes up nor gives up Li, on the reference hull with the candidate added (a phase above "
        f"the hull is evaluated as if on it; a Li-free phase that never gives up Li reports {LI_WINDOW_OPEN_V:g} V)",
    )
    interface_partners: list[str] = Field(
        default_factory=list,
        description="formulas of phases in the reference (e.g. LiCoO2, Li, Li7La3Zr2O12, Li3PS4): report "
        "interface_reaction_ev_per_atom_<partner>, the most negative reaction energy per atom of a "
        "candidate-partner mixture (<= 0; 0: no reaction), products in extra",
    )
    references: str | None = Field(
        None,
        description="JSON or CSV of further hull phases (formula, energy_per_atom) computed with the same model "
        "(a relative path is taken from the campaign file's folder); converted to the reference's scale like "
        "the candidate",
    )
    extra_entries: list[ReferenceEntry] = Field(
        default_factory=list, description="further hull phases given inline (formula, energy_per_atom)"
    )

    @field_validator("interface_partners")
    @classmethod
    def _partner_formulas(cls, v: list[str]) -> list[str]:
        from pymatgen.core import Composition, Element

        seen: dict[str, str] = {}
        for formula in v:
            if not re.fullmatch(r"[A-Z][A-Za-z0-9]*", formula):
                raise ValueError(f"interface partner {formula!r} must be a plain formula such as LiCoO2 (it names a property)")
            try:
                comp = Composition(formula)
            except Exception as exc:  # pymatgen raises several kinds for a bad formula
                raise ValueError(f"interface partner {formula!r} is not a chemical formula: {exc}") from None
            bad = [str(el) for el in comp.elements if not isinstance(el, Element)]  # pymatgen reads Xx as a dummy
            if bad:
                raise ValueError(f"interface partner {formula!r} is not a chemical formula: unknown element(s) {bad}")
            reduced = comp.reduced_formula
            if reduced in seen:
                raise ValueError(f"interface partners {seen[reduced]!r} and {formula!r} are the same phase")
            seen[reduced] = formula
        return v

    @model_validator(mode="after")
    def _coating_needs_formation_energy(self) -> MlipSettings:
        if not self.formation_energy and (self.li_window or self.interface_partners):
            raise ValueError("li_window and interface_partners need formation_energy: true (they use the hull)")
        return self


def interface_property(partner: str) -> str:
    """The property name of the interface reaction energy with a partner phase."""
    return f"interface_reaction_ev_per_atom_{partner}"


def mlip_properties(settings: MlipSettings) -> tuple[str, ...]:
    """What an MLIP oracle with these settings reports."""
    if not settings.formation_energy:
        return ("energy_ev_per_atom",)
    props = ["energy_ev_per_atom", "formation_energy_ev_per_atom", "e_above_hull_ev_per_atom"]
    if settings.li_window:
        props += ["li_window_min_v", "li_window_max_v"]
    props += [interface_property(p) for p in settings.interface_partners]
    return tuple(props)


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
            try:
                chgnet = _chgnet_model(version, device)
            except ValueError as exc:
                raise OracleError(f"CHGNet has no pretrained model {version!r}; known: {', '.join(CHGNET_VERSIONS)}") from exc
            return chgnet_calculator(chgnet, device, stress=stress)
        if model == "sevennet":
            try:
                from sevenn.calculator import SevenNetCalculator
            except ImportError as exc:
                raise OracleError("SevenNet is not installed (pip install sevenn)") from exc
            return SevenNetCalculator(version, device=device)
        return calculator_factory(model)(version, device)


def chgnet_calculator(model, device: str = "cpu", stress: bool = True):
    """ASE calculator of a ``CHGNet`` model (pretrained or fine-tuned) that predicts only what is asked.

    CHGNet's own calculator always predicts energy, forces, stress and magmoms; with
    ``stress=False`` (fixed-cell work: MD, NEB) the stress, whose second backward pass doubles
    the cost of a step, is computed only when a caller asks for it.
    """
    from chgnet.model.dynamics import CHGNetCalculator

    class _Calculator(CHGNetCalculator):
        def calculate(self, atoms=None, properties=None, system_changes=None, task=None):
            props = set(properties or ["energy"])
            if task is None:
                task = "efs" if (stress or "stress" in props) else "ef"
                task += "m" if "magmoms" in props else ""
            super().calculate(atoms, properties, system_changes, task=task)

    with contextlib.redirect_stdout(io.StringIO()):
        return _Calculator(model=model, use_device=device, on_isolated_atoms="ignore")


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


# -- structures and reference entries -------------------------------------------------------
def atoms_to_structure(atoms):
    """A plain pymatgen ``Structure`` of ``atoms`` (no calculator results as site properties)."""
    from pymatgen.core import Structure

    return Structure(
        atoms.cell.array, atoms.get_chemical_symbols(), atoms.positions, coords_are_cartesian=True, to_unit_cell=True
    )


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


# -- the oracles ---------------------------------------------------------------------------
@lru_cache(maxsize=4096)
def _phase_formation_energy(formula: str, energy_ev_per_atom: float, apply_mp2020: bool) -> float:
    """Formation energy (eV/atom, MP2020 scale) of a phase known only by formula and model energy per atom."""
    from pymatgen.core import Composition

    comp = Composition(formula)
    return corrected_formation_energy(comp, energy_ev_per_atom * comp.num_atoms, apply_mp2020=apply_mp2020)


class MlipModelOracle(Oracle):
    """Base of the oracles driven by an ML potential (``mlip``, ``mlip-md``, ``mlip-neb``).

    Fills the ``model`` setting from ``default_model`` when it is unset, and runs
    ``_evaluate`` under the site's torch thread count.
    """

    #: the model when the settings leave ``model`` unset
    default_model: ClassVar[str] = "chgnet"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.settings = self.settings.with_defaults(self.default_model)

    def evaluate(self, candidate: Candidate) -> OracleResult:
        """``_evaluate`` under the site's torch threads (see the subclass's docstring)."""
        with compute_threads(self.site.torch_threads):
            return self._evaluate(candidate)

    def _evaluate(self, candidate: Candidate) -> OracleResult:
        raise NotImplementedError


class MlipOracle(ReferenceHullMixin, MlipModelOracle):
    """MLIP relaxation, then energy, formation energy and energy above the reference hull per atom.

    The ML potential is the ``model`` setting (``MlipModelSettings``); the site gives the
    device, the torch threads, the mp-api cache's root and the folder that a relative
    ``references`` path is taken from. ``properties`` follows the settings (``mlip_properties``).
    """

    kind = "mlip"
    properties = ("energy_ev_per_atom", "formation_energy_ev_per_atom", "e_above_hull_ev_per_atom")
    code_version = "2"
    Settings: ClassVar[type[OracleSettings]] = MlipSettings
    needs_structure = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.properties = mlip_properties(self.settings)  # declare what this instance reports
        self.campaign_phases: list[tuple[str, float]] = []

    # the reference hull --------------------------------------------------------------------
    def applies_mp2020(self) -> bool:
        """Whether the model's energies get the MP2020 corrections (the setting, else ``mlip_needs_mp2020``)."""
        s = self.settings
        if s.hull.mp2020_corrections is not None:
            return s.hull.mp2020_corrections
        try:
            return mlip_needs_mp2020(s.model, s.model_version or "")
        except OracleError as exc:
            raise OracleError(f"{exc}; set hull.mp2020_corrections, or formation_energy: false") from None

    def reference_entries(self) -> list[ReferenceEntry]:
        """Entries from ``references`` (a relative path is taken from the site's ``base_dir``) and ``extra_entries``."""
        out = list(self.settings.extra_entries)
        if self.settings.references:
            out += load_reference_entries(self.site.resolve(self.settings.references))
        return out

    def observe_phases(self, phases: list[tuple[str, float]]) -> None:
        """Phases known to the campaign (formula, energy per atom from this oracle's model).

        With ``hull.include_campaign_phases`` they join the reference hull of later
        evaluations, on the reference's scale, so a candidate also competes with what the
        campaign has already found. Called by the loop before each submission.
        """
        self.campaign_phases = [(str(f), float(e)) for f, e in phases]

    def extra_phases(self, elements: Iterable[str], apply_mp2020: bool,
                     candidate: tuple[str, float] | None = None) -> list[ReferencePhase]:
        """``references``, ``extra_entries`` and (when included) campaign phases inside ``elements``, on the MP2020 scale.

        Args:
            elements: the chemical system of interest; phases outside it are left out.
            apply_mp2020: whether the model's energies need the MP2020 corrections.
            candidate: (reduced formula, energy per atom) of the candidate itself, which a
                campaign phase of equal formula and energy is (left out: a phase cannot compete
                with itself).
        """
        from pymatgen.core import Composition

        els = set(elements)
        mu = mp_elemental_energies_ev_per_atom()
        given = [(e.formula, e.energy_ev_per_atom, "given") for e in self.reference_entries()]
        ours = [(f, e, "campaign") for f, e in self.campaign_phases] if self.settings.hull.include_campaign_phases else []
        out = []
        for formula, energy, origin in given + ours:
            comp = Composition(formula)
            system = {str(el) for el in comp.elements}
            if not system <= els or not system <= set(mu):
                continue
            if (origin == "campaign" and candidate is not None and comp.reduced_formula == candidate[0]
                    and abs(energy - candidate[1]) < _SAME_PHASE_EV_PER_ATOM):
                continue
            e_form = _phase_formation_energy(comp.reduced_formula, energy, apply_mp2020)
            out.append(ReferencePhase(comp.reduced_formula, e_form, origin))
        return out

    def setup(self, candidates: list[Candidate]) -> None:
        """Resolve the hull source, load the shipped table once and check the interface partners against it."""
        if not self.settings.formation_energy:
            return
        self.applies_mp2020()
        if self.hull_source() == "shipped":
            hull = self.reference_hull(())
            missing = [p for p in self.settings.interface_partners if hull.find_phase(p) is None]
            if missing:
                raise OracleError(f"interface partner(s) {', '.join(missing)} not in the reference hull {hull.source}")

    # the contract (evaluate: MlipModelOracle) ---------------------------------------------
    def _calculator(self):
        s = self.settings
        return load_calculator(s.model, s.model_version, resolve_device(self.site.device))

    def _evaluate(self, candidate: Candidate) -> OracleResult:
        from pymatgen.io.ase import AseAtomsAdaptor

        s = self.settings
        structure = candidate.pmg_structure()
        if not structure.is_ordered:
            raise OracleError("disordered structure (partial occupancies); order it before an MLIP relaxation")
        elements = sorted({str(el) for el in structure.composition.elements})
        calc = self._calculator()
        check_elements(elements, s.model, calc)
        if s.formation_energy:  # fail before the relaxation when no hull can be given
            apply_mp2020 = self.applies_mp2020()
            self.reference_hull(elements)
        atoms = AseAtomsAdaptor.get_atoms(structure)
        d_min = min_distance_a(atoms)
        if d_min < s.min_distance_a:
            raise OracleError(f"atoms overlap: shortest distance {d_min:.3f} A < {s.min_distance_a} A")

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
        relaxed = atoms_to_structure(out.atoms)
        properties = {"energy_ev_per_atom": e}
        extra = {
            "relaxed_structure": relaxed.as_dict(),
            "n_steps": out.n_steps,
            "fmax_ev_per_a": out.fmax_ev_per_a,
            "converged": out.converged,
            "volume_ratio": out.volume_ratio,
            "initial_energy_ev_per_atom": e_initial,
            "model": model_provenance(s.model, s.model_version),
        }
        if s.formation_energy:
            self._add_stability(relaxed, e, apply_mp2020, properties, extra)
        return OracleResult(properties=properties, extra=extra)

    def _add_stability(self, relaxed, e_ev_per_atom: float, apply_mp2020: bool, properties: dict, extra: dict) -> None:
        """Formation energy, energy above the hull and the opt-in coating properties of the relaxed structure."""
        from pymatgen.core import Composition

        s = self.settings
        comp = relaxed.composition
        formula = comp.reduced_formula
        elements = {str(el) for el in comp.elements}
        e_form = corrected_formation_energy(relaxed, e_ev_per_atom * len(relaxed), apply_mp2020=apply_mp2020)
        wider = elements | ({"Li"} if s.li_window else set())
        for partner in s.interface_partners:
            wider |= {str(el) for el in Composition(partner).elements}
        others = self.extra_phases(wider, apply_mp2020, candidate=(formula, e_ev_per_atom))
        stab = self.reference_hull(elements).stability(comp, e_form, others)
        n_others = sum(1 for p in others if {str(el) for el in Composition(p.formula).elements} <= elements)
        properties["formation_energy_ev_per_atom"] = e_form
        properties["e_above_hull_ev_per_atom"] = stab.e_above_hull_ev_per_atom
        extra["decomposition"] = [{"formula": f, "fraction": x} for f, x in stab.decomposition]
        extra["hull_reference"] = stab.hull_version
        extra["hull_phases"] = list(stab.reference_phases)
        extra["hull_extra_phases"] = n_others
        extra["mp2020_corrections"] = apply_mp2020
        if s.li_window:
            lo, hi = self.reference_hull(elements | {"Li"}).electrochemical_window(comp, e_form, "Li", others)
            properties["li_window_min_v"] = lo
            properties["li_window_max_v"] = min(hi, LI_WINDOW_OPEN_V)
            extra["li_window_open_above"] = math.isinf(hi)
        if s.interface_partners:
            extra["interface_reactions"] = {}
        for partner in s.interface_partners:
            system = elements | {str(el) for el in Composition(partner).elements}
            r = self.reference_hull(system).interface_reaction_energy(comp, e_form, partner, others)
            properties[interface_property(partner)] = r.ev_per_atom_min
            extra["interface_reactions"][partner] = {
                "ev_per_atom": r.ev_per_atom_min,
                "candidate_atom_fraction": r.ratio,
                "products": list(r.products),
                "reaction": r.reaction,
            }


class ChgnetAlias(MlipOracle):
    """``kind: chgnet`` of campaigns written before ``kind: mlip``: ``MlipOracle``, CHGNet by default.

    Only the registered name (kept in the oracle version) differs; there is no other code.
    """

    kind = "chgnet"


class SevennetAlias(MlipOracle):
    """``kind: sevennet``: ``MlipOracle`` with SevenNet as the default model; nothing else differs."""

    kind = "sevennet"
    default_model = "sevennet"


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
