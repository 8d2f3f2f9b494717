"""The campaign store: one SQLite file (WAL mode) holding the whole state as records.

Tables: ``meta``, ``candidates``, ``features``, ``iterations``, ``requests``,
``observations``. Requests are written (in the same transaction as their iteration's
rationale) *before* they are submitted, and each observation is committed the moment it
arrives, keyed uniquely by its request: after a ``kill -9`` at any moment, a resumed
campaign resubmits exactly the requests that have no observation, so no evaluation is lost
and none is repeated. Nothing is ever deleted.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from matloop.core.records import Candidate, Observation, Request, Status

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS candidates (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    formula TEXT NOT NULL,
    composition TEXT NOT NULL,
    structure TEXT,
    source TEXT NOT NULL,
    provenance TEXT NOT NULL,
    added_iteration INTEGER NOT NULL DEFAULT -1
);
CREATE TABLE IF NOT EXISTS features (
    candidate_id TEXT NOT NULL,
    key TEXT NOT NULL,
    vector BLOB NOT NULL,
    error TEXT,
    PRIMARY KEY (candidate_id, key)
);
CREATE TABLE IF NOT EXISTS iterations (
    idx INTEGER PRIMARY KEY,
    arm TEXT NOT NULL DEFAULT 'agent',
    started_at REAL NOT NULL,
    finished_at REAL,
    status TEXT NOT NULL,
    rationale TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS requests (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    iteration INTEGER NOT NULL,
    arm TEXT NOT NULL DEFAULT 'agent',
    candidate_id TEXT NOT NULL,
    oracle TEXT NOT NULL,
    acquisition REAL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS observations (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT UNIQUE NOT NULL,
    candidate_id TEXT NOT NULL,
    oracle TEXT NOT NULL,
    oracle_version TEXT NOT NULL,
    fidelity INTEGER NOT NULL,
    status TEXT NOT NULL,
    properties TEXT NOT NULL,
    uncertainties TEXT NOT NULL,
    extra TEXT NOT NULL,
    cost REAL NOT NULL,
    wall_time_s REAL NOT NULL,
    reason TEXT,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS obs_candidate ON observations(candidate_id, oracle);
CREATE INDEX IF NOT EXISTS req_iteration ON requests(iteration);
"""


class Store:
    """Campaign state in SQLite. Safe to open from several processes (WAL, busy timeout)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(self.path), timeout=60, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        if self.get_meta("schema_version") is None:
            self.set_meta("schema_version", SCHEMA_VERSION)

    def close(self) -> None:
        """Close the database connection."""
        self.db.close()

    @contextmanager
    def transaction(self):
        """Context manager for one ``BEGIN IMMEDIATE`` transaction; yields the connection.

        Commits on exit and rolls back on any exception. Not re-entrant: do not nest it.
        """
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        else:
            self.db.execute("COMMIT")

    # -- meta -------------------------------------------------------------------------------
    def get_meta(self, key: str, default=None):
        """The JSON-decoded meta value under ``key``, or ``default`` if it is absent."""
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def set_meta(self, key: str, value) -> None:
        """Store ``value`` (JSON-encoded) under ``key``, replacing any earlier value."""
        self.db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, json.dumps(value)))

    # -- candidates -------------------------------------------------------------------------
    def add_candidates(self, candidates: Iterable[Candidate], iteration: int = -1) -> int:
        """Insert new candidates (existing ids are kept as they are). Returns how many were new."""
        rows = [
            (
                c.id,
                c.formula,
                c.composition,
                json.dumps(c.structure) if c.structure is not None else None,
                c.source,
                json.dumps(c.provenance, default=str),
                iteration,
            )
            for c in candidates
        ]
        with self.transaction() as db:
            before = db.execute("SELECT COUNT(*) FROM candidates").fetchone()[0]
            db.executemany(
                "INSERT OR IGNORE INTO candidates(id, formula, composition, structure, source, provenance, added_iteration)"
                " VALUES (?,?,?,?,?,?,?)",
                rows,
            )
            after = db.execute("SELECT COUNT(*) FROM candidates").fetchone()[0]
        return after - before

    def candidates(self) -> list[Candidate]:
        """All candidates in insertion order."""
        out = []
        for cid, formula, comp, struct, source, prov in self.db.execute(
            "SELECT id, formula, composition, structure, source, provenance FROM candidates ORDER BY seq"
        ):
            out.append(
                Candidate(
                    id=cid,
                    formula=formula,
                    composition=comp,
                    structure=json.loads(struct) if struct else None,
                    source=source,
                    provenance=json.loads(prov),
                )
            )
        return out

    def candidate(self, cid: str) -> Candidate | None:
        """The candidate with id ``cid``, or None if it is not stored."""
        row = self.db.execute(
            "SELECT id, formula, composition, structure, source, provenance FROM candidates WHERE id=?", (cid,)
        ).fetchone()
        if not row:
            return None
        return Candidate(row[0], row[1], row[2], json.loads(row[3]) if row[3] else None, row[4], json.loads(row[5]))

    def n_candidates(self) -> int:
        """Number of stored candidates."""
        return self.db.execute("SELECT COUNT(*) FROM candidates").fetchone()[0]

    # -- features ---------------------------------------------------------------------------
    def put_features(self, key: str, ids: list[str], X: np.ndarray, errors: list[str | None]) -> None:
        """Cache feature rows under featurizer ``key`` (as float64), replacing rows already stored.

        Args:
            key: featurizer key (``FeatureSettings.key``).
            ids: candidate ids, one per row of ``X``.
            X: feature matrix, ``len(ids) x d``.
            errors: per candidate, the featurization error or None, aligned with ``ids``.
        """
        X = np.asarray(X, dtype=np.float64)
        with self.transaction() as db:
            db.executemany(
                "INSERT OR REPLACE INTO features(candidate_id, key, vector, error) VALUES (?,?,?,?)",
                [(i, key, X[r].tobytes(), e) for r, (i, e) in enumerate(zip(ids, errors))],
            )

    def get_features(self, key: str, ids: list[str]) -> tuple[np.ndarray | None, list[str]]:
        """Cached feature rows for ``ids`` (NaN rows where missing) and the ids that are missing."""
        found = {}
        for cid, blob in self.db.execute("SELECT candidate_id, vector FROM features WHERE key=?", (key,)):
            found[cid] = np.frombuffer(blob, dtype=np.float64)
        missing = [i for i in ids if i not in found]
        if not found:
            return None, missing
        d = len(next(iter(found.values())))
        X = np.full((len(ids), d), np.nan)
        for r, i in enumerate(ids):
            v = found.get(i)
            if v is not None and len(v) == d:
                X[r] = v
        return X, missing

    def feature_errors(self, key: str) -> dict[str, str]:
        """Recorded featurization errors under ``key``: candidate id -> reason."""
        return dict(self.db.execute("SELECT candidate_id, error FROM features WHERE key=? AND error IS NOT NULL", (key,)))

    # -- iterations and requests ------------------------------------------------------------
    def next_iteration(self) -> int:
        """Index for a new iteration: one past the highest recorded in any arm, 0 in a fresh store."""
        row = self.db.execute("SELECT MAX(idx) FROM iterations").fetchone()
        return 0 if row[0] is None else row[0] + 1

    def start_iteration(self, idx: int, rationale: dict, requests: list[Request], acq: dict[str, float] | None = None,
                        arm: str = "agent") -> None:
        """Record the plan and its requests atomically, before anything is submitted."""
        now = time.time()
        acq = acq or {}
        with self.transaction() as db:
            db.execute(
                "INSERT INTO iterations(idx, arm, started_at, status, rationale) VALUES (?,?,?,?,?)",
                (idx, arm, now, "running", json.dumps(rationale, default=json_default)),
            )
            db.executemany(
                "INSERT OR IGNORE INTO requests(id, iteration, arm, candidate_id, oracle, acquisition, created_at)"
                " VALUES (?,?,?,?,?,?,?)",
                [(r.id, idx, arm, r.candidate.id, r.oracle, acq.get(r.id), now) for r in requests],
            )

    def finish_iteration(self, idx: int, status: str = "done") -> None:
        """Mark iteration ``idx`` finished now, with ``status``."""
        self.db.execute("UPDATE iterations SET finished_at=?, status=? WHERE idx=?", (time.time(), status, idx))

    def open_requests(self) -> list[tuple[str, int, str, str, str]]:
        """Requests without an observation: (request id, iteration, arm, candidate id, oracle)."""
        return list(
            self.db.execute(
                "SELECT r.id, r.iteration, r.arm, r.candidate_id, r.oracle FROM requests r"
                " LEFT JOIN observations o ON o.request_id = r.id WHERE o.request_id IS NULL ORDER BY r.seq"
            )
        )

    def running_iterations(self) -> list[int]:
        """Indices of iterations (any arm) still marked ``running``, ascending."""
        return [r[0] for r in self.db.execute("SELECT idx FROM iterations WHERE status='running' ORDER BY idx")]

    def iterations(self, arm: str | None = "agent") -> list[dict]:
        """Iterations of ``arm`` (every arm if None) in index order.

        Returns:
            Dicts with ``idx``, ``arm``, ``started_at`` and ``finished_at`` (Unix time, s; ``finished_at``
            None while running), ``status`` and the decoded ``rationale``.
        """
        q = "SELECT idx, arm, started_at, finished_at, status, rationale FROM iterations"
        args: tuple = ()
        if arm:
            q += " WHERE arm=?"
            args = (arm,)
        return [
            {"idx": r[0], "arm": r[1], "started_at": r[2], "finished_at": r[3], "status": r[4], "rationale": json.loads(r[5])}
            for r in self.db.execute(q + " ORDER BY idx", args)
        ]

    def requests_in_order(self) -> list[tuple[str, int, str]]:
        """(request id, iteration, oracle) of every request, in the order the requests were made."""
        return list(self.db.execute("SELECT id, iteration, oracle FROM requests ORDER BY rowid"))

    def requested_pairs(self) -> set[tuple[str, str]]:
        """(candidate id, oracle) for every request ever made."""
        return set(self.db.execute("SELECT candidate_id, oracle FROM requests"))

    # -- observations -----------------------------------------------------------------------
    def add_observation(self, obs: Observation) -> bool:
        """Commit one observation; False if its request already has one (never overwritten)."""
        cur = self.db.execute(
            "INSERT OR IGNORE INTO observations(request_id, candidate_id, oracle, oracle_version, fidelity, status,"
            " properties, uncertainties, extra, cost, wall_time_s, reason, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                obs.request_id,
                obs.candidate_id,
                obs.oracle,
                obs.oracle_version,
                obs.fidelity,
                obs.status.value,
                json.dumps(obs.properties),
                json.dumps(obs.uncertainties),
                json.dumps(obs.extra, default=json_default),
                obs.cost,
                obs.wall_time_s,
                obs.reason,
                time.time(),
            ),
        )
        return cur.rowcount == 1

    def observations(self, oracle: str | None = None, arm: str | None = None) -> list[Observation]:
        """Observations in arrival order, optionally only of ``oracle`` and/or ``arm`` (any without a stored request are left out)."""
        q = (
            "SELECT o.request_id, o.candidate_id, o.oracle, o.oracle_version, o.fidelity, o.status, o.properties,"
            " o.uncertainties, o.extra, o.cost, o.wall_time_s, o.reason FROM observations o"
            " JOIN requests r ON r.id = o.request_id"
        )
        cond, args = [], []
        if oracle:
            cond.append("o.oracle=?")
            args.append(oracle)
        if arm:
            cond.append("r.arm=?")
            args.append(arm)
        if cond:
            q += " WHERE " + " AND ".join(cond)
        out = []
        for row in self.db.execute(q + " ORDER BY o.seq", args):
            out.append(
                Observation(
                    request_id=row[0],
                    candidate_id=row[1],
                    oracle=row[2],
                    oracle_version=row[3],
                    fidelity=row[4],
                    status=Status(row[5]),
                    properties=json.loads(row[6]),
                    uncertainties=json.loads(row[7]),
                    extra=json.loads(row[8]),
                    cost=row[9],
                    wall_time_s=row[10],
                    reason=row[11],
                )
            )
        return out

    def cached_observation(self, candidate_id: str, oracle_version: str) -> Observation | None:
        """A successful observation with the same candidate and oracle version (re-asking never recomputes)."""
        row = self.db.execute(
            "SELECT request_id FROM observations WHERE candidate_id=? AND oracle_version=? AND status='success'"
            " ORDER BY seq LIMIT 1",
            (candidate_id, oracle_version),
        ).fetchone()
        if not row:
            return None
        return next((o for o in self.observations() if o.request_id == row[0]), None)

    def spend(self, arm: str | None = "agent") -> dict[str, dict]:
        """Per oracle: evaluations, failures and total cost."""
        q = (
            "SELECT o.oracle, COUNT(*), SUM(o.status='failed'), SUM(o.cost), SUM(o.wall_time_s) FROM observations o"
            " JOIN requests r ON r.id = o.request_id"
        )
        args: tuple = ()
        if arm:
            q += " WHERE r.arm=?"
            args = (arm,)
        return {
            r[0]: {"evaluations": r[1], "failed": int(r[2] or 0), "cost": float(r[3] or 0), "wall_time_s": float(r[4] or 0)}
            for r in self.db.execute(q + " GROUP BY o.oracle", args)
        }

    def export_rows(self) -> list[dict]:
        """One flat record per observation, joined with its candidate and request."""
        rows = []
        q = (
            "SELECT o.seq, o.request_id, r.iteration, r.arm, o.candidate_id, c.formula, c.composition, c.source, o.oracle,"
            " o.oracle_version, o.fidelity, o.status, o.properties, o.uncertainties, o.cost, o.wall_time_s, o.reason"
            " FROM observations o JOIN requests r ON r.id=o.request_id JOIN candidates c ON c.id=o.candidate_id"
            " ORDER BY o.seq"
        )
        for row in self.db.execute(q):
            rows.append(
                {
                    "seq": row[0],
                    "request_id": row[1],
                    "iteration": row[2],
                    "arm": row[3],
                    "candidate_id": row[4],
                    "formula": row[5],
                    "composition": row[6],
                    "source": row[7],
                    "oracle": row[8],
                    "oracle_version": row[9],
                    "fidelity": row[10],
                    "status": row[11],
                    "properties": json.loads(row[12]),
                    "uncertainties": json.loads(row[13]),
                    "cost": row[14],
                    "wall_time_s": row[15],
                    "reason": row[16],
                }
            )
        return rows


def json_default(o):
    """How the store writes what JSON cannot: NumPy scalars and arrays as numbers and lists, else text."""
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)
