"""The benchmark scripts in their --quick smoke mode: each writes its JSON (expected keys, finite
numbers within their bounds), its PNG(s) and prints a markdown summary table.

Each script runs with one torch thread and the eager NVFP4 quantiser; the scripts of the selected
tests start together when the first test runs, SOLRL_BENCH_JOBS (default 2) at a time, longest
first, and each test checks its own script's output. The file takes about 1.5-2 minutes on 2 idle
cores (~3 on cores shared with other jobs); SOLRL_BENCH_JOBS=1 runs one script at a time."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# longest first (measured --quick wall times), so the concurrent runs finish together
SCRIPTS = (
    "scaling",
    "overhead",
    "cost",
    "soak",
    "convergence",
    "learning",
    "fidelity",
    "shapes_timing",
    "shapes_quality",
)

pytestmark = pytest.mark.timeout(600)


def _run(script: str, out: Path) -> subprocess.CompletedProcess:
    # one torch thread: robust timing when the machine is shared; eager NVFP4 quantiser (no compile)
    env = dict(os.environ, SOLRL_NO_COMPILE="1", MPLBACKEND="Agg")
    return subprocess.run(
        [sys.executable, f"benchmarks/{script}.py", "--quick", "--threads", "1", "--out", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=540,
    )


@pytest.fixture(scope="module")
def quick(request, tmp_path_factory):
    """script -> (its --quick output folder, a future of its completed process), for the scripts
    whose tests are selected in this session."""
    selected = {item.name for item in request.session.items}
    wanted = [s for s in SCRIPTS if any(n.startswith(f"test_{s}_quick") for n in selected)]
    root = tmp_path_factory.mktemp("bench_quick")
    pool = ThreadPoolExecutor(max_workers=max(1, int(os.environ.get("SOLRL_BENCH_JOBS", "2"))))
    runs = {s: (root / s, pool.submit(_run, s, root / s)) for s in wanted}
    yield runs
    pool.shutdown(wait=True, cancel_futures=True)


def run_quick(quick, script: str) -> tuple[Path, str]:
    out, future = quick[script]
    p = future.result()
    assert p.returncode == 0, f"{script} --quick failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    assert "|---|" in p.stdout  # the markdown summary table
    return out, p.stdout


def load(out: Path, name: str) -> dict:
    data = json.loads((out / f"{name}.json").read_text())
    assert data["quick"] is True
    m = data["machine"]
    for key in ("platform", "cpu_model", "cpu_count", "torch", "torch_threads"):
        assert m[key], key
    assert m["torch_threads"] == 1
    assert {"avx512_bf16", "amx_bf16"} <= set(m["cpu_flags"]) and all(
        isinstance(v, bool) for v in m["cpu_flags"].values()
    )
    assert m["bf16_matmul"] == (m["cpu_flags"]["avx512_bf16"] or m["cpu_flags"]["amx_bf16"])
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


def check_ranking(m: dict, n: int, k: int) -> None:
    """Bounds of one proxy-fidelity metrics row (N seeds, top/bottom-K/2)."""
    for key in (
        "spearman",
        "kendall",
        "top_hit",
        "bottom_hit",
        "mean_true_rank_top",
        "mean_true_rank_bottom",
        "regret",
    ):
        assert math.isfinite(m[key]), key
    assert -1 <= m["spearman"] <= 1 and -1 <= m["kendall"] <= 1
    assert 0 <= m["top_hit"] <= 1 and 0 <= m["bottom_hit"] <= 1
    assert (k // 2 + 1) / 2 <= m["mean_true_rank_top"] <= n - (k // 2 - 1) / 2
    assert (k // 2 + 1) / 2 <= m["mean_true_rank_bottom"] <= n - (k // 2 - 1) / 2
    assert m["regret"] >= 0


def test_fidelity_quick(quick):
    out, _ = run_quick(quick, "fidelity")
    d = load(out, "fidelity")
    assert d["pngs"] == ["fidelity.png", "fidelity_heatmap.png", "fidelity_cost.png"]
    cfg = d["config"]
    steps, n, k = cfg["explore_steps"], cfg["seeds_per_prompt"], cfg["k"]
    variants = {"nvfp4-r0", "nvfp4-r8", "nvfp4-bf16out", "fp8", "int8", "high"}
    assert set(d["overall"]) == {"fp32", "bf16"}  # the two truths side by side
    for by_variant in d["overall"].values():
        assert set(by_variant) == variants
        for by_steps in by_variant.values():
            assert sorted(int(s) for s in by_steps) == steps
            for m in by_steps.values():
                check_ranking(m, n, k)
    check_ranking(d["truth_agreement"], n, k)
    assert len(d["per_prompt"]) == cfg["prompts"] == 2
    assert sorted(r["objects"] for r in d["per_prompt"]) == [1, 2]  # one one-object and one two-object prompt
    names = {f"{v}/{s}" for v in variants for s in steps}
    for r in d["per_prompt"]:
        assert set(r["metrics"]["fp32"]) == set(r["metrics"]["bf16"]) == names
        # per-seed rewards for a winner's-curse audit
        assert len(r["seeds"]) == len(set(r["seeds"])) == n
        assert set(r["truth"]) == {"fp32", "bf16"} and set(r["proxy"]) == names
        assert all(len(x) == n and all_finite(x) for x in [*r["truth"].values(), *r["proxy"].values()])
    q = d["quant"]
    assert q["nvfp4-r0"]["bits_per_weight"] == pytest.approx(4.5, abs=0.01)  # docs/algorithm.md, "NVFP4 numerics"
    assert 4.5 < q["nvfp4-r8"]["bits_per_weight"] < 16  # + the bf16 low-rank factors
    assert q["fp8"]["bits_per_weight"] == pytest.approx(8.0, abs=0.01)
    assert 8.0 < q["int8"]["bits_per_weight"] < 8.25 and q["int8"]["summary"].startswith(
        "int8 ("
    )  # codes + a float32 scale per output channel
    assert q["high"]["weights"] == 0
    assert "(bfloat16 output)" in q["nvfp4-bf16out"]["summary"]
    # the emulation's bf16 output against its float32 output, paired per prompt
    p = d["paired"]
    assert (p["a"], p["b"], p["prompts"]) == ("nvfp4-r0", "nvfp4-bf16out", 2)
    for s in steps:
        diff = p["metrics"]["bf16"][str(s)]["spearman"]
        assert len(diff["per_prompt"]) == 2 and math.isfinite(diff["mean"]) and diff["sem"] >= 0
        assert -1 <= p["proxy_agreement"][str(s)]["spearman_mean"] <= 1
    rows = d["cost"]["rows"]
    assert set(rows) == {f"{v}/{cfg['cost_steps']}" for v in variants} | {
        f"rollout-{t}/{cfg['truth_steps']}" for t in ("fp32", "bf16")
    }
    assert rows[f"rollout-bf16/{cfg['truth_steps']}"]["over_rollout_bf16"] == 1.0
    for r in rows.values():
        assert r["ms_per_candidate"] > 0 and r["over_rollout_bf16"] > 0 and math.isfinite(r["over_rollout_fp32"])
    assert set(d["best_steps"]) == {"fp32", "bf16"}
    assert all_finite(d["sampling_seconds"])


def test_cost_quick(quick):
    out, _ = run_quick(quick, "cost")
    d = load(out, "cost")
    assert d["pngs"] == ["cost.png"]
    t = d["timing"]["by_threads"]["1"]
    rows = t["rows"]
    assert {"rollout-bf16", "rollout-bf16-b8", "rollout-fp32", "nvfp4-r8/6"} <= set(rows)
    assert {f"{p}/{s}" for p in ("nvfp4", "fp8", "high") for s in d["config"]["steps"]} <= set(rows)
    for r in rows.values():
        assert (
            r["ms_per_candidate"] > 0
            and math.isfinite(r["over_rollout_bf16"])
            and math.isfinite(r["over_rollout_fp32"])
        )
    assert rows["rollout-bf16"]["over_rollout_bf16"] == 1.0
    assert all_finite(t["linear_fit"])
    h = t["headline"]  # explore (NVFP4, 6 steps) ÷ rollout (bf16, 10 steps), goal 0.9
    assert (
        h["explore_variant"] == "nvfp4/6"
        and h["goal"] == 0.9
        and h["explore_over_rollout_bf16"] > 0
        and isinstance(h["goal_met"], bool)
    )
    lim = d["limits"]
    assert all_finite(lim["ms_per_candidate"]) and all_finite(lim["explore_over_rollout"])
    assert sum(lim["shares_of_explore"].values()) == pytest.approx(1.0)
    assert lim["ms_per_candidate"]["explore_quantiser"] > 0 and lim["ms_per_candidate"]["explore_block_gemm"] > 0
    assert lim["quantised_layers"] == 48
    assert {r["variant"] for r in d["layer_bench"]} >= {"block-product", "bf16-linear", "fp32-linear"}
    it = d["iteration"]  # one iteration, float32 vs bf16
    assert set(it["median"]) == {"fp32", "bf16"}
    assert set(it["median"]["fp32"]["stages"]) == {
        "plan",
        "explore",
        "select",
        "regenerate",
        "audit",
        "update",
        "eval",
    }  # shapes.yaml audits one prompt
    assert it["fp32_over_bf16"] > 0 and it["goal"] == 2.0 and all_finite(it["median"])
    mem = d["memory"]
    assert mem["nvfp4"]["bits_per_weight"] == pytest.approx(4.5, abs=0.01)  # 4.5 bits per weight ("NVFP4 numerics")
    assert mem["nvfp4"]["packed_over_bf16"] == pytest.approx(4.5 / 16, abs=0.002)
    assert mem["fp8"]["packed_over_bf16"] == pytest.approx(0.5, abs=0.001)
    assert mem["nvfp4"]["bits_per_weight"] < mem["nvfp4-r8"]["bits_per_weight"] < mem["fp8"]["bits_per_weight"]
    assert 0 < mem["nvfp4"]["whole_over_bf16"] < mem["fp8"]["whole_over_bf16"] < 1
    sizes = d["selection"]["sizes"]
    assert list(sizes) == ["10000"]
    s = sizes["10000"]
    assert s["selected_rows"] == s["prompts"] * 24 and s["seconds"] > 0 and all_finite(s)


def test_shapes_quality_quick(quick):
    out, _ = run_quick(quick, "shapes_quality")
    d = load(out, "shapes_quality")
    assert d["pngs"] == ["shapes_quality.png"]
    assert d["config"]["model"] == "shipped" and d["params"] > 0
    assert d["bits_per_weight"] == pytest.approx(4.5, abs=0.01)
    for dt in ("float32", "bfloat16"):
        for split, n in (("train", 4), ("held_out", 4)):
            q = d["quality"][dt][split]
            assert q["prompts"] == n
            assert 0 <= q["reward"] <= 1 and 0 <= q["strict"] <= 1 and q["within_prompt_std"] >= 0
        check_ranking(d["fidelity"][dt]["overall"], d["config"]["seeds_per_prompt"], d["config"]["k"])
        assert len(d["fidelity"][dt]["per_prompt"]) == 2
        ms = d["ms_per_candidate"][dt]
        assert ms["explore_nvfp4"] > 0 and ms["rollout"] > 0
    assert all_finite(d["ms_per_candidate"])


def test_shapes_timing_quick(quick):
    out, _ = run_quick(quick, "shapes_timing")
    d = load(out, "shapes_timing")
    assert d["pngs"] == ["shapes_timing.png"]
    ((name, m),) = d["models"].items()
    assert m["model"] == "shipped" and m["params"] > 0
    for key in (
        "ms_per_candidate_explore",
        "ms_per_candidate_rollout",
        "explore_over_rollout",
        "iteration_seconds_median",
    ):
        assert m[key] > 0 and math.isfinite(m[key]), key
    assert len(m["iteration_stage_seconds"]) == 1 and all_finite(m["iteration_stage_seconds"])


def test_overhead_quick(quick):
    out, _ = run_quick(quick, "overhead")
    d = load(out, "overhead")
    assert d["pngs"] == ["overhead.png"]
    stages = {"baseline", "explore", "select", "regenerate", "update", "eval"}
    for v in ("flow", "steps", "memory"):
        assert d["median"][v]["seconds"] > 0
        assert set(d["median"][v]["stages"]) == stages | {"plan"}  # from the commit records
    assert d["median"]["flow"]["bytes_written"] > 0
    sh = d["shares"]
    assert all_finite(sh)
    assert sh["overhead_share"] == pytest.approx(sh["orchestration_share"] + sh["storage_share"])
    assert sh["overhead_share"] < 1
    assert all_finite(d["one_time"])
    # the three ways did the same compute
    diff = d["max_abs_reward_difference_vs_memory"]
    assert diff["train_reward"] < 1e-9 and diff["eval_reward"] < 1e-9 and diff["baseline_reward"] < 1e-9


def test_scaling_quick(quick):
    out, _ = run_quick(quick, "scaling")
    d = load(out, "scaling")
    assert d["pngs"] == ["scaling.png"]
    s = d["summary"]
    per = s["per_runner"]
    assert set(per) == {"in-process", "dask-2"}  # quick: no dask-1, E(2) relative to in-process
    for name, p in per.items():
        assert p["explore_s"] > 0 and p["explore_compute_s"] > 0 and p["iteration_s"] >= p["explore_s"], name
        if name.startswith("dask-"):  # the shards ran on the cluster's worker processes
            assert (
                1
                <= p["explore_workers_per_iteration"]
                <= min(int(name.removeprefix("dask-")), len(p["explore_workers"]))
            )
    assert len(d["runs"]) == 2 and all(len(r["iterations"]) == 1 for r in d["runs"])
    assert s["efficiency_reference"] == "in-process"
    assert s["efficiency"]["2"] == pytest.approx(s["speedup_vs_in_process"]["2"] / 2)
    assert s["efficiency_per_added_worker"]["2"] == pytest.approx(s["efficiency"]["2"])
    assert (
        set(s["speedup_vs_in_process"]) == {"2"}
        and all_finite(s["speedup_vs_in_process"])
        and isinstance(s["goal_met"]["2"], bool)
    )
    f = s["fixed_cost"]
    assert f["reference"] == "dask-2" and all_finite({k: v for k, v in f.items() if not isinstance(v, (dict, str))})
    for k in ("dask-2",):
        assert (
            f[k]["cluster_start_s"] > 0
            and f[k]["cluster_close_s"] >= 0
            and math.isfinite(f[k]["one_iteration_run_share"])
        )
    assert d["same_train_rewards_as_in_process"] is True  # the runner does not change what is computed


def test_convergence_quick_and_replot(quick, tmp_path):
    run_dir, stdout = run_quick(quick, "convergence")
    d = load(run_dir, "convergence")
    assert d["machine"]["torch_threads"] == 1
    assert {r["variant"] for r in d["runs"].values()} == {"sol_rl", "diffusionnft", "sol_rl_N4"}
    for r in d["runs"].values():
        assert [p["iteration"] for p in r["points"]] == [0, 1]
        assert all("train" in p and "held_out" in p and p["seconds"] > 0 for p in r["points"])
    # Every run renders the same evaluation pairs: the same baseline, whatever the mode.
    bases = {p["train"]["base"] for r in d["runs"].values() for p in r["points"]}
    assert len(bases) == 1
    curves = d["curves"]["train"]
    assert set(curves) == {"sol_rl", "diffusionnft", "sol_rl_N4"} and all(len(rows) == 2 for rows in curves.values())
    diff = d["differences"]["train"]["sol_rl - diffusionnft"][-1]
    gains = {v: curves[v][-1]["gain"] for v in ("sol_rl", "diffusionnft")}
    assert math.isclose(
        diff["mean"], gains["sol_rl"] - gains["diffusionnft"], abs_tol=1e-12
    )  # one seed: the paired difference
    assert d["cost"]["sol_rl"]["denoiser"] > d["cost"]["diffusionnft"]["denoiser"] > 0
    assert set(d["winners_curse"]) == {"N4", "N8"}
    # --replot analyses what is committed without computing anything: the same curves.
    env = dict(os.environ, MPLBACKEND="Agg", SOLRL_NO_COMPILE="1")
    p = subprocess.run(
        [
            sys.executable,
            "benchmarks/convergence.py",
            "--quick",
            "--replot",
            "--runs-root",
            str(run_dir / "runs"),
            "--out",
            str(tmp_path / "re"),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    assert json.loads((tmp_path / "re" / "convergence.json").read_text())["curves"] == d["curves"]


def test_learning_quick(quick):
    out, _ = run_quick(quick, "learning")
    d = load(out, "learning")
    (run,) = d["runs"].values()
    assert [p["iteration"] for p in run["points"]] == [0, 1]
    for p in run["points"]:
        for s in ("train", "held_out"):
            assert p[s]["n"] > 0 and math.isfinite(p[s]["gain"]) and p[s]["se"] >= 0
    assert (out / "runs").is_dir()  # the runs themselves, resumable


def test_soak_quick(quick):
    out, _ = run_quick(quick, "soak")
    d = load(out, "soak")
    assert d["runs_completed"] == 2 and sum(d["faults_injected"].values()) >= 2
    assert d["runs_byte_identical"] == 2 and d["runs_with_verify_problems"] == 0


def test_cost_cpu_explore_quick(tmp_path):
    """cost.py --cpu-explore (int8 and NVFP4 explore vs the rollout on this host kind) and
    --int8-kernels (one Linear per shape, every int8 kernel), in their smoke modes."""
    import torch

    from solrl.quant.int8 import int8_engine

    cap = torch.backends.cpu.get_cpu_capability()  # this host kind (or the one it is held to)
    kind = "avx512" if cap.upper().startswith("AVX512") else cap.lower()
    env = dict(os.environ, SOLRL_NO_COMPILE="1", MPLBACKEND="Agg")
    for extra, name in (
        (["--iteration-repeats", "0"], f"cpu_explore-{kind}"),
        (["--int8-kernels"], f"int8_kernels-{kind}"),
    ):
        p = subprocess.run(
            [
                sys.executable,
                "benchmarks/cost.py",
                "--cpu-explore",
                "--quick",
                "--threads",
                "1",
                "--out",
                str(tmp_path),
                *extra,
            ],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=540,
        )
        assert p.returncode == 0, p.stderr[-3000:]
        d = load(tmp_path, name)
        assert d["kind"] == kind and d["int8_engine"] == int8_engine() and d["machine"]["aten_cpu_capability"] == cap
    d = load(tmp_path, f"cpu_explore-{kind}")
    rows = d["sampling"]["rows"]
    assert set(rows) == {"int8/6", "nvfp4/6", "high/6", "rollout/10"} and rows["rollout/10"]["over_rollout"] == 1.0
    assert all(r["ms_per_candidate"] > 0 for r in rows.values()) and d["kernels"]["bf16_over_fp32"] > 0
    k = load(tmp_path, f"int8_kernels-{kind}")["kernels"]["shapes"]
    assert {"float32", "bf16", "linear_dynamic[fbgemm]", "linear_dynamic[onednn]", "_int_mm per-token"} <= set(
        k[0]["ms"]
    )


def test_explore_variants_quick(tmp_path):
    """explore_variants.py --quick: NVFP4 with float32 and bf16 output, int8 and high precision
    against the rollout on this host kind, in its smoke mode."""
    import torch

    cap = torch.backends.cpu.get_cpu_capability()
    kind = "avx512" if cap.upper().startswith("AVX512") else cap.lower()
    p = subprocess.run(
        [sys.executable, "benchmarks/explore_variants.py", "--quick", "--threads", "1", "--out", str(tmp_path)],
        cwd=REPO,
        env=dict(os.environ, SOLRL_NO_COMPILE="1", MPLBACKEND="Agg"),
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    d = load(tmp_path, f"explore_variants-{kind}")
    rows = d["sampling"]["rows"]
    assert {k.split("/")[0] for k in rows} == {"nvfp4-f32out", "nvfp4-bf16out", "int8", "high", "rollout"}
    assert all(r["over_rollout"] > 0 and r["ms_per_candidate"] > 0 for r in rows.values())
    assert next(r for k, r in rows.items() if k.startswith("rollout"))["over_rollout"] == 1.0
    assert d["sampling"]["bf16out_over_f32out"] > 0 and d["kind"] == kind
