"""Every shipped campaign file validates (paths to ../shared/data are checked when run, not here)."""

from pathlib import Path

import pytest

from matloop.loop.spec import load_campaign

CAMPAIGNS = sorted((Path(__file__).resolve().parents[2] / "campaigns").rglob("*.yaml"))


@pytest.mark.parametrize("path", CAMPAIGNS, ids=lambda p: p.name)
def test_campaign_validates(path):
    spec = load_campaign(path)
    assert spec.name and spec.oracles


def test_quickstart_needs_no_shared_data():
    spec = load_campaign(Path(__file__).resolve().parents[2] / "campaigns" / "quickstart.yaml")
    assert all(s.kind != "file" for s in spec.sources)
    assert spec.report.compare_random
