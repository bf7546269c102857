"""Quality and NVFP4 proxy fidelity of a shapes model (issue: foundation §4).

Measures, for the model at --weights (default: the shipped one):
  * at 10 Euler steps, no CFG, full precision, on training and held-out prompts:
    mean `shapes` reward, `shapes_strict` accuracy, within-prompt reward std;
  * NVFP4 proxy fidelity on --prompts prompts x --seeds seeds: reward at 6 steps with the W4A4
    NVFP4-emulated explore copy vs 10 steps in full precision: Spearman, Kendall tau-b,
    top-12 / bottom-12 hit rates, mean true rank of the proxy's top-12 / bottom-12;
  * per-candidate time of explore (nvfp4, 6 steps) and regeneration (fp32, 10 steps), medians
    of --repeats side-by-side runs, and the wall time of one default sol_rl iteration.

Writes JSON (and prints a markdown table). Run: python benchmarks/shapes_quality.py --help
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch


def _prompt_stats(policy, model, prompts, seeds_per_prompt, steps, batch=96):
    from solrl.seeds import stream_seed
    from solrl.shapes.prompts import parse
    from solrl.shapes.reward import shapes_reward, shapes_strict

    rows = []
    for i, p in enumerate(prompts):
        seeds = [stream_seed(1234, i, j, name="quality") for j in range(seeds_per_prompt)]
        x0 = torch.cat([policy.sample(model, [p] * len(seeds[k : k + batch]), seeds[k : k + batch], steps) for k in range(0, len(seeds), batch)])
        img = policy.decode(x0)
        r = shapes_reward(img, [p] * len(seeds))
        s = shapes_strict(img, [p] * len(seeds))
        rows.append({"prompt": p, "objects": parse(p).n_objects, "mean": float(r.mean()), "std": float(r.std(unbiased=False)), "strict": float(s.mean())})
    return rows


def _summarise(rows):
    two = [r for r in rows if r["objects"] == 2]
    return {
        "prompts": len(rows),
        "reward": float(np.mean([r["mean"] for r in rows])),
        "strict": float(np.mean([r["strict"] for r in rows])),
        "within_prompt_std": float(np.mean([r["std"] for r in rows])),
        "two_object_std_ge_0.05": float(np.mean([r["std"] >= 0.05 for r in two])) if two else float("nan"),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default=None, help="model directory (default: the shipped model)")
    ap.add_argument("--prompts", type=int, default=8, help="prompts in the fidelity study")
    ap.add_argument("--seeds", type=int, default=96, help="seeds per prompt in the fidelity study")
    ap.add_argument("--quality-seeds", type=int, default=16, help="seeds per prompt for the quality table")
    ap.add_argument("--train-prompts", type=int, default=48, help="training prompts in the quality table (all held-out prompts are used)")
    ap.add_argument("--repeats", type=int, default=3, help="repeats of the timing runs (median reported)")
    ap.add_argument("--skip-iteration", action="store_true", help="do not time a default sol_rl iteration")
    ap.add_argument("--out", default="benchmarks/results/shapes_quality.json")
    args = ap.parse_args(argv)

    torch.set_flush_denormal(True)
    from solrl.config import RunConfig
    from solrl.fidelity import mean_metrics, ranking_metrics
    from solrl.models import load_policy
    from solrl.seeds import stream_seed
    from solrl.shapes.prompts import eval_prompts, parse, train_prompts
    from solrl.shapes.reward import shapes_reward
    from solrl.stages import TrainState, explore_quant, run_iteration

    cfg = RunConfig()
    policy = load_policy("shapes", weights=args.weights)
    hp, _ = policy.sampler_copy(None)
    fp4, report = policy.sampler_copy(explore_quant(policy, cfg))
    out = {"weights": args.weights or "shipped", "model": vars(policy.model_config) if hasattr(policy.model_config, "__dict__") else str(policy.model_config)}
    out["params"] = sum(p.numel() for p in hp.parameters())
    out["quant"] = report.summary()

    # quality at 10 Euler steps, full precision
    rng = np.random.default_rng(0)
    train = list(train_prompts())
    train_sel = [train[i] for i in sorted(rng.choice(len(train), args.train_prompts, replace=False))]
    t0 = time.time()
    out["quality_train"] = _summarise(_prompt_stats(policy, hp, train_sel, args.quality_seeds, 10))
    held_rows = _prompt_stats(policy, hp, list(eval_prompts()), args.quality_seeds, 10)
    out["quality_heldout"] = _summarise(held_rows)
    out["quality_seconds"] = time.time() - t0

    # fidelity: half one-object, half two-object training prompts
    ones = [p for p in train if parse(p).n_objects == 1]
    twos = [p for p in train if parse(p).n_objects == 2]
    fid_prompts = [ones[i] for i in rng.choice(len(ones), args.prompts // 2, replace=False)] + [twos[i] for i in rng.choice(len(twos), args.prompts - args.prompts // 2, replace=False)]
    per_prompt, t_explore, t_regen = [], [], []
    for i, p in enumerate(fid_prompts):
        seeds = [stream_seed(99, i, j, name="fidelity") for j in range(args.seeds)]
        cond = policy.encode([p] * len(seeds))
        te, tr = [], []
        for _ in range(args.repeats if i == 0 else 1):  # timing repeats on the first prompt, side by side
            t = time.perf_counter()
            x_fp4 = policy.sample(fp4, [p] * len(seeds), seeds, 6, cond=cond)
            te.append((time.perf_counter() - t) / len(seeds))
            t = time.perf_counter()
            x_hp = policy.sample(hp, [p] * len(seeds), seeds, 10, cond=cond)
            tr.append((time.perf_counter() - t) / len(seeds))
        t_explore += te
        t_regen += tr
        proxy = shapes_reward(policy.decode(x_fp4), [p] * len(seeds)).numpy()
        truth = shapes_reward(policy.decode(x_hp), [p] * len(seeds)).numpy()
        m = ranking_metrics(proxy, truth, k=24, seeds=seeds)
        m["prompt"] = p
        m["truth_std"] = float(truth.std())
        per_prompt.append(m)
    out["fidelity_per_prompt"] = per_prompt
    out["fidelity"] = mean_metrics([{k: v for k, v in m.items() if k != "prompt"} for m in per_prompt])
    out["ms_per_candidate"] = {
        "explore_nvfp4_6_steps": 1000 * statistics.median(t_explore),
        "regenerate_fp32_10_steps": 1000 * statistics.median(t_regen),
    }
    out["ms_per_candidate"]["explore_over_regenerate"] = out["ms_per_candidate"]["explore_nvfp4_6_steps"] / out["ms_per_candidate"]["regenerate_fp32_10_steps"]

    if not args.skip_iteration:
        state = TrainState.fresh(policy, cfg)
        times = []
        for it in range(2):
            t = time.perf_counter()
            res = run_iteration(policy, state, cfg.with_overrides(**{"eval.every": 0}), it)
            times.append({"total": time.perf_counter() - t, **res.seconds})
        out["default_iteration_seconds"] = times
    out["machine"] = {"cpus": torch.get_num_threads(), "platform": platform.platform(), "torch": torch.__version__}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(markdown(out))
    return out


def markdown(out) -> str:
    q, h, f, ms = out["quality_train"], out["quality_heldout"], out["fidelity"], out["ms_per_candidate"]
    lines = [
        f"model {out['weights']}: {out['params']:,} transformer parameters; {out['quant']}",
        "",
        "| prompts | mean shapes reward | shapes_strict | within-prompt std | two-object prompts with std >= 0.05 |",
        "|---|---|---|---|---|",
        f"| train ({q['prompts']}) | {q['reward']:.3f} | {q['strict']:.3f} | {q['within_prompt_std']:.3f} | {q['two_object_std_ge_0.05']:.2f} |",
        f"| held-out ({h['prompts']}) | {h['reward']:.3f} | {h['strict']:.3f} | {h['within_prompt_std']:.3f} | {h['two_object_std_ge_0.05']:.2f} |",
        "",
        "| NVFP4 6 steps vs fp32 10 steps | Spearman | Kendall | top-12 hit | bottom-12 hit | mean true rank top/bottom |",
        "|---|---|---|---|---|---|",
        f"| mean over {len(out['fidelity_per_prompt'])} prompts | {f['spearman']:.3f} | {f['kendall']:.3f} | {f['top_hit']:.2f} | {f['bottom_hit']:.2f} | {f['mean_true_rank_top']:.1f} / {f['mean_true_rank_bottom']:.1f} |",
        "",
        f"per candidate: explore {ms['explore_nvfp4_6_steps']:.1f} ms, regenerate {ms['regenerate_fp32_10_steps']:.1f} ms (ratio {ms['explore_over_regenerate']:.2f})",
    ]
    if "default_iteration_seconds" in out:
        lines.append("default iteration (s): " + ", ".join(f"{t['total']:.1f}" for t in out["default_iteration_seconds"]))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
