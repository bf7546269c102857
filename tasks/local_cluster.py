"""A Dask LocalCluster on loopback as sol-rl starts one: worker processes with glibc's default
malloc thresholds (Dask's nannies otherwise pin them low and torch ran 2.5-3x slower on a worker,
benchmarks/scaling.py), quiet logs, the worker preload of flows/dask_worker.py. Used by the run's
cluster (flows/cluster.py) and by a multi-rank update that has no cluster (tasks/ddp.py)."""

from __future__ import annotations

import logging


def start_local_cluster(n_workers: int, threads_per_worker: int = 1, worker_env: dict[str, str] | None = None):
    """Start the cluster (close it with `.close()`); `worker_env`: variables set in every worker."""
    import dask
    from distributed import LocalCluster

    spawn_env = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}
    spawn_env |= {f"distributed.nanny.pre-spawn-environ.{k}": v for k, v in (worker_env or {}).items()}
    # the nannies read these when they are built, and reuse them when they restart a worker
    with dask.config.set(spawn_env):
        return LocalCluster(
            n_workers=n_workers,
            threads_per_worker=threads_per_worker,
            processes=True,
            host="127.0.0.1",
            scheduler_port=0,
            dashboard_address=None,
            scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
            silence_logs=logging.ERROR,
            preload=["flows.dask_worker"],
        )
