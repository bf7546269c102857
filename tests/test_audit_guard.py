"""The fidelity audit (every explored seed of the first prompts regenerated in high precision),
the guard that falls back when the proxy stops ranking, and the explore previews."""

from __future__ import annotations

import io
import os
import signal

import pytest
from PIL import Image
from test_reliability import micro, run_all

from solrl.fidelity import audit_metrics
from storage import faults
from storage.queries import read_stage
from tasks import stages
from tasks.run import open_run
from tasks.status import verify

pytestmark = [pytest.mark.timeout(600), pytest.mark.usefixtures("one_torch_thread")]

GUARD = {
    "fidelity.audit_prompts": 2,
    "fidelity.guard": {
        "enabled": True,
        "metric": "spearman",
        "threshold": 0.99,
        "window": 1,
        "fallback_precision": "fp8",
    },
    "run.iterations": 3,
}


def test_audit_rows_are_committed_verified_and_their_metrics_match(tmp_path):
    cfg = micro(**{"fidelity.audit_prompts": 2, "explore.n": 6})
    uri = str(tmp_path / "a")
    run_all(uri, cfg)
    run = open_run(uri)
    rows = read_stage(run.store, 0, "audit").to_pydict()
    plan = stages.plan_of(run, 0)
    assert sorted(set(rows["prompt_id"])) == sorted(pid for pid, _ in plan.prompts[:2]) and len(rows["seed"]) == 2 * 6
    regen = dict(zip(*read_stage(run.store, 0, "regenerate", "seed, reward").to_pydict().values()))
    kept = [i for i, s in enumerate(rows["selected"]) if s]
    assert len(kept) == 2 * 2 and all(
        rows["reward"][i] == regen[rows["seed"][i]] for i in kept
    )  # kept seeds reuse their regeneration
    ex = read_stage(run.store, 0, "explore", "seed, reward").to_pydict()
    proxy = dict(zip(ex["seed"], ex["reward"]))
    assert all(rows["proxy_reward"][i] == proxy[s] for i, s in enumerate(rows["seed"]))
    assert run.stage(0, "audit").record["fidelity"] == audit_metrics(rows, cfg.select.k)
    assert verify(run)[1] == []
    # the explore previews: one PNG per candidate, at the model's size (32 px for shapes)
    thumbs = read_stage(run.store, 0, "explore", "thumbnail").column("thumbnail").to_pylist()
    assert len(thumbs) == 2 * 6 and all(Image.open(io.BytesIO(t)).size == (32, 32) for t in thumbs)


def test_guard_falls_back_on_a_bad_proxy_and_resume_replays_its_decisions(tmp_path):
    cfg = micro(**GUARD)
    run_all(str(tmp_path / "g"), cfg, iterations=3)
    run = open_run(str(tmp_path / "g"))
    plans = [stages.plan_of(run, i) for i in range(3)]
    assert not plans[0].guard.fallback and plans[0].explore.precision == "nvfp4"
    assert plans[1].guard.fallback and "fallback" in plans[1].guard.decision and plans[1].explore.precision == "fp8"
    assert plans[1].primary.precision == "nvfp4"
    audit1 = read_stage(run.store, 1, "audit").to_pydict()
    assert set(audit1["proxy"]) == {"explore", "primary"}  # the guard keeps measuring the proxy it guards
    assert set(read_stage(run.store, 1, "explore", "precision").column("precision").to_pylist()) == {"fp8"}
    # SIGKILL while committing the switch (iteration 1's plan), then resume: the same decisions
    faults.reset()
    pid = os.fork()
    if pid == 0:
        faults.install("write@iter=00001/plan/_COMMITTED:1:kill")
        try:
            run_all(str(tmp_path / "k"), cfg, iterations=3)
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    run_all(str(tmp_path / "k"), cfg, iterations=3)
    resumed = open_run(str(tmp_path / "k"))
    assert [stages.plan_of(resumed, i) for i in range(3)] == plans
    for i in range(3):
        for name in ("plan", "explore", "audit", "update"):
            assert resumed.stage(i, name).content_id() == run.stage(i, name).content_id(), (i, name)
