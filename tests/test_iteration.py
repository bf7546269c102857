"""Iterations of a run kept in memory (the product's stage steps over fsspec's memory file
system): every mode runs; runs are bit-identical."""

import pytest
import torch

from solrl.config import RunConfig
from tasks.in_memory import discard, iteration_data, memory_run, trained
from tasks.stages import run_steps

TINY = {
    "prompts.per_iteration": 2,
    "explore.n": 16,
    "select.k": 4,
    "eval.held_out_prompts": 2,
    "eval.train_prompts": 2,
    "eval.seeds_per_prompt": 1,
    "eval.steps": 6,
}


def _run(factory, cfg, iterations):
    """(policy, train state, per-iteration data) of a fresh in-memory run. The policy is the
    process's cached one (tasks/cache.py): read what you keep before the next run."""
    run = memory_run(cfg)
    for i in range(iterations):
        run_steps(run, i)
    results = [iteration_data(run, i) for i in range(iterations)]
    policy, state = trained(run, iterations)
    discard(run)
    return policy, state, results


def test_three_sol_rl_iterations_deterministic(shapes_policy_factory):
    cfg = RunConfig().with_overrides(**TINY)
    p1, s1, r1 = _run(shapes_policy_factory, cfg, 3)
    init = shapes_policy_factory(cfg).adapter_state("default")
    for res in r1:
        (m,) = res.metrics  # one optimizer step per iteration
        assert torch.isfinite(torch.tensor(m["loss"]))
        assert m["applied"] == 1.0
        assert len(res.selected["seed"]) == 2 * 4 and len(res.explore["seed"]) == 2 * 16
        assert set(res.selected["side"]) == {"top", "bottom"}
        assert (
            res.eval is not None and len(res.eval["reward"]) == 2 + 2 and set(res.eval["set"]) == {"train", "held_out"}
        )
    assert s1.step == 3
    theta = p1.adapter_state("default")
    assert any(not torch.equal(theta[k], init[k]) for k in init), "adapters did not change"
    old = p1.adapter_state("old")
    assert any(not torch.equal(old[k], init[k]) for k in init)
    # explore used 6 nvfp4 steps, training samples came from 10 full-precision steps
    assert set(r1[0].explore["precision"]) == {"nvfp4"} and set(r1[0].explore["steps"]) == {6}
    p2, s2, r2 = _run(shapes_policy_factory, cfg, 3)
    for k, v in p2.adapter_state("default").items():
        assert torch.equal(v, theta[k])
    assert all(torch.equal(v, s1.ema[k]) for k, v in s2.ema.items())
    assert [r.metrics for r in r1] == [r.metrics for r in r2]
    assert r1[2].explore["reward"] == r2[2].explore["reward"]


@pytest.mark.parametrize("mode", ["diffusionnft", "naive_scaling", "naive_quant"])
def test_other_modes_one_iteration(shapes_policy_factory, mode):
    over = dict(TINY, **{"run.mode": mode, "eval.every": 0})
    if mode == "naive_scaling":
        over["explore.precision"] = "high"
    cfg = RunConfig().with_overrides(**over)
    _, state, (res,) = _run(shapes_policy_factory, cfg, 1)
    assert state.step == 1 and torch.isfinite(torch.tensor(res.metrics[0]["loss"]))
    if mode == "diffusionnft":
        assert res.explore is None and len(res.samples["prompt"]) == 2 * 4
    else:
        steps = set(res.explore["steps"])
        assert steps == {10}  # naive modes explore at the rollout step count and train on it
        assert set(res.explore["precision"]) == ({"high"} if mode == "naive_scaling" else {"nvfp4"})
        # the training rewards are the explore rewards of the selected seeds
        by_seed = dict(zip(res.explore["seed"], res.explore["reward"]))
        assert res.samples["reward"] == [by_seed[s] for s in res.selected["seed"]]


def test_several_optimizer_steps_per_iteration(shapes_policy_factory):
    """nft.steps_per_iteration = 2: two optimizer steps over two halves of the kept samples, the
    EMA after each, the old policy decayed once (after the last), deterministic."""
    import copy

    from solrl import nft

    cfg = RunConfig().with_overrides(
        **{**TINY, "model.dtype": "float32", "nft.steps_per_iteration": 2, "eval.every": 0}
    )
    policy, state, (res,) = _run(shapes_policy_factory, cfg, 1)
    assert [m["step_in_iteration"] for m in res.metrics] == [0.0, 1.0] and [
        m["optimizer_step"] for m in res.metrics
    ] == [1.0, 2.0]
    assert [m["n_samples"] for m in res.metrics] == [4.0, 4.0]  # 2 prompts x K 4, split in two
    assert [m["ema_decay"] for m in res.metrics] == [nft.ema_decay(1), nft.ema_decay(2)]
    assert res.metrics[-1]["old_decay"] == nft.old_decay(2, cfg.nft.decay_type)
    # old = d * init + (1 - d) * theta, once, with d of step 2
    init = shapes_policy_factory(cfg).adapter_state("default")
    theta, old = policy.adapter_state("default"), policy.adapter_state("old")
    d = nft.old_decay(2, cfg.nft.decay_type)
    want = copy.deepcopy(init)
    nft.lerp_(want, theta, d)
    assert all(torch.equal(old[k], want[k]) for k in old)
    p2, s2, (res2,) = _run(shapes_policy_factory, cfg, 1)
    assert res2.metrics == res.metrics and all(torch.equal(v, theta[k]) for k, v in p2.adapter_state("default").items())
