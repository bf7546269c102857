"""Thin Prefect tasks: each opens the run by URI, runs one stage (or one shard) of the stage table
(tasks/stages.py), returns a URI.

Retries are for transient storage I/O only (network/S3 errors, a full disk that may clear);
bad input, compute errors and requested stops fail at once. A retried attempt is equivalent to
a first one: every step restarts from the committed inputs (tasks/cache.py).
"""

from __future__ import annotations

import errno

from prefect import task
from prefect.futures import wait

from solrl import interrupt
from storage.lease import Lease

from . import stages
from .run import open_run


def _transient(task, task_run, state) -> bool:
    try:
        state.result()
    except (OSError, ConnectionError, TimeoutError) as e:  # s3fs/aiohttp errors derive from these
        return not isinstance(e, (FileNotFoundError, PermissionError)) and getattr(e, "errno", None) != errno.EROFS
    except Exception:
        return False
    return False


RETRY = dict(retries=3, retry_delay_seconds=[1, 4, 15], retry_condition_fn=_transient)


def _open(run_uri: str, lease: str | None):
    run = open_run(run_uri)
    if lease:  # commits check the driver still holds the run (it keeps the heartbeat)
        run.lease = Lease(run.store, owner=lease, held=True)
    return run


@task(name="stage", task_run_name="{name}-{iteration}", **RETRY)
def stage(run_uri: str, iteration: int | None, name: str, lease: str | None = None) -> str:
    """A whole non-sharded stage (plan, select, audit, update, eval, baseline)."""
    return stages.run_stage(_open(run_uri, lease), iteration, name)


@task(name="begin-stage", task_run_name="begin-{name}-{iteration}", **RETRY)
def begin(run_uri: str, iteration: int, name: str, lease: str | None = None) -> float | None:
    """Clear a stage's leftovers; None if it is already committed (skip it)."""
    return stages.begin(_open(run_uri, lease), iteration, name)


@task(name="shard", task_run_name="{name}-{iteration}-{shard}", **RETRY)
def shard(run_uri: str, iteration: int, name: str, shard: int, lease: str | None = None) -> str:
    return stages.STAGES[name].shard(_open(run_uri, lease), iteration, shard)


@task(name="commit-stage", task_run_name="commit-{name}-{iteration}", **RETRY)
def commit(run_uri: str, iteration: int, name: str, started: float, lease: str | None = None) -> str:
    return stages.commit(_open(run_uri, lease), iteration, name, started)


def run_stage(run_uri: str, iteration: int | None, name: str, lease: str | None = None) -> None:
    """One stage from a flow: a single task, or begin -> one task per shard (mapped) -> commit."""
    if not stages.STAGES[name].sharded:
        stage(run_uri, iteration, name, lease)
        return
    started = begin(run_uri, iteration, name, lease)
    if started is None:
        return
    n = stages.shard_count(open_run(run_uri), iteration, name)
    futures = shard.map(run_uri, iteration, name, list(range(n)), lease)
    while wait(futures, timeout=0.5).not_done:  # shards may run on Dask workers, which never see our signals:
        interrupt.check()  # a requested stop ends the wait (the cluster is closed on the way out)
    interrupt.check()
    futures.result()  # raises the first failing shard
    commit(run_uri, iteration, name, started, lease)
