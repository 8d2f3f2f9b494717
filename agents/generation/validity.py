"""Validity filters and deduplication shared by every candidate generator.

``ValidityFilter`` rejects structures no relaxation would rescue (atoms on top of each
other, absurd densities, too many atoms, optionally charge imbalance) and says why.
``Deduplicator`` decides whether a structure is new to a reference set: a cheap canonical
hash and the reduced formula narrow the search, and pymatgen's ``StructureMatcher``
confirms. ``sample_quality`` reports the validity / uniqueness / novelty triple used to
compare generators (as in CDVAE and iMatGen).
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from matloop.core.records import Candidate, structure_hash


class ValiditySettings(BaseModel):
    """Which structures count as valid."""

    model_config = ConfigDict(extra="forbid")

    min_distance_factor: float = Field(
        0.5, ge=0, description="minimum interatomic distance as a fraction of the sum of the two covalent radii (ASE table)"
    )
    min_distance_angstrom: float = Field(
        0.5, ge=0, description="absolute floor on any interatomic distance (Å), periodic images included"
    )
    max_atoms: int = Field(64, ge=1, description="largest number of sites in the cell")
    density_range_g_cm3: tuple[float, float] = Field(
        (0.5, 25.0), description="allowed mass density (g/cm^3); outside means a collapsed or exploded cell"
    )
    charge_balance: bool = Field(False, description="require a charge-neutral oxidation-state assignment")
    charge_balance_method: Literal["smact", "pymatgen"] = Field(
        "smact",
        description="smact: smact_validity (charge neutrality + Pauling electronegativity, alloys allowed); "
        "pymatgen: Composition.oxi_state_guesses is non-empty",
    )
    require_ordered: bool = Field(True, description="reject structures with partial occupancies")

    @model_validator(mode="after")
    def _range(self) -> ValiditySettings:
        lo, hi = self.density_range_g_cm3
        if not 0 <= lo < hi:
            raise ValueError(f"density_range_g_cm3 must be (low, high) with 0 <= low < high, got {self.density_range_g_cm3}")
        return self


class ValidityFilter:
    """Checks one structure (or composition) against ``ValiditySettings``."""

    def __init__(self, settings: ValiditySettings | dict | None = None):
        if isinstance(settings, ValiditySettings):
            self.settings = settings
        else:
            self.settings = ValiditySettings(**(settings or {}))

    def check(self, structure) -> tuple[bool, str | None]:
        """``(True, None)`` when valid, else ``(False, reason)``.

        A reason starts with its kind and a colon (``distance:``, ``density:``, ``max_atoms:``,
        ``charge_balance:``, ``disordered:``, ``lattice:``, ``empty:``) so that rejections can be counted.
        """
        s = self.settings
        n = len(structure)
        if n == 0:
            return False, "empty: no sites"
        if n > s.max_atoms:
            return False, f"max_atoms: {n} sites > {s.max_atoms}"
        if s.require_ordered and not structure.is_ordered:
            return False, "disordered: partial occupancies"
        vol = structure.volume
        if not np.isfinite(vol) or vol <= 1e-6:
            return False, "lattice: degenerate cell"
        density = float(structure.density)
        lo, hi = s.density_range_g_cm3
        if not lo <= density <= hi:
            return False, f"density: {density:.2f} g/cm3 outside [{lo:g}, {hi:g}]"
        ok, reason = self._distances(structure)
        if not ok:
            return ok, reason
        if s.charge_balance:
            return self.check_composition(structure.composition)
        return True, None

    def check_composition(self, composition) -> tuple[bool, str | None]:
        """The composition-level checks (atom count of the formula unit, charge balance)."""
        from pymatgen.core import Composition

        comp = Composition(composition) if not isinstance(composition, Composition) else composition
        if comp.num_atoms <= 0:
            return False, "empty: no atoms"
        if not self.settings.charge_balance:
            return True, None
        if not charge_balanced(comp, self.settings.charge_balance_method):
            method = self.settings.charge_balance_method
            return False, f"charge_balance: {comp.reduced_formula} has no neutral assignment ({method})"
        return True, None

    def _distances(self, structure) -> tuple[bool, str | None]:
        from ase.data import covalent_radii

        radii = np.array([covalent_radii[site.specie.Z] for site in structure])
        cutoff = max(self.settings.min_distance_angstrom, self.settings.min_distance_factor * 2 * radii.max())
        if cutoff <= 0:
            return True, None
        # neighbour list includes periodic images of a site itself (a too-short lattice vector)
        centers, points, _, dists = structure.get_neighbor_list(cutoff)
        if len(dists) == 0:
            return True, None
        pair = self.settings.min_distance_factor * (radii[centers] + radii[points])
        limits = np.maximum(self.settings.min_distance_angstrom, pair)
        bad = dists < limits
        if bad.any():
            k = int(np.argmax(limits - dists))
            a, b = structure[int(centers[k])].specie, structure[int(points[k])].specie
            return False, f"distance: {a}-{b} {dists[k]:.2f} Å < {limits[k]:.2f} Å"
        return True, None


def charge_balanced(composition, method: str = "smact") -> bool:
    """True when some oxidation-state assignment makes ``composition`` neutral."""
    from pymatgen.core import Composition

    comp = Composition(composition) if not isinstance(composition, Composition) else composition
    if len(comp.elements) == 1:
        return True  # elemental solids are neutral by definition
    if method == "smact":
        from smact.screening import smact_validity

        try:
            return bool(smact_validity(comp.reduced_formula))
        except Exception:  # unknown elements in SMACT's tables
            return False
    return len(comp.oxi_state_guesses(max_sites=-50)) > 0


class MatcherSettings(BaseModel):
    """pymatgen ``StructureMatcher`` tolerances used to decide that two structures are the same."""

    model_config = ConfigDict(extra="forbid")

    ltol: float = Field(0.2, gt=0, description="fractional length tolerance")
    stol: float = Field(0.3, gt=0, description="site tolerance, in units of (V/n)^(1/3)")
    angle_tol: float = Field(5.0, gt=0, description="angle tolerance in degrees")
    scale: bool = Field(True, description="scale volumes before matching (a strained copy is not new)")


class Deduplicator:
    """Novelty against a growing reference set of structures and compositions.

    Structures are bucketed by reduced formula; within a bucket, references with the same
    ``structure_hash`` are compared first, then the rest, with ``StructureMatcher``.
    Composition-only items are compared by candidate id (normalised composition).

    Args:
        known: reference structures, compositions or ``Candidate`` objects.
        matcher: ``MatcherSettings`` or a dict of them.
    """

    def __init__(self, known: Iterable = (), matcher: MatcherSettings | dict | None = None):
        from pymatgen.analysis.structure_matcher import StructureMatcher

        ms = matcher if isinstance(matcher, MatcherSettings) else MatcherSettings(**(matcher or {}))
        self.matcher = StructureMatcher(ltol=ms.ltol, stol=ms.stol, angle_tol=ms.angle_tol, scale=ms.scale)
        self._buckets: dict[str, list[list]] = {}  # formula -> [[hash or None, structure], ...]
        self._compositions: set[str] = set()
        self._candidate_ids: set[str] = set()
        self.n_comparisons = 0
        for item in known:
            self.add(item, check=False)

    def remember(self, candidates: dict[str, Candidate]) -> None:
        """Add, without comparison, every candidate (id -> Candidate) not remembered before: how a
        generator keeps its reference set in step with the campaign's candidates."""
        for cid, cand in candidates.items():
            if cid not in self._candidate_ids:
                self._candidate_ids.add(cid)
                self.add(cand, check=False)

    def __len__(self) -> int:
        return sum(len(b) for b in self._buckets.values()) + len(self._compositions)

    @staticmethod
    def _as_structure(item):
        from pymatgen.core import Composition, Structure

        if isinstance(item, Candidate):
            return item.pmg_structure() if item.structure is not None else Candidate.from_composition(item.composition)
        if isinstance(item, Structure):
            return item
        if isinstance(item, (Composition, str)):
            return Candidate.from_composition(item)
        raise TypeError(f"cannot deduplicate {type(item).__name__}")

    def is_novel(self, item) -> bool:
        """True when ``item`` matches nothing in the reference set."""
        return self._find(self._as_structure(item)) is None

    def add(self, item, check: bool = True) -> bool:
        """Add ``item`` to the reference set when novel; returns whether it was novel.

        With ``check=False`` the item is added without comparison (for trusted references).
        """
        obj = self._as_structure(item)
        if isinstance(obj, Candidate):
            novel = obj.id not in self._compositions
            self._compositions.add(obj.id)
            return novel
        if check and self._find(obj) is not None:
            return False
        # the hash is computed lazily: most buckets are never searched
        self._buckets.setdefault(obj.composition.reduced_formula, []).append([None, obj])
        return True

    def _find(self, obj):
        if isinstance(obj, Candidate):
            return obj.id if obj.id in self._compositions else None
        bucket = self._buckets.get(obj.composition.reduced_formula)
        if not bucket:
            return None
        for entry in bucket:
            if entry[0] is None:
                entry[0] = structure_hash(entry[1])
        h = structure_hash(obj)
        ordered = [r for r in bucket if r[0] == h] + [r for r in bucket if r[0] != h]
        for _, ref in ordered:
            self.n_comparisons += 1
            if self.matcher.fit(obj, ref):
                return ref
        return None


def sample_quality(structures: list, known: Iterable = (), validity: ValidityFilter | None = None,
                   matcher: MatcherSettings | dict | None = None) -> dict:
    """Validity, uniqueness and novelty of a sample of generated structures.

    ``None`` entries count as invalid (a decoding that failed). Uniqueness is the fraction
    of valid structures that are distinct among themselves; novelty is the fraction of
    the unique ones that match nothing in ``known``.

    Returns:
        ``{"n", "n_valid", "n_unique", "n_novel", "validity", "uniqueness", "novelty"}``.
    """
    vf = validity or ValidityFilter()
    valid = [s for s in structures if s is not None and vf.check(s)[0]]
    seen = Deduplicator(matcher=matcher)
    unique = [s for s in valid if seen.add(s)]
    ref = Deduplicator(known, matcher=matcher)
    novel = [s for s in unique if ref.is_novel(s)]
    n = len(structures)
    return {
        "n": n,
        "n_valid": len(valid),
        "n_unique": len(unique),
        "n_novel": len(novel),
        "validity": len(valid) / n if n else 0.0,
        "uniqueness": len(unique) / len(valid) if valid else 0.0,
        "novelty": len(novel) / len(unique) if unique else 0.0,
    }


#: ``known_formulas("reference")``: the formulas of the Materials Project hull table shipped with matloop
REFERENCE_FORMULAS = "reference"


def known_formulas(spec: str | None, base_dir=None) -> frozenset[str]:
    """Reduced formulas a generator should not propose (they are known, so never novel).

    Args:
        spec: None (nothing), ``"reference"`` (every phase of the reference hull table shipped
            with matloop, ``oracles/data/mp_hull.csv.gz``, read as data: no oracle code is
            imported), or the path of a CSV (optionally gzipped) with a ``formula`` column.
        base_dir: folder a relative path is taken from (the campaign file's folder).

    Raises:
        InputError: the file is missing or has no ``formula`` column.
    """
    from pathlib import Path

    if spec is None:
        return frozenset()
    return _known_formulas(str(spec), str(base_dir or Path.cwd()))


@lru_cache(maxsize=4)
def _known_formulas(spec: str, base_dir: str) -> frozenset[str]:
    from pathlib import Path

    import pandas as pd
    from pymatgen.core import Composition

    from matloop.core.records import InputError

    if spec == REFERENCE_FORMULAS:
        from importlib.resources import files

        path = files("matloop.oracles").joinpath("data", "mp_hull.csv.gz")
    else:
        path = Path(spec).expanduser()
        if not path.is_absolute():
            path = Path(base_dir) / path
        if not path.exists():
            raise InputError("known-formula file not found", file=str(path))
    with path.open("rb") as fh:
        df = pd.read_csv(fh, comment="#", compression="gzip" if str(path).endswith(".gz") else None)
    if "formula" not in df.columns:
        raise InputError(f"no 'formula' column; columns are {list(df.columns)}", file=str(path))
    return frozenset(Composition(f).reduced_formula for f in df["formula"].dropna().astype(str))
