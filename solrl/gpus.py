"""Which process owns which GPU of a node: a pure function of the node's GPUs and the config.

Rules (docs/scale-out-gpus.md):
  * a Dask worker owns `cluster.gpus_per_worker` GPUs of its own (its CUDA_VISIBLE_DEVICES);
  * the ranks of the update are workers (tasks/ddp.py): rank r is the r-th worker by name, on
    that worker's GPUs, reusing the model the worker holds: no GPU gets a second copy;
  * the flow's process owns one GPU of its own when it holds a model: with workers, only the
    update does (`update_ranks: 1`; explore, regenerate, audit, eval and the baseline are sharded
    onto the workers); without workers, everything runs there. It is the first visible GPU, and
    no worker is given it. With the update on ranks, the flow's process holds no model and every
    GPU can go to a worker.
A node without enough GPUs for that is a config error (one sentence), never a shared GPU.
Torch-free: `sol-rl status` and `sol-rl plan` print it without loading anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import ConfigError
from .settings import settings


def visible_gpus() -> list[str]:
    """The GPUs this process may use: its own CUDA_VISIBLE_DEVICES (e.g. a scheduler's
    allocation "4,5,6,7"), else all of them (torch is imported only then)."""
    visible = settings().cuda_visible_devices
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


@dataclass(frozen=True)
class GpuAssignment:
    devices: tuple[str, ...]  # the node's visible GPUs (CUDA_VISIBLE_DEVICES ids)
    flow: tuple[str, ...]  # the flow's process (empty: it holds no model on a GPU)
    workers: tuple[tuple[str, ...], ...]  # worker i's GPUs (empty tuples: workers on the CPU)
    ranks: tuple[int, ...]  # update rank r runs on worker ranks[r] (empty: the update runs in the flow's process)
    flow_stages: tuple[str, ...] = ()  # the stages that hold a model in the flow's process
    external: bool = False  # an existing scheduler: its workers' GPUs are set where they start
    idle: tuple[str, ...] = field(default=())

    def owners(self) -> dict[str, list[str]]:
        """GPU -> the processes that hold a model on it (at most one, by construction)."""
        out: dict[str, list[str]] = {d: [] for d in self.devices}
        for d in self.flow:
            out[d].append("flow")
        for i, ds in enumerate(self.workers):
            for d in ds:
                out[d].append(f"worker {i}")
        return out


def flow_stages(update_ranks: int) -> tuple[str, ...]:
    """The stages that load a model in the flow's process when there are workers: the update on
    one rank. (plan and select load none; explore, regenerate, audit, eval and baseline are
    sharded onto the workers; without workers everything runs in the flow's process.)"""
    return ("update",) if update_ranks <= 1 else ()


def gpu_assignment(
    devices,
    workers: int,
    gpus_per_worker: int,
    update_ranks: int = 1,
    stages_in_flow: tuple[str, ...] = ("update",),
    external: bool = False,
) -> GpuAssignment:
    """The GPU of each process on a node with `devices` (a count or the list of visible ids)."""
    devices = tuple(str(d) for d in (range(devices) if isinstance(devices, int) else devices))
    if (
        devices and update_ranks > 1 and not external and workers < update_ranks
    ):  # (on a CPU the update may start its own workers)
        raise ConfigError(
            f"cluster.update_ranks ({update_ranks}) runs one rank per Dask worker, but cluster.workers is {workers}: "
            "set cluster.workers to at least update_ranks"
        )
    ranks = tuple(range(update_ranks)) if update_ranks > 1 else ()
    if not devices or external:
        return GpuAssignment(
            devices,
            devices[:1] if devices and stages_in_flow else (),
            tuple(() for _ in range(0 if external else workers)),
            ranks,
            stages_in_flow,
            external,
            devices[1:] if devices and stages_in_flow else devices,
        )
    if workers and not gpus_per_worker:
        raise ConfigError(
            f"{len(devices)} GPU(s) are visible but cluster.gpus_per_worker is 0: the {workers} workers would all use GPU {devices[0]}; "
            "set cluster.gpus_per_worker (1 = one worker per GPU)"
        )
    flow = devices[:1] if stages_in_flow or not workers else ()
    pool = devices[len(flow) :]
    need = workers * gpus_per_worker
    if need > len(pool):
        why = f"the flow's process keeps GPU {flow[0]} for {', '.join(stages_in_flow)}, " if flow else ""
        raise ConfigError(
            f"cluster.workers x cluster.gpus_per_worker = {need} GPUs, but {why}{len(pool)} of the {len(devices)} visible GPUs are left for workers: "
            f"lower cluster.workers to {len(pool) // max(1, gpus_per_worker)}"
            + (" (or train the update on the workers: cluster.update_ranks > 1)" if flow else "")
        )
    sets = tuple(pool[i * gpus_per_worker : (i + 1) * gpus_per_worker] for i in range(workers))
    return GpuAssignment(devices, flow, sets, ranks, stages_in_flow if flow else (), False, pool[need:])


def format_gpu_assignment(a: GpuAssignment) -> str:
    """The table `sol-rl status` prints: one line per GPU."""
    if a.external:
        head = "an existing Dask scheduler: its workers' GPUs are set where they are started (one worker per GPU: CUDA_VISIBLE_DEVICES)"
        lines = [head] + ([f"  GPU {a.flow[0]}: flow process ({', '.join(a.flow_stages)})"] if a.flow else [])
        return "\n".join(lines)
    if not a.devices:
        where = f"the flow's process and {len(a.workers)} Dask worker(s)" if a.workers else "the flow's process"
        ranks = f"; update on {len(a.ranks)} ranks (workers {', '.join(map(str, a.ranks))})" if a.ranks else ""
        return f"no GPU visible: {where} on the CPU{ranks}"
    rank_of = {w: r for r, w in enumerate(a.ranks)}
    lines = [
        f"GPU assignment ({len(a.devices)} GPU(s), {len(a.workers)} worker(s)"
        + (f", update on {len(a.ranks)} ranks" if a.ranks else ", update in the flow's process")
        + "):"
    ]
    for d in a.devices:
        if d in a.flow:
            lines.append(f"  GPU {d}: flow process ({', '.join(a.flow_stages) or 'no model'})")
            continue
        owner = next((i for i, ds in enumerate(a.workers) if d in ds), None)
        if owner is None:
            lines.append(f"  GPU {d}: idle")
        else:
            rank = f", update rank {rank_of[owner]}" if owner in rank_of else ""
            lines.append(f"  GPU {d}: worker {owner} (explore, regenerate, audit, eval{rank})")
    return "\n".join(lines)


def for_config(cfg, devices) -> GpuAssignment:
    """The assignment of a run config (solrl.config.RunConfig) on a node with `devices`."""
    c = cfg.cluster
    stages = flow_stages(c.update_ranks)
    return gpu_assignment(devices, c.workers, c.gpus_per_worker, c.update_ranks, stages, external=bool(c.address))
