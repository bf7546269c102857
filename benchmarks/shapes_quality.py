"""Quality and NVFP4 proxy fidelity of a shapes model, with the transformer in float32 and in bf16.

For the model at --weights (default: the config's, i.e. the shipped one), in each model.dtype
(float32, bfloat16):
  * quality at rollout.steps (10) Euler steps, no CFG, high precision, on --train-prompts training
    prompts (a fixed random draw) and on the held-out prompts (all, or --held-out-prompts of
    them), --quality-seeds seeds each: mean `shapes` reward, `shapes_strict` accuracy, mean
    within-prompt reward std, and the share of two-object prompts with std >= 0.05 (prompts the
    RL signal can work on);
  * NVFP4 proxy fidelity on --prompts prompts x --seeds seeds (half one-object, the default
    run's prompt draws and candidate seeds, as benchmarks/fidelity.py): the reward after
    explore.steps (6) steps of the W4A4 NVFP4 explore copy vs rollout.steps in high precision,
    both in that dtype: Spearman, Kendall tau-b, top-/bottom-K/2 hit rates, mean true rank of the
    proxy's top/bottom-K/2, regret;
  * per-candidate sampling time of explore and rollout in both dtypes, side by side on the first
    fidelity prompt (interleaved, medians of --repeats).
(benchmarks/fidelity.py has the full study: more explore variants and steps, both truths side by
side; benchmarks/cost.py the iteration timing.)

    python benchmarks/shapes_quality.py --threads 1 --out benchmarks/results/shapes_quality                 # shipped model (15-20 min)
    python benchmarks/shapes_quality.py --weights /path/to/model --threads 1 --out DIR                      # another model
    python benchmarks/shapes_quality.py --quick --threads 1 --out /tmp/sq                                   # smoke
"""

from __future__ import annotations

import time
from pathlib import Path

import bench_common as C

DTYPES = ("float32", "bfloat16")


def prompt_stats(policy, model, cfg, prompts, seeds_per_prompt) -> list[dict]:
    """Per prompt: mean reward, population std, strict accuracy over `seeds_per_prompt` seeds."""
    from solrl.compute import sample_batched, score
    from solrl.seeds import stream_seed
    from solrl.shapes.prompts import parse

    rows = []
    for i, p in enumerate(prompts):
        seeds = [stream_seed(1234, i, j, name="quality") for j in range(seeds_per_prompt)]
        texts = [p] * len(seeds)
        x0, _ = sample_batched(
            policy,
            model,
            texts,
            seeds,
            cfg.rollout.steps,
            cfg.rollout.solver,
            cfg.rollout.batch,
            policy.encode_rows(texts),
        )
        total, scores = score(policy, cfg, x0, texts)
        strict = scores.get("shapes_strict")
        rows.append(
            {
                "prompt": p,
                "objects": parse(p).n_objects,
                "mean": float(total.mean()),
                "std": float(total.std(unbiased=False)),
                "strict": float(strict.mean()) if strict is not None else float("nan"),
            }
        )
    return rows


def summarise(rows) -> dict:
    import numpy as np

    two = [r for r in rows if r["objects"] == 2]
    return {
        "prompts": len(rows),
        "reward": float(np.mean([r["mean"] for r in rows])),
        "strict": float(np.mean([r["strict"] for r in rows])),
        "within_prompt_std": float(np.mean([r["std"] for r in rows])),
        "two_object_std_ge_0.05": float(np.mean([r["std"] >= 0.05 for r in two])) if two else None,
    }


def run(args) -> dict:
    import numpy as np
    import torch

    torch.set_flush_denormal(True)
    from solrl.compute import explore_quant, sample_batched, score
    from solrl.plan import primary_explore

    # what the model card reports: the NVFP4 explore copy (whatever the preset explores with)
    over = {"explore.n": args.seeds, "select.k": args.k, "explore.precision": "nvfp4"}
    if args.quick:
        over |= {"explore.steps": 2, "rollout.steps": 4}
    cfg = C.base_config(args, **over)
    pols = {d: C.load_policy(cfg, d) for d in DTYPES}
    hp = {d: p.sampler_copy(None)[0] for d, p in pols.items()}
    fp4, reports = {}, {}
    for d, p in pols.items():
        fp4[d], reports[d] = p.sampler_copy(explore_quant(p, cfg, primary_explore(cfg)))
    train, held = pols["float32"].train_prompts(), pols["float32"].eval_prompts()
    rng = np.random.default_rng(0)
    train_sel = [train[i] for i in sorted(rng.choice(len(train), min(args.train_prompts, len(train)), replace=False))]
    held_sel = (
        list(held)
        if not args.held_out_prompts
        else [held[i] for i in sorted(rng.choice(len(held), min(args.held_out_prompts, len(held)), replace=False))]
    )
    out = {
        "config": {
            "config_file": str(args.config),
            "model": C.model_label(cfg),
            "explore_steps": cfg.explore.steps,
            "rollout_steps": cfg.rollout.steps,
            "solver": cfg.rollout.solver,
            "quality_seeds": args.quality_seeds,
            "train_prompts": len(train_sel),
            "held_out_prompts": len(held_sel),
            "fidelity_prompts": args.prompts,
            "seeds_per_prompt": args.seeds,
            "k": args.k,
            "reward": dict(cfg.reward.weights),
            "dtypes": list(DTYPES),
        },
        "params": sum(x.numel() for x in hp["float32"].parameters()),
        "quant": {d: r.summary() for d, r in reports.items()},
        "bits_per_weight": reports["float32"].bits_per_weight,
        "quality": {},
        "fidelity": {},
    }
    t0 = time.perf_counter()
    for d in DTYPES:
        tr = prompt_stats(pols[d], hp[d], cfg, train_sel, args.quality_seeds)
        he = prompt_stats(pols[d], hp[d], cfg, held_sel, args.quality_seeds)
        out["quality"][d] = {
            "train": summarise(tr),
            "held_out": summarise(he),
            "per_prompt": {"train": tr, "held_out": he},
        }
        print(
            f"[shapes_quality] quality {d}: train {out['quality'][d]['train']['reward']:.3f}, held-out {out['quality'][d]['held_out']['reward']:.3f} "
            f"({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )
    out["quality_seconds"] = time.perf_counter() - t0

    prompts = C.study_prompts(cfg, train, args.prompts, one_object=args.prompts // 2)
    t0 = time.perf_counter()
    for d in DTYPES:
        p = pols[d]
        per_prompt = []
        for pr in prompts:
            text, seeds = pr["prompt"], pr["seeds"]
            texts = [text] * len(seeds)
            cond = p.encode_rows(texts)
            xs = {
                name: sample_batched(p, m, texts, seeds, steps, cfg.rollout.solver, cfg.explore.batch, cond)[0]
                for name, m, steps in (("proxy", fp4[d], cfg.explore.steps), ("truth", hp[d], cfg.rollout.steps))
            }
            proxy, truth = (score(p, cfg, xs[k], texts)[0].numpy() for k in ("proxy", "truth"))
            m = C.proxy_metrics(proxy, truth, args.k, seeds)
            m.update(prompt=text, objects=pr["objects"], truth_mean=float(truth.mean()), truth_std=float(truth.std()))
            per_prompt.append(m)
        out["fidelity"][d] = {
            "overall": C.summarise_metrics(
                [{k: v for k, v in m.items() if k not in ("prompt", "objects")} for m in per_prompt]
            ),
            "per_prompt": per_prompt,
        }
        print(
            f"[shapes_quality] fidelity {d}: rho {out['fidelity'][d]['overall']['spearman']:.3f} ({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )
    out["fidelity_seconds"] = time.perf_counter() - t0

    text, seeds = prompts[0]["prompt"], prompts[0]["seeds"]
    conds = {d: pols[d].encode_rows([text] * len(seeds)) for d in DTYPES}
    fns = {}
    for d in DTYPES:
        fns[f"explore-{d}"] = lambda d=d: pols[d].sample(
            fp4[d], [text] * len(seeds), seeds, cfg.explore.steps, cfg.rollout.solver, cond=conds[d]
        )
        fns[f"rollout-{d}"] = lambda d=d: pols[d].sample(
            hp[d], [text] * len(seeds), seeds, cfg.rollout.steps, cfg.rollout.solver, cond=conds[d]
        )
    secs = C.interleaved(fns, args.repeats, warmup=True)
    ms = {name: 1000 * C.median(x) / len(seeds) for name, x in secs.items()}
    out["ms_per_candidate"] = {
        d: {
            "explore_nvfp4": ms[f"explore-{d}"],
            "rollout": ms[f"rollout-{d}"],
            "explore_over_rollout": ms[f"explore-{d}"] / ms[f"rollout-{d}"],
        }
        for d in DTYPES
    }
    out["ms_per_candidate"]["rollout_float32_over_bfloat16"] = ms["rollout-float32"] / ms["rollout-bfloat16"]
    return out


def summary(out) -> str:
    c = out["config"]
    lines = [
        f"## shapes model {c['model']}: {out['params']:,} transformer parameters; NVFP4 explore copy {out['quant']['float32']}",
        "",
        f"### Quality ({c['rollout_steps']} {c['solver']} steps, high precision, {c['quality_seeds']} seeds per prompt)",
        "",
    ]
    rows = []
    for d in DTYPES:
        for s in ("train", "held_out"):
            q = out["quality"][d][s]
            rows.append(
                [
                    d,
                    f"{s} ({q['prompts']})",
                    q["reward"],
                    q["strict"],
                    q["within_prompt_std"],
                    "" if q["two_object_std_ge_0.05"] is None else f"{q['two_object_std_ge_0.05']:.2f}",
                ]
            )
    lines.append(
        C.md_table(
            [
                "model.dtype",
                "prompts",
                "mean shapes reward",
                "shapes_strict",
                "within-prompt std",
                "two-object prompts with std ≥ 0.05",
            ],
            rows,
        )
    )
    k2 = c["k"] // 2
    lines += [
        "",
        f"### NVFP4 {c['explore_steps']} steps vs high precision {c['rollout_steps']} steps, same "
        f"dtype ({c['fidelity_prompts']} prompts × {c['seeds_per_prompt']} seeds, mean over prompts)",
        "",
    ]
    rows = []
    for d in DTYPES:
        f = out["fidelity"][d]["overall"]
        rows.append(
            [
                d,
                f["spearman"],
                f"{f['spearman_min']:.2f}..{f['spearman_max']:.2f}",
                f["kendall"],
                f["top_hit"],
                f["bottom_hit"],
                f"{f['mean_true_rank_top']:.1f} / {f['mean_true_rank_bottom']:.1f}",
                f"{f['regret']:.4f}",
            ]
        )
    lines.append(
        C.md_table(
            [
                "model.dtype",
                "Spearman",
                "min..max",
                "Kendall",
                f"top-{k2} hit",
                f"bottom-{k2} hit",
                "mean true rank top / bottom",
                "regret",
            ],
            rows,
        )
    )
    ms = out["ms_per_candidate"]
    lines += [
        "",
        "per candidate (interleaved, medians): "
        + "; ".join(
            f"{d}: explore {ms[d]['explore_nvfp4']:.1f} ms, rollout {ms[d]['rollout']:.1f} ms (ratio {ms[d]['explore_over_rollout']:.2f})"
            for d in DTYPES
        )
        + f"; float32 rollout ÷ bf16 rollout {ms['rollout_float32_over_bfloat16']:.2f}",
    ]
    return "\n".join(lines)


def plot(out, path: Path) -> list[Path]:
    import numpy as np

    plt = C.pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    x = np.arange(2)
    w = 0.35
    for j, d in enumerate(DTYPES):
        for ax, key in ((axes[0], "reward"), (axes[1], "strict")):
            vals = [out["quality"][d][s][key] for s in ("train", "held_out")]
            ax.bar(x + (j - 0.5) * w, vals, w, label=d)
            for xi, v in zip(x, vals):
                ax.text(xi + (j - 0.5) * w, v, f"{v:.3f}", ha="center", va="bottom", fontsize=7)
    for ax, t in ((axes[0], "mean shapes reward"), (axes[1], "shapes_strict accuracy")):
        ax.set_xticks(x, ["train", "held-out"])
        ax.set(title=t, ylim=(0, 1.05))
        ax.legend(fontsize=8)
    keys = ["spearman", "kendall", "top_hit", "bottom_hit"]
    xk = np.arange(len(keys))
    for j, d in enumerate(DTYPES):
        vals = [out["fidelity"][d]["overall"][k] for k in keys]
        axes[2].bar(xk + (j - 0.5) * w, vals, w, label=d)
    axes[2].set_xticks(xk, ["ρ", "τ", "top hit", "bottom hit"])
    axes[2].axhline(0.93, color="k", ls=":", lw=1, label="paper ρ 0.93")
    axes[2].set(
        title=f"NVFP4 {out['config']['explore_steps']}-step proxy vs {out['config']['rollout_steps']}-step rollout",
        ylim=(min(0.0, *[out["fidelity"][d]["overall"]["spearman"] for d in DTYPES]), 1.05),
    )
    axes[2].legend(fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(f"shapes model {out['config']['model']}", fontsize=10)
    return C.save_figure(fig, path, "shapes_quality")


def main(argv=None):
    ap = C.parser(
        __doc__,
        "shapes_quality",
        quick="4 train / 4 held-out prompts x 2 seeds, fidelity 2 prompts x 8 seeds (K 4), 2 vs 4 steps",
    )
    C.add_model_args(ap)
    ap.add_argument(
        "--prompts", type=int, default=None, help="prompts in the fidelity study, half one-object (default 8; quick 2)"
    )
    ap.add_argument(
        "--seeds", type=int, default=None, help="seeds per prompt in the fidelity study (default 96; quick 8)"
    )
    ap.add_argument("--k", type=int, default=None, help="K of the fidelity metrics (default select.k = 24; quick 4)")
    ap.add_argument(
        "--quality-seeds", type=int, default=None, help="seeds per prompt in the quality table (default 16; quick 2)"
    )
    ap.add_argument(
        "--train-prompts", type=int, default=None, help="training prompts in the quality table (default 48; quick 4)"
    )
    ap.add_argument(
        "--held-out-prompts",
        type=int,
        default=None,
        help="held-out prompts in the quality table (default: all; quick 4)",
    )
    ap.add_argument(
        "--repeats", type=int, default=None, help="interleaved repeats of the per-candidate timing (default 3; quick 1)"
    )
    C.add_threads_arg(ap)
    args = ap.parse_args(argv)
    C.set_threads(args.threads)
    q = args.quick
    cfg = C.base_config(args)
    args.prompts = args.prompts or (2 if q else 8)
    args.seeds = args.seeds or (8 if q else cfg.explore.n)
    args.k = args.k or (4 if q else cfg.select.k)
    args.quality_seeds = args.quality_seeds or (2 if q else 16)
    args.train_prompts = args.train_prompts or (4 if q else 48)
    args.held_out_prompts = args.held_out_prompts or (4 if q else None)
    args.repeats = args.repeats or (1 if q else 3)
    return C.measure_and_finish(args, "shapes_quality", run, summary, plot)


if __name__ == "__main__":
    main()
