"""Where an iteration's explore and regenerate shards run: in this process (the default), or on
Dask workers through prefect-dask's DaskTaskRunner (the config's `cluster` section).

    cluster.address: tcp://host:8786     an existing scheduler (its workers need this checkout
                                         installed, and a Prefect server: PREFECT_API_URL)
    cluster.workers: 2                   a LocalCluster started for the run and closed after it
    cluster.gpus_per_worker: 1           one worker per GPU: each worker process gets its own
                                         CUDA_VISIBLE_DEVICES (a SpecCluster of Nannies); which
                                         process owns which GPU: solrl/gpus.py
    cluster.update_ranks: 2              the update data parallel on 2 of the workers (tasks/ddp.py)

Mapped shard tasks go to Dask (explore, regenerate, audit, eval, baseline: one per prompt), and
the update's ranks when `update_ranks` > 1; plan and select (no model) and the 1-rank update are
single tasks in the flow's process. A worker loads the model once (tasks/cache.py, a process-wide cache)
and reuses it across tasks and iterations; tasks pass run URIs and receive file URIs, never
tensors. One thread per worker: the cache is thread-safe, but torch on a CPU wants the cores.
"""

from __future__ import annotations

import contextlib
import logging
import os

from prefect.task_runners import ThreadPoolTaskRunner

from solrl.gpus import flow_stages, gpu_assignment, visible_gpus
from tasks.ddp import cluster_in_use

log = logging.getLogger("solrl")


def task_runner(address: str | None):
    """The iteration subflow's runner. (Pass the scheduler by address: a DaskTaskRunner given a
    cluster object would start a second cluster when Prefect duplicates the runner.)"""
    if address is None:
        return ThreadPoolTaskRunner(max_workers=1)
    from prefect_dask import DaskTaskRunner

    return DaskTaskRunner(address=address)


def _quiet_dask() -> None:
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")  # read by the workers when they import distributed
    # the shards' own exceptions decide the run; a worker that died is retried by Dask (allowed-failures)
    logging.getLogger("distributed").setLevel(logging.WARNING)
    logging.getLogger("prefect.task_runner.dask").setLevel(logging.WARNING)


def gpu_sets(workers: int, per_worker: int, update_ranks: int = 1) -> list[list[str]]:
    """The devices of each worker (solrl/gpus.py): the first visible GPU stays with the flow's
    process while it holds a model (the update on one rank); never is a GPU given to two
    processes (too few GPUs: a ConfigError saying how many workers fit)."""
    return [
        list(s)
        for s in gpu_assignment(visible_gpus(), workers, per_worker, update_ranks, flow_stages(update_ranks)).workers
    ]


@contextlib.contextmanager
def dask_cluster(cluster, storage=None):
    """Yield the scheduler address the iterations run on (None: in this process), published to
    the update step with the rank count (tasks/ddp.py). A cluster started here is closed on every
    exit path Python runs; on SIGKILL its workers exit by themselves when their scheduler goes.
    `storage`: the run's storage section, whose S3 endpoint and region the workers started here
    get in their environment."""
    with _dask_cluster(cluster, storage) as address, cluster_in_use(address, cluster.update_ranks):
        yield address


@contextlib.contextmanager
def _dask_cluster(cluster, storage=None):
    if not (cluster.address or cluster.workers):
        yield None
        return
    _quiet_dask()
    if cluster.address:
        from prefect.settings import get_current_settings

        if not get_current_settings().api.url:
            log.warning(
                "cluster.address with ephemeral Prefect: start a Prefect server and set PREFECT_API_URL, "
                "so workers on other hosts can reach it and keep recording task runs across runs"
            )
        yield cluster.address
        return
    import dask
    from distributed import Nanny, Scheduler, SpecCluster

    from tasks.local_cluster import start_local_cluster

    threads = cluster.threads_per_worker
    # Dask's nannies start workers with MALLOC_TRIM_THRESHOLD_=65536, which pins glibc's mmap
    # threshold at 128 KiB: every torch intermediate is then mmap'ed and faulted in afresh, and
    # sampling ran 2.5-3x slower on a worker than in this process (benchmarks/scaling.py).
    # Unset here, for the clusters we start; workers of an external scheduler: flows/dask_worker.py.
    # (the nannies read it when they are built, and reuse it when they restart a worker)
    spawn_env = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}
    for var, value in (
        ("SOLRL_S3_ENDPOINT", getattr(storage, "s3_endpoint", None)),
        ("SOLRL_S3_REGION", getattr(storage, "s3_region", None)),
    ):
        if value:  # the workers open the run by its URI: they need the endpoint the config names
            spawn_env[f"distributed.nanny.pre-spawn-environ.{var}"] = value
    with dask.config.set(spawn_env):
        if cluster.gpus_per_worker:
            workers = {
                f"gpu{i}": {
                    "cls": Nanny,
                    "options": {
                        "name": f"gpu{i}",
                        "nthreads": threads,
                        "host": "127.0.0.1",
                        "dashboard": False,
                        "silence_logs": logging.ERROR,
                        "env": {"CUDA_VISIBLE_DEVICES": ",".join(devices)},
                        "resources": {"GPU": len(devices)},
                        "preload": ["flows.dask_worker"],
                    },
                }
                for i, devices in enumerate(gpu_sets(cluster.workers, cluster.gpus_per_worker, cluster.update_ranks))
            }
            scheduler = {
                "cls": Scheduler,
                "options": {"host": "127.0.0.1", "port": 0, "dashboard": False, "dashboard_address": "127.0.0.1:0"},
            }
            c = SpecCluster(workers=workers, scheduler=scheduler, silence_logs=logging.ERROR)
        else:
            worker_env = {k.rsplit(".", 1)[-1]: v for k, v in spawn_env.items() if v is not None}
            c = start_local_cluster(cluster.workers, threads, worker_env)
    try:
        yield c.scheduler_address
    finally:
        c.close()


@contextlib.contextmanager
def api_for_workers(address: str | None):
    """prefect-dask sends the flow's settings with every task. In ephemeral mode those name no
    API, and each worker would start a temporary Prefect server of its own: give them the URL of
    this process's temporary server instead. Nothing to do with a configured server."""
    from prefect.context import FlowRunContext
    from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings

    if address is None or get_current_settings().api.url:
        yield
        return
    url = str(FlowRunContext.get().client.api_url).rstrip("/")
    with temporary_settings({PREFECT_API_URL: url}):
        yield
