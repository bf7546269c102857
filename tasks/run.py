"""A run: its store, its config and what `auto` resolved to, its lease.

`open_run(uri, cfg)` creates a run (writing run.json) or resumes one, refusing — in one
sentence naming the keys — a config that would compute something else. `open_run(uri)` opens
an existing run read-only (status, verify, inspect, report, export).
"""

from __future__ import annotations

import json
import os
import platform
import socket
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from solrl import __version__
from solrl.config import Resolved, RunConfig, diff_keys, split_removed
from solrl.errors import MissingInput
from solrl.settings import settings
from storage.lease import Lease
from storage.store import RunStore, StageHandle, describe, join, remember_s3_options

if TYPE_CHECKING:
    from solrl.plan import IterationPlan


class ConfigMismatch(ValueError):
    """A resume with a config that computes something else (bad input)."""


class RunDamaged(ValueError):
    """run.json cannot be read and cannot be rebuilt from the given config."""


@dataclass
class Run:
    store: RunStore
    cfg: RunConfig
    resolved: Resolved
    run_id: str
    lease: Lease | None = field(default=None, repr=False)
    # The hash the run was made with (run.json), kept when a later version added or removed config
    # keys without changing what the run computes; None for a new run.
    made_with: str | None = None

    @property
    def hash(self) -> str:
        return self.made_with or self.cfg.hash(self.resolved)

    @property
    def uri(self) -> str:
        return self.store.uri

    @property
    def reward_names(self) -> list[str]:
        return list(dict.fromkeys([*self.cfg.reward.weights, *self.cfg.reward.report]))

    def stage(self, iteration: int | None, name: str) -> StageHandle:
        """A stage of an iteration (iteration None: a run-scoped stage, the baseline)."""
        return self.store.stage(iteration, name)

    def acquire(self, take_over: bool = False) -> Lease:
        """Hold the run's lease (released by `release()`, on every exit path of the caller)."""
        from solrl import interrupt

        self.lease = Lease(self.store, timeout_s=settings().lease_timeout_s, on_lost=interrupt.request).acquire(
            take_over
        )
        return self.lease

    def release(self) -> None:
        if self.lease is not None:
            self.lease.release()


def _meta(run_id: str, cfg: RunConfig, resolved: Resolved) -> dict:
    import torch

    from solrl.quant import explore_engine

    return {
        "run_id": run_id,
        "config": cfg.model_dump(mode="json"),
        "resolved": resolved.model_dump(mode="json"),
        "explore_engine": explore_engine(cfg, resolved),  # a record, not hashed (solrl/quant/engines.py)
        "config_hash": cfg.hash(resolved),
        "code_version": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "created_at": datetime.now(UTC).isoformat(),
    }


def _read_meta(store: RunStore, run_id: str) -> tuple[dict | None, str | None]:
    """(run.json, None), (None, None) when absent, (None, why) when damaged."""
    path = store.path("run.json")
    if not store.exists(path):
        return None, None
    try:
        meta = json.loads(store.read_bytes(path))
        meta["config"], _ = split_removed(meta["config"])  # made before a key was removed
        RunConfig.model_validate(meta["config"])
        Resolved.model_validate(meta["resolved"])
        return meta, None
    except Exception as e:  # noqa: BLE001 - any unreadable run.json is "damaged"
        return None, describe(e)


def _committed_hashes(store: RunStore) -> set[str]:
    hashes = set()
    for i in store.iterations():
        for name in store.stage_names(i):
            rec = store.stage(i, name).record
            if rec:
                hashes.add(rec["config_hash"])
    rec = store.stage(None, "baseline").record
    if rec:
        hashes.add(rec["config_hash"])
    return hashes


def open_run(uri: str, cfg: RunConfig | None = None) -> Run:
    """Create or resume a run (with `cfg`), or open one read-only (without)."""
    from solrl.models import resolve

    run_id = uri.rstrip("/").rsplit("/", 1)[-1]
    if cfg is None:
        store = RunStore(uri)
        meta, damaged = _read_meta(store, run_id)
        if meta is None:
            if damaged:
                raise RunDamaged(
                    f"run.json of {uri} cannot be read ({damaged}): resume the run with its config (`sol-rl run CONFIG --run-id {run_id}`) to rebuild it"
                )
            raise MissingInput(f"no run at {uri} (no run.json): start it with `sol-rl run CONFIG --run-id {run_id}`")
        return Run(
            store,
            RunConfig.model_validate(meta["config"]),
            Resolved.model_validate(meta["resolved"]),
            run_id,
            made_with=meta["config_hash"],
        )
    remember_s3_options(
        uri, cfg.storage.s3_endpoint, cfg.storage.s3_region
    )  # for this process's later stores of the run
    store = RunStore(uri, cfg.storage.s3_endpoint, cfg.storage.s3_region)
    store.check_writable()  # unreachable or read-only: one sentence, before reading anything
    resolved = resolve(cfg)
    meta, damaged = _read_meta(store, run_id)
    if meta is not None:
        stored_cfg, stored_res = RunConfig.model_validate(meta["config"]), Resolved.model_validate(meta["resolved"])
        same = cfg.hash(resolved) == meta["config_hash"] or (
            # made by a version with other config keys: the same computation if the settings agree
            stored_cfg.hashed() == cfg.hashed() and stored_res == resolved
        )
        if not same:
            keys = diff_keys(
                {"config": stored_cfg.hashed(), "resolved": stored_res.model_dump(mode="json")},
                {"config": cfg.hashed(), "resolved": resolved.model_dump(mode="json")},
            )
            keys = [k.removeprefix("config.") for k in keys]
            raise ConfigMismatch(
                f"run {run_id} at {uri} was made with a different config (differing keys: {', '.join(keys)}): "
                "resume with the original config (and on a machine that resolves `auto` alike), or start a new run id"
            )
        return Run(store, cfg, resolved, run_id, made_with=meta["config_hash"])
    if damaged:
        others = _committed_hashes(store) - {cfg.hash(resolved)}
        if others:
            raise RunDamaged(
                f"run.json of {uri} cannot be read ({damaged}) and its committed stages were made with another config: "
                "resume with the original config, or start a new run id"
            )
    store.write_json(store.path("run.json"), _meta(run_id, cfg, resolved))
    return Run(store, cfg, resolved, run_id)


def worker() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


# --- what a run committed (read by the steps, status and the flow) ----------------------------------
def plan_of(run: Run, iteration: int) -> IterationPlan:
    """The committed plan of an iteration."""
    from solrl.plan import IterationPlan  # imports torch: not at start-up (a config error stays torch-free)

    h = run.stage(iteration, "plan")
    return IterationPlan.from_json(run.store.read_bytes(h.file("plan.json")))


def run_root(explicit: str | None = None, cfg: RunConfig | None = None) -> str:
    """Where runs live: --run-root, else $SOLRL_RUN_ROOT, else the config's storage.run_root, else ./runs."""
    return explicit or settings().run_root or (cfg.storage.run_root if cfg is not None else None) or "runs"


def default_run_id(config: str) -> str:
    return f"{Path(config).stem}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def check_memory(cfg: RunConfig, gpu_memory: str | None = None) -> None:
    """Refuse (one sentence, exit 2) a GPU run whose memory plan (solrl/memplan.py) exceeds the
    GPU: `gpu_memory` (e.g. "80GB") or the visible GPU's. Nothing to check for shapes or on a CPU."""
    if cfg.model.family == "shapes" or not cfg.model.memory_check:
        return
    from solrl import memplan

    if gpu_memory:
        memplan.check_fits(cfg, memplan.parse_size(gpu_memory), "--gpu-memory")
        return
    import torch

    if cfg.model.device == "cpu" or not torch.cuda.is_available():
        return
    props = torch.cuda.get_device_properties(0)
    memplan.check_fits(cfg, props.total_memory, f"this GPU ({props.name})")


def start_run(
    config: str,
    run_id: str | None = None,
    root: str | None = None,
    overrides: dict | None = None,
    cluster: str | None = None,
    gpu_memory: str | None = None,
    memory_check: bool = True,
) -> Run:
    """What every way of starting a run does once, before any weight loads: read and check the
    config (`overrides`: dotted keys; `cluster`: an existing Dask scheduler), the accelerator and
    the memory plan (`gpu_memory`, or the GPU's; `memory_check=False` skips it), the model's
    files, then create the run or validate a resumed one (solrl/config.py, open_run)."""
    from solrl.config import load_config

    cfg = load_config(config)  # torch-free: a bad key is reported in about a second
    if cluster:
        overrides = {**(overrides or {}), "cluster.address": cluster, "cluster.workers": 0}
    if overrides:
        cfg = cfg.with_overrides(**overrides)
    from solrl.accelerator import check_accelerator

    check_accelerator(cfg)  # Transformer Engine, its version, the GPU: before anything loads (torch-free)
    if memory_check:
        check_memory(cfg, gpu_memory)  # the plan on the meta device: no weight loads
    from solrl.models import check_model

    check_model(cfg)  # missing weights or prompt files: one sentence, before any run folder
    return open_run(join(run_root(root, cfg), run_id or default_run_id(config)), cfg)


__all__ = [
    "ConfigMismatch",
    "Run",
    "RunDamaged",
    "default_run_id",
    "join",
    "open_run",
    "plan_of",
    "run_root",
    "start_run",
    "worker",
]
