"""The memory plan (solrl/memplan.py): its meta-device arithmetic against real CPU tensors on the
tiny pipelines, the presets under their GPU targets, and `sol-rl run` refusing a plan that does
not fit before any weight loads."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import torch
from pipeline_helpers import REPO
from tiny_pipelines import BUILDERS

from solrl import memplan, residency
from solrl.compute import TrainState, train_micro_batch
from solrl.config import RunConfig, load_config
from solrl.models import load_policy

pytestmark = pytest.mark.usefixtures("one_torch_thread")
GB = memplan.GB


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from solrl.shapes.prompts import train_prompts

    root = tmp_path_factory.mktemp("tiny")
    prompts = root / "prompts.txt"
    prompts.write_text("\n".join(train_prompts()[:30]) + "\n")
    return root, prompts


def _tiny_config(root, prompts, family, dtype, checkpointing, lora_bf16):
    weights = root / family
    if not weights.exists():
        BUILDERS[family](weights)
    return RunConfig.model_validate(
        {
            "model": {
                "family": family,
                "weights": str(weights),
                "resolution": 32,
                "max_sequence_length": 16,
                "lora_rank": 4,
                "lora_alpha": 8,
                "dtype": dtype,
            },
            "prompts": {"per_iteration": 2, "file": str(prompts)},
            "explore": {"n": 8, "steps": 2, "batch": 8},
            "select": {"k": 4},
            "rollout": {"steps": 3, "batch": 4, "solver": "dpm2"},
            "nft": {"micro_batch": 8, "gradient_checkpointing": checkpointing, "lora_bf16": lora_bf16},
            "reward": {"weights": {"shapes": 1.0}, "report": []},
        }
    )


def _real_bytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        key = t.untyped_storage()._cdata
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
    return total


def _measured_update(cfg) -> tuple[int, int]:
    """(peak bytes, transient peak bytes) of one update micro-batch with real CPU tensors: the
    persistent tensors counted as they are (weights, adapters and their gradients, EMA, AdamW
    moments, frozen encoders and VAE) plus the peak of torch.profiler's memory records (every
    allocation and free of the CPU allocator, in time order) over a second micro-batch."""
    from torch.profiler import ProfilerActivity, profile

    policy = load_policy(cfg)
    state = TrainState.fresh(policy, cfg)
    n = cfg.nft.micro_batch
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(n, *policy.latent_shape, generator=g), torch.randn(n, *policy.latent_shape, generator=g)
    t, r = torch.rand(n, generator=g), torch.rand(n, generator=g).double()
    cond = policy.encode_rows(["a red circle on the left"] * n)

    def micro_batch():
        tt = t.view(-1, *([1] * (x0.dim() - 1)))
        train_micro_batch(policy, cfg, x0, (1 - tt) * x0 + tt * eps, t, cond, r, 1, with_terms=False)

    micro_batch()
    state.optimizer.step()  # AdamW's moments exist from the first step on
    micro_batch()  # gradients exist: later micro-batches accumulate into them, as the plan counts
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        micro_batch()
    records = sorted(
        (e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"), key=lambda e: e.start_ns()
    )
    current = transient = 0
    for e in records:
        current += e.nbytes()
        transient = max(transient, current)
    persistent = [*policy.peft.parameters(), *policy.peft.buffers(), *(p.grad for p in policy.trainable_parameters())]
    persistent += list(state.ema.values()) + [
        v for s in state.optimizer.state.values() for v in s.values() if torch.is_tensor(v) and v.dim()
    ]
    for module in policy.frozen_modules().values():
        persistent += [*module.parameters(), *module.buffers()]
    return _real_bytes(persistent) + transient, transient


@pytest.mark.parametrize("family", ["flux", "sd3", "sana"])
@pytest.mark.parametrize("dtype,checkpointing,lora_bf16", [("float32", False, False), ("bfloat16", True, True)])
def test_plan_matches_a_cpu_measurement_on_the_tiny_pipelines(tiny, family, dtype, checkpointing, lora_bf16):
    cfg = _tiny_config(*tiny, family, dtype, checkpointing, lora_bf16)
    p = memplan.plan(cfg, device_type="cpu")
    peak, transient = _measured_update(cfg)
    assert p.peak_phase["update"] == "train"
    assert abs(p.peak_by_stage["update"] - peak) <= 0.15 * peak, (p.peak_by_stage["update"], peak)
    assert abs(p.activations["train"] - transient) <= 0.15 * transient, (p.activations["train"], transient)


def test_checkpointing_and_bf16_lora_shrink_what_the_update_keeps(tiny):
    off = memplan.plan(_tiny_config(*tiny, "flux", "bfloat16", False, False), device_type="cpu")
    on = memplan.plan(_tiny_config(*tiny, "flux", "bfloat16", True, True), device_type="cpu")
    assert on.saved_for_backward < 0.5 * off.saved_for_backward
    assert on.activations["train"] < off.activations["train"]


# --- the presets -----------------------------------------------------------------------------------
TARGETS = {  # (preset, overrides, target GB): the targets
    "flux, Transformer Engine (Blackwell)": ("flux", {}, 80),
    "flux, Hopper: emulated NVFP4": ("flux", {"explore.backend": "emulated"}, 141),
    "sana": ("sana", {}, 80),
    "sd35": ("sd35", {}, 141),
    "sd35, low memory": ("sd35", {"model.low_memory": True}, 80),
}


@pytest.mark.parametrize("case", list(TARGETS))
def test_presets_plan_under_their_targets(case):
    preset, over, target = TARGETS[case]
    cfg = load_config(preset).with_overrides(**over)
    p = memplan.plan(cfg)
    assert p.peak <= target * GB, f"{case}: {memplan.format_plan(p)}"
    assert set(p.peak_by_stage) == {"baseline", "explore", "select", "regenerate", "update", "eval"}
    assert (
        p.table["update"].get("explore_copy") is None and p.table["update"].get("regenerate_copy") is None
    )  # freed for the update
    if over.get("model.low_memory"):
        assert p.sizes["regenerate_copy"] == 0 == p.sizes["eval_copy"]
    assert p.fits[next(label for label in memplan.GPUS if label.startswith(str(target)))]


def test_the_runtime_places_modules_by_the_plans_schedule():
    cfg = load_config("flux")
    assert residency.frozen_on_device(cfg, "encode") == {"text_encoders"}
    assert residency.frozen_on_device(cfg, "decode") == {"vae"}
    assert residency.frozen_on_device(cfg, "sample") == set()
    assert residency.sampler_on_device(cfg, "update") == set()
    assert residency.sampler_on_device(cfg, "regenerate") == {"regenerate_copy"}
    assert "text_encoders" not in memplan.resident(cfg, "explore", "decode")
    kept = cfg.with_overrides(**{"model.offload": False})
    assert residency.frozen_on_device(kept, "sample") == {"text_encoders", "vae"}


def test_sizes_parse():
    assert (
        memplan.parse_size("80GB") == 80 * GB
        and memplan.parse_size("81559MiB") == 81559 * 2**20
        and memplan.parse_size("141") == 141 * GB
    )
    with pytest.raises(ValueError, match="not a size"):
        memplan.parse_size("lots")


def test_a_run_that_cannot_fit_is_refused_before_any_weight_loads(tmp_path):
    """`sol-rl run configs/sana.yaml --gpu-memory 16GB`: one sentence naming the stage and the
    shortfall, exit 2, before the weights (which do not exist here) or prompts are looked at."""
    import yaml

    # explore.backend emulated: without Transformer Engine here, the preset would stop at the TE check first
    data = yaml.safe_load((REPO / "configs" / "sana.yaml").read_text())
    data["explore"]["backend"] = "emulated"
    (tmp_path / "cfg").mkdir()
    config = tmp_path / "cfg" / "sana.yaml"
    config.write_text(yaml.safe_dump(data))
    runs = tmp_path / "runs"
    t0 = time.time()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "flows.cli",
            "run",
            str(config),
            "--gpu-memory",
            "16GB",
            "--run-root",
            str(runs),
            "--no-prefect",
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [
        ln
        for ln in proc.stderr.splitlines()
        if ln.strip() and not ln.startswith(("Failed to load", "W1", "[transformers]", "USDT"))
    ]
    message = " ".join(lines)
    assert message.startswith("error: the memory plan of this sana config needs"), message
    assert (
        "GB in the baseline stage" in message
        and "more than the 16.0 GB of --gpu-memory" in message
        and "--no-memory-check" in message
    )
    assert (
        "weights are missing" not in message
        and "prompts" not in message.split("--no-memory-check")[0].split("GB of")[0]
    )
    assert not runs.exists() or not list(runs.iterdir())  # no run was created
    print(f"refused in {time.time() - t0:.1f}s")


def test_low_memory_samplers_share_the_base_weights_and_sample_as_the_merged_copy(tiny):
    root, prompts = tiny
    cfg = _tiny_config(root, prompts, "flux", "float32", True, False)
    merged_policy = load_policy(cfg)
    shared_policy = load_policy(cfg.with_overrides(**{"model.low_memory": True}))
    g = torch.Generator().manual_seed(1)
    old = {k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in merged_policy.adapter_state("old").items()}
    for policy in (merged_policy, shared_policy):  # the same perturbed "old" adapter in both
        policy.load_adapter("old", old)
    merged, _ = merged_policy.sampler_copy(None)
    shared, _ = shared_policy.sampler_copy(None)
    assert type(shared).__name__ == "SharedSampler" and shared.policy is shared_policy  # holds no weights of its own
    assert not isinstance(shared, torch.nn.Module)
    prompts_, seeds = ["a red circle on the left"] * 2, [3, 4]
    want = merged_policy.sample(merged, prompts_, seeds, 3)
    got = shared_policy.sample(shared, prompts_, seeds, 3)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    # a later snapshot (another adapter state) does not leak into the first sampler
    ema = {k: torch.zeros_like(v) for k, v in shared_policy.adapter_state("default").items()}
    current = shared_policy.adapter_state("default")
    shared_policy.load_adapter("default", ema)
    other = shared_policy.sampler_copy(None, adapter="default")[0]
    shared_policy.load_adapter("default", current)
    shared_policy.sample(other, prompts_, seeds, 3)
    torch.testing.assert_close(shared_policy.sample(shared, prompts_, seeds, 3), want, rtol=1e-4, atol=1e-4)


def test_a_mode_without_explore_plans_no_explore_copy():
    cfg = load_config("flux").with_overrides(**{"run.mode": "diffusionnft"})
    assert residency.sampler_on_device(cfg, "select") == set() and residency.sampler_on_device(cfg, "explore") == set()
    assert "explore_copy" not in memplan.resident(cfg, "select", "idle")
