"""The campaign store: one SQLite file (WAL mode) holding the whole state as records.

Tables: ``meta``, ``candidates``, ``features``, ``iterations``, ``requests``,
``observations``. Requests are written (in the same transaction as their iteration's
rationale) *before* they are submitted, and each observation is committed the moment it
arrives, keyed uniquely by its request: after a ``kill -9`` at any moment, a resumed
campaign resubmits exactly the requests that have no observation, so no evaluation is lost
and none is repeated. Nothing is ever deleted.

One ``matloop run`` at a time: a run holds an OS lock (``fcntl.flock``) on ``<store>.lock``,
which also names its pid and host; a second run is refused (``StoreBusy``). The kernel drops
the lock when the holder dies, so a lock file left by a killed run is stale and simply taken
over. Reading commands take no lock. A file that is not a matloop store, or is damaged, is
refused on opening (``StoreDamaged``) with what can still be read; ``salvage`` copies that out.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sqlite3
import time
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from matloop.core.checks import observation_problems
from matloop.core.records import Candidate, InputError, Observation, Request, Status

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


TABLES = ("meta", "candidates", "features", "iterations", "requests", "observations")
SQLITE_HEADER = b"SQLite format 3\x00"


class StoreDamaged(InputError):
    """The file is not a matloop store, or it is damaged; the message says what can be salvaged (exit 2)."""


class StoreBusy(InputError):
    """Another ``matloop run`` holds the store; the message names its pid and host (exit 2)."""


class Store:
    """Campaign state in SQLite. Safe to open from several processes (WAL, busy timeout).

    Args:
        path: the SQLite file.
        create: make the file and its tables when absent (a run); False for commands that only
            read an existing store (``status``, ``export``): a file without matloop's tables is refused.

    Raises:
        StoreDamaged: the file is not an SQLite database, lacks matloop's tables, or fails
            SQLite's ``quick_check``.
    """

    def __init__(self, path: str | Path, *, create: bool = True):
        self.path = Path(path)
        self._lock_fd: int | None = None
        if self.path.is_dir():
            raise InputError("is a folder, not a store file", file=str(self.path))
        existed = self.path.exists() and self.path.stat().st_size > 0
        if existed:
            with open(self.path, "rb") as f:
                head = f.read(len(SQLITE_HEADER))
            if head != SQLITE_HEADER:
                raise StoreDamaged(f"not a matloop store, or damaged: not an SQLite database (it starts with {head[:12]!r});"
                                   " nothing to salvage from it -- is this the right path?", file=str(self.path))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(self.path), timeout=60, isolation_level=None)
        try:
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            if existed:
                self._check(create)
            self.db.executescript(SCHEMA)
            if self.get_meta("schema_version") is None:
                self.set_meta("schema_version", SCHEMA_VERSION)
        except sqlite3.DatabaseError as exc:
            self.db.close()
            raise StoreDamaged(f"not a matloop store, or damaged ({exc}). {salvage_summary(self.path)}",
                               file=str(self.path)) from None
        except StoreDamaged:
            self.db.close()
            raise

    def _check(self, create: bool) -> None:
        """Refuse a damaged file, or (``create=False``) an SQLite file that is not a matloop store."""
        names = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        missing = [t for t in TABLES if t not in names]
        if missing and (names or not create):
            raise StoreDamaged(f"not a matloop store, or damaged: an SQLite file without the tables {missing}"
                               + (f" (it has {sorted(names)})" if names else ""), file=str(self.path))
        problems = [r[0] for r in self.db.execute("PRAGMA quick_check")]
        if problems != ["ok"]:
            raise sqlite3.DatabaseError("; ".join(problems[:3]))

    def close(self) -> None:
        """Close the database connection (and release the run lock if this store holds it)."""
        self.release_run_lock()
        self.db.close()

    # -- the run lock -------------------------------------------------------------------------
    @property
    def lock_path(self) -> Path:
        """The sidecar file a running campaign locks: ``<store>.lock``."""
        return self.path.with_name(self.path.name + ".lock")

    def acquire_run_lock(self) -> dict | None:
        """Take the store for one ``matloop run`` (an exclusive ``flock`` on :attr:`lock_path`).

        Returns the holder recorded by an earlier run that is gone (a stale lock, taken
        over), else None. Raises ``StoreBusy`` naming the live holder's pid and host.
        """
        if self._lock_fd is not None or str(self.path) == ":memory:":  # held already, or nothing to share
            return None
        fd = self._lock_or_busy()
        stale = _read_holder(fd) or None
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started_at": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
        self._lock_fd = fd
        return stale

    def _lock_or_busy(self) -> int:
        """The lock file's descriptor with the exclusive lock taken; ``StoreBusy`` if a live run holds it."""
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_holder(fd)
            os.close(fd)
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started_at", 0)))
            raise StoreBusy(f"in use by another `matloop run` (pid {holder.get('pid', '?')} on host "
                            f"{holder.get('host', '?')}, since {since}); wait for it to finish or stop it. "
                            "`matloop status` and `matloop export` work meanwhile", file=str(self.path)) from None
        return fd

    def check_run_lock_free(self) -> None:
        """Raise ``StoreBusy`` (naming the holder) if another run holds the store; takes and leaves nothing."""
        if self._lock_fd is not None or str(self.path) == ":memory:":
            return
        fd = self._lock_or_busy()
        fcntl.flock(fd, fcntl.LOCK_UN)  # the holder record of a dead run stays for the takeover message
        os.close(fd)

    def release_run_lock(self) -> None:
        """Release the run lock if this store holds it (the lock file stays; it is harmless)."""
        if self._lock_fd is not None:
            os.ftruncate(self._lock_fd, 0)
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

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
        """Commit one observation; False if its request already has one (never overwritten).

        This is the one gate every observation passes (oracles through any executor, folder
        and HTTP labs, ``tell``, the Python API): :func:`check_numbers` runs first, so a
        success with impossible numbers is stored -- and left in ``obs`` -- as a failure.
        """
        check_numbers(obs)
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


def check_numbers(obs: Observation) -> list[str]:
    """Apply :func:`matloop.core.checks.observation_problems` to ``obs``, in place; returns the problems.

    A successful observation with problems becomes a failed one whose reason lists them (its
    values move to ``extra["rejected"]``, so nothing is lost); an impossible cost (negative,
    NaN) is charged as 0. Modifying ``obs`` itself keeps the caller's copy equal to the stored one.
    """
    problems = observation_problems(obs.properties if obs.ok else {}, obs.uncertainties if obs.ok else {}, obs.cost)
    if not problems:
        return problems
    cost_bad = any(p.startswith("cost=") for p in problems)
    if obs.ok:
        obs.extra = {**obs.extra, "rejected": {"properties": obs.properties, "uncertainties": obs.uncertainties,
                                               "cost": obs.cost if not cost_bad else repr(obs.cost)}}
        obs.status = Status.FAILED
        obs.properties, obs.uncertainties = {}, {}
        obs.reason = "rejected numbers: " + "; ".join(problems)
    else:
        obs.reason = f"{obs.reason or 'failed'}; rejected numbers: " + "; ".join(problems)
    if cost_bad:
        obs.cost = 0.0
    return problems


def _read_holder(fd: int) -> dict:
    try:
        data = json.loads(os.pread(fd, 4096, 0).decode("utf-8", "replace") or "{}")
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _readable_rows(db: sqlite3.Connection, table: str) -> tuple[list[dict], str | None]:
    """The rows of ``table`` SQLite can still read, in storage order, and the error that stopped it (or None)."""
    rows: list[dict] = []
    try:
        cur = db.execute(f"SELECT * FROM {table}")  # noqa: S608 - table names come from TABLES
        cols = [d[0] for d in cur.description]
        for row in cur:
            rows.append({c: (v.hex() if isinstance(v, bytes) else v) for c, v in zip(cols, row)})
    except sqlite3.DatabaseError as exc:
        return rows, str(exc)
    return rows, None


def _salvage(path: Path) -> dict[str, tuple[list[dict], str | None]]:
    """Read what can be read, from a copy whose header claims no more pages than the file has.

    A truncated file still announces its old size in its header (bytes 28-31), and SQLite
    then calls every table malformed; with the count set to the pages really there, the
    tables whose pages survived read normally. The store itself is never written.
    """
    import tempfile

    data = bytearray(path.read_bytes())
    page_size = int.from_bytes(data[16:18], "big") if len(data) >= 100 else 0
    page_size = 65536 if page_size == 1 else page_size
    if page_size:
        data[28:32] = (len(data) // page_size).to_bytes(4, "big")
    with tempfile.TemporaryDirectory(prefix="matloop-salvage-") as tmp:
        copy = Path(tmp) / "store.sqlite"
        copy.write_bytes(bytes(data))
        db = sqlite3.connect(str(copy))
        try:
            return {t: _readable_rows(db, t) for t in TABLES}
        finally:
            db.close()


def salvage_summary(path: str | Path) -> str:
    """One sentence per table: how many rows can still be read from a damaged store, and how to copy them out."""
    try:
        tables = _salvage(Path(path))
    except sqlite3.DatabaseError as exc:
        return f"No table can be read ({exc}): nothing to salvage."
    parts = []
    for t, (rows, err) in tables.items():
        parts.append(f"{t}: {len(rows)} rows" + (f" readable, then {err}" if err else ""))
    if not any(rows for rows, _ in tables.values()):
        return "No row can be read: nothing to salvage."
    return ("Readable: " + "; ".join(parts) + f". Copy them out with `python -m matloop.loop.store salvage {path} "
            "salvaged.json` (the store itself is left as it is).")


def salvage(path: str | Path, out: str | Path) -> dict[str, int]:
    """Write every row that can still be read from a (damaged) store to ``out`` as JSON ``{table: [row, ...]}``.

    Feature vectors are written as hex. Returns the number of rows per table.
    """
    tables = _salvage(Path(path))
    data = {t: rows for t, (rows, _) in tables.items()}
    Path(out).write_text(json.dumps(data, indent=1, default=str) + "\n", encoding="utf-8")
    return {t: len(rows) for t, rows in data.items()}


def json_default(o):
    """How the store writes what JSON cannot: NumPy scalars and arrays as numbers and lists, else text."""
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


if __name__ == "__main__":  # python -m matloop.loop.store salvage STORE OUT.json
    import sys

    if len(sys.argv) != 4 or sys.argv[1] != "salvage":
        print("usage: python -m matloop.loop.store salvage STORE OUT.json", file=sys.stderr)
        sys.exit(2)
    try:
        counts = salvage(sys.argv[2], sys.argv[3])
    except (OSError, sqlite3.DatabaseError) as exc:
        print(f"error: {sys.argv[2]}: nothing could be read: {exc}", file=sys.stderr)
        sys.exit(2)
    print(f"wrote {sum(counts.values())} rows to {sys.argv[3]}: " + ", ".join(f"{t} {n}" for t, n in counts.items()))


def stored_campaign_spec(path: str | Path) -> dict | None:
    """The ``campaign_spec`` meta a store to be resumed was started with (None if it has none).

    The run lock is tried (and released) first, so that a store in use is refused as busy,
    naming its holder, before any difference of campaigns is reported.

    Raises:
        StoreBusy: another ``matloop run`` holds the store.
        StoreDamaged: the file is not a matloop store, or is damaged (exit 2 at the CLI).
    """
    store = Store(path)
    try:
        store.check_run_lock_free()
        return store.get_meta("campaign_spec")
    finally:
        store.close()
