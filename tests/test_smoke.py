"""`sol-rl smoke` on the tiny random FLUX / SD3 / SANA pipelines, on the CPU: one prompt × 24 seeds,
one update, a real SIGKILL of the first process at regenerate's first write, the resume in this
process, verify; per stage the (CUDA-only) peak and the memory plan's prediction, "—" where absent."""

from __future__ import annotations

import json

import pytest
import yaml
from tiny_pipelines import BUILDERS

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny matrices


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory):
    from solrl.shapes.prompts import train_prompts

    p = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    p.write_text("\n".join(train_prompts()[:20]) + "\n")
    return p


def _tiny(tmp_path, family, prompt_file, build=True):
    weights = BUILDERS[family](tmp_path / family) if build else tmp_path / family
    cfg = {
        "model": {
            "family": family,
            "weights": str(weights),
            "resolution": 32,
            "max_sequence_length": 16,
            "lora_rank": 4,
            "lora_alpha": 8,
            "dtype": "float32",
        },
        "prompts": {"per_iteration": 4, "file": str(prompt_file)},
        "explore": {"n": 96, "steps": 2, "batch": 96},
        "select": {"k": 4},
        "rollout": {"steps": 2, "batch": 96, "solver": "euler"},
        "eval": {"every": 5, "steps": 2},
        "fidelity": {"audit_prompts": 2},
        "nft": {"micro_batch": 4, "steps_per_iteration": 3},
        "reward": {"weights": {"shapes": 1.0}, "report": []},
    }
    path = tmp_path / f"{family}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_smoke_config_is_one_prompt_24_seeds_one_update(tmp_path, prompt_file):
    from solrl.config import load_config
    from tasks.smoke import smoke_config

    cfg = smoke_config(load_config(_tiny(tmp_path, "flux", prompt_file, build=False)))
    assert (
        cfg.prompts.per_iteration,
        cfg.explore.n,
        cfg.select.k,
        cfg.run.iterations,
        cfg.nft.steps_per_iteration,
    ) == (1, 24, 4, 1, 1)
    assert (cfg.explore.batch, cfg.rollout.batch, cfg.eval.every, cfg.fidelity.audit_prompts) == (24, 24, 1, 1)
    preset = smoke_config(load_config("flux"))
    assert (preset.explore.n, preset.select.k, preset.model.compile_samplers, preset.explore.backend) == (
        24,
        24,
        True,
        "transformer_engine",
    )


@pytest.mark.parametrize("family", ["flux", "sd3", "sana"])
def test_smoke_on_the_tiny_pipelines(family, tmp_path, prompt_file):
    from tasks.smoke import format_rows, smoke

    result = smoke(str(_tiny(tmp_path, family, prompt_file)), str(tmp_path / "runs"), f"smoke-{family}")
    assert result.killed and result.resumed_regenerate and not result.problems and result.ok, result
    assert result.verified >= 7  # baseline, plan, explore, select, regenerate, audit, update, eval
    stages = [(r["stage"], r["process"]) for r in result.rows]
    first = [s for s, p in stages if p == "first"]
    resumed = [s for s, p in stages if p == "resumed"]
    assert first == ["plan", "baseline", "explore", "select"]  # then the SIGKILL at regenerate's first write
    assert resumed == ["regenerate", "audit", "update", "eval"]  # the resume recomputed regenerate, skipped the rest
    assert {r["pid"] for r in result.rows if r["process"] == "first"}.isdisjoint(
        {r["pid"] for r in result.rows if r["process"] == "resumed"}
    )
    import torch

    if not torch.cuda.is_available():
        assert all(r["peak_bytes"] is None for r in result.rows) and "CPU" in result.device
    for row in format_rows(result):
        assert row[3] == "—" or float(row[3]) >= 0
        assert row[4] == "—" or float(row[4]) > 0  # "—" until solrl.memplan exists
    # one update: one optimizer step, committed
    from tasks.run import open_run

    run = open_run(result.run_uri)
    rec = run.stage(0, "update").record
    assert rec is not None and "state/optimizer.safetensors" in rec["files"]
    assert json.loads(run.store.read_bytes(run.stage(0, "update").file("state/rng.json")))["optimizer_step"] == 1


def test_smoke_command_line(tmp_path, prompt_file):
    from pipeline_helpers import cli

    p = cli("smoke", "--help")
    assert "24" in p.stdout and "SIGKILL" in p.stdout
    from solrl.accelerator import installed_te_version

    if installed_te_version() is not None:
        return
    p = cli(
        "smoke", "configs/flux.yaml", "--run-root", tmp_path, check=False
    )  # no Transformer Engine here: refused before anything loads
    assert p.returncode == 2 and "explore.backend: emulated" in p.stderr and "Traceback" not in p.stderr
    assert not any(tmp_path.iterdir())
