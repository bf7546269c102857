"""A run's artifact store: one URI (local path or s3://), fsspec underneath, and the commit
protocol (docs/design.md, "Writes, commits, leases, faults").

Layout:  <run>/run.json, <run>/_LEASE.json
         <run>/baseline/<files> + _COMMITTED.json              (run-scoped stages)
         <run>/iter=00007/<stage>/<data files> + _COMMITTED.json

Commit protocol: a stage writes its data files, then `_COMMITTED.json` last, listing every file
with size, sha256, row count (and, for Parquet with volatile columns, a content digest without
them), the config hash and the content ids of the commits it consumed. A stage is done iff its
commit record parses, its files verify, and its hash and inputs are current. Anything else in a
stage folder is garbage from a crash, deleted before the stage runs again.

Every file is written atomically: on a local disk to a hidden temporary name in the same
folder, then renamed; on S3 as one PUT (an object appears whole or not at all). So a reader
never sees half a file, and a cut-off commit record cannot exist.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from solrl.settings import settings

COMMIT = "_COMMITTED.json"
TMP_PREFIX = ".tmp-"
# Columns that name the run rather than describe its content: kept out of content ids, so two
# runs that computed the same thing have the same ids (what the policy cache keys on).
IDENTITY_COLUMNS = ("run_id",)
# Columns that differ between identical recomputations (who computed a row, how long it took, the
# update's per-stage timings): kept out of content ids too, so a resumed or re-run stage that
# computed the same rows has the same id. A new stage that names its columns so needs no declaration.
VOLATILE_COLUMNS = ("duration_ms", "worker")
VOLATILE_PREFIX = "seconds_"


def volatile_columns(names: list[str]) -> tuple[str, ...]:
    return tuple(c for c in names if c in VOLATILE_COLUMNS or c.startswith(VOLATILE_PREFIX))


class StoreError(RuntimeError):
    """The store cannot be used (unreachable, not writable): an environment problem."""


# S3 endpoint and region of the runs this process opened with a config (storage.s3_endpoint /
# s3_region): a later RunStore(uri) of the same run, e.g. a Prefect task's, finds them here.
_S3_OPTIONS: dict[str, tuple[str | None, str | None]] = {}


def remember_s3_options(uri: str, endpoint: str | None, region: str | None) -> None:
    if uri.startswith("s3://") and (endpoint or region):
        _S3_OPTIONS[uri.rstrip("/")] = (endpoint, region)


def storage_options(uri: str, endpoint: str | None = None, region: str | None = None) -> dict:
    """fsspec options for a URI. For s3://: endpoint and region (arguments, else those the run was
    opened with in this process, else settings); credentials are botocore's own business;
    connection errors fail after a few seconds."""
    if not uri.startswith("s3://"):
        return {}
    s = settings()
    known = next(
        (v for k, v in sorted(_S3_OPTIONS.items(), key=lambda kv: -len(kv[0])) if uri.rstrip("/").startswith(k)),
        (None, None),
    )
    client = {
        k: v
        for k, v in (
            ("endpoint_url", endpoint or known[0] or s.s3_endpoint),
            ("region_name", region or known[1] or s.s3_region),
        )
        if v
    }
    return {
        "client_kwargs": client,
        "config_kwargs": {"connect_timeout": 5, "read_timeout": 60, "retries": {"max_attempts": 3, "mode": "standard"}},
        "skip_instance_cache": True,
    }


def join(*parts: str) -> str:
    return "/".join(p.strip("/") if i else p.rstrip("/") for i, p in enumerate(parts) if p != "")


def iter_dir(iteration: int) -> str:
    return f"iter={iteration:05d}"


def content_digest(table: pa.Table, volatile: tuple[str, ...]) -> str:
    """sha256 of a table without its volatile columns (Arrow IPC of the rest)."""
    keep = [c for c in table.column_names if c not in volatile]
    sink = pa.BufferOutputStream()
    t = table.select(keep).combine_chunks()
    with pa.ipc.new_stream(sink, t.schema) as w:
        w.write_table(t)
    return hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()


# Wrappers applied to the file system of every store this process opens afterwards, e.g. the
# fault injection of storage/faults.py. Installed by whoever drives the process (the reliability
# tests, the soak benchmark), never read from the environment.
_FS_WRAPPERS: list[Callable[[fsspec.AbstractFileSystem], fsspec.AbstractFileSystem]] = []


def add_filesystem_wrapper(wrap: Callable[[fsspec.AbstractFileSystem], fsspec.AbstractFileSystem]) -> None:
    """Every store opened from now on in this process uses `wrap(file system)`."""
    _FS_WRAPPERS.append(wrap)


def remove_filesystem_wrapper(wrap) -> None:
    if wrap in _FS_WRAPPERS:
        _FS_WRAPPERS.remove(wrap)


@dataclass
class RunStore:
    uri: str
    endpoint: str | None = None
    region: str | None = None
    fs: fsspec.AbstractFileSystem = field(init=False, repr=False)

    def __post_init__(self):
        self.uri = self.uri.rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.uri, **storage_options(self.uri, self.endpoint, self.region))
        self.local = self._protocol in ("file", "local")
        for wrap in _FS_WRAPPERS:
            self.fs = wrap(self.fs)

    @property
    def _protocol(self) -> str:
        p = self.fs.protocol
        return p if isinstance(p, str) else p[0]

    def check_writable(self) -> None:
        """Write and delete a probe file under the run root; StoreError (one sentence) if that fails."""
        probe = self.path(f".write-probe-{os.getpid()}")
        try:
            self.write_bytes(probe, b"ok")
            self.fs.rm(probe)
        except Exception as e:  # any backend error: permissions, no bucket, no endpoint, no credentials
            raise StoreError(
                f"the run store {self.uri} is not reachable or not writable ({describe(e)}): "
                "pass a writable --run-root (a local folder or s3://bucket/prefix with credentials set)"
            ) from None

    # --- paths ---------------------------------------------------------------------------
    def path(self, *parts: str) -> str:
        return join(self.root, *parts)

    def url(self, path: str) -> str:
        """A full URL (with protocol) for a path in this store, for DuckDB and users."""
        return path if self.local else f"{self._protocol}://{path}"

    # --- bytes and tables ---------------------------------------------------------------------
    def write_bytes(self, path: str, data: bytes) -> None:
        """Atomic: a reader sees the old file, or nothing, or the whole new file."""
        folder, name = path.rsplit("/", 1)
        if self.local:
            self.fs.mkdirs(folder, exist_ok=True)
            tmp = join(folder, f"{TMP_PREFIX}{uuid.uuid4().hex[:8]}-{name}")
            try:
                self.fs.pipe_file(tmp, data)
                self.fs.mv(tmp, path)
            except BaseException:
                if os.path.exists(tmp):
                    os.remove(tmp)
                raise
        else:
            self.fs.pipe_file(path, data)  # one PUT

    def read_bytes(self, path: str) -> bytes:
        return self.fs.cat_file(path)

    def exists(self, path: str) -> bool:
        return self.fs.exists(path)

    def remove(self, path: str) -> None:
        if self.fs.exists(path):
            self.fs.rm(path)

    def write_table(self, path: str, table: pa.Table) -> None:
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        self.write_bytes(path, buf.getvalue())

    def read_table(self, path: str) -> pa.Table:
        return pq.read_table(io.BytesIO(self.read_bytes(path)))

    def write_json(self, path: str, obj) -> None:
        self.write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())

    def read_json(self, path: str):
        return json.loads(self.read_bytes(path))

    # --- stages ---------------------------------------------------------------------------------
    def stage(self, iteration: int | None, name: str) -> StageHandle:
        """The handle of one stage of one iteration (iteration None for run-scoped stages)."""
        return StageHandle(self, iteration, name)

    def iterations(self) -> list[int]:
        if not self.fs.exists(self.root):
            return []
        out = []
        for p in self.fs.ls(self.root, detail=False):
            name = p.rstrip("/").rsplit("/", 1)[-1]
            if name.startswith("iter="):
                out.append(int(name[5:]))
        return sorted(out)

    def stage_names(self, iteration: int) -> list[str]:
        """The stage folders present in an iteration (committed or not)."""
        path = self.path(iter_dir(iteration))
        if not self.fs.exists(path):
            return []
        return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(path, detail=False) if self.fs.isdir(p))


@dataclass
class StageHandle:
    """One stage of one iteration: is it done, its files, write, commit, verify."""

    store: RunStore
    iteration: int | None
    name: str

    @property
    def label(self) -> str:
        return self.name if self.iteration is None else f"{iter_dir(self.iteration)}/{self.name}"

    @property
    def dir(self) -> str:
        return (
            self.store.path(self.name)
            if self.iteration is None
            else self.store.path(iter_dir(self.iteration), self.name)
        )

    @property
    def url(self) -> str:
        return self.store.url(self.dir)

    def file(self, name: str) -> str:
        return join(self.dir, name)

    # --- the record ---------------------------------------------------------------------------
    def read_record(self) -> tuple[dict | None, str | None]:
        """(record, None) when committed; (None, None) when not; (None, problem) when the record
        cannot be read (damaged): resume treats that as not committed, verify reports it."""
        p = self.file(COMMIT)
        if not self.store.exists(p):
            return None, None
        try:
            rec = json.loads(self.store.read_bytes(p))
            if not isinstance(rec, dict) or not isinstance(rec.get("files"), dict) or "config_hash" not in rec:
                raise ValueError("not a commit record")
            return rec, None
        except (ValueError, UnicodeDecodeError) as e:
            return (
                None,
                f"{self.label}/{COMMIT}: damaged commit record ({type(e).__name__}); the next resume recomputes the stage",
            )

    @property
    def record(self) -> dict | None:
        return self.read_record()[0]

    def content_id(self, record: dict | None = None) -> str | None:
        """The content id consumers record as their input: a hash of the files' names and
        (content) digests, so a deterministic recomputation keeps the same id."""
        rec = record or self.record
        if rec is None:
            return None
        listing = json.dumps(sorted((k, v.get("content", v["sha256"])) for k, v in rec["files"].items()))
        return hashlib.sha256(listing.encode()).hexdigest()[:16]

    def data_files(self) -> list[str]:
        """Every file in the stage folder but the commit record (relative names)."""
        if not self.store.exists(self.dir):
            return []
        n = len(self.dir) + 1
        return sorted(p[n:] for p in self.store.fs.find(self.dir) if not p.endswith("/" + COMMIT))

    # --- writing ------------------------------------------------------------------------------
    def write_table(self, name: str, table: pa.Table) -> None:
        self.store.write_table(self.file(name), table)

    def write_bytes(self, name: str, data: bytes) -> None:
        self.store.write_bytes(self.file(name), data)

    def exists(self, name: str) -> bool:
        return self.store.exists(self.file(name))

    def clear(self) -> list[str]:
        """Delete everything in the stage folder (uncommitted leftovers, or a commit that failed
        verification), the commit record first: a half-deleted stage never looks committed."""
        removed = self.data_files()
        self.store.remove(self.file(COMMIT))
        for name in removed:
            self.store.remove(self.file(name))
        return removed

    def commit(
        self,
        config_hash: str,
        inputs: dict[str, str] | None = None,
        extra: dict | None = None,
        started_at: float | None = None,
    ) -> dict:
        """Write `_COMMITTED.json` for every data file now in the stage folder."""
        files, workers = {}, set()
        for name in self.data_files():
            if name.rsplit("/", 1)[-1].startswith(TMP_PREFIX):
                continue  # a temporary left by a writer that died: not data
            data = self.store.read_bytes(self.file(name))
            entry = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
            if name.endswith(".parquet"):
                table = pq.read_table(io.BytesIO(data))
                entry["rows"] = table.num_rows
                if "worker" in table.column_names:
                    workers.update(w for w in table.column("worker").unique().to_pylist() if w)
                ignored = volatile_columns(table.column_names) + IDENTITY_COLUMNS
                if any(c in table.column_names for c in ignored):
                    entry["content"] = content_digest(table, ignored)
            files[name] = entry
        now = time.time()
        record = {
            "stage": self.name,
            "iteration": self.iteration,
            "config_hash": config_hash,
            "inputs": inputs or {},
            "files": files,
            "started_at": started_at or now,
            "finished_at": now,
            "committed_at": _dt.datetime.fromtimestamp(now, _dt.UTC).isoformat(),
            **({"workers": sorted(workers)} if workers else {}),
            **(extra or {}),
        }
        self.store.write_json(self.file(COMMIT), record)
        return record

    # --- checking -----------------------------------------------------------------------------
    def problems(self, deep: bool = True) -> list[str]:
        """What is wrong with the commit ([] = committed and every file intact). deep=False
        compares sizes only."""
        rec, damaged = self.read_record()
        if rec is None:
            return [damaged or f"{self.label}: not committed"]
        out = []
        for name, entry in rec["files"].items():
            p = self.file(name)
            if not self.store.exists(p):
                out.append(f"{self.label}/{name}: missing")
            elif deep and hashlib.sha256(self.store.read_bytes(p)).hexdigest() != entry["sha256"]:
                out.append(f"{self.label}/{name}: sha256 mismatch (file changed after commit)")
            elif not deep and self.store.fs.size(p) != entry["size"]:
                out.append(f"{self.label}/{name}: size mismatch")
        return out

    def committed_files(self, suffix: str = ".parquet") -> list[str]:
        """URLs of the files the commit lists (never an uncommitted leftover)."""
        rec = self.record
        if rec is None:
            return []
        return [self.store.url(self.file(name)) for name in sorted(rec["files"]) if name.endswith(suffix)]


def describe(e: BaseException) -> str:
    """`Type: first line of the message` of an exception, for one-sentence errors."""
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__
