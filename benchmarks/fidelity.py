"""Fidelity of the explore proxy (issue 7, item 1; ALGORITHM.md §9) on the base shapes model.

For P prompts x N seeds (default 8 x 96): the reward of every seed under each explore precision
(nvfp4 = W4A4 NVFP4 emulated, fp8 = E4M3 per-tensor, none = the full-precision model) at each
explore step count (default 2, 4, 6, 8, 10), against the "truth": the same seed at full precision
and the rollout step count (10). Per prompt and overall (mean over prompts): Spearman rho,
Kendall tau-b, top/bottom-K/2 hit rates and the mean true rank of the proxy-selected top-K/2 /
bottom-K/2 (solrl.fidelity.ranking_metrics; K = select.k = 24, so top/bottom-12).

Prompts and seeds are exactly those the default `shapes` run explores: the prompts drawn for
iterations 0, 1, ... (run seed 0) until P distinct ones, with each prompt's candidate seeds of
that iteration. The model is the base model (fresh LoRA, so the explore copy = base weights).

Paper anchors (FLUX.1, HPSv2): rho 0.93, tau 0.80, mean true rank 8.4 / 87.4, top-12 hit 93 %,
best explore steps 6.

    python benchmarks/fidelity.py --out benchmarks/results/fidelity       # full (~15 min, 2 cores)
    python benchmarks/fidelity.py --quick --out /tmp/fid                   # smoke (seconds)

Writes fidelity.json, fidelity.md, fidelity.png (rho, tau, mean true ranks vs steps per
precision) and fidelity_heatmap.png (rho per prompt x precision/steps); prints the tables.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import bench_common as C

PRECISIONS = ("nvfp4", "fp8", "none")
ANCHORS = {"spearman": 0.93, "kendall": 0.80, "mean_true_rank_top": 8.4, "mean_true_rank_bottom": 87.4, "top_hit": 0.93, "best_steps": 6}


def study_prompts(policy, cfg, p: int) -> list[dict]:
    """The first `p` distinct prompts the default run explores, with their candidate seeds."""
    from solrl.seeds import seed as candidate_seed
    from solrl.stages import iteration_prompts

    out, seen, it = [], set(), 0
    while len(out) < p:
        for pid, text in iteration_prompts(policy, cfg, it):
            if text not in seen and len(out) < p:
                seen.add(text)
                seeds = [candidate_seed(cfg.run.seed, it, pid, c) for c in range(cfg.explore.n)]
                out.append({"iteration": it, "prompt_id": pid, "prompt": text, "seeds": seeds})
        it += 1
    return out


def explore_models(policy, cfg) -> dict:
    """precision -> (sampler copy, QuantReport summary); 'none' is the full-precision copy."""
    from solrl.stages import explore_quant

    models = {}
    for prec in PRECISIONS:
        quant = None if prec == "none" else explore_quant(policy, cfg.with_overrides(**{"explore.precision": prec}))
        model, report = policy.sampler_copy(quant)
        models[prec] = (model, report.summary())
    return models


def rewards_of(policy, cfg, x0, prompts):
    from solrl.stages import score

    return score(policy, cfg, x0, prompts)[0].numpy()


def sample_all(policy, model, prompt, seeds, steps, cfg, cond):
    from solrl.stages import sample_batched

    return sample_batched(policy, model, [prompt] * len(seeds), seeds, steps, cfg.rollout.solver, cfg.explore.batch, cond)[0]


def run(args) -> dict:
    import numpy as np
    import torch

    torch.set_flush_denormal(True)
    from solrl.config import load_config
    from solrl.fidelity import mean_metrics, ranking_metrics
    from solrl.models import load_policy
    from solrl.shapes.prompts import parse

    cfg = load_config(C.REPO / "configs" / "shapes.yaml").with_overrides(**{"explore.n": args.seeds, "select.k": args.k})
    policy = load_policy(cfg.model.family, weights=cfg.model.weights, lora_rank=cfg.model.lora_rank, lora_alpha=cfg.model.lora_alpha, seed=cfg.run.seed)
    models = explore_models(policy, cfg)
    prompts = study_prompts(policy, cfg, args.prompts)
    truth_steps = cfg.rollout.steps
    per_prompt, seconds = [], {f"{p}/{s}": 0.0 for p in PRECISIONS for s in args.steps}
    seconds["truth"] = 0.0
    t_start = time.perf_counter()
    for i, pr in enumerate(prompts):
        text, seeds = pr["prompt"], pr["seeds"]
        texts = [text] * len(seeds)
        cond = policy.encode(texts)
        t, x = C.timed(sample_all, policy, models["none"][0], text, seeds, truth_steps, cfg, cond)
        seconds["truth"] += t
        truth = rewards_of(policy, cfg, x, texts)
        row = {"prompt": text, "objects": parse(text).n_objects, "iteration": pr["iteration"], "prompt_id": pr["prompt_id"],
               "truth_mean": float(truth.mean()), "truth_std": float(truth.std()), "metrics": {}}
        for prec in PRECISIONS:
            for steps in args.steps:
                if prec == "none" and steps == truth_steps:  # the truth itself (deterministic): rho = 1 by construction
                    proxy = truth
                else:
                    t, x = C.timed(sample_all, policy, models[prec][0], text, seeds, steps, cfg, cond)
                    seconds[f"{prec}/{steps}"] += t
                    proxy = rewards_of(policy, cfg, x, texts)
                m = ranking_metrics(proxy, truth, k=cfg.select.k, seeds=seeds)
                m["proxy_mean"] = float(proxy.mean())
                row["metrics"][f"{prec}/{steps}"] = m
        per_prompt.append(row)
        headline = row["metrics"][f"nvfp4/{args.steps[len(args.steps) // 2]}"]["spearman"]
        print(f"[fidelity] prompt {i + 1}/{len(prompts)} {text!r}: done at {time.perf_counter() - t_start:.0f} s "
              f"(nvfp4 {args.steps[len(args.steps) // 2]} steps: rho {headline:.3f})", flush=True)

    def overall(rows):
        out = {}
        for prec in PRECISIONS:
            out[prec] = {}
            for steps in args.steps:
                ms = [r["metrics"][f"{prec}/{steps}"] for r in rows]
                mean = mean_metrics(ms)
                mean["spearman_min"] = float(np.min([m["spearman"] for m in ms]))
                mean["spearman_max"] = float(np.max([m["spearman"] for m in ms]))
                mean["spearman_sem"] = float(np.std([m["spearman"] for m in ms], ddof=1) / math.sqrt(len(ms))) if len(ms) > 1 else 0.0
                out[prec][str(steps)] = mean
        return out

    res = {
        "config": {"prompts": len(prompts), "seeds_per_prompt": cfg.explore.n, "k": cfg.select.k, "explore_steps": list(args.steps),
                   "truth": f"full precision (float32), {truth_steps} {cfg.rollout.solver} steps", "solver": cfg.rollout.solver,
                   "reward": dict(cfg.reward.weights), "model": "shipped shapes model, fresh LoRA (= base weights)",
                   "prompt_choice": "prompts of the default run's iterations 0.. (run seed 0), first P distinct, with their candidate seeds"},
        "quant": {p: models[p][1] for p in PRECISIONS},
        "overall": overall(per_prompt),
        "by_objects": {str(n): overall([r for r in per_prompt if r["objects"] == n]) for n in sorted({r["objects"] for r in per_prompt})},
        "per_prompt": per_prompt,
        "sampling_seconds": seconds,
        "wall_seconds": time.perf_counter() - t_start,
        "paper_anchors": ANCHORS,
        "machine": C.machine(),
    }
    res["best_steps"] = {p: int(max(args.steps, key=lambda s: (res["overall"][p][str(s)]["spearman"], -s))) for p in PRECISIONS}
    lower_is_better = {"mean_true_rank_top"}
    res["anchors_met"] = {
        f"{p}/{s}": {k: bool(res["overall"][p][str(s)][k] <= ANCHORS[k] if k in lower_is_better else res["overall"][p][str(s)][k] >= ANCHORS[k])
                     for k in ("spearman", "kendall", "top_hit", "mean_true_rank_top", "mean_true_rank_bottom")}
        for p in PRECISIONS for s in args.steps
    }
    return res


def summary(res: dict) -> str:
    cfg = res["config"]
    steps = cfg["explore_steps"]
    k2 = cfg["k"] // 2
    n = cfg["seeds_per_prompt"]
    head = ["precision", "steps", "Spearman ρ", "ρ min..max", "Kendall τ", f"top-{k2} hit", f"bottom-{k2} hit", f"mean true rank top-{k2}", f"bottom-{k2}"]
    rows = []
    for p in PRECISIONS:
        for s in steps:
            m = res["overall"][p][str(s)]
            rows.append([p, s, m["spearman"], f"{m['spearman_min']:.2f}..{m['spearman_max']:.2f}", m["kendall"], m["top_hit"], m["bottom_hit"], f"{m['mean_true_rank_top']:.1f}", f"{m['mean_true_rank_bottom']:.1f}"])
    a = ANCHORS
    rows.append(["paper (FLUX.1, HPSv2)", a["best_steps"], a["spearman"], "", a["kendall"], a["top_hit"], "", a["mean_true_rank_top"], a["mean_true_rank_bottom"]])
    perfect, random_ = (k2 + 1) / 2, (n + 1) / 2
    lines = [
        f"## Proxy fidelity: {cfg['prompts']} prompts × {n} seeds vs {cfg['truth']} (mean over prompts)",
        "",
        C.md_table(head, rows),
        "",
        f"mean true rank: perfect {perfect:.1f} / {n - (k2 - 1) / 2:.1f}, random {random_:.1f} / {random_:.1f}. "
        "Steps with the highest mean ρ (not cost-aware): " + ", ".join(f"{p} {s}" for p, s in res["best_steps"].items()) + ".",
        "",
        f"Change of mean ρ from one step count to the next ({' → '.join(map(str, steps))}): " + "; ".join(
            f"{p} " + " ".join(f"{res['overall'][p][str(b)]['spearman'] - res['overall'][p][str(a)]['spearman']:+.3f}" for a, b in zip(steps, steps[1:]))
            for p in PRECISIONS) + ".",
        "",
    ]
    for n_obj, by in res["by_objects"].items():
        count = sum(1 for r in res["per_prompt"] if str(r["objects"]) == n_obj)
        lines.append(f"{n_obj}-object prompts ({count}): ρ by steps " + "; ".join(
            f"{p} " + " ".join(f"{by[p][str(s)]['spearman']:.2f}" for s in steps) for p in PRECISIONS))
    lines += ["", "### Per prompt: Spearman ρ (nvfp4 / fp8 / none) by explore steps", ""]
    head2 = ["prompt", "truth std"] + [f"{s} steps" for s in steps]
    rows2 = []
    for r in res["per_prompt"]:
        rows2.append([r["prompt"], f"{r['truth_std']:.3f}"] + ["/".join(f"{r['metrics'][f'{p}/{s}']['spearman']:.2f}" for p in PRECISIONS) for s in steps])
    lines.append(C.md_table(head2, rows2))
    return "\n".join(lines)


def plot(res: dict, out: Path) -> list[Path]:
    import numpy as np

    plt = C.pyplot()
    cfg = res["config"]
    steps, n, k2 = cfg["explore_steps"], cfg["seeds_per_prompt"], cfg["k"] // 2
    colours = {"nvfp4": "tab:red", "fp8": "tab:blue", "none": "tab:green"}
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.3))
    for p in PRECISIONS:
        o = res["overall"][p]
        rho = [o[str(s)]["spearman"] for s in steps]
        axes[0].plot(steps, rho, "o-", color=colours[p], label=f"{p} ρ")
        axes[0].fill_between(steps, [o[str(s)]["spearman_min"] for s in steps], [o[str(s)]["spearman_max"] for s in steps], color=colours[p], alpha=0.12)
        axes[0].plot(steps, [o[str(s)]["kendall"] for s in steps], "s--", color=colours[p], alpha=0.7, label=f"{p} τ")
        axes[1].plot(steps, [o[str(s)]["mean_true_rank_top"] for s in steps], "o-", color=colours[p], label=p)
        axes[2].plot(steps, [o[str(s)]["mean_true_rank_bottom"] for s in steps], "o-", color=colours[p], label=p)
    axes[0].axhline(ANCHORS["spearman"], color="k", ls=":", lw=1, label="paper ρ 0.93")
    axes[0].axhline(ANCHORS["kendall"], color="grey", ls=":", lw=1, label="paper τ 0.80")
    axes[0].set(title=f"ranking vs full precision {res['config']['truth'].split(', ')[1]}\n(band: min..max ρ over prompts)", xlabel="explore steps", ylabel="correlation")
    paper_scale = n == 96 and k2 == 12  # the paper's mean ranks are for N = 96, top/bottom-12
    if paper_scale:
        axes[1].axhline(ANCHORS["mean_true_rank_top"], color="k", ls=":", lw=1, label="paper 8.4")
        axes[2].axhline(ANCHORS["mean_true_rank_bottom"], color="k", ls=":", lw=1, label="paper 87.4")
    for ax in axes[1:]:
        ax.axhline((n + 1) / 2, color="grey", ls="-.", lw=1, label=f"random {(n + 1) / 2:.1f}")
    axes[1].axhline((k2 + 1) / 2, color="grey", ls="--", lw=1, label=f"perfect {(k2 + 1) / 2:.1f}")
    axes[1].set(title=f"mean true rank of proxy top-{k2} (lower is better)", xlabel="explore steps")
    axes[2].axhline(n - (k2 - 1) / 2, color="grey", ls="--", lw=1, label=f"perfect {n - (k2 - 1) / 2:.1f}")
    axes[2].set(title=f"mean true rank of proxy bottom-{k2} (higher is better)", xlabel="explore steps")
    for ax in axes:
        ax.set_xticks(steps)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"shapes explore-proxy fidelity: {cfg['prompts']} prompts × {n} seeds", fontsize=11)
    pngs = C.save_figure(fig, out, "fidelity")

    cols = [f"{p}/{s}" for p in PRECISIONS for s in steps]
    mat = np.array([[r["metrics"][c]["spearman"] for c in cols] for r in res["per_prompt"]] + [[res["overall"][c.split("/")[0]][c.split("/")[1]]["spearman"] for c in cols]])
    labels = [f"{r['prompt']} (std {r['truth_std']:.2f})" for r in res["per_prompt"]] + ["mean over prompts"]
    fig, ax = plt.subplots(figsize=(max(8, 0.6 * len(cols) + 5), 0.42 * len(labels) + 1.8))
    im = ax.imshow(mat, cmap="viridis", vmin=min(0.0, float(np.nanmin(mat))), vmax=1.0, aspect="auto")
    for (i, j), v in np.ndenumerate(mat):
        ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="w" if v < 0.6 else "k")
    ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_title("Spearman ρ, explore proxy vs full-precision rollout", fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.03)
    return pngs + C.save_figure(fig, out, "fidelity_heatmap")


def main(argv=None) -> dict:
    ap = C.parser(__doc__, "fidelity", quick="2 prompts x 12 seeds, K = 4, steps 2 and 4")
    ap.add_argument("--prompts", type=int, default=None, help="prompts P (default 8; quick 2)")
    ap.add_argument("--seeds", type=int, default=None, help="seeds N per prompt (default 96; quick 12)")
    ap.add_argument("--k", type=int, default=None, help="K kept per prompt: top/bottom K/2 (default 24; quick 4)")
    ap.add_argument("--steps", type=int, nargs="+", default=None, help="explore step counts (default 2 4 6 8 10; quick 2 4)")
    C.add_threads_arg(ap)
    args = ap.parse_args(argv)
    C.set_threads(args.threads)
    q = args.quick
    args.prompts = args.prompts or (2 if q else 8)
    args.seeds = args.seeds or (12 if q else 96)
    args.k = args.k or (4 if q else 24)
    args.steps = sorted(set(args.steps or ([2, 4] if q else [2, 4, 6, 8, 10])))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res = run(args)
    res["quick"] = q
    text = summary(res)
    return C.finish(out, "fidelity", res, text, plot(res, out), what=" of sampling")


if __name__ == "__main__":
    main()
