"""A reference lab service: the HTTP API that ``HttpOracle`` speaks, answered from a table.

It is the test double for the ``http`` oracle and a demo of what a lab has to implement:

* ``POST /requests`` with ``{idempotency_key, candidate_id, formula, composition,
  structure_cif, measurement}`` starts an experiment (201) or, for a key it already knows,
  answers that experiment's record (200) without starting another; the same key with another
  candidate or measurement is refused (409).
* ``GET /requests/{key}`` answers ``{idempotency_key, candidate_id, measurement, status:
  pending|done|failed, submitted_at, finished_at, result: {prop: value}, uncertainties,
  reason}`` (404 for an unknown key).
* Every call needs ``Authorization: Bearer <token>``; otherwise 401.

Latency and failure of each experiment are drawn, when it starts, from a seeded
``numpy.random.Generator``, so a run with one submission order is reproducible. Values come
from a CSV table keyed by composition (the ``lookup`` oracle's rules).

Run it for demos with::

    python -m matloop.oracles.labsim --table T.csv --key-column composition \\
        --column gap_ev=band_gap --token-file token.txt --port 8765
"""

from __future__ import annotations

import argparse
import hmac
import json
import math
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

import numpy as np

from .lookup import LookupOracle
from matloop.core.records import Candidate, OracleError

MAX_BODY_BYTES = 4_000_000
FAILURE_REASONS = (
    "sample cracked during annealing",
    "precursor out of stock",
    "instrument calibration drift; measurement discarded",
    "synthesis gave a multi-phase product",
)


@dataclass
class _Experiment:
    key: str
    candidate_id: str
    measurement: str
    composition: str
    submitted_at: float
    ready_at: float
    result: dict[str, float] | None
    uncertainties: dict[str, float]
    reason: str | None

    def record(self, now: float) -> dict:
        d = {
            "idempotency_key": self.key,
            "candidate_id": self.candidate_id,
            "measurement": self.measurement,
            "submitted_at": self.submitted_at,
        }
        if now < self.ready_at:
            d["status"] = "pending"
        elif self.reason is not None:
            d.update(status="failed", reason=self.reason, finished_at=self.ready_at)
        else:
            d.update(status="done", result=self.result, uncertainties=self.uncertainties, finished_at=self.ready_at)
        return d


class LabService:
    """A simulated lab on 127.0.0.1 behind the matloop lab HTTP API.

    Args:
        table_csv: CSV with the values the lab "measures".
        key_column: column of compositions.
        columns: reported property -> column of the table.
        token: the bearer token every call must carry.
        latency_s: ``(lo, hi)`` for uniform latencies, or a number for exponential ones with
            that mean, in seconds.
        failure_rate: probability that an experiment fails (with a reason).
        seed: seed of the ``numpy.random.Generator`` for latencies and failures.
        uncertainty_columns: property -> 1-sigma column.
        measurement: if given, the only measurement this lab accepts (else any).
        host: address to bind; loopback unless a demo needs otherwise.
        port: 0 for an ephemeral port.
    """

    def __init__(
        self,
        table_csv: str | Path,
        key_column: str,
        columns: dict[str, str],
        token: str,
        latency_s: tuple[float, float] | float = (0.0, 0.0),
        failure_rate: float = 0.0,
        seed: int = 0,
        *,
        uncertainty_columns: dict[str, str] | None = None,
        measurement: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ):
        if not token:
            raise ValueError("token must be non-empty")
        if not 0.0 <= failure_rate <= 1.0:
            raise ValueError(f"failure_rate must be in [0, 1], got {failure_rate}")
        if isinstance(latency_s, (int, float)):
            if latency_s < 0:
                raise ValueError(f"mean latency must be >= 0, got {latency_s}")
        else:
            lo, hi = latency_s
            if not 0 <= lo <= hi:
                raise ValueError(f"latency range must satisfy 0 <= lo <= hi, got {latency_s}")
        self._lookup = LookupOracle(
            settings={
                "table": str(Path(table_csv).resolve()),
                "key_column": key_column,
                "columns": dict(columns),
                "uncertainty_columns": dict(uncertainty_columns or {}),
            }
        )
        self._lookup.load()  # a bad table or column fails here, not on the first request
        self._token = token.encode()
        self.latency_s = latency_s
        self.failure_rate = float(failure_rate)
        self.measurement = measurement
        self._rng = np.random.default_rng(seed)
        self._lock = threading.Lock()
        self._experiments: dict[str, _Experiment] = {}
        self._address = (host, port)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.n_posts = 0  # accepted POSTs, resubmissions included
        self.n_unauthorised = 0

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> LabService:
        """Bind and serve in a background thread; returns self."""
        if self._server is not None:
            return self
        server = ThreadingHTTPServer(self._address, _Handler)
        server.daemon_threads = True
        server.service = self  # type: ignore[attr-defined]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and release the port. Experiments are forgotten only with the object."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> LabService:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """Base URL ``http://host:port`` of the running service; raises RuntimeError if not started."""
        if self._server is None:
            raise RuntimeError("LabService is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def port(self) -> int:
        """TCP port served on; while not serving, the requested one (0: any free port)."""
        return int(self._server.server_address[1]) if self._server else int(self._address[1])

    @property
    def n_experiments_started(self) -> int:
        """Experiments started: unique idempotency keys, never resubmissions."""
        with self._lock:
            return len(self._experiments)

    # -- the API -----------------------------------------------------------------------------
    def authorised(self, header: str | None) -> bool:
        """True if the ``Authorization`` header carries the right Bearer token; counts failures."""
        given = header[7:].strip().encode() if header and header.startswith("Bearer ") else b""
        ok = bool(given) and hmac.compare_digest(given, self._token)
        if not ok:
            with self._lock:
                self.n_unauthorised += 1
        return ok

    def _latency(self) -> float:
        if isinstance(self.latency_s, (int, float)):
            return float(self._rng.exponential(self.latency_s)) if self.latency_s > 0 else 0.0
        lo, hi = self.latency_s
        return float(self._rng.uniform(lo, hi))

    def request(self, body: dict) -> tuple[int, dict]:
        """Start (or re-find) the experiment for one POST body; returns (HTTP status, record)."""
        key, composition, measurement = body.get("idempotency_key"), body.get("composition"), body.get("measurement")
        for name, v in (("idempotency_key", key), ("composition", composition), ("measurement", measurement)):
            if not isinstance(v, str) or not v.strip():
                return 400, {"error": f"{name} must be a non-empty string"}
        if self.measurement is not None and measurement != self.measurement:
            return 400, {"error": f"unknown measurement {measurement!r}; this lab does {self.measurement!r}"}
        try:
            candidate = Candidate.from_composition(composition)
        except Exception as exc:  # pymatgen raises several types for bad formulas
            return 400, {"error": f"bad composition {composition!r}: {exc}"}
        candidate_id = str(body.get("candidate_id") or candidate.id)
        now = time.time()
        with self._lock:
            self.n_posts += 1
            known = self._experiments.get(key)
            if known is not None:
                if (known.candidate_id, known.measurement) != (candidate_id, measurement):
                    return 409, {"error": f"idempotency_key {key!r} already names another experiment"}
                return 200, known.record(now)
            latency = self._latency()
            failed = bool(self._rng.random() < self.failure_rate)
            reason = str(self._rng.choice(FAILURE_REASONS)) if failed else None
            result, unc = None, {}
            if not failed:
                try:
                    answer = self._lookup.evaluate(candidate)
                    result, unc = answer.properties, answer.uncertainties
                except OracleError as exc:
                    reason = f"no sample for {composition}: {exc}"
            exp = _Experiment(key, candidate_id, measurement, composition, now, now + latency, result, unc, reason)
            self._experiments[key] = exp
            return 201, exp.record(now)

    def status(self, key: str) -> tuple[int, dict]:
        """Look up the experiment for idempotency ``key``; returns (HTTP status, record), 404 if unknown."""
        with self._lock:
            exp = self._experiments.get(key)
        if exp is None:
            return 404, {"error": f"no request {key!r}"}
        return 200, exp.record(time.time())


class _Handler(BaseHTTPRequestHandler):
    server_version = "matloop-labsim/1"

    def log_message(self, format, *args):  # noqa: A002 - quiet by default
        pass

    def _send(self, code: int, body: dict) -> None:
        data = json.dumps(body, allow_nan=False).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if code == 401:
            self.send_header("WWW-Authenticate", 'Bearer realm="matloop-labsim"')
        self.end_headers()
        self.wfile.write(data)

    def _authorised(self) -> bool:
        if self.server.service.authorised(self.headers.get("Authorization")):
            return True
        self._send(401, {"error": "unauthorised"})
        return False

    def do_POST(self):  # noqa: N802 - http.server naming
        if not self._authorised():
            return
        if self.path.rstrip("/") != "/requests":
            self._send(404, {"error": f"no route {self.path}"})
            return
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self._send(411, {"error": "Content-Length required"})
            return
        if not 0 < length <= MAX_BODY_BYTES:
            self._send(413, {"error": f"body must be 1 to {MAX_BODY_BYTES} bytes"})
            return
        try:
            body = json.loads(self.rfile.read(length))
        except ValueError as exc:
            self._send(400, {"error": f"body is not JSON: {exc}"})
            return
        if not isinstance(body, dict):
            self._send(400, {"error": "body must be a JSON object"})
            return
        self._send(*self.server.service.request(body))

    def do_GET(self):  # noqa: N802
        if not self._authorised():
            return
        prefix = "/requests/"
        if not self.path.startswith(prefix) or len(self.path) == len(prefix):
            self._send(404, {"error": f"no route {self.path}"})
            return
        self._send(*self.server.service.status(unquote(self.path[len(prefix):])))


def _pairs(items: list[str], flag: str) -> dict[str, str]:
    out = {}
    for item in items:
        prop, sep, col = item.partition("=")
        if not sep or not prop or not col:
            raise SystemExit(f"{flag} expects prop=column, got {item!r}")
        out[prop] = col
    return out


def main(argv: list[str] | None = None) -> None:
    """Serve a table as a lab until interrupted."""
    p = argparse.ArgumentParser(prog="python -m matloop.oracles.labsim", description=__doc__.split("\n\n")[0])
    p.add_argument("--table", required=True, help="CSV with the values to report")
    p.add_argument("--key-column", default="composition", help="column of compositions")
    p.add_argument("--column", action="append", default=[], required=True, help="prop=column, repeatable")
    p.add_argument("--uncertainty-column", action="append", default=[], help="prop=column of 1-sigma values")
    p.add_argument("--token-file", required=True, help="file holding the bearer token clients must send")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 for an ephemeral port")
    p.add_argument("--latency", default="0,0", help="lo,hi seconds (uniform) or one number (exponential mean)")
    p.add_argument("--failure-rate", type=float, default=0.0)
    p.add_argument("--measurement", default=None, help="the only measurement accepted (default: any)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    parts = [float(x) for x in a.latency.split(",")]
    if len(parts) not in (1, 2) or not all(math.isfinite(x) for x in parts):
        raise SystemExit(f"--latency expects lo,hi or one number, got {a.latency!r}")
    latency = parts[0] if len(parts) == 1 else (parts[0], parts[1])
    token = Path(a.token_file).read_text(encoding="utf-8").strip()
    service = LabService(
        a.table,
        a.key_column,
        _pairs(a.column, "--column"),
        token,
        latency_s=latency,
        failure_rate=a.failure_rate,
        seed=a.seed,
        uncertainty_columns=_pairs(a.uncertainty_column, "--uncertainty-column"),
        measurement=a.measurement,
        host=a.host,
        port=a.port,
    )
    service.start()
    print(f"lab service on {service.url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        service.stop()


if __name__ == "__main__":
    main()
