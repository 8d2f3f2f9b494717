"""``matloop report``: a real two-tier campaign's store rendered in headless Chromium.

The page's own JS marks each image loaded or failed and sorts the top table when a header
is clicked (``#sort=K`` in the URL clicks header K); the tests read the DOM Chromium dumps
after that JS ran.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser

import pytest

from matloop.loop.report import add_arguments, cmd_report, write_report
from matloop.loop.campaign import Campaign
from matloop.loop.spec import load_campaign
from matloop.loop.store import Store
from matloop.core.records import Candidate, InputError

from .helpers import write_campaign

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium not installed (apt-get install -y chromium; scripts/setup.sh does it in CI)"
)


def _chromium(url: str, *extra: str) -> str:
    """Load ``url`` headless; return stdout (the DOM after scripts ran, with --dump-dom)."""
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--virtual-time-budget=5000", *extra, url],
            capture_output=True, text=True, timeout=60,
        )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


class _Dom(HTMLParser):
    """The bits of a dumped DOM the tests look at: images, body attributes, the top table."""

    def __init__(self, text: str):
        super().__init__()
        self.imgs: list[dict] = []
        self.body: dict = {}
        self.table: dict = {}
        self.header: list[str] = []
        self.rows: list[list[dict]] = []
        self._in_table = self._in_th = self._in_td = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a)
        elif tag == "body":
            self.body = a
        elif tag == "table" and a.get("id") == "top-table":
            self._in_table, self.table = True, a
        elif self._in_table and tag == "th":
            self._in_th = True
            self.header.append("")
        elif self._in_table and tag == "tr":
            self._row = []
        elif self._in_table and tag == "td":
            self._in_td = True
            self._row.append({"sort": a.get("data-sort"), "text": ""})
        elif self._in_td and tag == "a":
            self._row[-1]["href"] = a.get("href")

    def handle_endtag(self, tag):
        if tag == "table":
            self._in_table = False
        elif tag == "th":
            self._in_th = False
        elif tag == "td":
            self._in_td = False
        elif tag == "tr" and self._in_table and getattr(self, "_row", None):
            self.rows.append(self._row)
            self._row = []

    def handle_data(self, data):
        if self._in_th:
            self.header[-1] += data
        elif self._in_td:
            self._row[-1]["text"] += data


@pytest.fixture(scope="module")
def campaign_store(tmp_path_factory):
    """A real two-tier retrospective campaign (screen -> confirm) with a random arm and failures."""
    import itertools

    tmp = tmp_path_factory.mktemp("report")
    pool = tmp / "pool.csv"
    with pool.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["composition", "target", "screen", "fe_fraction"])
        k = 0
        for a, b, c in itertools.product(range(11), repeat=3):
            d = 10 - a - b - c
            if d < 0:
                continue
            fr = [a / 10, b / 10, c / 10, d / 10]
            y = sum((f - t) ** 2 for f, t in zip(fr, [0.5, 0.2, 0.2, 0.1]))
            comp = "".join(f"{el}{f:g}" for el, f in zip(["Fe", "Ni", "Co", "Mn"], fr) if f > 0)
            k += 1
            screen = "" if k % 7 == 0 else f"{y + 0.02 * ((k * 37) % 11 - 5) / 5:.6f}"  # blank -> a failure
            w.writerow([comp, f"{y:.6f}", screen, fr[0]])
    oracles = [
        {"name": "screen", "kind": "lookup", "cost": 1, "fidelity": 0,
         "settings": {"table": str(pool), "columns": {"target": "screen", "fe_fraction": "fe_fraction"}}},
        {"name": "confirm", "kind": "lookup", "cost": 5, "fidelity": 1, "promote": {"after": "screen", "top_k": 4},
         "settings": {"table": str(pool), "columns": {"target": "target"}}},
    ]
    # element fractions as features and a short GP fit keep the campaign to seconds
    spec = load_campaign(write_campaign(tmp, pool, oracles=oracles, budget={"evaluations": 20},
                                        features={"composition": ["fractions"], "structure": []},
                                        agent={"acquisition": {"init": 6, "shortlist": 50},
                                               "surrogate": {"fit_maxiter": 30}},
                                        report={"compare_random": True}))
    Campaign(spec, quiet=True).run()
    path = spec.resolve(spec.store)
    # what the runner is to record in meta (objective, objectives, good_set), and VAE-style latents
    st = Store(path)
    cands = st.candidates()
    truth = {r["composition"]: float(r["target"]) for r in csv.DictReader(pool.open())}
    ranked = sorted(cands, key=lambda c: truth[c.composition])
    good = [c.id for c in ranked[: len(ranked) // 10]]
    st.set_meta("objective", {"property": "target", "goal": "minimize"})
    st.set_meta("objectives", [{"property": "target", "goal": "minimize"}, {"property": "fe_fraction", "goal": "maximize"}])
    st.set_meta("good_set", good)
    latent = [Candidate.from_composition(f"Fe{0.05 + 0.01 * i:g}Ni{0.95 - 0.01 * i:g}", source="vae",
                                         provenance={"operator": "vae_sample", "latent": [0.1 * i, (i % 3) - 1.0, 0.5, -0.2 * i]})
              for i in range(8)]
    st.add_candidates(latent, iteration=0)
    st.close()
    return path, good


@pytest.fixture(scope="module")
def report(campaign_store, tmp_path_factory):
    store_path, _ = campaign_store
    out = tmp_path_factory.mktemp("html")
    index = write_report(store_path, out)
    return index


def test_report_files(report, campaign_store):
    out = report.parent
    html = report.read_text()
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["best_so_far.png", "discovery.png", "funnel.png", "latent.png", "pareto.png", "parity.png", "sources.png"]
    assert all((out / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    # self-contained: no remote resources
    assert "http://" not in html and "https://" not in html
    assert 'class="note"' not in html  # every panel had its data
    assert "minimize target (confirm)" in html and "store meta" in html


@needs_chromium
def test_images_load_in_chromium(report, tmp_path):
    dom = _Dom(_chromium(report.as_uri(), "--dump-dom"))
    assert len(dom.imgs) == 7
    for img in dom.imgs:
        assert img.get("data-loaded") == "1", img
        assert int(img["data-natural-width"]) > 500, img
    assert dom.body.get("data-images") == "ok:7"
    # a screenshot of the whole page is a real, non-blank PNG
    shot = tmp_path / "page.png"
    _chromium(report.as_uri(), f"--screenshot={shot}", "--window-size=1280,3000", "--hide-scrollbars")
    from matplotlib.image import imread

    px = imread(str(shot))
    assert px.shape[:2] == (3000, 1280) and px[..., :3].std() > 0.05


@needs_chromium
def test_missing_figure_is_reported_by_the_page(report, tmp_path):
    """The load check can fail: a page whose PNG is gone marks that image as failed."""
    out = tmp_path / "copy"
    shutil.copytree(report.parent, out)
    (out / "parity.png").unlink()
    dom = _Dom(_chromium((out / "index.html").as_uri(), "--dump-dom"))
    marks = {img["src"]: img.get("data-loaded") for img in dom.imgs}
    assert marks.pop("parity.png") == "error"
    assert set(marks.values()) == {"1"}
    assert dom.body.get("data-images") == "failed:parity.png"


@needs_chromium
def test_top_table_sorts_on_header_click(report, campaign_store):
    store_path, good = campaign_store
    before = _Dom(report.read_text())
    assert before.header[:5] == ["rank", "formula", "source", "found by", "confirm: target"]
    assert len(before.rows) >= 5
    # ranked by confirm's value, then the candidates only screened (blank confirm cell)
    objective = [r[4]["sort"] for r in before.rows]
    confirmed = [float(v) for v in objective if v]
    assert 0 < len(confirmed) < len(objective) and all(objective[: len(confirmed)])
    assert confirmed == sorted(confirmed)
    assert all(r[-1].get("href") is None for r in before.rows)  # composition-only: no structure files

    by_formula = _Dom(_chromium(report.as_uri() + "#sort=1", "--dump-dom"))
    assert by_formula.table.get("data-sorted") == "1:asc"
    names = [r[1]["text"].lower() for r in by_formula.rows]
    assert names == sorted(names) and names != [r[1]["text"].lower() for r in before.rows]

    worst_first = _Dom(_chromium(report.as_uri() + "#sort=-4", "--dump-dom"))
    assert worst_first.table.get("data-sorted") == "4:desc"
    worst = [r[4]["sort"] for r in worst_first.rows]
    assert [float(v) for v in worst if v] == sorted(confirmed, reverse=True)
    assert all(worst[: len(confirmed)]) and len(worst) == len(objective)  # blanks stay last


def test_series_match_the_store(campaign_store, report):
    """The numbers behind the panels, recomputed from the store."""
    from matloop.loop.report import _best_curve, _found_curve, _funnel_rows, _load, _parity_pairs, resolve_objective

    store_path, good = campaign_store
    st = Store(store_path)
    data = _load(st)
    spend = st.spend("agent")
    obs = st.observations(oracle="confirm", arm="agent")
    st.close()
    obj = resolve_objective(data, None)
    assert (obj.property, obj.goal, obj.oracle) == ("target", "minimize", "confirm")
    n, cost, best = _best_curve(data, obj, "agent")
    assert n[-1] == sum(v["evaluations"] for v in spend.values()) >= 20
    assert cost[-1] == pytest.approx(sum(v["cost"] for v in spend.values()))
    assert best[-1] == pytest.approx(min(o.value("target") for o in obs if o.ok))
    # the random baseline's cost counts its cache hits at the cost of the agent's evaluation they reused
    _, random_cost, _ = _best_curve(data, obj, "random")
    assert random_cost[-1] == 5 * len(data.arms["random"])
    _, found = _found_curve(data, obj, "agent", set(good))
    assert found[-1] == len({o.candidate_id for o in obs if o.ok} & set(good))
    rows = {r["oracle"]: r for r in _funnel_rows(data)}
    assert [r for r in rows] == ["screen", "confirm"]
    assert {k: (r["evaluations"], r["failed"]) for k, r in rows.items()} == {
        k: (v["evaluations"], v["failed"]) for k, v in spend.items()}
    assert rows["screen"]["failed"] > 0  # blank screen values are failures, shown in the funnel
    pairs, units, _ = _parity_pairs(data, obj)
    assert units == "property" and len(pairs) >= 2
    # the agent ranks screen's batch on screen's labels: each pair's observed value is screen's
    screen = {data.candidates[o.candidate_id].formula: o.value("target") for o in data.arms["agent"]
              if o.oracle == "screen" and o.ok}
    assert all(p["observed"] == screen[p["formula"]] for p in pairs)
    predicted = [c for it in data.iterations for c in it["rationale"]["tiers"]["screen"].get("chosen", [])
                 if c["predicted_mean"] is not None and c["formula"] in screen]
    assert len(pairs) == len(predicted)


def test_objective_inferred_without_meta(campaign_store, tmp_path):
    """Without meta 'objective' the property and goal come from the observations and rationales."""
    from matloop.loop.report import _load, resolve_objective

    store_path, _ = campaign_store
    copy = tmp_path / "store.sqlite"
    shutil.copy(store_path, copy)
    st = Store(copy)
    st.db.execute("DELETE FROM meta WHERE key='objective'")
    data = _load(st)
    st.close()
    obj = resolve_objective(data, None)
    assert (obj.property, obj.goal, obj.oracle) == ("target", "minimize", "confirm")
    assert obj.origin.startswith("inferred")
    explicit = resolve_objective(data, {"property": "fe_fraction", "goal": "maximize"})
    assert (explicit.oracle, explicit.origin) == ("screen", "argument")
    with pytest.raises(InputError, match="goal"):
        resolve_objective(data, {"property": "target", "goal": "smallest"})


def test_cli_report_and_bad_input(campaign_store, tmp_path, capsys):
    store_path, good = campaign_store
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    gs = tmp_path / "good.txt"
    gs.write_text("\n".join(good[:3]) + "\n")
    out = tmp_path / "rep"
    args = parser.parse_args([str(store_path), "--out", str(out), "--good-set", str(gs), "--top", "5",
                              "--objective", '{"property": "target", "goal": "window", "window": [0, 0.02]}'])
    assert cmd_report(args) == 0
    assert f"report written to {out / 'index.html'}" in capsys.readouterr().out
    html = (out / "index.html").read_text()
    assert "target in [0, 0.02] (confirm)" in html and "good set (3 ids)" in html
    assert len(_Dom(html).rows) == 5
    with pytest.raises(InputError, match="store not found"):
        write_report(tmp_path / "nope.sqlite", tmp_path / "x")
    junk = tmp_path / "junk.sqlite"
    junk.write_text("not a database, just text " * 100)
    with pytest.raises(InputError, match="not a matloop store, or damaged"):
        write_report(junk, tmp_path / "y")
    with pytest.raises(InputError, match="--objective"):
        cmd_report(parser.parse_args([str(store_path), "--out", str(out), "--objective", "{bad"]))


def test_structures_written_as_cif(campaign_store, tmp_path):
    """Top candidates with structures get a CIF: the oracle's relaxed structure when it made one."""
    from pymatgen.core import Lattice, Structure

    from matloop.core.records import Observation, Request, Status

    store_path, _ = campaign_store
    copy = tmp_path / "store.sqlite"
    shutil.copy(store_path, copy)
    nacl = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.69), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    relaxed = nacl.copy()
    relaxed.scale_lattice(nacl.volume * 1.08)
    kcl = Structure.from_spacegroup("Fm-3m", Lattice.cubic(6.29), ["K", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    a = Candidate.from_structure(nacl, source="prototypes")
    b = Candidate.from_structure(kcl, source="prototypes")
    st = Store(copy)
    st.add_candidates([a, b])
    idx = st.next_iteration()
    reqs = [Request(Request.make_id(c.id, o, idx), c, o, idx) for c, o in ((a, "confirm"), (b, "screen"))]
    st.start_iteration(idx, {"tiers": {}}, reqs)
    st.add_observation(Observation(reqs[0].id, a.id, "confirm", "v1", 1, Status.SUCCESS, {"target": -1.0},
                                   extra={"relaxed_structure": relaxed.as_dict()}, cost=5))
    st.add_observation(Observation(reqs[1].id, b.id, "screen", "v1", 0, Status.SUCCESS,
                                   {"target": -0.5, "fe_fraction": 0.0}, cost=1))
    st.finish_iteration(idx)
    st.close()
    out = tmp_path / "rep"
    index = write_report(copy, out, top_n=60)
    rows = _Dom(index.read_text()).rows
    links = {r[1]["text"]: r[-1].get("href") for r in rows}
    assert links["NaCl"] == f"structures/{a.id}.cif" and links["KCl"] == f"structures/{b.id}.cif"
    assert sum(v is not None for v in links.values()) == 2
    got_a = Structure.from_file(str(out / links["NaCl"]))
    got_b = Structure.from_file(str(out / links["KCl"]))
    assert got_a.volume == pytest.approx(relaxed.volume, rel=1e-4)  # the relaxed one, not the candidate's
    assert got_b.volume == pytest.approx(kcl.volume, rel=1e-4)
    assert got_a.composition.reduced_formula == "NaCl"
