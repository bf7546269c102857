"""The update on 2 ranks (torch.distributed, gloo, over 2 Dask workers) against the 1-rank update
in this process: the same selection and rows upstream, adapters, EMA and loss terms equal within
the stated tolerance; a rank SIGKILLed mid-update fails the stage, and the resume gives the
uninterrupted 2-rank result bit for bit."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
from pipeline_helpers import TINY
from safetensors.numpy import load

pytestmark = pytest.mark.timeout(600)

# adapters after one iteration: |2 ranks - 1 rank| <= TOL (docs/scale-out-gpus.md states and derives it)
TOL = 1e-5
PAUSE_S = 0.25  # each rank sleeps after each micro-batch (the kill must land inside the update)


def _cfg(update_ranks: int = 1):
    from solrl.config import validate

    data = {k: dict(v) for k, v in TINY.items()}
    data["run"]["iterations"] = 1
    data["eval"]["every"] = 0
    data["nft"] = {
        "micro_batch": 2,
        "steps_per_iteration": 2,
    }  # 8 kept samples: 2 optimizer steps of 2 micro-batches (one per rank)
    data["cluster"] = {"update_ranks": update_ranks}
    return validate(data)


def _upstream(uri: str, update_ranks: int):
    from tasks import stages
    from tasks.run import open_run

    run = open_run(uri, _cfg(update_ranks))
    stages.run_stage(run, 0, "plan")
    for name in stages.plan_of(run, 0).stages[1:]:
        if name != "update":
            stages.run_stage(run, 0, name)
    return run


def _state(run_dir) -> dict[str, np.ndarray]:
    d = run_dir / "iter=00000" / "update" / "state"
    return {
        f"{p.parent.name}/{k}": v for p in sorted(d.rglob("*.safetensors")) for k, v in load(p.read_bytes()).items()
    }


@pytest.fixture(scope="module")
def cluster():
    """Two Dask workers (one rank each), the hook that slows each rank's micro-batches set before they start."""
    from distributed import Client

    from flows.cluster import dask_cluster
    from solrl.config import ClusterSection
    from tasks.ddp import cluster_in_use

    os.environ["SOLRL_UPDATE_PAUSE_S"] = str(PAUSE_S)
    try:
        with dask_cluster(ClusterSection(workers=2)) as address, Client(address) as client, cluster_in_use(address, 2):
            yield client
    finally:
        os.environ.pop("SOLRL_UPDATE_PAUSE_S", None)


@pytest.fixture(scope="module")
def one_and_two(tmp_path_factory, cluster):
    from tasks import stages
    from tasks.ddp import cluster_in_use
    from tasks.run import open_run
    from tasks.status import fingerprint

    root = tmp_path_factory.mktemp("ddp")
    with cluster_in_use(None, 1):
        one = _upstream(str(root / "one"), 1)
        stages.run_stage(one, 0, "update")
    two = _upstream(str(root / "two"), 2)
    t0 = time.perf_counter()
    stages.run_stage(two, 0, "update")
    seconds = time.perf_counter() - t0
    return root, fingerprint(open_run(str(root / "one"))), fingerprint(open_run(str(root / "two"))), seconds


def test_two_ranks_equal_one_rank(one_and_two):
    root, fp1, fp2, _ = one_and_two
    assert {k: v for k, v in fp1.items() if "update" not in k} == {
        k: v for k, v in fp2.items() if "update" not in k
    }  # same plan, selection, rows
    s1, s2 = _state(root / "one"), _state(root / "two")
    assert s1.keys() == s2.keys() and any(k.startswith("ema/") for k in s1)
    diff = max(float(np.abs(s1[k].astype(np.float64) - s2[k].astype(np.float64)).max()) for k in s1)
    moved = max(float(np.abs(s1[k]).max()) for k in s1 if k.startswith("policy/"))
    print(f"2 ranks vs 1 rank: max |adapter difference| = {diff:.3g} (largest adapter entry {moved:.3g})")
    assert diff <= TOL and moved > 100 * TOL  # equal within the tolerance, and the update did move the adapters
    m1 = pq.read_table(root / "one" / "iter=00000" / "update" / "metrics.parquet").to_pylist()
    m2 = pq.read_table(root / "two" / "iter=00000" / "update" / "metrics.parquet").to_pylist()
    assert len(m1) == len(m2) == 2
    for a, b in zip(m1, m2):
        assert a.keys() == b.keys()
        for k in (
            "loss",
            "policy_loss",
            "kl",
            "loss_pos",
            "loss_neg",
            "w_pos",
            "w_neg",
            "grad_norm",
            "ema_decay",
            "old_decay",
            "optimizer_step",
            "n_samples",
            "reward_mean",
        ):
            assert b[k] == pytest.approx(a[k], rel=1e-6, abs=1e-9), k


def test_a_killed_rank_fails_the_stage_and_the_resume_equals_the_uninterrupted_run(one_and_two, cluster, tmp_path):
    from tasks import ddp, stages

    root = one_and_two[0]
    run = _upstream(str(tmp_path / "killed"), 2)
    failure: list[BaseException] = []

    def update():
        try:
            stages.run_stage(run, 0, "update")
        except BaseException as e:  # noqa: BLE001 - handed to the test thread
            failure.append(e)

    t = threading.Thread(target=update)
    t.start()
    deadline = time.time() + 120
    while not (ddp.ACTIVE.get("store") and int(ddp.ACTIVE["store"].add("progress/1", 0)) >= 1):
        assert t.is_alive() and time.time() < deadline, f"the update never started: {failure}"
        time.sleep(0.05)  # polling the rank's progress counter
    os.kill(ddp.ACTIVE["pids"][1], signal.SIGKILL)
    t.join(120)
    assert not t.is_alive()
    assert len(failure) == 1 and isinstance(failure[0], ddp.UpdateRankFailed), failure
    print(failure[0])
    assert "rank 1" in str(failure[0]) and "resume" in str(failure[0])
    assert run.stage(0, "update").record is None  # nothing committed
    cluster.wait_for_workers(2, timeout=120)  # the nanny restarted the killed worker
    stages.run_stage(run, 0, "update")  # the resume
    killed, uninterrupted = _state(tmp_path / "killed"), _state(root / "two")
    assert killed.keys() == uninterrupted.keys() and all(np.array_equal(killed[k], uninterrupted[k]) for k in killed)
