"""Candidates enumerated from structure databases: OPTIMADE providers, Materials Project, ASE db.

Each generator walks its source in order and returns the next structures that are valid
and new to the campaign; a later call continues where the previous one stopped, so a
source is consumed once. ``OptimadeGenerator`` speaks plain HTTP to any OPTIMADE provider
(filter, pagination through ``links.next``), keeps every page on disk keyed by its URL
(which holds the filter), and converts entries with optimade-python-tools' adapters.

``reference_server`` starts optimade-python-tools' reference server with its bundled test
data on 127.0.0.1, for tests and offline demonstrations.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from matloop.core.records import Candidate, InputError, MatloopError

from matloop.core.protocols import CampaignState
from .validity import Deduplicator, MatcherSettings, ValidityFilter, ValiditySettings


class EnumerationError(MatloopError):
    """A database could not be read (network, HTTP status, malformed response)."""


class EnumerationSettings(BaseModel):
    """Settings every database generator has."""

    model_config = ConfigDict(extra="forbid")

    max_entries: int = Field(1000, ge=1, description="stop after reading this many entries from the source")
    validity: ValiditySettings = Field(default_factory=ValiditySettings, description="validity filter")
    matcher: MatcherSettings = Field(default_factory=MatcherSettings, description="duplicate criterion")


class _EnumeratingGenerator:
    """Shared loop: read entries lazily, keep the valid ones new to the campaign, remember the position."""

    Settings: ClassVar[type[EnumerationSettings]] = EnumerationSettings
    operator: ClassVar[str] = "enumeration"

    def __init__(self, name: str, settings: dict | None = None):
        self.name = name
        self.settings = settings if isinstance(settings, self.Settings) else self.Settings(**(settings or {}))
        self.validity = ValidityFilter(self.settings.validity)
        self.stats: Counter = Counter()
        self.rejections: Counter = Counter()
        self._iter: Iterator | None = None
        self._done = False
        self._read = 0
        self._batch = Deduplicator(matcher=self.settings.matcher)  # everything returned so far
        self._known = Deduplicator(matcher=self.settings.matcher)

    def _entries(self) -> Iterator[tuple[object | None, dict, str | None]]:
        """Yield ``(structure or None, provenance, reason if None)`` in source order."""
        raise NotImplementedError

    @property
    def exhausted(self) -> bool:
        """True once the source has no more entries (or ``max_entries`` were read)."""
        return self._done

    def generate(self, n: int, state: CampaignState, rng: np.random.Generator) -> list[Candidate]:
        """The next ``n`` valid structures of the source that are new to the campaign (fewer when it runs out).

        ``rng`` is unused: enumeration is deterministic, in the source's order.
        """
        self._known.remember(state.candidates)
        if self._iter is None:
            self._iter = self._entries()
        out: list[Candidate] = []
        while not self._done and len(out) < n:
            if self._read >= self.settings.max_entries:
                self._done = True
                break
            try:
                structure, prov, reason = next(self._iter)
            except StopIteration:
                self._done = True
                break
            self._read += 1
            self.stats["attempted"] += 1
            if structure is None:
                self.rejections[(reason or "unreadable").split(":")[0]] += 1
                continue
            ok, reason = self.validity.check(structure)
            if not ok:
                self.rejections[reason.split(":")[0]] += 1
                continue
            self.stats["valid"] += 1
            if not self._batch.add(structure):
                continue
            self.stats["unique"] += 1
            if not self._known.is_novel(structure):
                continue
            prov = {"operator": self.operator, "parents": [], **prov}
            cand = Candidate.from_structure(structure, source=self.name, provenance=prov)
            if cand.id in state.candidates or any(c.id == cand.id for c in out):
                continue
            self.stats["novel"] += 1
            out.append(cand)
        return out


# -- OPTIMADE ------------------------------------------------------------------------------
class OptimadeSettings(EnumerationSettings):
    """Settings of ``OptimadeGenerator``."""

    base_url: str = Field(description="provider base URL, e.g. https://optimade.materialsproject.org")
    version: str = Field("v1", description="versioned path segment of the endpoint")
    filter: str = Field("", description='OPTIMADE filter, e.g. elements HAS ALL "Li","S" AND nelements<=4')
    page_limit: int = Field(50, ge=1, description="entries per page requested")
    response_fields: list[str] | None = Field(
        None, description="request only these fields (None: the provider's default, which holds the structure)"
    )
    cache_dir: str | None = Field(
        None, description="folder for cached pages (keyed by URL, filter included); None: no cache"
    )
    timeout_s: float = Field(30.0, gt=0, description="per-request timeout")
    retries: int = Field(2, ge=0, description="retries of a failed request")


class OptimadeGenerator(_EnumeratingGenerator):
    """Structures from an OPTIMADE provider matching a filter.

    Args:
        name: the campaign's name for this generator (becomes ``Candidate.source``).
        settings: dict validated against ``OptimadeSettings``.
        base_dir: folder that a relative ``cache_dir`` is taken from (default: working directory).

    Attributes:
        pages_fetched: pages read over HTTP; ``pages_cached``: pages read from the cache.
        errors: messages of requests that failed (the walk stops at the first).
    """

    Settings: ClassVar[type[OptimadeSettings]] = OptimadeSettings
    operator: ClassVar[str] = "optimade"

    def __init__(self, name: str = "optimade", settings: dict | None = None, base_dir: str | Path | None = None):
        super().__init__(name, settings)
        try:
            from optimade.adapters import Structure  # noqa: F401
        except ImportError as exc:
            raise InputError("the OPTIMADE generator needs optimade-python-tools: pip install optimade") from exc
        self.base_dir = Path(base_dir) if base_dir else None
        self.pages_fetched = 0
        self.pages_cached = 0
        self.errors: list[str] = []

    @property
    def first_url(self) -> str:
        """URL of the first page: ``{base_url}/{version}/structures`` with page_limit, filter and response_fields."""
        s = self.settings
        query = {"page_limit": s.page_limit}
        if s.filter:
            query["filter"] = s.filter
        if s.response_fields:
            query["response_fields"] = ",".join(s.response_fields)
        return f"{s.base_url.rstrip('/')}/{s.version}/structures?{urllib.parse.urlencode(query)}"

    def _cache_path(self, url: str) -> Path | None:
        if not self.settings.cache_dir:
            return None
        d = Path(self.settings.cache_dir)
        if not d.is_absolute():
            d = (self.base_dir or Path.cwd()) / d
        return d / f"optimade-{hashlib.sha256(url.encode()).hexdigest()[:24]}.json"

    def fetch(self, url: str) -> dict:
        """One page as JSON, from the cache when present; raises ``EnumerationError``."""
        path = self._cache_path(url)
        if path is not None and path.exists():
            self.pages_cached += 1
            return json.loads(path.read_text())["response"]
        req = urllib.request.Request(url, headers={"Accept": "application/vnd.api+json, application/json"})
        data, last = None, None
        for attempt in range(self.settings.retries + 1):
            try:
                with urllib.request.urlopen(req, timeout=self.settings.timeout_s) as r:
                    data = json.loads(r.read().decode())
                break
            except urllib.error.HTTPError as exc:
                last = f"HTTP {exc.code} from {url}: {exc.read().decode(errors='replace')[:300]}"
                if exc.code < 500:
                    break  # a bad filter does not get better by asking again
            except (urllib.error.URLError, TimeoutError, OSError, json.JSONDecodeError) as exc:
                last = f"{type(exc).__name__} from {url}: {exc}"
            if attempt < self.settings.retries:
                time.sleep(0.5 * (attempt + 1))
        if data is None:
            raise EnumerationError(last or f"no response from {url}")
        if not isinstance(data, dict) or "data" not in data:
            raise EnumerationError(f"not an OPTIMADE response from {url}")
        self.pages_fetched += 1
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"url": url, "response": data}))
            tmp.replace(path)
        return data

    def _entries(self):
        from optimade.adapters import Structure

        url: str | None = self.first_url
        while url:
            try:
                page = self.fetch(url)
            except EnumerationError as exc:
                self.errors.append(str(exc))
                if self.stats["attempted"] == 0 and self.pages_fetched + self.pages_cached == 0:
                    raise
                return
            for entry in page.get("data") or []:
                prov = {"provider": self.settings.base_url, "entry_id": entry.get("id"), "filter": self.settings.filter}
                attrs = entry.get("attributes") or {}
                if attrs.get("dimension_types") not in (None, [1, 1, 1]):
                    yield None, prov, "not periodic in 3D"
                    continue
                try:
                    structure = Structure(entry).convert("pymatgen")
                except Exception as exc:  # missing fields, disorder the adapter cannot express
                    yield None, prov, f"conversion failed: {type(exc).__name__}"
                    continue
                if not hasattr(structure, "lattice"):
                    yield None, prov, "not a periodic structure"
                    continue
                yield structure, prov, None
            nxt = (page.get("links") or {}).get("next")
            url = nxt.get("href") if isinstance(nxt, dict) else nxt


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: optimade-python-tools' own example configuration maps its test data's fields this way
_REFERENCE_ALIASES = {
    "structures": {
        "id": "task_id",
        "immutable_id": "_id",
        "chemical_formula_descriptive": "pretty_formula",
        "chemical_formula_reduced": "pretty_formula",
        "chemical_formula_anonymous": "formula_anonymous",
    }
}


def write_optimade_jsonl(structures, path: str | Path) -> Path:
    """Write structures as an OPTIMADE JSON-lines file (the format the reference server ingests).

    Args:
        structures: pymatgen Structures, ``(id, Structure)`` pairs, or ``(id, Structure, extra)``
            triples whose ``extra`` dict adds (provider) attributes.
    """
    from optimade.adapters import Structure

    path = Path(path)
    with open(path, "w") as fh:
        fh.write(json.dumps({"x-optimade": {"meta": {"api_version": "1.2.0"}}}) + "\n")
        for i, item in enumerate(structures):
            sid, st, extra = (tuple(item) + ({},))[:3] if isinstance(item, tuple) else (f"matloop-{i}", item, {})
            attrs = Structure.ingest_from(st, "pymatgen").entry.model_dump(mode="json")["attributes"]
            attrs["last_modified"] = "2024-01-01T00:00:00Z"
            attrs.update(extra)
            fh.write(json.dumps({"id": str(sid), "type": "structures", "attributes": attrs}) + "\n")
    return path


@contextlib.contextmanager
def reference_server(structures=None, port: int | None = None, page_limit: int = 20, startup_timeout_s: float = 90.0,
                     provider_fields: list[str] | None = None):
    """Run optimade-python-tools' reference server (mongomock backend) on 127.0.0.1.

    It serves ``structures`` (see ``write_optimade_jsonl``) when given, else the package's
    bundled test data (17 synthetic structures). ``provider_fields`` are extra structure
    attributes served as ``_exmpl_<name>``. Yields the base URL; the server is a child
    process, stopped on exit.

    Raises:
        ImportError: optimade[server] is not installed.
        RuntimeError: the server did not answer within ``startup_timeout_s``.
    """
    import importlib.util

    for mod in ("optimade", "optimade.server", "uvicorn", "fastapi", "mongomock"):
        if importlib.util.find_spec(mod) is None:
            raise ImportError(f"{mod} is not installed: pip install 'optimade[server]'")
    port = port or _free_port()
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="matloop-optimade-") as tmp:
        config: dict = {"base_url": base, "page_limit": page_limit, "insert_test_data": structures is None}
        if provider_fields:
            config["provider_fields"] = {"structures": list(provider_fields)}
        if structures is None:
            config["aliases"] = _REFERENCE_ALIASES
        else:
            config["insert_from_jsonl"] = str(write_optimade_jsonl(structures, Path(tmp) / "structures.jsonl"))
        config_path = Path(tmp) / "optimade_config.json"
        config_path.write_text(json.dumps(config))
        env = {**os.environ, "OPTIMADE_CONFIG_FILE": str(config_path), "OPTIMADE_DATABASE_BACKEND": "mongomock"}
        log = open(Path(tmp) / "server.log", "w")
        proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "optimade.server.main:app", "--host", "127.0.0.1", "--port", str(port),
             "--log-level", "warning"],
            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp,
        )
        try:
            deadline = time.monotonic() + startup_timeout_s
            while True:
                if proc.poll() is not None:
                    tail = (Path(tmp) / "server.log").read_text()[-2000:]
                    raise RuntimeError(f"OPTIMADE server exited ({proc.returncode}): {tail}")
                try:
                    with urllib.request.urlopen(f"{base}/v1/info", timeout=2) as r:
                        if r.status == 200:
                            break
                except (urllib.error.URLError, OSError):
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"OPTIMADE server did not answer within {startup_timeout_s:g} s")
                time.sleep(0.3)
            yield base
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()


# -- Materials Project ---------------------------------------------------------------------
class MaterialsProjectSettings(EnumerationSettings):
    """Settings of ``MaterialsProjectGenerator``."""

    api_key_env: str = Field("MP_API_KEY", description="environment variable holding the Materials Project API key")
    criteria: dict = Field(
        default_factory=dict,
        description="keyword arguments of mp_api's materials.summary.search, "
        "e.g. {chemsys: Li-S, energy_above_hull: [0, 0.05]}",
    )


class MaterialsProjectGenerator(_EnumeratingGenerator):
    """Structures from the Materials Project API (``mp-api``); needs an API key in ``api_key_env``.

    Raises:
        InputError: at construction, when mp-api is not installed or the key is not set.
    """

    Settings: ClassVar[type[MaterialsProjectSettings]] = MaterialsProjectSettings
    operator: ClassVar[str] = "materials_project"

    def __init__(self, name: str = "materials_project", settings: dict | None = None, base_dir=None):
        del base_dir  # no path settings; accepted as every generator's constructor is
        super().__init__(name, settings)
        try:
            import mp_api.client  # noqa: F401
        except ImportError as exc:
            raise InputError("MaterialsProjectGenerator needs mp-api: pip install mp-api") from exc
        key = os.environ.get(self.settings.api_key_env)  # read when built, never at import
        if not key:
            raise InputError(f"no Materials Project API key: set the environment variable {self.settings.api_key_env}")
        self._key = key

    def _entries(self):
        from mp_api.client import MPRester

        with MPRester(self._key) as mpr:
            docs = mpr.materials.summary.search(**self.settings.criteria, fields=["material_id", "structure"])
        for doc in docs[: self.settings.max_entries]:
            yield doc.structure, {"material_id": str(doc.material_id)}, None


# -- ASE database / extended XYZ -------------------------------------------------------------
class AseDbSettings(EnumerationSettings):
    """Settings of ``AseDbGenerator``."""

    path: str = Field(description="ASE database (.db, .json) or extended XYZ file")
    format: Literal["auto", "db", "extxyz"] = Field("auto", description="auto: extxyz for .xyz/.extxyz, else ASE db")
    selection: str | None = Field(None, description="ASE db query, e.g. 'natoms<10,energy<0' (db only)")


class AseDbGenerator(_EnumeratingGenerator):
    """Structures from an ASE database or an extended XYZ file, in file order.

    Args:
        base_dir: folder a relative ``path`` is taken from (default: working directory).
    """

    Settings: ClassVar[type[AseDbSettings]] = AseDbSettings
    operator: ClassVar[str] = "ase_db"

    def __init__(self, name: str = "ase_db", settings: dict | None = None, base_dir: str | Path | None = None):
        super().__init__(name, settings)
        p = Path(self.settings.path)
        self.path = p if p.is_absolute() else Path(base_dir or Path.cwd()) / p
        if not self.path.exists():
            raise InputError("structure file not found", file=str(self.path))

    def _entries(self):
        from pymatgen.io.ase import AseAtomsAdaptor

        fmt = self.settings.format
        if fmt == "auto":
            fmt = "extxyz" if self.path.suffix.lower() in (".xyz", ".extxyz") else "db"
        if fmt == "extxyz":
            import ase.io

            rows = ((i, atoms) for i, atoms in enumerate(ase.io.iread(str(self.path), index=":", format="extxyz")))
        else:
            import ase.db

            db = ase.db.connect(str(self.path))
            rows = ((row.id, row.toatoms()) for row in db.select(self.settings.selection))
        for key, atoms in rows:
            prov = {"file": str(self.path), "row": key}
            if not atoms.pbc.all():
                yield None, prov, "not periodic in 3D"
                continue
            yield AseAtomsAdaptor.get_structure(atoms), prov, None
