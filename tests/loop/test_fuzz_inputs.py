"""Property-based fuzzing of the two inputs a user writes: the campaign file and the pool CSV.

Hypothesis mutates a valid one-iteration lookup campaign (a value replaced, a key dropped or
added, the YAML text cut or garbled) and its pool CSV (a cell, a header, a row, stray bytes),
then runs ``matloop validate`` and, when that passes, ``matloop run`` through the CLI. Whatever
the mutation: no traceback, exit status 0 or 2, and the store (if one was written) still opens.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from matloop.loop.store import Store

from .inputs import POOL, campaign, cli, write

ODD_VALUES = st.one_of(
    st.sampled_from([None, "", " ", -1, 0, 1, 2**63, -1e308, 1e308, math.inf, -math.inf, math.nan, True, [], {},
                     [1, 2], {"x": 1}, "Xx2O3", "pool.csv", "none.csv", "target", "composition", "../", "~"]),
    st.integers(-10, 10),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
)
#: values a user might well write: half the mutations use these, so that many campaigns pass validate and run
PLAUSIBLE = st.sampled_from([1, 2, 3, 0.5, 0.01, 10, 100, "minimize", "maximize", "window", "inline", "local", "auto",
                             "gp", "rf", "ucb", "thompson", "target", "table", "file", "lookup", "batch", "async"])
ELEMENTISH = st.sampled_from(["Xx2O3", "Fe", "O", "", " ", "NaN", "nan", "inf", "-1", "1e400", "Fe2O3Fe", "(((",
                              "Li+", "Uuo", "H0", "Fe-1O", "ééé", "\"", "a,b", "Fe2O3;NiO"])


def _leaves(value, path=()):
    if isinstance(value, dict):
        yield path
        for k, v in value.items():
            yield from _leaves(v, (*path, k))
    elif isinstance(value, list):
        yield path
        for i, v in enumerate(value):
            yield from _leaves(v, (*path, i))
    else:
        yield path


def _set(doc, path, value, delete=False):
    cur = doc
    for k in path[:-1]:
        cur = cur[k]
    if delete:
        del cur[path[-1]]
    else:
        cur[path[-1]] = value


@st.composite
def mutated_campaign(draw, tmp: Path) -> str:
    """The YAML text of the valid campaign after 1-2 mutations."""
    doc = campaign(tmp)
    for _ in range(draw(st.integers(1, 2))):
        paths = [p for p in _leaves(doc) if p]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        how = draw(st.sampled_from(["value", "value", "delete", "add"]))
        try:
            if how == "delete":
                _set(doc, path, None, delete=True)
            elif how == "add":
                parent = doc
                for k in path[:-1]:
                    parent = parent[k]
                if isinstance(parent, dict):
                    parent[draw(st.sampled_from(["extra", "min", "max", "window", "oracle", "limit", "seed"]))] = \
                        draw(ODD_VALUES)
            else:
                _set(doc, path, draw(st.one_of(PLAUSIBLE, ODD_VALUES)))
        except (KeyError, IndexError, TypeError):
            pass
    import yaml

    text = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
    garble = draw(st.sampled_from(["none", "none", "none", "cut", "insert", "dup"]))
    if garble == "cut":
        text = text[: draw(st.integers(0, len(text)))]
    elif garble == "insert":
        i = draw(st.integers(0, len(text)))
        text = text[:i] + draw(st.sampled_from([":", "- ", "\t", "[", "{", "&a ", "*a", "!!python/none ", "\n  x: 1\n"])) \
            + text[i:]
    elif garble == "dup":
        text += text.splitlines()[draw(st.integers(0, len(text.splitlines()) - 1))] + "\n"
    return text


@st.composite
def mutated_pool(draw) -> bytes:
    """The pool CSV after 1-2 mutations of a cell, the header, a row, or its bytes."""
    rows = [line.split(",") for line in POOL.strip().splitlines()]
    for _ in range(draw(st.integers(1, 2))):
        how = draw(st.sampled_from(["cell", "cell", "header", "drop_row", "dup_row", "blank", "short_row"]))
        i = draw(st.integers(1, len(rows) - 1)) if len(rows) > 1 else 0
        if how == "cell":
            rows[i][draw(st.integers(0, len(rows[i]) - 1))] = draw(st.one_of(ELEMENTISH, st.text(max_size=8)))
        elif how == "header":
            rows[0][draw(st.integers(0, len(rows[0]) - 1))] = draw(st.sampled_from(["", "formula", "target", "x"]))
        elif how == "drop_row" and len(rows) > 1:
            rows.pop(i)
        elif how == "dup_row":
            rows.append(list(rows[i]))
        elif how == "blank":
            rows.insert(i, [""])
        elif how == "short_row":
            rows[i] = rows[i][:1]
    data = ("\n".join(",".join(r) for r in rows) + "\n").encode("utf-8", "surrogatepass")
    if draw(st.booleans()) and draw(st.booleans()):
        j = draw(st.integers(0, len(data)))
        data = data[:j] + draw(st.binary(min_size=1, max_size=6)) + data[j:]
    return data


def _check(rc: int, out: str, err: str, what: str) -> None:
    assert "Traceback" not in err, f"{what}: traceback\n{err}"
    assert rc in (0, 2), f"{what}: status {rc}\n{out}\n{err}"
    if rc == 2:
        assert err.startswith("error:") or "usage:" in err, f"{what}: status 2 without an error message\n{err}"


def _store_opens(store: Path) -> None:
    if store.is_file():
        s = Store(store)
        try:
            s.n_candidates()
        finally:
            s.close()


@settings(max_examples=int(os.environ.get("MATLOOP_FUZZ_EXAMPLES", 35)), deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data(), which=st.sampled_from(["campaign", "pool", "both"]))
def test_mutated_inputs_never_give_a_traceback(data, which):
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        text = data.draw(mutated_campaign(tmp)) if which != "pool" else None
        path = write(tmp, text if text is not None else campaign(tmp))
        if which != "campaign":
            (tmp / "pool.csv").write_bytes(data.draw(mutated_pool()))
        rc, out, err = cli("validate", path)
        _check(rc, out, err, "validate")
        event(f"{which}: validate exit {rc}")
        if rc == 0:
            rc, out, err = cli("run", path, "--quiet", "--set", "budget={iterations: 1}")
            _check(rc, out, err, "run")
            event(f"{which}: run exit {rc}")
        for store in (tmp / "store.sqlite", *tmp.glob("*.sqlite")):
            _store_opens(store)
