"""Thin Prefect tasks: each opens the run by URI, calls one step from `tasks.steps`, returns a URI.

Retries are for transient storage I/O only (network/S3 errors); bad input and compute errors
fail at once.
"""

from __future__ import annotations

from prefect import task

from . import steps


def _storage_error_only(task, task_run, state) -> bool:
    try:
        state.result()
    except (OSError, ConnectionError, TimeoutError) as e:  # s3fs/aiohttp errors derive from these
        return not isinstance(e, (FileNotFoundError, PermissionError))
    except Exception:
        return False
    return False


RETRY = dict(retries=3, retry_delay_seconds=[1, 4, 15], retry_condition_fn=_storage_error_only)


@task(name="explore-shard", **RETRY)
def explore_shard(run_uri: str, iteration: int, shard: int) -> str:
    return steps.explore_shard(steps.open_run(run_uri), iteration, shard)


@task(name="regenerate-shard", **RETRY)
def regenerate_shard(run_uri: str, iteration: int, shard: int) -> str:
    return steps.regenerate_shard(steps.open_run(run_uri), iteration, shard)


@task(name="begin-stage", **RETRY)
def begin_stage(run_uri: str, iteration: int, stage: str) -> float | None:
    """Clear a stage's leftovers; None if it is already committed (skip it)."""
    return steps.begin_stage(steps.open_run(run_uri), iteration, stage)


@task(name="commit-stage", **RETRY)
def commit_stage(run_uri: str, iteration: int, stage: str, started_at: float) -> str:
    return steps.commit_sharded(steps.open_run(run_uri), iteration, stage, started_at)


def sharded(run_uri: str, iteration: int, stage: str) -> None:
    """begin -> one task per prompt shard (mapped) -> commit. Called from a flow."""
    started = begin_stage(run_uri, iteration, stage)
    if started is None:
        return
    n = steps.shard_count(steps.open_run(run_uri), iteration, stage)
    fn = explore_shard if stage == "explore" else regenerate_shard
    fn.map(run_uri, iteration, list(range(n))).result()  # raises the first failing shard
    commit_stage(run_uri, iteration, stage, started)


@task(name="select", **RETRY)
def select(run_uri: str, iteration: int) -> str:
    return steps.select_step(steps.open_run(run_uri), iteration)


@task(name="update", **RETRY)
def update(run_uri: str, iteration: int) -> str:
    return steps.update_step(steps.open_run(run_uri), iteration)


@task(name="evaluate", **RETRY)
def evaluate(run_uri: str, iteration: int) -> str | None:
    return steps.eval_step(steps.open_run(run_uri), iteration)
