"""The campaign's oracle tiers, built from the spec: one place turns ``oracles:`` into ``Oracle`` objects."""

from __future__ import annotations

from matloop.core.registry import oracle_class

from .spec import CampaignSpec


def build_oracles(spec: CampaignSpec) -> dict:
    """Oracle objects by name, in spec order."""
    out = {}
    for o in spec.oracles:
        cls = oracle_class(o.kind)
        kwargs = dict(name=o.name, settings=o.settings, cost=o.cost, fidelity=o.fidelity, timeout_s=o.timeout_s, cost_unit=o.cost_unit)
        if o.kind == "lookup":
            kwargs["base_dir"] = spec.base_dir
        try:
            out[o.name] = cls(**kwargs)
        except TypeError:
            kwargs.pop("base_dir", None)
            out[o.name] = cls(**kwargs)
    return out


def _oracle_properties(oracle) -> tuple[str, ...]:
    return tuple(getattr(oracle, "properties", ()) or ())


def oracle_properties(oracle) -> tuple[str, ...]:
    """The property names an oracle reports (empty when it declares none)."""
    return tuple(getattr(oracle, "properties", ()) or ())
