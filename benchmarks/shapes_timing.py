"""Side-by-side timing of shapes models of different widths (same process, interleaved repeats).

For each model directory: per-candidate time of explore (NVFP4 emulated, 6 steps, batch 96) and
regeneration (float32, 10 steps), wall time of a default `sol_rl` iteration (4 prompts, N = 96,
K = 24; eval off) after one warm-up iteration, and optionally pretraining seconds per step
(compiled; the first step, which compiles, excluded). Medians of --repeats. Writes JSON.

    python benchmarks/shapes_timing.py /tmp/pt/h128 /tmp/pt/h192 --out benchmarks/results/shapes_timing.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", help="model directories (shapes.safetensors + config.json)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--pretrain-steps", type=int, default=0, help="also time this many compiled pretraining steps per width (after the compiling first step)")
    ap.add_argument("--out", default="benchmarks/results/shapes_timing.json")
    args = ap.parse_args(argv)
    torch.set_flush_denormal(True)
    from solrl.config import RunConfig
    from solrl.models import load_policy
    from solrl.stages import TrainState, explore_quant, run_iteration

    cfg = RunConfig().with_overrides(**{"eval.every": 0})
    prompt = "a blue square above a yellow triangle"
    seeds = list(range(96))
    policies = {m: load_policy("shapes", weights=m) for m in args.models}
    copies = {m: (p.sampler_copy(explore_quant(p, cfg))[0], p.sampler_copy(None)[0]) for m, p in policies.items()}
    for m, p in policies.items():  # warm-up (compiles the NVFP4 kernel once)
        p.sample(copies[m][0], [prompt] * 8, seeds[:8], 1)
    times = {m: {"explore": [], "regenerate": []} for m in args.models}
    for _ in range(args.repeats):
        for m, p in policies.items():
            cond = p.encode([prompt] * 96)
            t = time.perf_counter()
            p.sample(copies[m][0], [prompt] * 96, seeds, 6, cond=cond)
            times[m]["explore"].append((time.perf_counter() - t) / 96 * 1000)
            t = time.perf_counter()
            p.sample(copies[m][1], [prompt] * 96, seeds, 10, cond=cond)
            times[m]["regenerate"].append((time.perf_counter() - t) / 96 * 1000)
    states = {m: TrainState.fresh(p, cfg) for m, p in policies.items()}
    iters = {m: [] for m in args.models}
    for i in range(args.repeats + 1):
        for m, p in policies.items():
            t = time.perf_counter()
            res = run_iteration(p, states[m], cfg, i)
            if i:  # the first iteration is warm-up
                iters[m].append({"total": time.perf_counter() - t, **res.seconds})
    out = {}
    for m in args.models:
        params = sum(x.numel() for x in copies[m][1].parameters())
        e, r = statistics.median(times[m]["explore"]), statistics.median(times[m]["regenerate"])
        out[m] = {
            "params": params,
            "ms_per_candidate_explore_nvfp4_6": e,
            "ms_per_candidate_regenerate_fp32_10": r,
            "explore_over_regenerate": e / r,
            "iteration_seconds_median": statistics.median(x["total"] for x in iters[m]),
            "iteration_stage_seconds": iters[m],
        }
    if args.pretrain_steps:
        from solrl.shapes import model as M
        from solrl.shapes.pretrain import pretrain

        for m in args.models:
            cfgm = M.load(m)[0]
            t = time.perf_counter()
            meta = pretrain(cfgm, 1 + args.pretrain_steps, Path("/tmp/solrl-timing-pretrain"), log=lambda s: None)
            first, last = meta["history"][0], meta["history"][-1]  # step 0 includes the compile
            out[m]["pretrain_s_per_step"] = (last["elapsed_s"] - first["elapsed_s"]) / max(1, last["step"] - first["step"])
            out[m]["pretrain_wall_s"] = time.perf_counter() - t
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    for m, d in out.items():
        print(f"{m}: {d['params']:,} params | explore {d['ms_per_candidate_explore_nvfp4_6']:.1f} ms/cand | regenerate {d['ms_per_candidate_regenerate_fp32_10']:.1f} ms/cand "
              f"(ratio {d['explore_over_regenerate']:.2f}) | iteration {d['iteration_seconds_median']:.1f} s" + (f" | pretrain {d['pretrain_s_per_step']:.3f} s/step" if "pretrain_s_per_step" in d else ""))
    return out


if __name__ == "__main__":
    main()
