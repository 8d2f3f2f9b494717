"""Table-lookup oracle: reveals labels from a table, one requested candidate at a time.

It is the legitimate oracle for retrospective benchmarks and for tests; it never stands in
for a tier that is supposed to compute. The table is read inside the oracle only, so the
agent sees a label only after requesting it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

from pydantic import Field

from matloop.core.oracle import Oracle, OracleSettings
from matloop.core.records import Candidate, InputError, OracleError, OracleResult, stable_hash
from matloop.core.tables import read_csv


class LookupSettings(OracleSettings):
    """Settings of the table-lookup oracle."""

    table: str = Field(
        description="CSV file holding the labels (a relative path is taken from the campaign file's folder)"
    )
    key_column: str = Field("composition", description="column holding each row's key (see key)")
    key: Literal["composition", "candidate_id"] = Field(
        "composition",
        description="composition: rows match candidates by composition (fractions normalised); candidate_id: "
        "rows hold matloop candidate ids, so polymorphs of one composition keep their own labels",
    )
    columns: dict[str, str] = Field(
        description="reported property name -> column of the table, e.g. {overpotential_v: overpotential_V}"
    )
    uncertainty_columns: dict[str, str] = Field(default_factory=dict, description="property -> 1-sigma column")
    duplicates: Literal["mean", "min", "max", "first"] = Field(
        "mean", description="how rows with the same composition are combined"
    )
    latency_s: float = Field(
        0.0, ge=0, description="simulated evaluation time per request (mean, for latency: exponential)"
    )
    latency: Literal["fixed", "exponential"] = Field("fixed", description="fixed or exponentially distributed latency")


#: parsed tables per worker process, keyed by path, modification time and settings
_TABLES: dict = {}


class LookupOracle(Oracle):
    """Answers from a table keyed by composition (fractions normalised) or by candidate id."""

    kind = "lookup"
    properties = ()  # declared per instance from settings.columns
    Settings = LookupSettings

    @property
    def inline(self) -> bool:
        """Without simulated latency, evaluation is a dict lookup: run it in the planning process."""
        return self.settings.latency_s == 0

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.properties = tuple(self.settings.columns)
        self._table: dict[str, dict[str, float]] | None = None

    @property
    def table_path(self) -> Path:
        """The table file (a relative ``table`` is taken from the site's ``base_dir``)."""
        return self.site.resolve(self.settings.table)

    def load(self) -> dict[str, dict[str, float]]:
        """The parsed table, candidate id -> property values; read once per process.

        Raises:
            InputError: naming the file when it is missing or lacks a column.
        """
        if self._table is not None:
            return self._table
        path = self.table_path
        key = (str(path), path.stat().st_mtime if path.exists() else None,
               self.settings.model_dump_json(include={"key_column", "columns", "uncertainty_columns", "duplicates"}))
        cached = _TABLES.get(key)
        if cached is None:
            cached = self._read(path)
            _TABLES.clear()  # one table per process is the common case; keep memory bounded
            _TABLES[key] = cached
        self._table = cached
        return cached

    def input_problems(self) -> list[tuple[str, str]]:
        """``(settings key, problem)`` for a missing or unreadable table, a named column it lacks, or a label that is
        not a number (empty and NaN labels are allowed: they become failed observations when requested)."""
        import pandas as pd

        path = self.table_path
        if not path.is_file():
            return [("table", f"lookup table not found: {path}")]
        try:
            df = read_csv(path, (self.settings.key_column,), index_col=False)  # keys verbatim: "NaN" is a formula
        except Exception as exc:  # noqa: BLE001 - pandas raises many kinds on a bad file
            return [("table", f"cannot read CSV {path}: {type(exc).__name__}: {exc}")]
        columns = list(df.columns)
        st = self.settings
        out = []
        if st.key_column not in columns:
            out.append(("key_column", f"key_column {st.key_column!r} is not a column of {path.name}; columns: {columns}"))
        for key, named in (("columns", st.columns), ("uncertainty_columns", st.uncertainty_columns)):
            missing = sorted(set(named.values()) - set(columns))
            if missing:
                out.append((key, f"columns {missing} are not in {path.name}; columns: {columns}"))
            for col in sorted(set(named.values()) & set(columns)):
                text = df[col].astype(str).str.strip()
                bad = pd.to_numeric(df[col], errors="coerce").isna() & df[col].notna() & ~text.str.lower().isin(("nan", ""))
                if bad.any():
                    i = int(bad.to_numpy().nonzero()[0][0])
                    out.append((key, f"{path.name} row {i + 2} column {col!r}: not a number: {df[col].iloc[i]!r} "
                                     f"({int(bad.sum())} such rows)"))
        return out

    def __getstate__(self):
        # the parsed table stays behind when the oracle is sent to a worker (reloaded there once)
        d = dict(self.__dict__)
        d["_table"] = None
        return d

    def _read(self, path: Path) -> dict[str, dict[str, float]]:
        if not path.exists():
            raise InputError("lookup table not found", file=str(path))
        df = read_csv(path, (self.settings.key_column,), index_col=False)  # keys verbatim: "NaN" is a formula
        need = [self.settings.key_column, *self.settings.columns.values(), *self.settings.uncertainty_columns.values()]
        missing = [c for c in need if c not in df.columns]
        if missing:
            raise InputError(f"missing columns {missing}; has {list(df.columns)}", file=str(path))
        groups: dict[str, list[dict[str, float]]] = {}
        by_id = self.settings.key == "candidate_id"
        for i, row in df.iterrows():
            try:
                cid = str(row[self.settings.key_column]) if by_id else Candidate.from_composition(
                    str(row[self.settings.key_column])).id
            except Exception:
                continue  # unparseable rows cannot be requested anyway
            vals = {}
            for prop, col in self.settings.columns.items():
                vals[prop] = float(row[col])
            for prop, col in self.settings.uncertainty_columns.items():
                vals["__unc__" + prop] = float(row[col])
            groups.setdefault(cid, []).append(vals)
        table = {}
        for cid, rows in groups.items():
            merged = {}
            for k in rows[0]:
                xs = [r[k] for r in rows if math.isfinite(r[k])]
                if not xs:
                    merged[k] = float("nan")
                elif self.settings.duplicates == "mean":
                    merged[k] = sum(xs) / len(xs)
                elif self.settings.duplicates == "min":
                    merged[k] = min(xs)
                elif self.settings.duplicates == "max":
                    merged[k] = max(xs)
                else:
                    merged[k] = xs[0]
            table[cid] = merged
        return table

    def evaluate(self, candidate: Candidate) -> OracleResult:
        """The table's row for ``candidate`` (by composition or id); a missing row is an ``OracleError``."""
        table = self.load()
        if self.settings.latency_s > 0:
            import time

            import numpy as np

            delay = self.settings.latency_s
            if self.settings.latency == "exponential":
                # seeded per request so that replays are reproducible
                delay = float(np.random.default_rng(int(stable_hash(candidate.id, 8), 16)).exponential(delay))
            time.sleep(delay)
        if self.settings.key == "candidate_id" or candidate.id.startswith("c-"):
            key = candidate.id
        else:
            key = Candidate.from_composition(candidate.composition).id
        row = table.get(key)
        if row is None:
            raise OracleError(f"no row for {candidate.composition} in {self.table_path.name}")
        props = {k: v for k, v in row.items() if not k.startswith("__unc__")}
        bad = [k for k, v in props.items() if not math.isfinite(v)]
        if bad:
            raise OracleError(f"table value for {bad} is not finite")
        unc = {k[7:]: v for k, v in row.items() if k.startswith("__unc__") and math.isfinite(v)}
        return OracleResult(properties=props, uncertainties=unc)
