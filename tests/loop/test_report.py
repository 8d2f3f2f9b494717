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
                                        constraints=[{"property": "fe_fraction", "max": 0.6}],
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
    assert pngs == ["best_so_far.png", "discovery.png", "funnel.png", "latent.png", "model_relevance.png", "pareto.png",
                    "parity.png", "sources.png"]
    assert all((out / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    # self-contained: no remote resources
    assert "http://" not in html and "https://" not in html
    assert 'class="note"' not in html  # every panel had its data
    assert "minimize target (confirm)" in html and "store meta" in html


@needs_chromium
def test_images_load_in_chromium(report, tmp_path):
    dom = _Dom(_chromium(report.as_uri(), "--dump-dom"))
    assert len(dom.imgs) == 8
    for img in dom.imgs:
        assert img.get("data-loaded") == "1", img
        assert int(img["data-natural-width"]) > 500, img
    assert dom.body.get("data-images") == "ok:8"
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


# -- the panels that explain the agent ----------------------------------------------------------


class _Sections(HTMLParser):
    """Per <section id=...>: its heading, text, tables (rows of cell texts) and image sources."""

    def __init__(self, text: str):
        super().__init__()
        self.sections: dict[str, dict] = {}
        self._sec = None
        self._tag: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self._sec = self.sections.setdefault(a.get("id"), {"h2": "", "text": "", "tables": {}, "imgs": []})
        elif self._sec is not None:
            if tag == "table":
                self._table = self._sec["tables"].setdefault(a.get("id") or f"t{len(self._sec['tables'])}", [])
            elif tag == "tr":
                self._table.append([])
            elif tag in ("td", "th"):
                self._table[-1].append("")
            elif tag == "img":
                self._sec["imgs"].append(a)
        self._tag.append(tag)

    def handle_endtag(self, tag):
        if tag == "section":
            self._sec = None
        if self._tag:
            self._tag.pop()

    def handle_data(self, data):
        if self._sec is None:
            return
        self._sec["text"] += data
        if self._tag and self._tag[-1] == "h2":
            self._sec["h2"] += data
        elif "td" in self._tag[-3:] or "th" in self._tag[-3:]:
            self._table[-1][-1] += data


def _keep_artefact(shot) -> None:
    """Print the screenshot's path; copy it to $MATLOOP_ARTEFACTS when set."""
    import os

    print(f"report screenshot: {shot}")
    dest = os.environ.get("MATLOOP_ARTEFACTS")
    if dest:
        os.makedirs(dest, exist_ok=True)
        print(f"report screenshot copied to {shutil.copy(shot, os.path.join(dest, os.path.basename(shot)))}")


def _not_empty(sec: dict) -> bool:
    """A panel shows something: a figure, or a table with at least one data row."""
    return bool(sec["imgs"]) or any(len(rows) > 1 for rows in sec["tables"].values())


@needs_chromium
def test_explaining_panels_render_in_chromium(report, campaign_store, tmp_path):
    """Picks with reasons, constraints, model insights and the campaign panel are on the page Chromium
    renders, every panel has content, and a screenshot of the page is kept."""
    store_path, _ = campaign_store
    secs = _Sections(_chromium(report.as_uri(), "--dump-dom")).sections
    for sid, heading in (("picks", "Picks per iteration and why"), ("constraints", "Constraints and feasibility"),
                         ("model", "Model insights"), ("campaign", "Campaign and software")):
        assert secs[sid]["h2"] == heading
    assert all(_not_empty(sec) for sid, sec in secs.items()), [sid for sid, sec in secs.items() if not _not_empty(sec)]
    shot = tmp_path / "report.png"
    _chromium(report.as_uri(), f"--screenshot={shot}", "--window-size=1280,9000", "--hide-scrollbars")
    from matplotlib.image import imread

    px = imread(str(shot))
    assert px.shape[:2] == (9000, 1280) and px[..., :3].std() > 0.05
    _keep_artefact(shot)


def test_picks_table_matches_the_stored_plan(report, campaign_store):
    """One row per agent request, with the tier's reason and the μ ± σ the rationale recorded."""
    store_path, _ = campaign_store
    st = Store(store_path)
    n_requests = st.db.execute("SELECT COUNT(*) FROM requests WHERE arm='agent'").fetchone()[0]
    its = st.iterations("agent")
    st.close()
    rows = _Sections(report.read_text()).sections["picks"]["tables"]["picks-table"]
    header, body = rows[0], rows[1:]
    assert header[:6] == ["iteration", "tier", "formula", "reason", "acquisition", "predicted μ ± σ"]
    assert len(body) == n_requests
    assert body[0][3].startswith("random: 0 labels")  # the initial design says why it is random
    # a modelled pick shows the mean and std recorded for it, and the tier's acquisition
    pick = next(c for it in its for c in it["rationale"]["tiers"]["screen"].get("chosen", [])
                if c["predicted_mean"] is not None)
    row = next(r for r in body if r[2] == pick["formula"] and r[1] == "screen" and r[5] != "–")
    assert row[5] == f"{pick['predicted_mean']:.3g} ± {pick['predicted_std']:.2g}"
    assert "qlognei" in row[3].lower() or "logei" in row[3].lower()
    # promoted picks on the confirm tier name the rule
    assert any(r[1] == "confirm" and r[3].startswith("promoted after screen") for r in body)


def test_constraints_panel_and_status_count_the_same_removals(report, campaign_store, capsys):
    """The report's constraint table and `matloop status` report how many evaluated candidates the
    constraint removed, and both match a count made from the store."""
    from matloop.loop.cli import main

    store_path, _ = campaign_store
    st = Store(store_path)
    per: dict[str, list] = {}
    for o in st.observations(arm="agent"):
        if o.ok:
            per.setdefault(o.candidate_id, []).append(o)
    st.close()
    with_value = {cid: [o.value("fe_fraction") for o in obs if o.value("fe_fraction") is not None] for cid, obs in per.items()}
    removed = sum(1 for v in with_value.values() if v and max(v) > 0.6)
    no_value = sum(1 for v in with_value.values() if not v)
    assert removed > 0
    rows = _Sections(report.read_text()).sections["constraints"]["tables"]["constraints-table"]
    agent = next(r for r in rows[1:] if r[1] == "agent")
    assert agent == ["fe_fraction <= 0.6", "agent", str(len(per)), str(len(per) - removed - no_value), str(removed),
                     str(no_value)]
    assert main(["status", str(store_path)]) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if "fe_fraction <= 0.6" in ln and "agent" in ln)
    assert [c.strip() for c in line.strip("│┃ ").split("│")][2:] == agent[2:]


def test_skill_and_campaign_spec_shown_when_recorded(campaign_store, tmp_path):
    """A tier's recorded skill dict becomes a per-iteration table; the campaign file recorded in meta is
    shown verbatim; without either (and without the refit) the model panel is left out, not drawn empty."""
    import importlib.metadata
    import json

    store_path, _ = campaign_store
    copy = tmp_path / "store.sqlite"
    shutil.copy(store_path, copy)
    st = Store(copy)
    last = st.iterations("agent")[-2]
    rationale = last["rationale"]
    rationale["tiers"]["screen"]["skill"] = {"spearman_loo": 0.8123, "calibration": 0.91, "n_labels": 9,
                                             "explore_fraction": 0.25, "decision": "exploit"}
    st.db.execute("UPDATE iterations SET rationale=? WHERE idx=?", (json.dumps(rationale), last["idx"]))
    st.db.commit()
    st.set_meta("campaign_spec", {"yaml": "name: grid\nbudget: {evaluations: 20}\n", "resolved": {}})
    st.close()
    secs = _Sections(write_report(copy, tmp_path / "a", model_insights=False).read_text()).sections
    skill = secs["model"]["tables"]["skill-table"]
    assert skill[1] == [str(last["idx"]), "screen", "0.812", "0.91", "9", "0.25", "exploit"]
    assert not secs["model"]["imgs"]  # no refit asked for
    assert "name: grid\nbudget: {evaluations: 20}" in secs["campaign"]["text"]
    versions = dict(r for r in secs["campaign"]["tables"]["versions-table"][1:])
    assert versions["pymatgen"] == importlib.metadata.version("pymatgen")
    assert set(versions) == {"matloop", "torch", "botorch", "gpytorch", "pymatgen", "matminer", "chgnet", "ase", "gpaw"}

    plain = _Sections(write_report(store_path, tmp_path / "b", model_insights=False).read_text()).sections
    assert "model" not in plain  # nothing recorded, nothing refitted: no panel at all
    assert "oracles:" in plain["campaign"]["text"]  # the spec pieces the runner records


def test_refit_ranks_the_features_the_label_depends_on(campaign_store):
    """The refit GP's relevance names the element fractions; Co, whose weight in the target is
    the same as Ni's but varies less across the labels, is not the single most relevant."""
    from matloop.loop.report import _load
    from matloop.loop.report_panels import refit_relevance

    store_path, _ = campaign_store
    st = Store(store_path)
    data = _load(st)
    labels = {o.candidate_id: o.value("target") for o in data.arms["agent"] if o.oracle == "screen" and o.ok}
    ins = refit_relevance(st, data.candidates, data.iterations, labels, "screen")
    st.close()
    assert ins["kind"] == "gp" and ins["n_labels"] == len(labels)
    assert sorted(ins["names"]) == ["frac_Co", "frac_Fe", "frac_Mn", "frac_Ni"]
    assert ins["values"] == sorted(ins["values"], reverse=True) and min(ins["values"]) > 0


def test_polymorphs_told_apart_by_space_group(campaign_store, tmp_path):
    """Two CaO polymorphs get their prototype and space group in the top table (the relaxed structure's
    where an oracle relaxed one), and a structure view each that loads in the page."""
    from pymatgen.core import Lattice, Structure

    from matloop.core.records import Observation, Request, Status

    store_path, _ = campaign_store
    copy = tmp_path / "store.sqlite"
    shutil.copy(store_path, copy)
    rocksalt = Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.81), ["Ca", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    zincblende = Structure.from_spacegroup("F-43m", Lattice.cubic(5.2), ["Ca", "O"], [[0, 0, 0], [0.25, 0.25, 0.25]])
    relaxed = rocksalt.copy()
    relaxed.scale_lattice(rocksalt.volume * 1.05)
    a = Candidate.from_structure(rocksalt, source="prototypes", provenance={"prototype": "rocksalt"})
    b = Candidate.from_structure(zincblende, source="prototypes", provenance={"prototype": "zincblende"})
    assert a.id != b.id and a.formula == b.formula == "CaO"
    st = Store(copy)
    st.add_candidates([a, b])
    idx = st.next_iteration()
    reqs = [Request(Request.make_id(c.id, "confirm", idx), c, "confirm", idx) for c in (a, b)]
    st.start_iteration(idx, {"tiers": {}}, reqs)
    st.add_observation(Observation(reqs[0].id, a.id, "confirm", "v1", 1, Status.SUCCESS, {"target": -1.0},
                                   extra={"relaxed_structure": relaxed.as_dict()}, cost=5))
    st.add_observation(Observation(reqs[1].id, b.id, "confirm", "v1", 1, Status.SUCCESS, {"target": -0.9}, cost=5))
    st.finish_iteration(idx)
    st.close()
    index = write_report(copy, tmp_path / "rep", top_n=5, model_insights=False)
    secs = _Sections(index.read_text()).sections
    top = secs["top"]["tables"]["top-table"]
    col = {h: i for i, h in enumerate(top[0])}
    cao = [(r[col["prototype"]], r[col["space group"]]) for r in top[1:] if r[col["formula"]] == "CaO"]
    assert cao == [("rocksalt", "Fm-3m (225)"), ("zincblende", "F-43m (216)")]
    views = [img["alt"] for img in secs["structures"]["imgs"]]
    assert views == ["CaO (rocksalt), Fm-3m (#225)", "CaO (zincblende), F-43m (#216)"]
    if CHROMIUM:
        dom = _Dom(_chromium(index.as_uri(), "--dump-dom"))
        assert dom.body.get("data-images", "").startswith("ok:")


def test_axis_labels_name_property_unit_and_direction():
    from matloop.loop.report_panels import axis_label

    assert axis_label("formation_energy_ev_per_atom", "minimize") == \
        "formation_energy_ev_per_atom [eV/atom] (lower is better)"
    assert axis_label("gap_ev", "window", (1.0, 2.0)) == "gap_ev [eV] (target 1 to 2)"
    assert axis_label("voltage_v", "maximize") == "voltage_v [V] (higher is better)"
    assert axis_label("yield_percent", "max") == "yield_percent [%] (higher is better)"
    assert axis_label("tc_k", None) == "tc_k [K]"
    assert axis_label("target", "minimize") == "target (lower is better)"


def test_benchmark_report_bootstrap_band_and_af_summary(tmp_path):
    """`matloop report` on a benchmark folder: recall bands from the bootstrap stay in [0, 1] where a
    Student-t band leaves it, and summary.json never shows an AF mean beside a null median."""
    import itertools
    import json

    import numpy as np

    from matloop.loop.benchmark import run_benchmark
    from matloop.loop.cli import main
    from matloop.loop.report_panels import recall_band

    comps, y = [], []
    for a, b, c in itertools.product(range(11), repeat=3):
        d = 10 - a - b - c
        if d >= 0:
            fr = [a / 10, b / 10, c / 10, d / 10]
            comps.append("".join(f"{el}{f:g}" for el, f in zip(["Fe", "Ni", "Co", "Mn"], fr) if f > 0))
            y.append(sum((f - t) ** 2 for f, t in zip(fr, [0.5, 0.2, 0.2, 0.1])))
    X = np.random.default_rng(0).normal(size=(len(comps), 3)).astype(np.float32)
    out = tmp_path / "bench"
    # two random seeds of which (with these seeds) exactly one reaches half recall
    summary = run_benchmark(comps, np.array(y), "min", top_fraction=0.1, budget=150, batch_size=10, init=10, seeds=2,
                            strategies=["random"], out_dir=out, X=X, log=lambda m: None)
    per_seed = json.loads((out / "details.json").read_text())["per_seed"]["random"]
    assert sorted(r["AF_vs_random"] is None for r in per_seed) == [False, True]
    af = json.loads((out / "summary.json").read_text())["strategies"]["random"]["AF_vs_random"]
    assert af["median"] is None and af["mean"] is None
    assert summary["strategies"]["random"]["evals_to_half"]["n_reached"] == 1

    R = np.array([[0.0, 0.1, 1.0], [0.0, 0.9, 0.0]])
    lo, hi = recall_band(R)
    assert np.all(lo >= 0) and np.all(hi <= 1) and np.all(lo <= R.mean(0)) and np.all(R.mean(0) <= hi)
    assert hi[1] > lo[1] and lo[0] == hi[0] == 0.0

    rep = tmp_path / "rep"
    assert main(["report", str(out), "--out", str(rep)]) == 0
    secs = _Sections((rep / "index.html").read_text()).sections
    assert [img["src"] for img in secs["benchmark-recall"]["imgs"]] == ["benchmark_recall.png"]
    assert "bootstrap" in secs["benchmark-recall"]["text"]
    row = secs["benchmark-summary"]["tables"]["benchmark-table"][1]
    assert row[0] == "random" and row[3] == "1 of 2" and row[4] == row[5] == "–"
