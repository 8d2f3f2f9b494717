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

    # a converter sees the raw field before pandas' missing-value markers apply: one read
    verbatim = {c: _text_or_missing for c in dict.fromkeys(text_columns) if c is not None}
    return pd.read_csv(path, converters=verbatim, **kwargs)


def _text_or_missing(field: str) -> str | float:
    """A text field as written; an empty field is missing (NaN)."""
    return field if field != "" else float("nan")
