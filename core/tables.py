"""Reading CSV tables whose text columns hold chemical formulas or identifiers.

pandas turns "NaN", "NA", "null", "None", ... into missing values in every column. In a
formula column "NaN" is sodium nitride (a Materials Project entry) and must stay a formula,
so :func:`read_csv` reads the named text columns verbatim: there only an empty field is
missing. Every other column keeps pandas' defaults (a label "nan" is still a missing label).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path


def read_csv(path: str | Path, text_columns: Iterable[str | None] = (), **kwargs):
    """``pandas.read_csv(path, **kwargs)`` with ``text_columns`` read as strings, verbatim.

    Args:
        path: the CSV file.
        text_columns: columns holding formulas, structures or keys (None entries and names the
            file lacks are ignored: the caller reports a missing column its own way).
        **kwargs: passed to ``pandas.read_csv`` for the whole table (``index_col``, ``nrows``...).

    Returns:
        The DataFrame; a text column holds ``str`` values, NaN only where the field is empty.
    """
    import pandas as pd

    df = pd.read_csv(path, **kwargs)
    cols = [c for c in dict.fromkeys(text_columns) if c is not None and c in df.columns]
    if cols and len(df):
        keep = {k: v for k, v in kwargs.items() if k in ("sep", "comment", "encoding", "nrows", "skiprows", "index_col")}
        raw = pd.read_csv(path, usecols=cols, dtype=str, keep_default_na=False, na_values=[""], **keep)
        if len(raw) != len(df):  # cannot happen for one file and one parser; never mis-align rows
            raise ValueError(f"{path}: the text columns {cols} read {len(raw)} rows, the table {len(df)}")
        for c in cols:
            df[c] = raw[c].to_numpy()
    return df
