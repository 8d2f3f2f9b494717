"""Units spelled in property names (the project's naming rule: ``gap_ev``, ``sq_efficiency_percent``).

One place reads a unit from a name and formats a value in it: the CLI, the live progress,
the export and the report all go through :func:`unit_of` and :func:`format_value`.
"""

from __future__ import annotations

import math
import re

#: (suffix, unit): the first suffix that ends the property name applies
UNITS: tuple[tuple[str, str], ...] = (
    ("_percent", "%"),
    ("_ev_per_atom", "eV/atom"),
    ("_s_per_cm_300k", "S/cm (300 K)"),
    ("_s_per_cm", "S/cm"),
    ("_cm2_per_s_300k", "cm^2/s (300 K)"),
    ("_cm2_per_s", "cm^2/s"),
    ("_ev", "eV"),
    ("_v", "V"),
    ("_k", "K"),
    ("_a", "angstrom"),
    ("_g_per_cm3", "g/cm^3"),
)


def unit_of(prop: str) -> str:
    """The unit spelled at the end of a property name (``gap_ev`` -> ``eV``), before any ``_<Formula>`` qualifier."""
    prop = re.sub(r"_[A-Z][A-Za-z0-9]*$", "", prop)  # interface_reaction_ev_per_atom_LiCoO2
    for suffix, unit in UNITS:
        if prop.endswith(suffix):
            return unit
    return "dimensionless"


def format_value(value, prop: str | None = None, digits: int = 4) -> str:
    """``value`` rounded to ``digits`` significant figures, with the unit of ``prop`` (``-0.4163 eV/atom``).

    None and non-finite values print as ``-``; a dimensionless property (or ``prop=None``)
    prints without a unit.
    """
    if value is None:
        return "-"
    try:
        v = float(value)
    except (TypeError, ValueError):
        return str(value)
    if not math.isfinite(v):
        return "-"
    text = f"{v:.{digits}g}"
    unit = unit_of(prop) if prop else "dimensionless"
    if unit == "dimensionless":
        return text
    return f"{text}{'' if unit == '%' else ' '}{unit}"
