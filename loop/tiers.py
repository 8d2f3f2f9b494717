"""The campaign's oracle tiers, built from the spec: one place turns ``oracles:`` into ``Oracle`` objects."""

from __future__ import annotations

from matloop.core.oracle import SiteSettings
from matloop.core.registry import oracle_class

from .spec import CampaignSpec


def build_oracles(spec: CampaignSpec) -> dict:
    """Oracle objects by name, in spec order; each gets its ``site:``, ``base_dir`` the campaign file's folder."""
    out = {}
    for o in spec.oracles:
        site = SiteSettings(**o.site.model_dump(exclude={"base_dir"}), base_dir=spec.base_dir)
        out[o.name] = oracle_class(o.kind)(
            name=o.name, settings=o.settings, cost=o.cost, fidelity=o.fidelity, timeout_s=o.timeout_s,
            cost_unit=o.cost_unit, site=site,
        )
    return out


def oracle_properties(oracle) -> tuple[str, ...]:
    """The property names an oracle reports (empty when it declares none)."""
    return tuple(getattr(oracle, "properties", ()) or ())
