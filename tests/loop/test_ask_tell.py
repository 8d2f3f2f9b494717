"""Human in the loop: the campaign pauses on a manual oracle; ask exports, tell records."""

import csv
import subprocess
import sys

from .helpers import write_campaign


def matloop(*args):
    return subprocess.run([sys.executable, "-m", "matloop.loop.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=600)


def _lookup(grid_csv):
    vals = {}
    for row in csv.DictReader(open(grid_csv)):
        vals[row["composition"]] = row["target"]
    return vals


def test_ask_tell_round(tmp_path, grid_csv):
    p = write_campaign(
        tmp_path, grid_csv,
        oracles=[{"name": "bench", "kind": "manual", "settings": {"properties": ["target"], "instructions": "measure"}}],
        batch_size=3, budget={"evaluations": 6}, agent={"acquisition": {"init": 3, "shortlist": 30}},
    )
    store = tmp_path / "store.sqlite"
    r = matloop("run", p)
    assert r.returncode == 0, r.stderr
    assert "waiting for 3 result(s) from bench" in r.stdout
    out = tmp_path / "batch.csv"
    assert matloop("ask", store, "--out", out).returncode == 0
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == 3 and set(rows[0]) >= {"request_id", "formula", "composition", "target"}

    # a bad file: nothing is recorded, every problem named
    truth = _lookup(grid_csv)
    bad = tmp_path / "bad.csv"
    with open(bad, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["request_id", "target"])
        w.writeheader()
        w.writerow({"request_id": rows[0]["request_id"], "target": "nan"})
        w.writerow({"request_id": "r-unknown", "target": "1"})
        w.writerow({"request_id": rows[1]["request_id"], "target": "abc"})
    res = matloop("tell", store, bad)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "row 2 column 'target': target=nan is not finite" in res.stderr and "row 3: request 'r-unknown'" in res.stderr and "row 4" in res.stderr
    assert len(list(csv.DictReader(open(out)))) == 3
    assert "no open requests" not in matloop("ask", store).stdout  # still open

    for row in rows:
        row["target"] = truth[row["composition"]]
    with open(out, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    res = matloop("tell", store, out)
    assert res.returncode == 0 and "recorded 3 result(s)" in res.stdout, res.stderr
    assert "no open requests" in matloop("ask", store).stdout
    again = matloop("tell", store, out)  # the same file twice: nothing new, said so
    assert again.returncode == 0 and "already recorded" in again.stdout, again.stderr
    rows[0]["target"] = "0.999"  # a different value for a recorded request: refused, never overwritten
    with open(out, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    changed = matloop("tell", store, out)
    assert changed.returncode == 2 and "row 2: request" in changed.stderr and "already recorded" in changed.stderr
    assert "never overwritten" in changed.stderr

    r2 = matloop("run", p)  # plans the next batch and pauses again
    assert "waiting for 3 result(s)" in r2.stdout, r2.stdout + r2.stderr
    exp = matloop("export", store, "--format", "json")
    import json

    assert len(json.loads(exp.stdout)) == 3
