"""One place that turns a registered name into a class (or factory), for every extension point.

Plug-ins register through Python entry points, one group per extension point: oracles,
generators, surrogates, and ASE calculators for the MLIP oracle (``matloop.<point>``, e.g.
``[project.entry-points."matloop.calculators"]``). YAML refers to them by name only, so a
campaign file can never import arbitrary code. Two distributions claiming one name is an
error, not a silent override.
"""

from __future__ import annotations

from functools import lru_cache
from importlib.metadata import entry_points

from .records import MatloopError

#: the entry-point groups: oracles, generators, surrogates, calculators
ORACLES, GENERATORS, SURROGATES, CALCULATORS = GROUPS = tuple(
    f"matloop.{point}" for point in ("oracles", "generators", "surrogates", "calculators")
)


class RegistryError(MatloopError):
    """An unknown name, or one name claimed by two distributions."""


@lru_cache(maxsize=None)
def _entries(group: str) -> dict:
    found: dict = {}
    for ep in entry_points(group=group):
        if ep.name in found and found[ep.name].value != ep.value:
            raise RegistryError(
                f"duplicate {group} name {ep.name!r}: {found[ep.name].value} and {ep.value}"
            )
        found[ep.name] = ep
    return found


def names(group: str) -> list[str]:
    """The names registered in ``group``, sorted."""
    return sorted(_entries(group))


def load(group: str, name: str):
    """The object registered under ``name`` in ``group``; raises RegistryError if unknown."""
    entries = _entries(group)
    if name not in entries:
        raise RegistryError(f"unknown {group.split('.')[-1][:-1]} kind {name!r}; known: {', '.join(sorted(entries))}")
    return entries[name].load()


def distribution(group: str, name: str) -> str:
    """``"<distribution> <version>"`` that registered ``name`` in ``group`` (for provenance)."""
    entries = _entries(group)
    if name not in entries:
        raise RegistryError(f"unknown {group.split('.')[-1][:-1]} kind {name!r}; known: {', '.join(sorted(entries))}")
    dist = entries[name].dist
    return f"{dist.name} {dist.version}" if dist is not None else "unknown distribution"


def oracle_class(kind: str):
    """The oracle class registered as ``kind``."""
    return load(ORACLES, kind)


def calculator_factory(name: str):
    """The ASE-calculator factory registered as ``name``: called as ``factory(model_name, device)``."""
    return load(CALCULATORS, name)
