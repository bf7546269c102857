"""A run's artifact store: one URI (local path or s3://), fsspec underneath, and the commit
protocol (DESIGN.md §4).

Layout:  <run>/run.json
         <run>/iter=00007/<stage>/<data files> + _COMMITTED.json

Commit protocol: a stage writes its data files, then `_COMMITTED.json` last, listing every file
with size, sha256 and row count, the config hash and the commits it consumed. A stage is done
iff its commit file exists and its files verify. Anything else in a stage folder is garbage
from a crash, deleted before the stage runs again. No rename is needed, so S3 behaves like a disk.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import os
import time
from dataclasses import dataclass

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

COMMIT = "_COMMITTED.json"
STAGES = ("explore", "select", "regenerate", "update", "eval")


class StoreError(RuntimeError):
    pass


def storage_options(uri: str, options: dict | None = None) -> dict:
    """fsspec options for a URI: for s3://, endpoint/region from SOLRL_S3_ENDPOINT or the
    standard AWS variables (credentials are picked up by botocore itself)."""
    opts = dict(options or {})
    if uri.startswith("s3://"):
        endpoint = os.environ.get("SOLRL_S3_ENDPOINT") or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        client = dict(opts.pop("client_kwargs", {}))
        if endpoint:
            client.setdefault("endpoint_url", endpoint)
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if region:
            client.setdefault("region_name", region)
        if client:
            opts["client_kwargs"] = client
        opts.setdefault("skip_instance_cache", True)
    return opts


def join(*parts: str) -> str:
    return "/".join(p.strip("/") if i else p.rstrip("/") for i, p in enumerate(parts) if p != "")


def iter_dir(iteration: int) -> str:
    return f"iter={iteration:05d}"


def _pause_for_crash_tests() -> None:
    """Fault injection for the crash/resume tests: with SOLRL_PAUSE_AFTER_WRITE_S set, wait
    after every data file so a test can kill the process between a data file and its commit.
    Unset (always, outside tests) it does nothing."""
    pause = float(os.environ.get("SOLRL_PAUSE_AFTER_WRITE_S", "0") or 0)
    if pause > 0:
        time.sleep(pause)


@dataclass
class RunStore:
    uri: str
    options: dict | None = None

    def __post_init__(self):
        self.uri = self.uri.rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.uri, **storage_options(self.uri, self.options))

    def check_writable(self) -> None:
        """Write and delete a probe file under the run root; one sentence if that fails."""
        probe = self.path(f".write-probe-{os.getpid()}")
        try:
            self.write_bytes(probe, b"ok")
            self.fs.rm(probe)
        except Exception as e:  # any backend error: permissions, no bucket, no endpoint
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise StoreError(
                f"the run store {self.uri} is not reachable or not writable ({type(e).__name__}: {reason}): "
                "pass a writable --run-root (a local folder or s3://bucket/prefix with credentials set)"
            ) from None

    # --- paths ---------------------------------------------------------------------------
    def path(self, *parts: str) -> str:
        return join(self.root, *parts)

    def stage_dir(self, iteration: int, stage: str) -> str:
        return self.path(iter_dir(iteration), stage)

    def url(self, path: str) -> str:
        """A full URL (with protocol) for a path in this store, for DuckDB and users."""
        proto = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
        return path if proto in ("file", "local") else f"{proto}://{path}"

    # --- bytes and tables ---------------------------------------------------------------------
    def write_bytes(self, path: str, data: bytes) -> None:
        self.fs.mkdirs(path.rsplit("/", 1)[0], exist_ok=True)
        with self.fs.open(path, "wb") as f:
            f.write(data)
        if not path.endswith((COMMIT, "run.json")):
            _pause_for_crash_tests()

    def read_bytes(self, path: str) -> bytes:
        with self.fs.open(path, "rb") as f:
            return f.read()

    def exists(self, path: str) -> bool:
        return self.fs.exists(path)

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

    # --- the commit protocol -------------------------------------------------------------------
    def data_files(self, iteration: int, stage: str) -> list[str]:
        d = self.stage_dir(iteration, stage)
        if not self.fs.exists(d):
            return []
        return sorted(p for p in self.fs.find(d) if not p.endswith("/" + COMMIT))

    def commit(self, iteration: int, stage: str, config_hash: str, inputs: dict[str, str] | None = None, extra: dict | None = None, started_at: float | None = None) -> dict:
        """Write `_COMMITTED.json` for every data file now in the stage folder."""
        d = self.stage_dir(iteration, stage)
        files = {}
        for p in self.data_files(iteration, stage):
            data = self.read_bytes(p)
            entry = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
            if p.endswith(".parquet"):
                entry["rows"] = pq.ParquetFile(io.BytesIO(data)).metadata.num_rows
            files[p[len(d) + 1 :]] = entry
        now = time.time()
        record = {
            "stage": stage,
            "iteration": iteration,
            "config_hash": config_hash,
            "inputs": inputs or {},
            "files": files,
            "started_at": started_at or now,
            "finished_at": now,
            "committed_at": _dt.datetime.fromtimestamp(now, _dt.timezone.utc).isoformat(),
            **(extra or {}),
        }
        self.write_json(join(d, COMMIT), record)
        return record

    def commit_record(self, iteration: int, stage: str) -> dict | None:
        p = join(self.stage_dir(iteration, stage), COMMIT)
        return self.read_json(p) if self.fs.exists(p) else None

    def commit_id(self, iteration: int, stage: str) -> str | None:
        """A content id of a commit (what consumers record as their inputs): the hash of its
        files' names and hashes, so a deterministic recomputation keeps the same id."""
        rec = self.commit_record(iteration, stage)
        if rec is None:
            return None
        listing = json.dumps(sorted((k, v["sha256"]) for k, v in rec["files"].items()))
        return hashlib.sha256(listing.encode()).hexdigest()[:16]

    def verify(self, iteration: int, stage: str, deep: bool = True) -> list[str]:
        """Problems with a stage's commit ([] = committed and intact). deep=False checks sizes only."""
        rec = self.commit_record(iteration, stage)
        if rec is None:
            return [f"{iter_dir(iteration)}/{stage}: not committed"]
        d = self.stage_dir(iteration, stage)
        problems = []
        for name, entry in rec["files"].items():
            p = join(d, name)
            if not self.fs.exists(p):
                problems.append(f"{iter_dir(iteration)}/{stage}/{name}: missing")
                continue
            if deep:
                digest = hashlib.sha256(self.read_bytes(p)).hexdigest()
                if digest != entry["sha256"]:
                    problems.append(f"{iter_dir(iteration)}/{stage}/{name}: sha256 mismatch (file changed after commit)")
            elif self.fs.size(p) != entry["size"]:
                problems.append(f"{iter_dir(iteration)}/{stage}/{name}: size mismatch")
        return problems

    def is_committed(self, iteration: int, stage: str, config_hash: str | None = None) -> bool:
        rec = self.commit_record(iteration, stage)
        if rec is None or (config_hash and rec["config_hash"] != config_hash):
            return False
        return not self.verify(iteration, stage)

    def clear_stage(self, iteration: int, stage: str) -> list[str]:
        """Delete everything in a stage folder (uncommitted leftovers, or a commit that failed
        verification); returns what was removed."""
        d = self.stage_dir(iteration, stage)
        if not self.fs.exists(d):
            return []
        removed = self.fs.find(d)
        commit = join(d, COMMIT)
        if self.fs.exists(commit):  # the commit goes first: a half-deleted stage never looks committed
            self.fs.rm(commit)
        for p in removed:
            if p != commit and self.fs.exists(p):
                self.fs.rm(p)
        return removed

    def iterations(self) -> list[int]:
        if not self.fs.exists(self.root):
            return []
        out = []
        for p in self.fs.ls(self.root, detail=False):
            name = p.rstrip("/").rsplit("/", 1)[-1]
            if name.startswith("iter="):
                out.append(int(name[5:]))
        return sorted(out)
