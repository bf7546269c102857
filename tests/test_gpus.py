"""GPU assignment as data (solrl/gpus.py): on 1, 2 and 8 GPUs with 1, 2 and 8 workers, no GPU is
ever given to two processes, the flow's process is never on a worker's GPU, and what does not fit
is one sentence saying how many workers do."""

from __future__ import annotations

import itertools

import pytest

from solrl.errors import ConfigError
from solrl.gpus import flow_stages, format_gpu_assignment, gpu_assignment


@pytest.mark.parametrize("gpus,workers,ranks", list(itertools.product((1, 2, 8), (1, 2, 8), (1, 2, 8))))
def test_no_gpu_is_shared(gpus, workers, ranks):
    if ranks > workers:
        with pytest.raises(ConfigError, match="update_ranks .* one rank per Dask worker"):
            gpu_assignment(gpus, workers, 1, ranks, flow_stages(ranks))
        return
    in_flow = flow_stages(ranks)  # the 1-rank update holds a model in the flow's process; nothing else does
    fits = workers + (1 if in_flow else 0) <= gpus
    if not fits:
        with pytest.raises(ConfigError, match=r"lower cluster\.workers to \d+"):
            gpu_assignment(gpus, workers, 1, ranks, in_flow)
        return
    a = gpu_assignment(gpus, workers, 1, ranks, in_flow)
    owners = a.owners()
    assert all(len(o) <= 1 for o in owners.values()), owners  # one process per GPU
    assert all(len(ds) == 1 for ds in a.workers) and len(a.workers) == workers
    assert not set(a.flow) & {d for ds in a.workers for d in ds}
    assert bool(a.flow) == bool(in_flow)  # the flow's process has a GPU exactly when it holds a model
    assert a.ranks == (tuple(range(ranks)) if ranks > 1 else ())  # ranks are workers: no GPU of their own
    text = format_gpu_assignment(a)
    assert text.count("\n") == gpus and ("flow process" in text) == bool(in_flow)
    print(f"{gpus} GPU(s), {workers} worker(s), {ranks} rank(s):\n{text}")


def test_the_readme_example_on_eight_gpus():
    """`workers: 8, gpus_per_worker: 1` on 8 GPUs: before, worker 0 and the flow met on GPU 0."""
    with pytest.raises(ConfigError, match="keeps GPU 0 for update.*lower cluster.workers to 7 .*update_ranks > 1"):
        gpu_assignment(8, 8, 1, 1, flow_stages(1))
    a = gpu_assignment(8, 7, 1, 1, flow_stages(1))
    assert a.flow == ("0",) and a.workers == tuple((str(i),) for i in range(1, 8))
    a = gpu_assignment(8, 8, 1, 8, flow_stages(8))  # the update on 8 ranks: the flow's process holds no model
    assert (
        a.flow == ()
        and a.ranks == tuple(range(8))
        and sorted(d for ds in a.workers for d in ds) == [str(i) for i in range(8)]
    )
    assert "GPU 7: worker 7 (explore, regenerate, audit, eval, update rank 7)" in format_gpu_assignment(a)


def test_visible_devices_and_the_cluster_helper(monkeypatch):
    from flows.cluster import gpu_sets

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")  # a batch scheduler's allocation
    assert gpu_sets(3, 1) == [["5"], ["6"], ["7"]]
    assert gpu_sets(2, 2, update_ranks=2) == [["4", "5"], ["6", "7"]]
    with pytest.raises(ConfigError, match="gpus_per_worker is 0"):
        gpu_assignment(["4", "5"], 2, 0)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert (
        format_gpu_assignment(gpu_assignment([], 2, 0, 2))
        == "no GPU visible: the flow's process and 2 Dask worker(s) on the CPU; update on 2 ranks (workers 0, 1)"
    )
