"""Builders for small campaign files used across the loop tests."""

from __future__ import annotations

from pathlib import Path

import yaml


def write_campaign(tmp_path: Path, pool_csv: Path, **overrides) -> Path:
    spec = {
        "name": "grid",
        "seed": 1,
        "objective": {"property": "target", "goal": "minimize"},
        "sources": [{"kind": "file", "settings": {"path": str(pool_csv), "composition_column": "composition"}}],
        "oracles": [
            {
                "name": "table",
                "kind": "lookup",
                "cost": 1,
                "settings": {"table": str(pool_csv), "key_column": "composition", "columns": {"target": "target"}},
            }
        ],
        "agent": {"acquisition": {"init": 6, "shortlist": 50}},
        "batch_size": 4,
        "budget": {"evaluations": 14},
        "store": str(tmp_path / "store.sqlite"),
        "executor": {"kind": "inline"},
    }
    for k, v in overrides.items():
        spec[k] = v
    path = tmp_path / "campaign.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path
