"""Runs kept in memory: the stage table, its steps and lifecycle exactly as `sol-rl run` executes
them, over fsspec's in-memory file system instead of a disk or a bucket. For tests, benchmarks
and notebooks that want an iteration's data as Python objects; there is no second executor.

    run = memory_run(cfg)
    for i in range(3):
        run_steps(run, i)
    data = iteration_data(run, 2)       # explore / selected / samples / metrics / eval
    policy, state = trained(run, 3)     # the policy and optimizer state after 3 iterations
    discard(run)
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import torch

from solrl.compute import TrainState, tensor_from_bytes
from solrl.config import RunConfig
from solrl.models.base import Policy
from solrl.plan import IterationPlan
from storage.queries import read_stage

from .cache import CACHE
from .run import Run, open_run, plan_of
from .stages import run_steps


def memory_run(cfg: RunConfig, name: str | None = None) -> Run:
    """A new run in this process's memory (a fresh name unless given)."""
    return open_run(f"memory://solrl/{name or uuid.uuid4().hex}", cfg)


def run_in_memory(cfg: RunConfig, iterations: int) -> Run:
    """A new in-memory run with `iterations` iterations computed."""
    run = memory_run(cfg)
    for i in range(iterations):
        run_steps(run, i)
    return run


@dataclass
class IterationData:
    plan: IterationPlan
    explore: dict[str, list] | None  # explore rows (None: the mode does not explore)
    selected: dict[str, list]
    samples: dict[str, list]  # the training samples' rows (regenerate)
    x0: torch.Tensor  # their final latents, in row order
    metrics: list[dict[str, float]]  # one row per optimizer step (without ids and wall times)
    eval: dict[str, list] | None
    audit: dict[str, list] | None
    seconds: dict[str, float]  # stage wall times from the commit records


def iteration_data(run: Run, iteration: int) -> IterationData:
    """What iteration i committed, read back from the store."""
    plan = plan_of(run, iteration)

    def rows(stage: str, columns: str = "*") -> dict[str, list] | None:
        if not plan.runs(stage):
            return None
        return read_stage(run.store, iteration, stage, columns).to_pydict()

    samples = rows("regenerate")
    seconds = {}
    for name in plan.stages:
        rec = run.stage(iteration, name).record
        if rec:
            seconds[name] = rec["finished_at"] - rec["started_at"]
    return IterationData(
        plan,
        rows("explore"),
        rows("select"),
        samples,
        torch.stack([tensor_from_bytes(b) for b in samples["x0"]]),
        [_algorithm_metrics(row) for row in read_stage(run.store, iteration, "update").to_pylist()],
        rows("eval"),
        rows("audit"),
        seconds,
    )


def _algorithm_metrics(row: dict) -> dict[str, float]:
    """A metrics row without the run's identity, its folder (DuckDB's hive column `iter`) and the wall
    times: what the update computed."""
    return {k: v for k, v in row.items() if k not in ("run_id", "iteration", "iter") and not k.startswith("seconds_")}


def trained(run: Run, iterations: int) -> tuple[Policy, TrainState]:
    """The policy (its adapters) and train state after `iterations` committed iterations. The
    policy is this process's cached one: copy what you keep (`adapter_state` returns copies)
    before another run uses it."""
    return CACHE.at(run, iterations)


def discard(run: Run) -> None:
    """Free the run's memory."""
    run.store.fs.rm(run.store.root, recursive=True)
