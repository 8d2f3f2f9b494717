"""Shared fixtures. Real datasets live in ../shared/data beside the repository; tests that
need them skip with a reason when the folder is absent (users won't have it)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip(f"shared datasets not found at {SHARED_DATA} (only on the project's machines)")
    return SHARED_DATA


@pytest.fixture
def grid_csv(tmp_path) -> Path:
    """A small labelled pool: Fe-Ni-Co-Mn compositions on a 10 % grid with a smooth target."""
    import itertools

    import numpy as np

    rows = ["composition,target"]
    for a, b, c in itertools.product(range(11), repeat=3):
        d = 10 - a - b - c
        if d < 0:
            continue
        fr = np.array([a, b, c, d]) / 10
        y = float(((fr - [0.5, 0.2, 0.2, 0.1]) ** 2).sum())
        parts = "".join(f"{el}{f:g}" for el, f in zip(["Fe", "Ni", "Co", "Mn"], fr) if f > 0)
        rows.append(f"{parts},{y:.6f}")
    p = tmp_path / "pool.csv"
    p.write_text("\n".join(rows) + "\n")
    return p
