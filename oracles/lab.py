"""Plug-in oracles for laboratories and site scripts: ``http``, ``folder`` and ``command``.

``HttpOracle`` and ``FolderOracle`` are asynchronous: ``submit`` hands requests to the lab
and returns one ``LabHandle`` per request at once, ``poll`` checks (briefly) which ones have
an outcome and ``collect`` turns those into observations. ``request.id`` is the idempotency
key, so submitting the same requests again after a crash never starts a second experiment.
A lab that cannot be reached leaves its requests pending (the reason is on
``handle.last_error``); a lab's verdict (refused, failed, malformed) is a failed observation.

``CommandOracle`` runs any executable per candidate (a site's VASP script, say) in a job
folder of its own; it is an ordinary compute oracle that runs in an executor's worker. Each
job leaves a marker (host, start time, pid, exit status) in its folder, so a job started
before a crash is waited for or collected on resume, never started a second time.
"""

from __future__ import annotations

import contextvars
import csv
import http.client
import io
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from matloop.core.oracle import Oracle, OracleSettings
from matloop.core.records import (
    CampaignPaused,
    Candidate,
    InputError,
    Observation,
    OracleError,
    OracleResult,
    Request,
    Status,
)

#: keys of a flat result dict that are not property values
_META_KEYS = frozenset({"status", "reason", "uncertainties", "cost", "idempotency_key"})
#: suffixes that mark a result file as still being written (never read)
PARTIAL_SUFFIXES = (".tmp", ".part", ".partial", ".incomplete", ".filepart", ".crdownload")


# -- shared pieces --------------------------------------------------------------------------
@dataclass(eq=False)
class LabHandle:
    """One request handed to a lab; the loop keeps it and polls until it has an observation.

    Attributes:
        request: the request this handle tracks.
        submitted: True once the lab is known to hold the request.
        submitted_at: epoch seconds of the first submission, as far as known (the lab's own
            record when it reports one), or None.
        finished_at: epoch seconds at which the lab reports the result was ready, or None.
        last_error: why the last contact failed (lab unreachable, token missing, result file
            still being written); None after a good contact. Informational only.
        observation: the outcome once there is one; the handle is then ready.
    """

    request: Request
    submitted: bool = False
    submitted_at: float | None = None
    finished_at: float | None = None
    last_error: str | None = None
    observation: Observation | None = None
    next_poll_at: float = field(default=0.0, repr=False)

    @property
    def request_id(self) -> str:
        """Id (idempotency key) of the tracked request."""
        return self.request.id

    def done(self) -> bool:
        """True once the handle holds an observation."""
        return self.observation is not None

    def result(self) -> Observation:
        """The observation; raises ``RuntimeError`` while the request is still pending."""
        if self.observation is None:
            raise RuntimeError(f"request {self.request.id} is still pending ({self.last_error or 'no result yet'})")
        return self.observation


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{what} is not a number: {value!r}")
    x = float(value)
    if not math.isfinite(x):
        raise ValueError(f"{what} is not finite: {value!r}")
    return x


def result_values(
    payload: Any, expected: tuple[str, ...], uncertainties: Any = None
) -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
    """Validate a result: ``{"properties": {...}, "uncertainties": {...}}`` or a flat dict.

    Args:
        payload: the nested or flat result.
        expected: property names that must be present, each a finite number.
        uncertainties: 1-sigma values given beside the payload (HTTP); overrides the payload's.

    Returns:
        ``(properties, uncertainties, other)``: the expected properties, their finite
        non-negative uncertainties, and any other numeric values the lab sent.

    Raises:
        ValueError: naming what is missing or wrong.
    """
    if not isinstance(payload, dict):
        raise ValueError(f"result is a {type(payload).__name__}, not an object")
    if isinstance(payload.get("properties"), dict):
        values = payload["properties"]
        unc = payload.get("uncertainties")
    else:
        values = {k: v for k, v in payload.items() if k not in _META_KEYS}
        unc = payload.get("uncertainties")
    if uncertainties is not None:
        unc = uncertainties
    missing = [p for p in expected if values.get(p) is None]
    if missing:
        raise ValueError(f"missing properties {missing}; got {sorted(values)}")
    props = {p: _number(values[p], f"property {p!r}") for p in expected}
    other = {}
    for k, v in values.items():
        if k not in props and not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v):
            other[k] = float(v)
    sigma: dict[str, float] = {}
    if unc is not None:
        if not isinstance(unc, dict):
            raise ValueError(f"uncertainties is a {type(unc).__name__}, not an object")
        for p in expected:
            if unc.get(p) is not None:
                s = _number(unc[p], f"uncertainty of {p!r}")
                if s < 0:
                    raise ValueError(f"uncertainty of {p!r} is negative: {s}")
                sigma[p] = s
    return props, sigma, other


def _candidate_cif(candidate: Candidate) -> str | None:
    structure = candidate.pmg_structure()
    if structure is None:
        return None
    from pymatgen.io.cif import CifWriter

    return str(CifWriter(structure))


def _atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to a hidden temp file beside ``path``, then rename it into place."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class _AsyncLabOracle(Oracle):
    """Shared parts of the asynchronous lab oracles: handles to observations."""

    properties = ()  # declared per instance from settings.properties

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.properties = tuple(self.settings.properties)

    def evaluate(self, candidate: Candidate) -> OracleResult:
        raise OracleError(f"{self.kind} oracle {self.name!r} is asynchronous: use submit/poll/collect")

    def collect(self, handles: list[LabHandle]) -> list[Observation]:
        """One observation per finished handle; handles still pending are skipped."""
        return [h.observation for h in handles if h.observation is not None]

    def _wall(self, h: LabHandle) -> float:
        if h.submitted_at is None:
            return 0.0
        end = h.finished_at if h.finished_at is not None else time.time()
        return max(0.0, end - h.submitted_at)

    def _finish(
        self,
        h: LabHandle,
        *,
        properties: dict | None = None,
        uncertainties: dict | None = None,
        reason: str | None = None,
        cost: float | None = None,
        extra: dict | None = None,
    ) -> None:
        h.observation = Observation(
            request_id=h.request.id,
            candidate_id=h.request.candidate.id,
            oracle=self.name,
            oracle_version=self.version,
            fidelity=self.fidelity,
            status=Status.FAILED if reason else Status.SUCCESS,
            properties=dict(properties or {}),
            uncertainties=dict(uncertainties or {}),
            extra=dict(extra or {}),
            cost=float(self.cost if cost is None else cost),
            wall_time_s=self._wall(h),
            reason=reason,
        )
        h.last_error = None


# -- http -------------------------------------------------------------------------------------
class HttpSettings(OracleSettings):
    """Settings of the HTTP lab oracle (the token itself never goes into settings)."""

    url: str = Field(description="base URL of the lab service; requests go to {url}/requests")
    measurement: str = Field(description="name of the measurement asked for, as the lab knows it")
    properties: list[str] = Field(min_length=1, description="property names the lab returns in `result`")
    token_env: str | None = Field(
        None, description="environment variable holding the bearer token (read at submit and poll time)"
    )
    token_file: str | None = Field(
        None,
        description="file holding the bearer token, used when token_env is unset or empty "
        "(relative: from the campaign file's folder)",
    )
    timeout_s: float = Field(10.0, gt=0, description="limit on one HTTP call")
    retries: int = Field(2, ge=0, description="retries of a call that could not connect or got HTTP 5xx/429")
    backoff_s: float = Field(0.5, ge=0, description="delay before the first retry; doubles with each retry")
    poll_interval_s: float = Field(60.0, ge=0, description="least time between two status checks of one request")
    budget_s: float = Field(
        5.0,
        gt=0,
        description="most seconds one submit or poll call spends on the network; the rest waits for the next poll",
    )

    @field_validator("url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        if urllib.parse.urlsplit(v).scheme not in ("http", "https"):
            raise ValueError(f"url must start with http:// or https://, got {v!r}")
        return v.rstrip("/")


class _Unreachable(Exception):
    """The lab could not be reached within the retries and budget (it may come back)."""


class _NoToken(Exception):
    """A token source is configured but holds no token."""


def token_source_problem(settings: dict | HttpSettings, base_dir: str | Path | None) -> str | None:
    """Why an HTTP oracle's configured token source holds no token now, or None if it does (or none is configured).

    A relative ``token_file`` is taken from ``base_dir`` (the campaign file's folder). This is
    the check ``matloop run`` makes before anything is sent, and that ``validate`` can make.
    """
    s = settings if isinstance(settings, HttpSettings) else HttpSettings.model_validate(settings)
    if s.token_env and os.environ.get(s.token_env, "").strip():
        return None
    if s.token_file:
        path = Path(s.token_file).expanduser()
        if not path.is_absolute():
            path = Path(base_dir or Path.cwd()) / path
        try:
            token = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            return f"token file {path} is unreadable: {exc.strerror or exc}"
        return None if token else f"token file {path} is empty"
    if s.token_env:
        return f"environment variable {s.token_env} holding the token is not set"
    return None


class HttpOracle(_AsyncLabOracle):
    """A lab behind an HTTP API (see ``matloop.oracles.labsim`` for a reference service).

    ``POST {url}/requests`` with ``{idempotency_key, candidate_id, formula, composition,
    structure_cif, measurement}`` starts (or, for a known key, re-finds) an experiment;
    ``GET {url}/requests/{key}`` answers ``{status: pending|done|failed, result,
    uncertainties, reason, submitted_at, finished_at}``.

    Outcomes: HTTP 401/403 pauses the campaign (``CampaignPaused``: nothing is failed, the
    requests stay open and are asked again once the token is fixed); other 4xx a failed
    observation "lab rejected the request"; ``failed`` a failed observation with the lab's
    reason; a ``done`` record without every expected property a failed observation
    "malformed result". Connection errors, timeouts and 5xx (after retries) and a configured
    but missing token leave the request pending with ``handle.last_error`` set.
    """

    kind = "http"
    code_version = "1"
    Settings = HttpSettings

    def input_problems(self) -> list[tuple[str, str]]:
        """``(settings key, problem)`` when the token source holds no token: ``matloop validate`` and
        ``run`` report it before a store is created or anything is sent."""
        problem = token_source_problem(self.settings, self.site.base_dir)
        if not problem:
            return []
        return [("token_file" if self.settings.token_file else "token_env", problem)]

    def setup(self, candidates: list[Candidate]) -> None:
        """Check the token source before anything is sent; raises ``InputError`` if it holds no token."""
        problem = token_source_problem(self.settings, self.site.base_dir)
        if problem:
            raise InputError(f"oracle {self.name!r}: {problem}; set it and run again")

    def _token(self) -> str | None:
        s = self.settings
        if s.token_env and os.environ.get(s.token_env, "").strip():
            return os.environ[s.token_env].strip()
        if s.token_file:
            path = self.site.resolve(s.token_file)
            try:
                token = path.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise _NoToken(f"token file {path} unreadable: {exc.strerror or exc}") from None
            if token:
                return token
            raise _NoToken(f"token file {path} is empty")
        if s.token_env:
            raise _NoToken(f"environment variable {s.token_env} holding the token is not set")
        return None  # no token configured: the lab decides

    def _call(
        self, method: str, path: str, token: str | None, deadline: float, body: dict | None = None
    ) -> tuple[int, bytes]:
        """One HTTP call with retries; returns (status, body) or raises ``_Unreachable``."""
        s = self.settings
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        if token:
            headers["Authorization"] = f"Bearer {token}"
        error = "no attempt made"
        for attempt in range(s.retries + 1):
            remaining = deadline - time.monotonic()
            if remaining < 0.05:
                break
            req = urllib.request.Request(s.url + path, data=data, headers=headers, method=method)
            try:
                with urllib.request.urlopen(req, timeout=min(s.timeout_s, remaining)) as resp:
                    return resp.status, resp.read()
            except urllib.error.HTTPError as exc:
                payload = exc.read()
                if exc.code < 500 and exc.code != 429:
                    return exc.code, payload
                error = f"HTTP {exc.code} from {s.url}"
            except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:  # refused, reset, timed out
                error = f"{s.url} unreachable: {getattr(exc, 'reason', exc)}"
            delay = s.backoff_s * 2**attempt
            if attempt < s.retries and time.monotonic() + delay < deadline:
                time.sleep(delay)
            else:
                break
        raise _Unreachable(error)

    def _payload(self, r: Request) -> dict:
        c = r.candidate
        return {
            "idempotency_key": r.id,
            "candidate_id": c.id,
            "formula": c.formula,
            "composition": c.composition,
            "structure_cif": _candidate_cif(c),
            "measurement": self.settings.measurement,
        }

    def _apply(self, h: LabHandle, code: int, raw: bytes, *, posted: bool) -> None:
        """Update a handle from the lab's answer to a POST or GET."""
        if code in (401, 403):
            s = self.settings
            source = (f"environment variable {s.token_env}" if s.token_env else "") + (
                " / " if s.token_env and s.token_file else "") + (f"token file {s.token_file}" if s.token_file else "")
            h.last_error = f"unauthorised (HTTP {code})"
            raise CampaignPaused(
                f"lab {s.url} refused the credentials of oracle {self.name!r} (HTTP {code}); campaign paused, "
                f"no request was failed. Fix the token ({source or 'none configured: set token_env or token_file'}),"
                " then run again: the unanswered requests are asked again"
            )
        if code == 404 and not posted:
            h.submitted = False
            h.last_error = "the lab has no record of this request; resubmitting"
            return
        if not 200 <= code < 300:
            text = raw[:300].decode("utf-8", "replace")
            self._finish(h, reason=f"lab rejected the request: HTTP {code}: {text}", cost=0.0)
            return
        if posted:
            h.submitted = True
        h.last_error = None
        try:
            record = json.loads(raw)
        except (ValueError, RecursionError):  # RecursionError: nested too deeply
            record = None
        if not isinstance(record, dict):
            if not posted:  # an accepted POST needs no body; a status answer does
                self._finish(h, reason=f"malformed response from {self.settings.url}: not a JSON object: {raw[:200]!r}")
            return
        for attr in ("submitted_at", "finished_at"):
            v = record.get(attr)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                setattr(h, attr, float(v))
        status = record.get("status")
        extra = {"lab_url": self.settings.url, "measurement": self.settings.measurement}
        if status == "pending" or (posted and status is None):
            return
        if status == "failed":
            self._finish(h, reason=f"lab reported failure: {record.get('reason') or 'no reason given'}", extra=extra)
        elif status == "done":
            try:
                props, unc, other = result_values(record.get("result"), self.properties, record.get("uncertainties"))
            except ValueError as exc:
                self._finish(h, reason=f"malformed result from {self.settings.url}: {exc}", extra=extra)
                return
            if other:
                extra["other_properties"] = other
            self._finish(h, properties=props, uncertainties=unc, extra=extra)
        else:
            reason = f"malformed response from {self.settings.url}: unknown status {status!r}"
            self._finish(h, reason=reason, extra=extra)

    def _post(self, h: LabHandle, token: str | None, deadline: float) -> None:
        if h.submitted_at is None:
            h.submitted_at = time.time()  # replaced by the lab's own record when it sends one
        code, raw = self._call("POST", "/requests", token, deadline, self._payload(h.request))
        self._apply(h, code, raw, posted=True)

    def _contact(self, handles: list[LabHandle], *, poll: bool) -> None:
        deadline = time.monotonic() + self.settings.budget_s
        try:
            token = self._token()
        except _NoToken as exc:
            for h in handles:
                h.last_error = str(exc)
            return
        down: str | None = None
        for h in handles:
            if h.observation is not None:
                continue
            if down is not None or time.monotonic() >= deadline:
                h.last_error = f"not tried in this call: {down or 'its time budget was used up'}"
                continue
            if poll and time.monotonic() < h.next_poll_at:
                continue
            try:
                if not h.submitted:
                    self._post(h, token, deadline)
                elif poll:
                    key = urllib.parse.quote(h.request.id, safe="")
                    code, raw = self._call("GET", f"/requests/{key}", token, deadline)
                    self._apply(h, code, raw, posted=False)
                    if not h.submitted and h.observation is None:  # the lab lost it (404)
                        self._post(h, token, deadline)
            except _Unreachable as exc:
                down = h.last_error = str(exc)
            except CampaignPaused:
                raise
            except Exception as exc:  # e.g. a structure that cannot be written as CIF: this request fails
                self._finish(h, reason=f"could not send the request: {type(exc).__name__}: {exc}", cost=0.0)
            h.next_poll_at = time.monotonic() + self.settings.poll_interval_s

    def submit(self, requests: list[Request], executor=None) -> list[LabHandle]:
        """POST every request (idempotent by ``request.id``); ``executor`` is not used."""
        handles = [LabHandle(request=r) for r in requests]
        self._contact(handles, poll=False)
        return handles

    def poll(self, handles: list[LabHandle]) -> list[LabHandle]:
        """Check pending requests due for a check, within ``budget_s``; returns ready handles."""
        self._contact([h for h in handles if h.observation is None], poll=True)
        return [h for h in handles if h.observation is not None]


# -- folder -----------------------------------------------------------------------------------
class FolderSettings(OracleSettings):
    """Settings of the folder (file-exchange robot) oracle."""

    outbox: str = Field(
        description="folder the robot reads request files from (relative: from the campaign file's folder)"
    )
    inbox: str = Field(
        description="folder the robot writes result files to, named <request id>.<format> "
        "(relative: from the campaign file's folder)"
    )
    format: Literal["csv", "json"] = Field("json", description="file format of requests and results")
    properties: list[str] = Field(min_length=1, description="property names each result must hold")
    cif: Literal["inline", "file"] = Field(
        "inline",
        description="structure in the request as inline CIF text, or as a CIF file in the outbox named by path",
    )
    settle_s: float = Field(
        60.0,
        ge=0,
        description="a result file that does not parse counts as still being written until this many seconds "
        "after its last change, and as malformed after that",
    )
    ledger: str | None = Field(
        None,
        description="folder recording the requests handed over (default <outbox>/.matloop-sent); "
        "keeps resubmission idempotent",
    )


class FolderOracle(_AsyncLabOracle):
    """A robot that exchanges files (NIMS-OS style): requests in ``outbox``, results in ``inbox``.

    Request files: ``<outbox>/<request id>.json`` (one object) or ``.csv`` (header plus one
    row) with ``idempotency_key, candidate_id, formula, composition, structure_cif,
    structure_cif_path, properties, submitted_at`` (ISO 8601, UTC). They are written to a
    hidden temp file and renamed, so a robot never sees half a request. Each handed-over
    request is also recorded in ``ledger``; a request found there (or with a result in
    ``inbox``) is never written again, even if the robot has since removed its file.

    Result files: exactly ``<inbox>/<request id>.json`` or ``.csv``; the robot should write
    them under another name and rename. JSON: ``{"properties": {...}, "uncertainties": {...},
    "status": "done"|"failed", "reason": ...}`` or a flat ``{prop: value}``. CSV: a header
    and one row, a column per property, optional ``<prop>_std``, ``status`` and ``reason``.
    Result files are read, never moved or deleted.

    Rules for untrusted files:
      * ``<id>.json.part`` (or ``.tmp``, ``.partial``, ...) and other names are never read;
        the request stays pending and ``last_error`` says a partial file was seen.
      * a result file that does not parse (truncated JSON, CSV without a final newline or
        without a data row) stays pending while it changed within ``settle_s`` seconds, and
        is then a failed observation "malformed result file <path>: ...".
      * a file that parses but lacks an expected property, holds a non-number, or names
        another request's key is a failed observation at once (naming the file).
    """

    kind = "folder"
    code_version = "1"
    Settings = FolderSettings

    @property
    def outbox(self) -> Path:
        """Folder request files are written to (relative: from the site's ``base_dir``)."""
        return self.site.resolve(self.settings.outbox)

    @property
    def inbox(self) -> Path:
        """Folder result files are read from (relative: from the site's ``base_dir``)."""
        return self.site.resolve(self.settings.inbox)

    @property
    def ledger(self) -> Path:
        """Folder recording handed-over requests (default ``<outbox>/.matloop-sent``)."""
        return self.site.resolve(self.settings.ledger) if self.settings.ledger else self.outbox / ".matloop-sent"

    def _result_path(self, request_id: str) -> Path:
        return self.inbox / f"{request_id}.{self.settings.format}"

    def _request_text(self, r: Request, submitted_at: float) -> str:
        c = r.candidate
        row: dict[str, Any] = {
            "idempotency_key": r.id,
            "candidate_id": c.id,
            "formula": c.formula,
            "composition": c.composition,
            "structure_cif": None,
            "structure_cif_path": None,
            "properties": list(self.properties),
            "submitted_at": datetime.fromtimestamp(submitted_at, timezone.utc).isoformat(),
        }
        cif = _candidate_cif(c)
        if cif is not None and self.settings.cif == "inline":
            row["structure_cif"] = cif
        elif cif is not None:
            cif_path = self.outbox / f"{r.id}.cif"
            _atomic_write(cif_path, cif)
            row["structure_cif_path"] = str(cif_path.resolve())
        if self.settings.format == "json":
            return json.dumps(row, indent=2) + "\n"
        row["properties"] = ";".join(row["properties"])
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(row), lineterminator="\n")
        writer.writeheader()
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
        return buf.getvalue()

    def _hand_over(self, h: LabHandle) -> None:
        """Write the request file unless the ledger or the inbox shows it was handed over."""
        entry = self.ledger / f"{h.request.id}.json"
        try:
            known = json.loads(entry.read_text(encoding="utf-8"))
            h.submitted_at = float(known["submitted_at"])
            h.submitted = True
            return
        except (OSError, ValueError, KeyError, TypeError):
            pass
        if self._result_path(h.request.id).exists():
            h.submitted = True
            return
        try:
            now = time.time()
            self.outbox.mkdir(parents=True, exist_ok=True)
            self.ledger.mkdir(parents=True, exist_ok=True)
            self.inbox.mkdir(parents=True, exist_ok=True)
            path = self.outbox / f"{h.request.id}.{self.settings.format}"
            _atomic_write(path, self._request_text(h.request, now))
            # ledger after the request file: a crash in between rewrites the same file
            _atomic_write(entry, json.dumps({"submitted_at": now, "request_file": str(path)}) + "\n")
        except OSError as exc:  # a full disk or a share that is away: try again on the next poll
            h.last_error = f"could not write request for {h.request.id}: {exc}"
            return
        except Exception as exc:  # e.g. a structure that cannot be written as CIF: this request fails
            self._finish(h, reason=f"could not write the request: {type(exc).__name__}: {exc}", cost=0.0)
            return
        h.submitted, h.submitted_at, h.last_error = True, now, None

    def _parse(self, text: str) -> Any:
        """The result file's content; raises ValueError if it does not parse (yet)."""
        if self.settings.format == "json":
            return json.loads(text)
        if not text.endswith("\n"):
            raise ValueError("no final newline (last row may be cut off)")
        rows = list(csv.DictReader(io.StringIO(text)))
        if len(rows) != 1:
            raise ValueError(f"expected a header and one data row, found {len(rows)} data rows")
        row = {k.strip(): (v or "").strip() for k, v in rows[0].items() if k is not None}
        out: dict[str, Any] = {"properties": {}, "uncertainties": {}}
        for k in ("status", "reason", "idempotency_key"):
            if row.get(k):
                out[k] = row.pop(k)
        for k, v in row.items():
            if not v:
                continue
            target = out["uncertainties"] if k.endswith("_std") and k[:-4] in self.properties else out["properties"]
            name = k[:-4] if target is out["uncertainties"] else k
            try:
                target[name] = float(v)
            except ValueError:
                target[name] = v  # reported as "not a number" if it is an expected property
        return out

    def _read_result(self, h: LabHandle, path: Path) -> None:
        error = None
        try:
            mtime = path.stat().st_mtime
        except OSError:
            return  # renamed away between the check and the read
        try:
            payload = self._parse(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            error = f"is unreadable: {exc}"
        except ValueError as exc:
            error = f"does not parse: {exc}"
        except RecursionError:  # nested too deeply for json: final, not a file still being written
            h.finished_at = mtime
            self._finish(h, reason=f"malformed result file {path}: nested too deeply to parse",
                         extra={"result_file": str(path)})
            return
        if error is not None:
            age = time.time() - mtime
            if age < self.settings.settle_s:
                h.last_error = f"result file {path} {error}; taken as still being written ({age:.0f} s old)"
                return
            h.finished_at = mtime
            self._finish(h, reason=f"malformed result file {path}: {error}", extra={"result_file": str(path)})
            return
        h.finished_at = mtime
        extra = {"result_file": str(path)}
        try:
            if not isinstance(payload, dict):
                raise ValueError(f"a {type(payload).__name__}, not an object")
            key = payload.get("idempotency_key")
            if key is not None and key != h.request.id:
                raise ValueError(f"idempotency_key {key!r} names another request")
            status = payload.get("status", "done")
            if status == "failed":
                reason = payload.get("reason") or "no reason given"
                self._finish(h, reason=f"robot reported failure in {path}: {reason}", extra=extra)
                return
            if status != "done":
                raise ValueError(f"unknown status {status!r}")
            props, unc, other = result_values(payload, self.properties)
        except ValueError as exc:
            self._finish(h, reason=f"malformed result file {path}: {exc}", extra=extra)
            return
        if other:
            extra["other_properties"] = other
        self._finish(h, properties=props, uncertainties=unc, extra=extra)

    def submit(self, requests: list[Request], executor=None) -> list[LabHandle]:
        """Write one request file per request not handed over before; ``executor`` is not used."""
        handles = [LabHandle(request=r) for r in requests]
        for h in handles:
            self._hand_over(h)
        return handles

    def poll(self, handles: list[LabHandle]) -> list[LabHandle]:
        """Look for each pending request's result file; returns ready handles."""
        for h in handles:
            if h.observation is not None:
                continue
            if not h.submitted:
                self._hand_over(h)
                if not h.submitted:
                    continue
            path = self._result_path(h.request.id)
            if path.exists():
                self._read_result(h, path)
                continue
            partial = [p.name for p in (path.with_name(path.name + s) for s in PARTIAL_SUFFIXES) if p.exists()]
            h.last_error = f"partial result file {partial[0]} seen; waiting for {path.name}" if partial else None
        return [h for h in handles if h.observation is not None]


# -- command ----------------------------------------------------------------------------------
class CommandSettings(OracleSettings):
    """Settings of the command oracle: the argv to run per candidate and what it must write."""

    command: list[str] = Field(
        min_length=1,
        description="argv, run without a shell in the job folder; "
        "{structure}, {job_dir}, {output} and {base_dir} are replaced",
    )
    workdir: str = Field(
        description="root folder of the job folders (<workdir>/<request id>; relative: from the campaign "
        "file's folder)"
    )
    structure_format: Literal["cif", "poscar"] = Field("cif", description="file format the candidate is written in")
    timeout_s: float | None = Field(None, gt=0, description="wall-clock limit; the command's process group is killed")
    properties: list[str] = Field(min_length=1, description="property names the output JSON must hold")
    output: str = Field("result.json", description="file name, in the job folder, of the JSON the command writes")


#: the request being run, so that ``evaluate`` can name the job folder after it (thread-safe)
_RUNNING: contextvars.ContextVar[Request | None] = contextvars.ContextVar("matloop_command_request", default=None)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        if hasattr(os, "killpg"):
            os.killpg(proc.pid, signal.SIGKILL)  # the command's children (mpirun, ...) too
        else:  # pragma: no cover - Windows
            proc.kill()
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def _tail(path: Path, n: int = 400) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - n))
            return f.read().decode("utf-8", "replace").strip()
    except OSError:
        return ""


class CommandOracle(Oracle):
    """Runs an executable per candidate and reads the JSON it writes.

    The candidate is written as ``structure.cif`` or ``POSCAR`` into ``<workdir>/<request
    id>``, together with ``request.json``; the command runs there (cwd) with stdout and
    stderr in ``stdout.log`` and ``stderr.log``, and must write ``{output}`` holding
    ``{"properties": {...}, "uncertainties": {...}, "cost": ...}`` or a flat ``{prop: value}``.
    Relative paths in settings (``workdir``, an executable given as a path such as
    ``scripts/run.sh``) are taken from the site's ``base_dir`` (the campaign file's folder);
    other relative argv entries are relative to the job folder, so use ``{base_dir}``.
    A non-zero exit, a timeout, or a missing or malformed output is a failed observation
    whose reason names the job folder's logs.
    """

    kind = "command"
    code_version = "1"
    Settings = CommandSettings
    properties = ()  # declared per instance from settings.properties
    needs_structure = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.properties = tuple(self.settings.properties)

    @property
    def workdir(self) -> Path:
        """Root of the job folders (a relative ``workdir`` is taken from the site's ``base_dir``)."""
        return self.site.resolve(self.settings.workdir)

    def run(self, request: Request) -> Observation:
        """Run ``request`` as ``Oracle.run`` does, with the request visible to ``evaluate``; never raises."""
        token = _RUNNING.set(request)
        try:
            return super().run(request)
        finally:
            _RUNNING.reset(token)

    def _argv(self, job_dir: Path, structure: Path, output: Path) -> list[str]:
        subs = {
            "{structure}": str(structure),
            "{job_dir}": str(job_dir),
            "{output}": str(output),
            "{base_dir}": str(self.site.base_dir),
        }
        argv = []
        for arg in self.settings.command:
            for k, v in subs.items():
                arg = arg.replace(k, v)
            argv.append(arg)
        exe = Path(argv[0]).expanduser()
        if not exe.is_absolute() and len(exe.parts) > 1:  # a path, not a name looked up on PATH
            argv[0] = str(self.site.resolve(exe).resolve())
        return argv

    def evaluate(self, candidate: Candidate) -> OracleResult:
        """Run the request's job (or adopt it if an earlier run started it) and read its output; raises OracleError on failure.

        A job folder holding a marker (``job.json``: host and start time; ``job.pid``: the pid,
        written by the job itself before the command starts) belongs to a job that was started:
        it is never started again. A job still running is waited for (within ``timeout_s`` of
        its start), a finished one is collected (``exit_status``), and one that died without an
        exit status is a failed observation.
        """
        request = _RUNNING.get()
        job_dir = (self.workdir / (request.id if request is not None else candidate.id)).resolve()
        job_dir.mkdir(parents=True, exist_ok=True)
        s = self.settings
        output = job_dir / s.output
        marker = _read_json(job_dir / JOB_MARKER)
        if marker is not None and ((job_dir / JOB_PID).exists() or (job_dir / JOB_EXIT).exists()):
            rc, elapsed = self._adopt(job_dir, marker)
        else:  # never started (or killed before the command began): start it now
            rc, elapsed = self._start(candidate, request, job_dir, output)
        stdout_log, stderr_log = job_dir / "stdout.log", job_dir / "stderr.log"
        if rc != 0:
            tail = _tail(stderr_log)
            reason = f"command exited with code {rc}; see {stderr_log}"
            raise OracleError(reason + (f"; stderr ends: {tail}" if tail else ""))
        try:
            payload = json.loads(output.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise OracleError(f"command wrote no {output}; see {stdout_log} and {stderr_log}") from None
        except (OSError, ValueError) as exc:
            raise OracleError(f"malformed output {output}: {exc}; see {stdout_log}") from None
        except RecursionError:
            raise OracleError(f"malformed output {output}: nested too deeply to parse; see {stdout_log}") from None
        try:
            props, unc, other = result_values(payload, self.properties)
            cost = payload.get("cost") if isinstance(payload, dict) else None
            cost = None if cost is None else _number(cost, "cost")
        except ValueError as exc:
            raise OracleError(f"malformed output {output}: {exc}; see {stdout_log}") from None
        extra: dict[str, Any] = {"job_dir": str(job_dir), "command_wall_s": round(elapsed, 3)}
        if other:
            extra["other_properties"] = other
        return OracleResult(properties=props, uncertainties=unc, extra=extra, cost=cost)

    def _start(self, candidate: Candidate, request: Request | None, job_dir: Path, output: Path) -> tuple[int, float]:
        """Write the job folder and its marker, run the command to its end; returns (exit code, seconds)."""
        s = self.settings
        structure = candidate.pmg_structure()
        if structure is None:
            raise OracleError("command oracle needs a structure; candidate has only a composition")
        structure_path = job_dir / ("structure.cif" if s.structure_format == "cif" else "POSCAR")
        structure.to(filename=str(structure_path), fmt=s.structure_format)
        for stale in (output, job_dir / JOB_PID, job_dir / JOB_EXIT):
            stale.unlink(missing_ok=True)  # from an attempt killed before its command began
        info = {"request_id": request.id if request else None, "candidate": candidate.to_json(), "oracle": self.name}
        (job_dir / "request.json").write_text(json.dumps(info, indent=1, default=str) + "\n", encoding="utf-8")
        argv = self._argv(job_dir, structure_path, output)
        exe = argv[0] if os.sep in argv[0] else shutil.which(argv[0])
        if exe is None or not os.access(exe, os.X_OK) or os.path.isdir(exe):
            why = "not found on PATH" if exe is None else "not an executable file"
            raise OracleError(f"cannot start {argv[0]!r}: {why}; job folder {job_dir}")
        # the marker before the process: a job is either unmarked (never ran) or recognised on resume
        _atomic_write(job_dir / JOB_MARKER, json.dumps({"host": socket.gethostname(), "started_at": time.time(),
                                                        "argv": argv, "timeout_s": s.timeout_s}) + "\n")
        t0 = time.perf_counter()
        with open(job_dir / "stdout.log", "wb") as out, open(job_dir / "stderr.log", "wb") as err:
            try:
                # /bin/sh only records the pid and exit status around argv, passed as "$@" (never parsed)
                proc = subprocess.Popen(["/bin/sh", "-c", _JOB_WRAPPER, "matloop-job", *argv], cwd=job_dir,
                                        stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True)
            except OSError as exc:
                raise OracleError(f"cannot start {argv[0]!r}: {exc.strerror or exc}; job folder {job_dir}") from None
            try:
                rc = proc.wait(timeout=s.timeout_s)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                raise OracleError(
                    f"command timed out after {s.timeout_s:g} s and was killed; logs in {job_dir}"
                ) from None
            except BaseException:  # e.g. the oracle-level timeout: never leave the job running
                _kill_group(proc)
                raise
        return rc, time.perf_counter() - t0

    def _adopt(self, job_dir: Path, marker: dict) -> tuple[int, float]:
        """Wait for (or collect) a job an earlier run started; never starts it again."""
        started = float(marker.get("started_at") or time.time())
        host = marker.get("host")
        timeout_s = self.settings.timeout_s
        pid = _read_int(job_dir / JOB_PID)
        here = host == socket.gethostname()
        while not (job_dir / JOB_EXIT).exists():
            if here and (pid is None or not _job_alive(pid)):
                raise OracleError(f"job started at {time.ctime(started)} (pid {pid} on {host}) ended without an "
                                  f"exit status (killed?); not started again; see {job_dir}")
            if timeout_s is not None and time.time() - started > timeout_s:
                if here and pid is not None:
                    _kill_pid_group(pid)
                raise OracleError(f"command timed out after {timeout_s:g} s and was killed; logs in {job_dir}")
            time.sleep(0.2)
        rc = _read_int(job_dir / JOB_EXIT)
        if rc is None:
            raise OracleError(f"unreadable exit status in {job_dir / JOB_EXIT}")
        return rc, time.time() - started


#: files of a command job's folder that say it was started: the marker, its pid and its exit status
JOB_MARKER, JOB_PID, JOB_EXIT = "job.json", "job.pid", "exit_status"
_JOB_WRAPPER = 'echo $$ > job.pid; "$@"; rc=$?; echo $rc > exit_status.tmp; mv -f exit_status.tmp exit_status; exit $rc'


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _job_alive(pid: int) -> bool:
    """True while ``pid`` runs a matloop job wrapper (a zombie, or a reused pid running something else, is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    proc = Path(f"/proc/{pid}")
    if proc.exists():
        try:
            if (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return False
            return b"matloop-job" in (proc / "cmdline").read_bytes()
        except (OSError, IndexError):
            return False
    return True


def _kill_pid_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
