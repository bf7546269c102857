"""The benchmark scripts (issue 7) in their --quick smoke mode: each writes its JSON (expected
keys, finite numbers), its PNG(s) and prints a markdown summary table."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

pytestmark = pytest.mark.timeout(600)


def run_quick(script: str, out: Path) -> str:
    # one torch thread: robust timing when the machine is shared; eager NVFP4 kernel (no compile)
    env = dict(os.environ, SOLRL_NO_COMPILE="1", MPLBACKEND="Agg")
    p = subprocess.run([sys.executable, f"benchmarks/{script}.py", "--quick", "--threads", "1", "--out", str(out)],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=540)
    assert p.returncode == 0, f"{script} --quick failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    assert "|---|" in p.stdout  # the markdown summary table
    return p.stdout


def load(out: Path, name: str) -> dict:
    data = json.loads((out / f"{name}.json").read_text())
    assert data["quick"] is True
    m = data["machine"]
    for key in ("platform", "cpu_model", "cpu_count", "torch", "torch_threads"):
        assert m[key], key
    assert m["torch_threads"] == 1
    for png in data["pngs"]:
        assert (out / png).read_bytes()[:8] == PNG_MAGIC, png
    assert (out / f"{name}.md").read_text().count("|---|") >= 1
    return data


def numbers(x):
    if isinstance(x, dict):
        for v in x.values():
            yield from numbers(v)
    elif isinstance(x, list):
        for v in x:
            yield from numbers(v)
    elif isinstance(x, (int, float)) and not isinstance(x, bool):
        yield x


def all_finite(x) -> bool:
    vals = list(numbers(x))
    return bool(vals) and all(math.isfinite(v) for v in vals)


def test_fidelity_quick(tmp_path):
    run_quick("fidelity", tmp_path)
    d = load(tmp_path, "fidelity")
    assert d["pngs"] == ["fidelity.png", "fidelity_heatmap.png"]
    steps = d["config"]["explore_steps"]
    assert set(d["overall"]) == {"nvfp4", "fp8", "none"}
    for prec, by_steps in d["overall"].items():
        assert sorted(int(s) for s in by_steps) == steps
        for m in by_steps.values():
            for key in ("spearman", "kendall", "top_hit", "bottom_hit", "mean_true_rank_top", "mean_true_rank_bottom"):
                assert math.isfinite(m[key]), (prec, key)
            assert -1 <= m["spearman"] <= 1 and 0 <= m["top_hit"] <= 1
            assert 1 <= m["mean_true_rank_top"] <= d["config"]["seeds_per_prompt"]
    assert len(d["per_prompt"]) == d["config"]["prompts"] == 2
    assert all(set(r["metrics"]) == {f"{p}/{s}" for p in ("nvfp4", "fp8", "none") for s in steps} for r in d["per_prompt"])
    assert set(d["best_steps"]) == {"nvfp4", "fp8", "none"}
    assert all_finite(d["sampling_seconds"])


def test_cost_quick(tmp_path):
    run_quick("cost", tmp_path)
    d = load(tmp_path, "cost")
    assert d["pngs"] == ["cost.png"]
    rows = d["timing"]["by_threads"]["1"]["rows"]
    assert {"rollout", "rollout-b24"} <= set(rows)
    assert {f"{p}/{s}" for p in ("nvfp4", "fp8", "none") for s in d["config"]["steps"]} <= set(rows)
    for r in rows.values():
        assert r["ms_per_candidate"] > 0 and math.isfinite(r["over_rollout"])
    assert rows["rollout"]["over_rollout"] == 1.0
    assert all_finite(d["timing"]["by_threads"]["1"]["linear_fit"])
    mem = d["memory"]
    assert mem["nvfp4"]["bits_per_weight"] == pytest.approx(4.5, abs=0.01)  # ALGORITHM §4: 4.5 bits per quantised weight
    assert mem["nvfp4"]["packed_over_bf16"] == pytest.approx(4.5 / 16, abs=0.002)
    assert mem["fp8"]["packed_over_bf16"] == pytest.approx(0.5, abs=0.001)
    assert 0 < mem["nvfp4"]["whole_over_bf16"] < mem["fp8"]["whole_over_bf16"] < 1
    sizes = d["selection"]["sizes"]
    assert list(sizes) == ["10000"]
    s = sizes["10000"]
    assert s["selected_rows"] == s["prompts"] * 24 and s["seconds"] > 0 and all_finite(s)


def test_overhead_quick(tmp_path):
    run_quick("overhead", tmp_path)
    d = load(tmp_path, "overhead")
    assert d["pngs"] == ["overhead.png"]
    for v in ("flow", "steps", "direct"):
        assert d["median"][v]["seconds"] > 0
        assert set(d["median"][v]["stages"]) == {"explore", "select", "regenerate", "update", "eval"}
    assert d["median"]["flow"]["bytes_written"] > 0
    sh = d["shares"]
    assert all_finite(sh)
    assert sh["overhead_share"] == pytest.approx(sh["orchestration_share"] + sh["storage_share"])
    assert sh["overhead_share"] < 1
    assert all_finite(d["one_time"])
    # the three ways did the same compute
    assert d["max_abs_reward_difference_vs_direct"]["train_reward"] < 1e-9


def test_convergence_quick_and_replot(tmp_path):
    out = run_quick("convergence", tmp_path / "run")
    assert "sol_rl vs naive_scaling" in out
    d = json.loads((tmp_path / "run" / "convergence.json").read_text())
    assert d["args"]["quick"] is True and d["partial"] is False
    assert d["machine"]["torch_threads"] == 1
    assert (tmp_path / "run" / "convergence.md").read_text().count("|---|") >= 2
    for png in ("convergence_modes.png", "convergence_pool_size.png"):
        assert (tmp_path / "run" / png).read_bytes()[:8] == PNG_MAGIC, png
    groups = {r["group"] for r in d["runs"]}
    assert groups == {"sol_rl", "diffusionnft", "naive_scaling", "naive_quant", "sol_rl_N24"}
    for r in d["runs"]:
        assert [e["iteration"] for e in r["eval"]] == [0, 1, 2]
        assert len(r["seconds_per_iteration"]) == 2 and all(s > 0 for s in r["seconds_per_iteration"])
        assert all_finite(r["eval"]) and all_finite(r["train_reward"])
    # Same training seed, same eval draws: every run starts from the same reward.
    assert len({r["eval"][0]["reward"] for r in d["runs"]}) == 1
    s = d["summary"]
    assert set(s["final"]) == groups
    assert [row["n"] for row in s["pool_size"]] == [24, 48]
    assert set(s["parity_seconds"]) == set(s["parity_denoiser_equiv"]) == {"naive_scaling", "diffusionnft"}
    for rows in s["parity_seconds"].values():
        assert [r["progress"] for r in rows["rows"]] == [0.25, 0.5, 0.75, 1.0]
    # The denoiser-equivalent clock charges NVFP4 forwards at --fp4-cost: sol_rl (N NVFP4 candidates
    # + 2K high-precision ones) costs less than naive_scaling (N high-precision candidates).
    assert s["final"]["sol_rl"]["denoiser_equiv_per_iteration"] < s["final"]["naive_scaling"]["denoiser_equiv_per_iteration"]

    # --replot re-derives the same summary from the JSON alone; merging a result with itself is refused.
    env = dict(os.environ, MPLBACKEND="Agg")
    src = str(tmp_path / "run" / "convergence.json")
    p = subprocess.run([sys.executable, "benchmarks/convergence.py", "--replot", src, "--out", str(tmp_path / "re")],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert json.loads((tmp_path / "re" / "convergence.json").read_text())["summary"] == s
    p = subprocess.run([sys.executable, "benchmarks/convergence.py", "--replot", src, src, "--out", str(tmp_path / "re2")],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode != 0 and "same run" in p.stderr
