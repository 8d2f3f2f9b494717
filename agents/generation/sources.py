"""Candidate pools read from files: CSV, a folder of CIFs, pymatgen JSON, extxyz.

Only composition and structure columns are read: a label column in the same CSV is never
seen by the agent (the lookup oracle reads labels separately, on request).

Bad rows: with ``on_bad_row: error`` (default) the first unparseable composition or
structure stops the campaign with an error naming the file and row; with ``skip`` such rows
are dropped and counted in a warning.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from matloop.core.records import Candidate, InputError
from matloop.core.tables import read_csv

log = logging.getLogger("matloop")


class FileSourceSettings(BaseModel):
    """Settings of ``FileSource``: the file, its format, and which rows or structures to keep."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(description="CSV file, folder of CIF/POSCAR files, pymatgen JSON, or extxyz file")
    format: Literal["auto", "csv", "cif_dir", "cif_tar", "json", "extxyz"] = Field(
        "auto", description="file format; auto = by suffix (.csv, .json, .extxyz/.xyz, .tar.gz of CIFs, a folder)"
    )
    composition_column: str | None = Field("composition", description="CSV column holding compositions")
    structure_column: str | None = Field(None, description="CSV column holding CIF text or a path to a structure file")
    on_bad_row: Literal["error", "skip"] = Field("error", description="error: stop naming the row; skip: drop and count")
    limit: int | None = Field(None, ge=1, description="read at most this many candidates")
    require_columns: list[str] = Field(
        default_factory=list,
        description="CSV: leave out rows with an empty value in any of these columns (counted, not an error); defines "
        "the pool, e.g. the formulas a table oracle covers, without the agent ever reading those values",
    )
    max_atoms: int | None = Field(None, ge=1, description="skip structures with more sites than this (counted, not an error)")
    ordered_only: bool = Field(
        False, description="skip structures with partial occupancies (counted, not an error); ML and DFT tiers need ordered cells"
    )


def _known_elements(candidate: Candidate) -> Candidate:
    """``candidate`` if every symbol in it is a chemical element; ValueError naming the others.

    pymatgen reads an unknown symbol (``Xx2O3``) as a dummy species, which no featurizer or
    oracle can use; refusing it here keeps it out of the store.
    """
    from pymatgen.core import Composition, DummySpecies

    unknown = sorted({el.symbol for el in Composition(candidate.composition).elements if isinstance(el, DummySpecies)})
    if unknown:
        raise ValueError(f"unknown element(s) {', '.join(unknown)} in {candidate.composition!r}")
    return candidate


def _read_structure_text(text: str, base: Path):
    from pymatgen.core import Structure

    s = str(text).strip()
    if "\n" in s or s.startswith("data_"):
        return Structure.from_str(s, fmt="cif")
    p = Path(s)
    if not p.is_absolute():
        p = base / p
    return Structure.from_file(str(p))


class FileSource:
    """A fixed pool from a file or folder; after ``load``, ``skipped`` names the entries ``on_bad_row: skip`` dropped."""

    def __init__(self, name: str, settings: dict, base_dir: Path | None = None):
        self.name = name
        self.settings = FileSourceSettings(**settings)
        self.base_dir = base_dir or Path.cwd()

    @property
    def path(self) -> Path:
        """The pool's path: ``~`` expanded, a relative path taken from ``base_dir``."""
        p = Path(self.settings.path).expanduser()
        return p if p.is_absolute() else (self.base_dir / p).resolve()

    def _fmt(self) -> str:
        if self.settings.format != "auto":
            return self.settings.format
        p = self.path
        if p.is_dir():
            return "cif_dir"
        suffix = "".join(p.suffixes[-2:]).lower()
        if suffix.endswith(".csv") or suffix.endswith(".csv.gz"):
            return "csv"
        if suffix.endswith(".json") or suffix.endswith(".json.gz"):
            return "json"
        if suffix.endswith(".xyz") or suffix.endswith(".extxyz"):
            return "extxyz"
        if suffix.endswith(".tar.gz") or suffix.endswith(".tgz") or suffix.endswith(".tar"):
            return "cif_tar"
        raise InputError(f"cannot tell the format from the name; set format: csv|cif_dir|json|extxyz", file=str(p))

    @property
    def format(self) -> str:
        """The file's format: ``settings.format``, or told from the name when it is ``auto``."""
        return self._fmt()

    def column_problems(self) -> list[tuple[str, str]]:
        """For a CSV: ``(settings key, problem)`` for each named column the file lacks (header only); else ``[]``.

        Raises:
            InputError: the CSV cannot be read.
        """
        if self._fmt() != "csv":
            return []
        import pandas as pd

        try:
            columns = list(pd.read_csv(self.path, nrows=0).columns)
        except Exception as exc:  # noqa: BLE001 - pandas raises many kinds on a bad file
            return [("path", f"cannot read CSV {self.path}: {type(exc).__name__}: {exc}")]
        st = self.settings
        out = []
        if st.structure_column is not None and st.structure_column not in columns:
            out.append(("structure_column", f"column {st.structure_column!r} not in {self.path.name}; columns: {columns}"))
        if st.composition_column is not None and st.composition_column not in columns and st.structure_column is None:
            out.append(("composition_column",
                        f"column {st.composition_column!r} not in {self.path.name}; columns: {columns}"))
        if st.composition_column is None and st.structure_column is None:
            out.append(("composition_column", "need composition_column or structure_column"))
        missing = [c for c in st.require_columns if c not in columns]
        if missing:
            out.append(("require_columns", f"columns {missing} not in {self.path.name}; columns: {columns}"))
        return out

    def load(self) -> list[Candidate]:
        """Read the pool: candidates in file order, less those filtered by ``max_atoms``/``ordered_only``, at most ``limit``.

        Raises:
            InputError: the file is missing or unreadable, its format cannot be told, a row is
                unparseable with ``on_bad_row: error``, or no candidate is left.
        """
        p = self.path
        self.skipped: list[str] = []
        if not p.exists():
            raise InputError("candidate file not found", file=str(p))
        fmt = self._fmt()
        reader = {"csv": self._csv, "cif_dir": self._cif_dir, "cif_tar": self._cif_tar, "json": self._json,
                  "extxyz": self._extxyz}[fmt]
        out, bad = [], []
        filtered = {"too many atoms": 0, "partial occupancy": 0}
        for item in reader():
            if isinstance(item, Candidate):
                if item.structure is not None and (self.settings.max_atoms or self.settings.ordered_only):
                    s = item.pmg_structure()
                    if self.settings.max_atoms and len(s) > self.settings.max_atoms:
                        filtered["too many atoms"] += 1
                        continue
                    if self.settings.ordered_only and not s.is_ordered:
                        filtered["partial occupancy"] += 1
                        continue
                out.append(item)
            else:
                where, msg = item
                if self.settings.on_bad_row == "error":
                    raise InputError(msg, file=str(p), where=where)
                bad.append(where)
            if self.settings.limit and len(out) >= self.settings.limit:
                break
        if any(filtered.values()):
            log.info("%s: filtered out %s", p, {k: v for k, v in filtered.items() if v})
        self.skipped = bad
        if bad:
            log.warning("%s: skipped %d unparseable entries (first: %s)", p, len(bad), bad[0])
            warnings.warn(f"{p}: skipped {len(bad)} unparseable entries (first: {bad[0]})", stacklevel=2)
        if not out:
            raise InputError("the candidate pool is empty" + (
                f": all {len(bad)} entries are unparseable (first: {bad[0]})" if bad else ""), file=str(p))
        return out

    def _csv(self):
        p = self.path
        try:
            # index_col=False: a row with an extra field must not turn column 1 into an index;
            # the formula and structure columns are read verbatim ("NaN" is sodium nitride)
            df = read_csv(p, (self.settings.composition_column, self.settings.structure_column), index_col=False)
        except Exception as exc:
            raise InputError(f"cannot read CSV: {exc}", file=str(p)) from None
        cc, sc = self.settings.composition_column, self.settings.structure_column
        for col in (cc, sc):
            if col is not None and col not in df.columns:
                if col == cc and sc is not None:
                    cc = None
                    continue
                raise InputError(f"column {col!r} not found; columns are {list(df.columns)}", file=str(p))
        if cc is None and sc is None:
            raise InputError("need composition_column or structure_column", file=str(p))
        missing = [c for c in self.settings.require_columns if c not in df.columns]
        if missing:
            raise InputError(f"require_columns {missing} not found; columns are {list(df.columns)}", file=str(p))
        if self.settings.require_columns:
            keep = df[self.settings.require_columns].notna().all(axis=1)
            log.info("%s: %d of %d rows have every column of require_columns", p, int(keep.sum()), len(df))
            df = df[keep]
        for i, row in df.iterrows():
            where = f"row {i + 2}"  # 1-based with the header line
            prov = {"file": str(p), "row": int(i)}
            try:
                if sc is not None and isinstance(row[sc], str) and row[sc].strip():
                    s = _read_structure_text(row[sc], p.parent)
                    yield _known_elements(Candidate.from_structure(s, source=self.name, provenance=prov))
                else:
                    comp = row[cc] if cc is not None else None
                    if comp is None or (isinstance(comp, float)) or not str(comp).strip():
                        raise ValueError("empty composition")
                    yield _known_elements(Candidate.from_composition(str(comp).strip(), source=self.name, provenance=prov))
            except InputError:
                raise
            except Exception as exc:
                col = sc if sc is not None else cc
                yield (f"{where} column {col!r}", f"unparseable entry: {type(exc).__name__}: {exc}")

    def _cif_dir(self):
        from pymatgen.core import Structure

        files = sorted(
            f for f in self.path.iterdir() if f.suffix.lower() in (".cif", ".vasp", ".poscar") or f.name.startswith("POSCAR")
        )
        for f in files:
            try:
                s = Structure.from_file(str(f))
                yield _known_elements(Candidate.from_structure(s, source=self.name, provenance={"file": str(f)}))
            except Exception as exc:
                yield (f"file {f.name}", f"unparseable structure: {type(exc).__name__}: {exc}")

    def _cif_tar(self):
        import tarfile

        from pymatgen.core import Structure

        with tarfile.open(self.path) as tar:
            members = sorted((m for m in tar.getmembers() if m.isfile() and m.name.lower().endswith(".cif")), key=lambda m: m.name)
            for m in members:
                try:
                    text = tar.extractfile(m).read().decode()
                    import warnings as _w

                    with _w.catch_warnings():
                        _w.simplefilter("ignore")
                        s = Structure.from_str(text, fmt="cif")
                    yield _known_elements(Candidate.from_structure(s, source=self.name, provenance={"file": str(self.path), "member": m.name}))
                except Exception as exc:
                    yield (f"member {m.name}", f"unparseable structure: {type(exc).__name__}: {exc}")

    def _json(self):
        from monty.io import zopen
        from pymatgen.core import Structure

        with zopen(str(self.path), "rt") as fh:
            try:
                data = json.load(fh)
            except json.JSONDecodeError as exc:
                raise InputError(f"malformed JSON: {exc}", file=str(self.path)) from None
        items = data if isinstance(data, list) else data.get("structures", [data]) if isinstance(data, dict) else []
        for i, d in enumerate(items):
            try:
                if isinstance(d, dict) and "structure" in d and isinstance(d["structure"], dict):
                    d = d["structure"]
                s = Structure.from_dict(d)
                yield _known_elements(Candidate.from_structure(s, source=self.name, provenance={"file": str(self.path), "index": i}))
            except Exception as exc:
                yield (f"item [{i}]", f"not a pymatgen structure: {type(exc).__name__}: {exc}")

    def _extxyz(self):
        from ase.io import iread
        from pymatgen.io.ase import AseAtomsAdaptor

        try:
            frames = list(iread(str(self.path), index=":", format="extxyz"))
        except Exception as exc:
            raise InputError(f"cannot read extxyz: {exc}", file=str(self.path)) from None
        for i, atoms in enumerate(frames):
            try:
                if not atoms.pbc.any():
                    raise ValueError("frame has no periodic cell")
                s = AseAtomsAdaptor.get_structure(atoms)
                yield _known_elements(Candidate.from_structure(s, source=self.name, provenance={"file": str(self.path), "frame": i}))
            except Exception as exc:
                yield (f"frame {i}", f"not a crystal: {type(exc).__name__}: {exc}")


SOURCE_KINDS = ("file", "prototypes")


def source_settings_model(kind: str):
    """The pydantic settings class of built-in source kind ``kind`` (``file`` or ``prototypes``); raises KeyError otherwise."""
    if kind == "file":
        return FileSourceSettings
    if kind == "prototypes":
        from .prototypes import PrototypeSettings

        return PrototypeSettings
    raise KeyError(kind)


def make_source(kind: str, name: str, settings: dict, base_dir: Path | None = None):
    """A fixed-pool source (``load() -> candidates``) for the built-in kinds."""
    if kind == "file":
        return FileSource(name, settings, base_dir)
    if kind == "prototypes":
        from .prototypes import PrototypeSource

        return PrototypeSource(name, settings)
    raise KeyError(kind)
