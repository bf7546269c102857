"""Proxy fidelity (docs/algorithm.md, "Fidelity metrics") on a shapes model: explore variants against two truths.

For P prompts x N seeds (default 8 x 96: 4 one-object and 4 two-object training prompts), the
reward of every seed under each explore variant

    nvfp4-r0, nvfp4-r8, nvfp4-r16, nvfp4-r32   W4A4 NVFP4 emulated, with an SVDQuant low-rank
                                               high-precision branch of rank r (0 = plain NVFP4)
    nvfp4-bf16out                              plain NVFP4 whose GEMM emits bf16 (explore.emulation_output:
                                               bfloat16; the others: float32, the exact block product)
    fp8                                        E4M3 per-tensor
    int8                                       W8A8 on the CPU's integer GEMMs (per-channel weights,
                                               dynamic per-tensor activations; solrl/quant/int8.py)
    high                                       the explore copy without quantisation

at each explore step count (default 2, 4, 6, 8, 10), against TWO truths, side by side: the same
seed's rollout (rollout.steps = 10 Euler steps, high precision) with the transformer in float32
(`fp32`) and in bfloat16 (`bf16`, the paper's setting). The explore variants run in the config's
model.dtype (`auto`: bf16 on a CPU with avx512_bf16/AMX; --explore-dtype changes it). Per prompt
and overall (mean over prompts): Spearman rho, Kendall tau-b, top/bottom-K/2 hit rates, mean true
rank of the proxy's top-K/2 / bottom-K/2 (K = select.k = 24), and the regret: the true reward of
the truly best seed minus the best true reward among the proxy's top-K/2. The bf16 truth is also
ranked against the fp32 one (how much the rollout's own precision moves the ranking).

Every seed's proxy and true rewards are stored in the JSON (`per_prompt[].seeds`, `.truth`,
`.proxy`): what an audit of the winner's curse (the proxy's top seeds regressing to the mean
under the truth) needs.

Cost: the per-candidate sampling time of each variant at the default explore steps against the
bf16 and the fp32 rollout, timed side by side in this process on one prompt (--timing-batch
candidates per call; interleaved, rotated order; medians over --repeats of the per-repeat ratio).
Decoding and scoring are the same for every variant and are not in these times.

Prompts and seeds are those the default run explores (the prompt draws of run seed 0, iterations
0, 1, ..., first distinct one- and two-object prompts), with each prompt's candidate seeds of that
iteration. The model is the base model (fresh LoRA, so every copy = the base weights).

Paper anchors (FLUX.1, HPSv2, NVFP4 6 steps vs BF16): rho 0.93, tau 0.80, mean true rank 8.4 / 87.4,
top-12 hit 93 %, best explore steps 6.

    python benchmarks/fidelity.py --threads 1 --out benchmarks/results/fidelity            # full (20-30 min)
    python benchmarks/fidelity.py --weights /path/to/model --threads 1 --out DIR           # another shapes model
    python benchmarks/fidelity.py --quick --threads 1 --out /tmp/fid                       # smoke (seconds)
    python benchmarks/fidelity.py --variants int8 --threads 1 --out benchmarks/results/fidelity-int8   # one variant beside the same truths
    python benchmarks/fidelity.py --variants nvfp4-r0 nvfp4-bf16out --steps 6 --threads 1 --out benchmarks/results/fidelity-bf16out

With both nvfp4-r0 and nvfp4-bf16out, the summary also compares them paired (same prompts, seeds
and truths): the per-prompt difference of every metric, mean ± SE over prompts, and how the two
proxies' rewards agree seed by seed.

Writes fidelity.json, fidelity.md, fidelity.png (rho, tau, mean true ranks, regret vs steps per
variant, one row per truth), fidelity_heatmap.png (rho per prompt vs the bf16 truth) and
fidelity_cost.png (rho vs cost at the default steps).
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import bench_common as C

TRUTHS = ("fp32", "bf16")
METRICS = ("spearman", "kendall", "top_hit", "bottom_hit", "mean_true_rank_top", "mean_true_rank_bottom", "regret")
ANCHORS = {
    "spearman": 0.93,
    "kendall": 0.80,
    "mean_true_rank_top": 8.4,
    "mean_true_rank_bottom": 87.4,
    "top_hit": 0.93,
    "best_steps": 6,
}


def variant_list(lowranks: list[int]) -> list[dict]:
    out = [{"name": f"nvfp4-r{r}", "precision": "nvfp4", "lowrank": r} for r in lowranks]
    return out + [
        {"name": "nvfp4-bf16out", "precision": "nvfp4", "lowrank": 0, "output": "bfloat16"},
        {"name": "fp8", "precision": "fp8", "lowrank": 0},
        {"name": "int8", "precision": "int8", "lowrank": 0},
        {"name": "high", "precision": "high", "lowrank": 0},
    ]


def explore_models(policy, cfg, variants) -> dict:
    """variant name -> (explore copy, QuantReport) of `policy` (ExploreSpec -> stages.explore_quant)."""
    from solrl.compute import explore_quant
    from solrl.plan import primary_explore

    spec = primary_explore(cfg)
    out = {}
    for v in variants:
        c = cfg.with_overrides(**{"explore.emulation_output": v.get("output", "float32")})
        quant = explore_quant(policy, c, replace(spec, precision=v["precision"], lowrank=v["lowrank"]))
        out[v["name"]] = policy.sampler_copy(quant)
    return out


def quant_info(report) -> dict:
    return {
        "summary": report.summary(),
        "layers": len(report.modules),
        "weights": report.weights,
        "packed_bytes": report.packed_bytes,
        "bits_per_weight": report.bits_per_weight if report.weights else None,
    }


def sample(policy, model, text, seeds, steps, cfg, cond):
    from solrl.compute import sample_batched

    return sample_batched(
        policy, model, [text] * len(seeds), seeds, steps, cfg.rollout.solver, cfg.explore.batch, cond
    )[0]


def rewards(policy, cfg, x0, text):
    from solrl.compute import score

    return score(policy, cfg, x0, [text] * x0.shape[0])[0].numpy()


def time_variants(args, cfg, policies, explore_dtype, models, truth_models, text) -> dict:
    """Per-candidate sampling ms of every variant at the default explore steps and of both
    rollouts, side by side (interleaved, rotated), and the per-repeat ratios to the rollouts."""
    b = args.timing_batch
    seeds = list(range(b))
    pe = policies[explore_dtype]
    cond = {d: p.encode_rows([text] * b) for d, p in policies.items()}
    steps = args.cost_steps
    fns = {
        f"{name}/{steps}": (
            lambda m=m: pe.sample(m, [text] * b, seeds, steps, cfg.rollout.solver, cond=cond[explore_dtype])
        )
        for name, (m, _) in models.items()
    }
    for d in TRUTHS:
        fns[f"rollout-{d}/{args.truth_steps}"] = lambda d=d: policies[d].sample(
            truth_models[d], [text] * b, seeds, args.truth_steps, cfg.rollout.solver, cond=cond[d]
        )
    secs = C.interleaved(fns, args.repeats, log="fidelity")
    rows = {}
    for name, xs in secs.items():
        rows[name] = {"ms_per_candidate": 1000 * C.median(xs) / b, "ms_all": [1000 * x / b for x in xs]}
        for d in TRUTHS:
            ref = secs[f"rollout-{d}/{args.truth_steps}"]
            rows[name][f"over_rollout_{d}"] = C.median([x / r for x, r in zip(xs, ref)])
    return {"batch": b, "explore_steps": steps, "truth_steps": args.truth_steps, "repeats": args.repeats, "rows": rows}


def run(args) -> dict:
    import numpy as np
    import torch

    torch.set_flush_denormal(True)
    from solrl.models import resolve
    from solrl.shapes.prompts import parse  # noqa: F401  (the study is shapes-only: fail early otherwise)

    cfg = C.base_config(args, **{"explore.n": args.seeds, "select.k": args.k, "rollout.steps": args.truth_steps})
    explore_dtype = {v: k for k, v in C.DTYPES.items()}[args.explore_dtype or resolve(cfg).dtype]
    policies = {d: C.load_policy(cfg, C.DTYPES[d]) for d in TRUTHS}
    variants = [v for v in variant_list(args.lowranks) if not args.variants or v["name"] in args.variants]
    models = explore_models(policies[explore_dtype], cfg, variants)
    truth_models = {d: policies[d].sampler_copy(None)[0] for d in TRUTHS}
    prompts = C.study_prompts(cfg, policies["fp32"].train_prompts(), args.prompts, one_object=args.prompts // 2)
    names = [f"{v['name']}/{s}" for v in variants for s in args.steps]
    seconds = {n: 0.0 for n in names} | {f"truth-{d}": 0.0 for d in TRUTHS}
    per_prompt = []
    t_start = time.perf_counter()
    for i, pr in enumerate(prompts):
        text, seeds = pr["prompt"], pr["seeds"]
        cond = {d: p.encode_rows([text] * len(seeds)) for d, p in policies.items()}
        truth = {}
        for d in TRUTHS:
            t, x = C.timed(sample, policies[d], truth_models[d], text, seeds, args.truth_steps, cfg, cond[d])
            seconds[f"truth-{d}"] += t
            truth[d] = rewards(policies[d], cfg, x, text)
        proxy = {}
        for v in variants:
            for s in args.steps:
                if v["precision"] == "high" and s == args.truth_steps:  # the explore-dtype truth itself (deterministic)
                    proxy[f"{v['name']}/{s}"] = truth[explore_dtype]
                    continue
                t, x = C.timed(
                    sample, policies[explore_dtype], models[v["name"]][0], text, seeds, s, cfg, cond[explore_dtype]
                )
                seconds[f"{v['name']}/{s}"] += t
                proxy[f"{v['name']}/{s}"] = rewards(policies[explore_dtype], cfg, x, text)
        row = {k: pr[k] for k in ("prompt", "objects", "iteration", "prompt_id")}
        row["truth_mean"] = {d: float(truth[d].mean()) for d in TRUTHS}
        row["truth_std"] = {d: float(truth[d].std()) for d in TRUTHS}
        row["truth_agreement"] = C.proxy_metrics(
            truth["bf16"], truth["fp32"], args.k, seeds
        )  # bf16 rollout ranked against fp32
        row["metrics"] = {d: {n: C.proxy_metrics(proxy[n], truth[d], args.k, seeds) for n in names} for d in TRUTHS}
        for n in names:
            for d in TRUTHS:
                row["metrics"][d][n]["proxy_mean"] = float(np.mean(proxy[n]))
        row["seeds"] = [int(s) for s in seeds]
        row["truth"] = {d: truth[d].tolist() for d in TRUTHS}
        row["proxy"] = {n: np.asarray(proxy[n]).tolist() for n in names}
        per_prompt.append(row)
        head = f"nvfp4-r0/{args.cost_steps}" if f"nvfp4-r0/{args.cost_steps}" in names else names[0]
        print(
            f"[fidelity] prompt {i + 1}/{len(prompts)} {text!r}: {time.perf_counter() - t_start:.0f} s "
            f"({head}: rho {row['metrics']['bf16'][head]['spearman']:.3f} vs bf16, {row['metrics']['fp32'][head]['spearman']:.3f} vs fp32)",
            flush=True,
        )
    sampling_wall = time.perf_counter() - t_start
    timing = time_variants(args, cfg, policies, explore_dtype, models, truth_models, prompts[0]["prompt"])

    def overall(rows):
        return {
            d: {
                v["name"]: {
                    str(s): C.summarise_metrics([r["metrics"][d][f"{v['name']}/{s}"] for r in rows]) for s in args.steps
                }
                for v in variants
            }
            for d in TRUTHS
        }

    res = {
        "config": {
            "prompts": len(prompts),
            "seeds_per_prompt": cfg.explore.n,
            "k": cfg.select.k,
            "explore_steps": list(args.steps),
            "cost_steps": args.cost_steps,
            "truth_steps": args.truth_steps,
            "truths": {
                d: f"{C.DTYPES[d]} transformer, high precision, {args.truth_steps} {cfg.rollout.solver} steps"
                for d in TRUTHS
            },
            "explore_dtype": C.DTYPES[explore_dtype],
            "variants": variants,
            "solver": cfg.rollout.solver,
            "reward": dict(cfg.reward.weights),
            "config_file": str(args.config),
            "model": C.model_label(cfg),
            "adapter": "fresh LoRA (B = 0): the base weights",
            "prompt_choice": f"the default run's prompt draws (run seed {cfg.run.seed}, iterations 0..), first distinct "
            f"{args.prompts // 2} one-object and {args.prompts - args.prompts // 2} two-object prompts, with their candidate seeds",
        },
        "quant": {n: quant_info(rep) for n, (_, rep) in models.items()},
        "overall": overall(per_prompt),
        "by_objects": {
            str(n): overall([r for r in per_prompt if r["objects"] == n])
            for n in sorted({r["objects"] for r in per_prompt})
        },
        "truth_agreement": C.summarise_metrics([r["truth_agreement"] for r in per_prompt]),
        "cost": timing,
        "per_prompt": per_prompt,
        "sampling_seconds": seconds,
        "sampling_wall_seconds": sampling_wall,
        "paper_anchors": ANCHORS,
    }
    if {v["name"] for v in variants} >= set(PAIRED):
        res["paired"] = paired(res)
    res["best_steps"] = {
        d: {
            v["name"]: int(max(args.steps, key=lambda s: (res["overall"][d][v["name"]][str(s)]["spearman"], -s)))
            for v in variants
        }
        for d in TRUTHS
    }
    lower_is_better = {"mean_true_rank_top"}
    o = res["overall"]["bf16"]
    res["anchors_met_vs_bf16"] = (
        {
            f"{v['name']}/{s}": {
                k: bool(
                    o[v["name"]][str(s)][k] <= ANCHORS[k]
                    if k in lower_is_better
                    else o[v["name"]][str(s)][k] >= ANCHORS[k]
                )
                for k in ("spearman", "kendall", "top_hit", "mean_true_rank_top", "mean_true_rank_bottom")
            }
            for v in variants
            for s in args.steps
        }
        if cfg.explore.n == 96 and cfg.select.k == 24
        else {}
    )
    return res


def _pair(res, v, s, key, fmt="{:.3f}") -> str:
    return " / ".join(fmt.format(res["overall"][d][v][str(s)][key]) for d in TRUTHS)


def summary(res: dict) -> str:
    cfg = res["config"]
    steps, k2, n = cfg["explore_steps"], cfg["k"] // 2, cfg["seeds_per_prompt"]
    head = [
        "variant",
        "steps",
        "Spearman ρ",
        "ρ min..max (bf16)",
        "Kendall τ",
        f"top-{k2} hit",
        f"bottom-{k2} hit",
        f"mean true rank top-{k2}",
        f"bottom-{k2}",
        "regret",
    ]
    rows = []
    for v in cfg["variants"]:
        for s in steps:
            m = res["overall"]["bf16"][v["name"]][str(s)]
            rows.append(
                [
                    v["name"],
                    s,
                    _pair(res, v["name"], s, "spearman"),
                    f"{m['spearman_min']:.2f}..{m['spearman_max']:.2f}",
                    _pair(res, v["name"], s, "kendall"),
                    _pair(res, v["name"], s, "top_hit", "{:.2f}"),
                    _pair(res, v["name"], s, "bottom_hit", "{:.2f}"),
                    _pair(res, v["name"], s, "mean_true_rank_top", "{:.1f}"),
                    _pair(res, v["name"], s, "mean_true_rank_bottom", "{:.1f}"),
                    _pair(res, v["name"], s, "regret", "{:.4f}"),
                ]
            )
    a = ANCHORS
    rows.append(
        [
            "paper (FLUX.1, HPSv2)",
            a["best_steps"],
            a["spearman"],
            "",
            a["kendall"],
            a["top_hit"],
            "",
            a["mean_true_rank_top"],
            a["mean_true_rank_bottom"],
            "",
        ]
    )
    t = res["truth_agreement"]
    lines = [
        f"## Proxy fidelity: {cfg['prompts']} prompts × {n} seeds, explore in {cfg['explore_dtype']}; every cell: vs the fp32 truth / vs the bf16 truth "
        f"({cfg['truth_steps']} {cfg['solver']} steps; mean over prompts)",
        "",
        C.md_table(head, rows),
        "",
        f"mean true rank: perfect {(k2 + 1) / 2:.1f} / {n - (k2 - 1) / 2:.1f}, random {(n + 1) / 2:.1f}. Regret: "
        f"true reward of the best seed − best true reward among the proxy's top-{k2} (0 = kept the best).",
        f"The bf16 rollout ranked against the fp32 one: ρ {t['spearman']:.3f}, τ "
        f"{t['kendall']:.3f}, top-{k2} hit {t['top_hit']:.2f}, regret {t['regret']:.4f}.",
        "Steps with the highest mean ρ (not cost-aware), vs fp32 / bf16: "
        + ", ".join(
            f"{v['name']} {res['best_steps']['fp32'][v['name']]}/{res['best_steps']['bf16'][v['name']]}"
            for v in cfg["variants"]
        )
        + ".",
        "",
    ]
    for n_obj, by in res["by_objects"].items():
        count = sum(1 for r in res["per_prompt"] if str(r["objects"]) == n_obj)
        lines.append(
            f"{n_obj}-object prompts ({count}), ρ vs bf16 by steps {steps}: "
            + "; ".join(
                f"{v['name']} " + " ".join(f"{by['bf16'][v['name']][str(s)]['spearman']:.2f}" for s in steps)
                for v in cfg["variants"]
            )
        )
    lines += paired_summary(res)
    c = res["cost"]
    lines += [
        "",
        f"### Per-candidate sampling cost ({c['explore_steps']} explore steps vs {c['truth_steps']}-step "
        f"rollouts; batch {c['batch']}, {c['repeats']} interleaved repeats, medians)",
        "",
    ]
    crow = []
    for name, r in c["rows"].items():
        q = res["quant"].get(name.split("/")[0], {})
        crow.append(
            [
                name,
                r["ms_per_candidate"],
                r["over_rollout_bf16"],
                r["over_rollout_fp32"],
                f"{q['bits_per_weight']:.2f}" if q.get("bits_per_weight") else "-",
            ]
        )
    lines.append(
        C.md_table(["variant", "ms / candidate", "× bf16 rollout", "× fp32 rollout", "bits / quantised weight"], crow)
    )
    lines += [
        "",
        "### Per prompt: Spearman ρ vs the bf16 truth ("
        + " / ".join(v["name"] for v in cfg["variants"])
        + ") by explore steps",
        "",
    ]
    head2 = ["prompt", "truth std fp32 / bf16"] + [f"{s} steps" for s in steps]
    rows2 = [
        [r["prompt"], f"{r['truth_std']['fp32']:.3f} / {r['truth_std']['bf16']:.3f}"]
        + [
            "/".join(f"{r['metrics']['bf16'][v['name'] + '/' + str(s)]['spearman']:.2f}" for v in cfg["variants"])
            for s in steps
        ]
        for r in res["per_prompt"]
    ]
    lines.append(C.md_table(head2, rows2))
    return "\n".join(lines)


PAIRED = ("nvfp4-r0", "nvfp4-bf16out")  # the emulation's float32 and bf16 output, compared paired


def paired(res: dict, a: str = PAIRED[0], b: str = PAIRED[1]) -> dict:
    """Per metric, truth and step count: the mean over prompts of (b − a) on the same prompts,
    seeds and truths, its standard error, and the per-prompt differences; plus the two proxies'
    agreement seed by seed (Spearman ρ between their rewards, mean |Δ reward|)."""
    import math

    import numpy as np
    from scipy.stats import spearmanr

    out = {"a": a, "b": b, "prompts": len(res["per_prompt"]), "metrics": {}, "proxy_agreement": {}}
    for d in TRUTHS:
        out["metrics"][d] = {}
        for s in res["config"]["explore_steps"]:
            out["metrics"][d][str(s)] = {}
            for key in METRICS:
                diff = [r["metrics"][d][f"{b}/{s}"][key] - r["metrics"][d][f"{a}/{s}"][key] for r in res["per_prompt"]]
                sem = float(np.std(diff, ddof=1) / math.sqrt(len(diff))) if len(diff) > 1 else 0.0
                out["metrics"][d][str(s)][key] = {"mean": float(np.mean(diff)), "sem": sem, "per_prompt": diff}
    for s in res["config"]["explore_steps"]:
        pa = [np.asarray(r["proxy"][f"{a}/{s}"]) for r in res["per_prompt"]]
        pb = [np.asarray(r["proxy"][f"{b}/{s}"]) for r in res["per_prompt"]]
        out["proxy_agreement"][str(s)] = {
            "spearman_mean": float(np.mean([spearmanr(x, y).statistic for x, y in zip(pa, pb)])),
            "spearman_min": float(np.min([spearmanr(x, y).statistic for x, y in zip(pa, pb)])),
            "mean_abs_reward_diff": float(np.mean([np.abs(x - y).mean() for x, y in zip(pa, pb)])),
            "identical_seeds": float(np.mean([(x == y).mean() for x, y in zip(pa, pb)])),
        }
    return out


def paired_summary(res: dict) -> list[str]:
    names = {v["name"] for v in res["config"]["variants"]}
    if not set(PAIRED) <= names:
        return []
    p = res.get("paired") or paired(res)
    a, b = p["a"], p["b"]
    lines = [
        "",
        f"### {b} − {a}, paired (same {p['prompts']} prompts, seeds and truths): mean ± SE over prompts, "
        "vs the fp32 truth / vs the bf16 truth",
        "",
    ]
    rows = []
    for s in res["config"]["explore_steps"]:
        m = {d: p["metrics"][d][str(s)] for d in TRUTHS}
        ag = p["proxy_agreement"][str(s)]
        rows.append(
            [s]
            + [" / ".join(f"{m[d][k]['mean']:+.3f} ± {m[d][k]['sem']:.3f}" for d in TRUTHS) for k in METRICS]
            + [f"{ag['spearman_mean']:.3f} (min {ag['spearman_min']:.3f})", f"{ag['mean_abs_reward_diff']:.4f}"]
        )
    head = ["steps", "Δ ρ", "Δ τ", "Δ top hit", "Δ bottom hit", "Δ mean true rank top", "Δ bottom", "Δ regret"]
    lines.append(C.md_table(head + [f"ρ({a}, {b}) per prompt", "mean |Δ reward|"], rows))
    return lines


def plot(res: dict, out: Path) -> list[Path]:
    import numpy as np

    plt = C.pyplot()
    cfg = res["config"]
    steps, n, k2 = cfg["explore_steps"], cfg["seeds_per_prompt"], cfg["k"] // 2
    names = [v["name"] for v in cfg["variants"]]
    cmap = plt.get_cmap("tab10")
    colour = {name: cmap(i) for i, name in enumerate(names)}
    fig, axes = plt.subplots(2, 4, figsize=(19, 8.5), squeeze=False)
    for row, d in enumerate(TRUTHS):
        ax = axes[row]
        for name in names:
            o = res["overall"][d][name]
            ax[0].plot(steps, [o[str(s)]["spearman"] for s in steps], "o-", color=colour[name], label=f"{name} ρ")
            ax[0].plot(steps, [o[str(s)]["kendall"] for s in steps], "s--", color=colour[name], alpha=0.5)
            ax[1].plot(steps, [o[str(s)]["mean_true_rank_top"] for s in steps], "o-", color=colour[name], label=name)
            ax[2].plot(steps, [o[str(s)]["mean_true_rank_bottom"] for s in steps], "o-", color=colour[name], label=name)
            ax[3].plot(steps, [o[str(s)]["regret"] for s in steps], "o-", color=colour[name], label=name)
        ax[0].axhline(ANCHORS["spearman"], color="k", ls=":", lw=1, label="paper ρ 0.93")
        ax[0].axhline(ANCHORS["kendall"], color="grey", ls=":", lw=1, label="paper τ 0.80 (dashed: τ)")
        ax[0].set(title=f"vs the {d} truth:\nρ (solid), τ (dashed)", xlabel="explore steps", ylabel="correlation")
        if n == 96 and k2 == 12:
            ax[1].axhline(ANCHORS["mean_true_rank_top"], color="k", ls=":", lw=1, label="paper 8.4")
            ax[2].axhline(ANCHORS["mean_true_rank_bottom"], color="k", ls=":", lw=1, label="paper 87.4")
        for a in ax[1:3]:
            a.axhline((n + 1) / 2, color="grey", ls="-.", lw=1, label=f"random {(n + 1) / 2:.1f}")
        ax[1].axhline((k2 + 1) / 2, color="grey", ls="--", lw=1, label=f"perfect {(k2 + 1) / 2:.1f}")
        ax[1].set(title=f"{d} truth: mean true rank of\nproxy top-{k2} (lower is better)", xlabel="explore steps")
        ax[2].axhline(n - (k2 - 1) / 2, color="grey", ls="--", lw=1, label=f"perfect {n - (k2 - 1) / 2:.1f}")
        ax[2].set(title=f"{d} truth: mean true rank of\nproxy bottom-{k2} (higher is better)", xlabel="explore steps")
        ax[3].set(
            title=f"{d} truth: regret\n(best true − best kept; lower is better)",
            xlabel="explore steps",
            ylabel="reward",
        )
        for a in ax:
            a.set_xticks(steps)
            a.grid(alpha=0.3)
            a.legend(fontsize=6)
    fig.suptitle(
        f"explore-proxy fidelity: {cfg['prompts']} prompts × {n} seeds, explore in {cfg['explore_dtype']}", fontsize=11
    )
    pngs = C.save_figure(fig, out, "fidelity")

    cols = [f"{name}/{s}" for name in names for s in steps]
    mat = np.array(
        [[r["metrics"]["bf16"][c]["spearman"] for c in cols] for r in res["per_prompt"]]
        + [[res["overall"]["bf16"][c.split("/")[0]][c.split("/")[1]]["spearman"] for c in cols]]
    )
    labels = [f"{r['prompt']} (std {r['truth_std']['bf16']:.2f})" for r in res["per_prompt"]] + ["mean over prompts"]
    fig, ax = plt.subplots(figsize=(max(8, 0.5 * len(cols) + 5), 0.42 * len(labels) + 2))
    im = ax.imshow(mat, cmap="viridis", vmin=min(0.0, float(np.nanmin(mat))), vmax=1.0, aspect="auto")
    for (i, j), v in np.ndenumerate(mat):
        ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6, color="w" if v < 0.6 else "k")
    ax.set_xticks(range(len(cols)), cols, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_title("Spearman ρ, explore proxy vs the bf16 rollout", fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.03)
    pngs += C.save_figure(fig, out, "fidelity_heatmap")

    c = res["cost"]
    s = c["explore_steps"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, key in zip(axes, ("spearman", "regret")):
        for name in names:
            x = c["rows"][f"{name}/{s}"]["over_rollout_bf16"]
            for d, mk in zip(TRUTHS, ("o", "s")):
                y = res["overall"][d][name][str(s)][key] if str(s) in res["overall"][d][name] else np.nan
                ax.scatter([x], [y], color=colour[name], marker=mk, label=f"{name} vs {d}")
        ax.axvline(1.0, color="k", lw=1, ls=":")
        ax.axvline(0.9, color="tab:red", lw=1, ls="--", label="cost goal 0.9×")
        ax.set(
            xlabel=f"cost per candidate, {s} explore steps ÷ bf16 {c['truth_steps']}-step rollout",
            ylabel=key,
            title=f"{key} vs cost ({s} explore steps)\n(circles: fp32 truth, squares: bf16 truth)",
        )
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=6, ncol=2)
    return pngs + C.save_figure(fig, out, "fidelity_cost")


def main(argv=None) -> dict:
    ap = C.parser(
        __doc__,
        "fidelity",
        quick="2 prompts (one- and two-object) x 8 seeds, K 4, steps 2 3, ranks 0 8, 4-step truths, batch 8",
    )
    C.add_model_args(ap)
    ap.add_argument("--prompts", type=int, default=None, help="prompts P, half one-object (default 8; quick 2)")
    ap.add_argument("--seeds", type=int, default=None, help="seeds N per prompt (default 96; quick 8)")
    ap.add_argument("--k", type=int, default=None, help="K kept per prompt: top/bottom K/2 (default 24; quick 4)")
    ap.add_argument(
        "--steps", type=int, nargs="+", default=None, help="explore step counts (default 2 4 6 8 10; quick 2 3)"
    )
    ap.add_argument(
        "--lowranks",
        type=int,
        nargs="+",
        default=None,
        help="ranks of the NVFP4 low-rank branch (default 0 8 16 32; quick 0 8)",
    )
    ap.add_argument(
        "--variants",
        nargs="+",
        default=None,
        help="only these variants (names as in the table: nvfp4-r0 ... fp8 int8 high; default all)",
    )
    ap.add_argument(
        "--truth-steps",
        type=int,
        default=None,
        help="rollout steps of the truths (default rollout.steps = 10; quick 4)",
    )
    ap.add_argument(
        "--explore-dtype",
        choices=["float32", "bfloat16"],
        default=None,
        help="model.dtype of the explore variants (default: the config's, auto resolved)",
    )
    ap.add_argument(
        "--cost-steps",
        type=int,
        default=None,
        help="explore steps of the cost timing (default explore.steps = 6; quick the largest --steps)",
    )
    ap.add_argument(
        "--timing-batch",
        type=int,
        default=None,
        help="candidates per timed sampling call (default explore.batch = 96; quick 8)",
    )
    ap.add_argument("--repeats", type=int, default=None, help="interleaved timing repeats (default 3; quick 2)")
    C.add_threads_arg(ap)
    args = ap.parse_args(argv)
    C.set_threads(args.threads)
    q = args.quick
    cfg = C.base_config(args)
    args.prompts = args.prompts or (2 if q else 8)
    args.seeds = args.seeds or (8 if q else cfg.explore.n)
    args.k = args.k or (4 if q else cfg.select.k)
    args.steps = sorted(set(args.steps or ([2, 3] if q else [2, 4, 6, 8, 10])))
    args.lowranks = sorted(set(args.lowranks if args.lowranks is not None else ([0, 8] if q else [0, 8, 16, 32])))
    args.truth_steps = args.truth_steps or (4 if q else cfg.rollout.steps)
    args.cost_steps = args.cost_steps or (args.steps[-1] if q else cfg.explore.steps)
    args.timing_batch = args.timing_batch or (8 if q else cfg.explore.batch)
    args.repeats = args.repeats or (2 if q else 3)
    return C.measure_and_finish(args, "fidelity", run, summary, plot)


if __name__ == "__main__":
    main()
