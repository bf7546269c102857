"""The update on `cluster.update_ranks` ranks: a torch.distributed process group formed over the
Dask workers that already hold the model (docs/design.md, "Scale-out": the update on several ranks).

    launcher (the update step, the flow's process)        rank r (a Dask worker, one per rank)
    begin: skip if committed, clear leftovers
    TCPStore on a free port (the rendezvous) ----------->  init_process_group(gloo | nccl)
    one task per rank, pinned to a distinct worker ------>  the committed regenerate rows, the
                                                            worker's cached policy at `iteration`,
                                                            its micro-batches; all-reduce; step
    watch: a failed rank or a worker that left fails       rank 0: state files, metrics.parquet
    the stage (one sentence), nothing committed
    commit (lease-checked) <------------------------------  rank 0's metrics rows

Workers are taken in the order of their names, so rank r is the same worker across attempts
(a restarted nanny keeps its name) and the result does not depend on which worker answers
first. A rank's worker keeps its policy marked dirty (tasks/cache.py): the commit is the
launcher's, so the next stage on that worker restores the committed adapters from the store.

The scheduler: the one the flow runs on (flows/cluster.py publishes it with `cluster_in_use`),
else `cluster.address`, else a LocalCluster of `update_ranks` workers started for the stage
(`sol-rl run --no-prefect`; it loads the model in every rank each iteration).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
import uuid
from datetime import timedelta

import pyarrow as pa
import torch

from solrl import compute, interrupt
from solrl.checkpoint import state_files
from solrl.ddp import Ranks, backend_for
from solrl.nft import timesteps_per_sample
from solrl.progress import progress_bar
from storage.queries import read_stage

from .cache import CACHE
from .run import Run, open_run

log = logging.getLogger("solrl")

# What the flow's process runs on now: set by flows/cluster.py for the duration of a run (the
# tasks re-open the run from run.json, whose `cluster` section is the creating run's, not this one's).
_IN_USE: dict = {}
# The launch in progress (rank -> worker address and pid, the rendezvous store): for logs and tests.
ACTIVE: dict = {}


class UpdateRankFailed(RuntimeError):
    """A rank of the distributed update failed or its worker died: nothing was committed."""


@contextlib.contextmanager
def cluster_in_use(address: str | None, update_ranks: int):
    """Publish the scheduler and the rank count of the run in progress to the update step."""
    saved = dict(_IN_USE)
    _IN_USE.update(address=address, update_ranks=update_ranks)
    try:
        yield
    finally:
        _IN_USE.clear()
        _IN_USE.update(saved)


def update_ranks(run: Run) -> int:
    return _IN_USE.get("update_ranks") or run.cfg.cluster.update_ranks


# --- a rank (runs on a Dask worker) -------------------------------------------------------------
def read_samples(run: Run, iteration: int) -> compute.Samples:
    """What the update trains on: every committed regenerate row (each rank needs the rewards of
    all rows for the advantages; the x0 it does not own are not moved to its device)."""
    t = read_stage(run.store, iteration, "regenerate", "prompt_id, prompt, seed, reward, x0").to_pydict()
    return compute.Samples(
        t["prompt_id"],
        t["prompt"],
        torch.stack([compute.tensor_from_bytes(b) for b in t["x0"]]),
        torch.tensor(t["reward"], dtype=torch.float64),
    )


def write_update(run: Run, iteration: int, policy, state, rows: list[dict], seconds: dict) -> None:
    """The update stage's files (as tasks/steps.py write_update writes them)."""
    h = run.stage(iteration, "update")
    for name, data in state_files(policy, state).items():
        h.write_bytes(f"state/{name}", data)
    table = pa.Table.from_pylist(
        [
            {"run_id": run.run_id, "iteration": iteration, **{k: float(v) for k, v in {**r, **seconds}.items()}}
            for r in rows
        ]
    )
    h.write_table("metrics.parquet", table)


def rank_main(
    run_uri: str,
    iteration: int,
    rank: int,
    world: int,
    rendezvous: str,
    lease: str | None,
    seconds: dict,
    started: float,
) -> list[dict] | None:
    """One rank of the update of `iteration`; rank 0 writes the stage's files and returns the metrics rows."""
    import torch.distributed as dist

    from solrl.settings import settings
    from storage.lease import Lease

    from .run import worker

    pause = settings().update_pause_s  # a test's window to kill a rank mid-update (0 otherwise)
    run = open_run(run_uri)
    if lease:
        run.lease = Lease(run.store, owner=lease, held=True)
    host, port = rendezvous.rsplit(":", 1)
    store = dist.TCPStore(host, int(port), is_master=False, timeout=timedelta(seconds=_timeout_s()))
    store.set(f"worker/{rank}", worker())
    with CACHE.mutating(run, iteration) as (
        policy,
        state,
    ):  # dirty: the launcher commits, this worker restores next time
        samples = read_samples(run, iteration)
        dist.init_process_group(
            backend_for(policy.device),
            store=store,
            rank=rank,
            world_size=world,
            timeout=timedelta(seconds=_timeout_s()),
        )
        try:

            def progress(n: int) -> None:
                store.add(f"progress/{rank}", n)
                if pause:
                    time.sleep(pause)

            rows = compute.update(policy, state, run.cfg, iteration, samples, progress, Ranks(rank, world))
        finally:
            dist.destroy_process_group()
        if rank != 0:
            return None
        if run.lease is not None:
            run.lease.check()  # taken over meanwhile: write nothing
        write_update(run, iteration, policy, state, rows, {**seconds, "seconds_update": time.time() - started})
        return rows


def _timeout_s() -> float:
    """A collective (or the rendezvous) that waits longer fails the rank (SOLRL_UPDATE_TIMEOUT_S)."""
    from solrl.settings import settings

    return settings().update_timeout_s


# --- the launcher (the update step) -------------------------------------------------------------
def _reachable_host(scheduler: str) -> str:
    """This host's address as the scheduler's hosts reach it (the interface routing to it)."""
    from solrl.settings import settings

    if settings().update_store_host:
        return settings().update_store_host
    host = scheduler.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")
    if host in ("127.0.0.1", "localhost", "::1"):
        return "127.0.0.1"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((host, 9))  # no packet is sent: this only picks the route
        return s.getsockname()[0]


@contextlib.contextmanager
def _scheduler(run: Run, world: int):
    address = _IN_USE.get("address") or run.cfg.cluster.address
    if address:
        yield address
        return
    if run.resolved.device.startswith("cuda"):
        from solrl.errors import ConfigError

        raise ConfigError(
            f"cluster.update_ranks ({world}) on GPUs needs the run's Dask workers, one per GPU: set cluster.workers and cluster.gpus_per_worker "
            "(local workers started for the update alone would all share GPU 0)"
        )
    from .local_cluster import start_local_cluster

    log.info(
        "update on %d ranks without a Dask cluster: starting %d local workers for the stage (set cluster.workers to keep them across iterations)",
        world,
        world,
    )
    c = start_local_cluster(world)
    try:
        yield c.scheduler_address
    finally:
        c.close()


def _rank_workers(client, world: int) -> list[str]:
    info = client.scheduler_info()["workers"]
    by_name = sorted(info, key=lambda a: (str(info[a].get("name")), a))
    if len(by_name) < world:
        raise UpdateRankFailed(
            f"cluster.update_ranks is {world} but the Dask scheduler has {len(by_name)} worker(s): start more workers or lower cluster.update_ranks"
        )
    return by_name[:world]


def _scheduler_workers(client) -> set[str]:
    """The workers the scheduler holds now (asked, not the client's periodically refreshed copy)."""
    return set(client.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.workers)))


def _gone(client, workers: list[str], futures) -> list[int]:
    """The ranks whose worker left the scheduler before the rank finished."""
    alive = _scheduler_workers(client)
    return [r for r, w in enumerate(workers) if w not in alive and futures[r].status != "finished"]


def distributed_update(run: Run, iteration: int, started: float, seconds: dict[str, float]) -> dict:
    """The update stage's files computed on `update_ranks` ranks (launch, watch; rank 0 writes);
    returns what the commit records (the lifecycle in tasks/stages.py begins and commits).
    `seconds`: the iteration's earlier stage times, written into metrics.parquet."""
    import torch.distributed as dist
    from distributed import Client

    world = update_ranks(run)
    lease = run.lease.owner if run.lease is not None else None
    total = len(read_stage(run.store, iteration, "regenerate", "seed")) * timesteps_per_sample(
        run.cfg.rollout.steps, run.cfg.nft.timestep_fraction
    )
    with _scheduler(run, world) as address, Client(address) as client:
        workers = _rank_workers(client, world)
        host = _reachable_host(address)
        store = dist.TCPStore(host, 0, is_master=True, wait_for_workers=False, timeout=timedelta(seconds=_timeout_s()))
        rendezvous = f"{host}:{store.port}"
        pids = client.run(os.getpid, workers=workers)
        ACTIVE.clear()
        ACTIVE.update(iteration=iteration, workers=workers, pids=[pids[w] for w in workers], store=store)
        log.info(
            "iteration %d update on %d ranks (%s), rendezvous %s",
            iteration,
            world,
            ", ".join(f"rank {r}: {w} pid {pids[w]}" for r, w in enumerate(workers)),
            rendezvous,
        )
        tag = uuid.uuid4().hex[:8]
        futures = [
            client.submit(
                rank_main,
                run.uri,
                iteration,
                r,
                world,
                rendezvous,
                lease,
                seconds,
                started,
                workers=[w],
                allow_other_workers=False,
                pure=False,
                key=f"update-{iteration}-rank-{r}-{tag}",
            )
            for r, w in enumerate(workers)
        ]
        try:
            done = 0
            with progress_bar(f"iter {iteration} update ({world} ranks)", total) as advance:
                while True:
                    time.sleep(0.25)  # polling: the rank counters and the workers' liveness want a look either way
                    now = sum(int(store.add(f"progress/{r}", 0)) for r in range(world))
                    advance(now - done)
                    done = now
                    failed = [r for r, f in enumerate(futures) if f.status == "error"]
                    gone = _gone(client, workers, futures)
                    if failed or gone:
                        # a rank's error is often its peer's death: give the scheduler a second to notice it
                        time.sleep(1.0)
                        gone = _gone(client, workers, futures)
                    if gone:
                        raise UpdateRankFailed(
                            f"iteration {iteration} update: the worker of rank {gone[0]} ({workers[gone[0]]}, pid {pids[workers[gone[0]]]}) died; "
                            "nothing was committed: resume the run"
                        )
                    if failed:
                        e = futures[failed[0]].exception()
                        raise UpdateRankFailed(
                            f"iteration {iteration} update: rank {failed[0]} on worker {workers[failed[0]]} failed ({type(e).__name__}: "
                            f"{(str(e).splitlines() or [''])[0]}); nothing was committed: resume the run"
                        )
                    if all(f.status == "finished" for f in futures):
                        break
                    interrupt.check()
            rows = futures[0].result()
            computed_by = sorted({store.get(f"worker/{r}").decode() for r in range(world)})  # host:pid of every rank
        except BaseException:
            client.cancel(futures)
            raise
        finally:
            ACTIVE.clear()
    if not all(r["applied"] for r in rows):
        log.warning("iteration %d: non-finite loss or gradient, optimizer step(s) skipped", iteration)
    return {"update_ranks": world, "rank_workers": workers, "workers": computed_by}
