"""One place that turns a registered name into a class, for oracles, generators and surrogates.

Plug-ins register through Python entry points (groups ``matloop.oracles``,
``matloop.generators``, ``matloop.surrogates``). YAML refers to them by name only, so a
campaign file can never import arbitrary code. Two distributions claiming one name is an
error, not a silent override.
"""

from __future__ import annotations

from functools import lru_cache
from importlib.metadata import entry_points

from .records import MatloopError

GROUPS = ("matloop.oracles", "matloop.generators", "matloop.surrogates")


class RegistryError(MatloopError):
    """A name is not registered in its group, or two distributions register it."""
    pass


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
    """Sorted names registered in entry-point ``group``; raises RegistryError if two distributions claim one."""
    return sorted(_entries(group))


def load(group: str, name: str):
    """The class registered under ``name`` in ``group``; raises RegistryError if unknown."""
    entries = _entries(group)
    if name not in entries:
        raise RegistryError(f"unknown {group.split('.')[-1][:-1]} kind {name!r}; known: {', '.join(sorted(entries))}")
    return entries[name].load()


def oracle_class(kind: str):
    """The oracle class registered as ``kind`` (group ``matloop.oracles``); raises RegistryError if unknown."""
    return load("matloop.oracles", kind)
