"""Reference help from the code itself: ``matloop describe KIND`` and ``matloop schema``.

Every oracle, generator, surrogate and built-in source declares its settings as a pydantic
model; ``describe`` prints that model (types, defaults, units, descriptions) for one kind,
found through the plug-in registry, so plug-ins are documented the same way. ``schema``
prints the JSON Schema of the campaign file (``CampaignSpec``), with each oracle's and
source's ``settings`` checked against its kind's model, for editors to complete and check.
"""

from __future__ import annotations

import json
import re
import typing
from dataclasses import dataclass

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from matloop.core.records import InputError
from matloop.core.units import unit_of

#: unit suffixes of setting names beyond the property units (``timeout_s``, ``timestep_fs``)
_SETTING_UNITS = (("_fs", "fs"), ("_ps", "ps"), ("_ns", "ns"), ("_s", "s"), ("_gpa", "GPa"), ("_kbar", "kbar"),
                  ("_mb", "MB"), ("_gb", "GB"))
#: units recognised when a description names one in parentheses, e.g. "threshold (eV/A)"
_UNIT_WORDS = {"eV", "eV/A", "eV/atom", "A", "K", "fs", "ps", "ns", "s", "GPa", "V", "%", "g/cm^3", "S/cm",
               "cm^2/s", "Ry", "Ha", "kJ/mol", "meV/atom", "1/A", "A^-1", "bar", "atm", "seconds"}


@dataclass(frozen=True)
class Kind:
    """One describable kind: what it is (``oracle``, ``generator``, ``surrogate``, ``source``), its name and settings model."""

    group: str
    name: str
    model: type[BaseModel]
    where: str  # where its settings go in a campaign file


def kinds() -> dict[str, list[str]]:
    """Every describable kind name, per group (registered plug-ins included)."""
    from matloop.agents.generation.sources import SOURCE_KINDS
    from matloop.core.registry import GENERATORS, ORACLES, SURROGATES, names

    return {"oracle": names(ORACLES), "generator": names(GENERATORS), "surrogate": names(SURROGATES),
            "source": list(SOURCE_KINDS)}


def find(name: str) -> list[Kind]:
    """The kinds called ``name`` (an oracle and a generator may share a name).

    Raises:
        InputError: no group knows ``name``; the message lists the known kinds.
    """
    from matloop.agents.generation.sources import source_settings_model
    from matloop.agents.modelling.surrogates import SurrogateSettings
    from matloop.core.registry import GENERATORS, ORACLES, load

    known = kinds()
    found = []
    if name in known["oracle"]:
        found.append(Kind("oracle", name, load(ORACLES, name).Settings, "oracles[].settings"))
    if name in known["generator"]:
        found.append(Kind("generator", name, load(GENERATORS, name).Settings, "sources[].settings"))
    if name in known["surrogate"]:
        found.append(Kind("surrogate", name, SurrogateSettings, "agent.surrogate"))
    if name in known["source"]:
        found.append(Kind("source", name, source_settings_model(name), "sources[].settings"))
    if not found:
        listing = "; ".join(f"{g}s: {', '.join(n)}" for g, n in known.items())
        raise InputError(f"unknown kind {name!r}. Known {listing}", where="describe")
    return found


def type_name(annotation) -> str:
    """A readable type: ``float``, ``list[str]``, ``int | None``, ``one of: a, b``."""
    if annotation is None or annotation is type(None):
        return "None"
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return "one of: " + ", ".join(str(a) for a in args)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return " | ".join(type_name(a) for a in args)
    if origin is not None:
        base = getattr(origin, "__name__", str(origin))
        return f"{base}[{', '.join(type_name(a) for a in args)}]" if args else base
    return getattr(annotation, "__name__", str(annotation).replace("typing.", ""))


def _bounds(field) -> str:
    out = []
    for m in field.metadata:
        for attr, sym in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="), ("min_length", "length >=")):
            v = getattr(m, attr, None)
            if v is not None:
                out.append(f"{sym} {v}")
    return ", ".join(out)


def unit_of_setting(name: str, description: str) -> str:
    """The unit of a setting: from its name's suffix (``timeout_s``), else a unit named in its description."""
    unit = unit_of(name)
    if unit != "dimensionless":
        return unit
    for suffix, u in _SETTING_UNITS:
        if name.endswith(suffix):
            return u
    for group in re.findall(r"\(([^()]+)\)", description or ""):
        word = group.split(",")[0].split(" ")[0].strip()
        if word in _UNIT_WORDS:
            return word
    return ""


def _default(field) -> str:
    if field.default is not PydanticUndefined:
        v = field.default
        return "(none)" if v is None else json.dumps(v.model_dump(mode="json") if isinstance(v, BaseModel) else v,
                                                      default=str)
    if field.default_factory is not None:
        try:
            v = field.default_factory()
        except TypeError:
            return "(computed)"
        if isinstance(v, BaseModel):
            return "(see its fields)"
        return json.dumps(v, default=str)
    return "required"


def settings_rows(model: type[BaseModel], prefix: str = "") -> list[dict]:
    """One row per setting of ``model`` (nested models flattened to ``outer.inner``): name, type, default, unit, description."""
    rows = []
    for name, field in model.model_fields.items():
        if field.exclude:
            continue
        desc = field.description or ""
        kind = type_name(field.annotation)
        bounds = _bounds(field)
        rows.append({"setting": prefix + name, "type": kind + (f" ({bounds})" if bounds else ""),
                     "default": _default(field), "unit": unit_of_setting(name, desc), "description": desc})
        nested = field.annotation
        if isinstance(nested, type) and issubclass(nested, BaseModel):
            rows += settings_rows(nested, prefix=f"{prefix}{name}.")
    return rows


def describe(name: str, console=None) -> None:
    """Print the settings of every kind called ``name`` as tables (``console``: a rich Console)."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = console or Console()
    for k in find(name):
        doc = (k.model.__doc__ or "").strip().splitlines()[0] if k.model.__doc__ else ""
        t = Table(title=escape(f"{k.group} {k.name!r}: settings under {k.where}" + (f"\n{doc}" if doc else "")),
                  title_justify="left", show_lines=False)
        for col in ("setting", "type", "default", "unit", "description"):
            t.add_column(col, overflow="fold")
        for r in settings_rows(k.model):
            t.add_row(*(escape(r[c]) for c in ("setting", "type", "default", "unit", "description")))
        console.print(t)


def campaign_schema() -> dict:
    """The JSON Schema of a campaign file, with every registered kind's settings schema.

    Each ``oracles[]`` and ``sources[]`` item gets one ``if kind == K then settings: <K's
    model>`` clause per kind, so an editor checks and completes the settings of the kind
    written. ``goal`` also accepts ``max`` and ``min``.
    """
    from .spec import CampaignSpec

    schema = CampaignSpec.model_json_schema()
    schema["title"] = "matloop campaign"
    schema.setdefault("properties", {}).pop("base_dir", None)
    defs = schema.setdefault("$defs", {})
    goal = defs.get("Objective", {}).get("properties", {}).get("goal", {})
    if "enum" in goal:
        goal["enum"] = list(dict.fromkeys([*goal["enum"], "max", "min"]))
    clauses: dict[str, list] = {"OracleSpec": [], "SourceSpec": []}
    known = kinds()
    for group, target in (("oracle", "OracleSpec"), ("generator", "SourceSpec"), ("source", "SourceSpec")):
        for name in known[group]:
            try:
                model = next(k.model for k in find(name) if k.group == group)
                sub = model.model_json_schema(ref_template="#/$defs/{model}")
            except Exception:  # a plug-in that fails to import is reported by `matloop validate`
                continue
            for key, d in sub.pop("$defs", {}).items():
                defs.setdefault(key, d)
            ref = f"{group}_{name}_settings"
            defs[ref] = sub
            clauses[target].append({"if": {"properties": {"kind": {"const": name}}, "required": ["kind"]},
                                    "then": {"properties": {"settings": {"$ref": f"#/$defs/{ref}"}}}})
    for target, items in clauses.items():
        if target in defs and items:
            defs[target]["allOf"] = items
    return schema
