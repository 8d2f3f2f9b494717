"""A tiny valid lookup campaign and the ``matloop`` CLI run in process, for the bad-input and fuzz tests."""

from __future__ import annotations

import contextlib
import io
import traceback
from pathlib import Path

import yaml

from matloop.loop.cli import main

POOL = """composition,target
Fe2O3,1.0
NiO,0.5
ZnO,1.5
CoO,0.7
MnO2,0.9
CuO,1.1
TiO2,2.0
MgO,0.3
"""


def campaign(tmp: Path, **over) -> dict:
    """A valid one-iteration lookup campaign on a tiny pool in ``tmp`` (overrides replace top-level keys)."""
    (tmp / "pool.csv").write_text(POOL)
    spec = {
        "name": "tiny",
        "seed": 1,
        "objective": {"property": "target", "goal": "minimize"},
        "sources": [{"kind": "file", "settings": {"path": "pool.csv"}}],
        "oracles": [{"name": "table", "kind": "lookup",
                     "settings": {"table": "pool.csv", "columns": {"target": "target"}}}],
        "agent": {"acquisition": {"init": 2}},
        "batch_size": 2,
        "budget": {"iterations": 1},
        "store": "store.sqlite",
        "executor": {"kind": "inline"},
    }
    spec.update(over)
    return spec


def write(tmp: Path, spec: dict | str, name: str = "c.yaml") -> Path:
    p = tmp / name
    p.write_text(spec if isinstance(spec, str) else yaml.safe_dump(spec, sort_keys=False))
    return p


def cli(*argv) -> tuple[int, str, str]:
    """``matloop ARGV`` in process: (exit status, stdout, stderr); a traceback is caught and returned in stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main([str(a) for a in argv])
        except SystemExit as exc:  # argparse
            rc = exc.code if isinstance(exc.code, int) else 2
        except BaseException:  # noqa: BLE001 - the point is to see it
            err.write(traceback.format_exc())
            rc = 1
    return rc, out.getvalue(), err.getvalue()
