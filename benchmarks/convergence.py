"""Convergence of the four modes on the shapes preset, and the pool size N for sol_rl.

Every run starts from the shipped shapes model with a fresh LoRA; runs with the same training
seed see the same prompt draws and the same candidate seeds (both derive from run.seed). The
runs advance in lock-step, one iteration of each in turn, so that whatever else loads the
machine loads every mode alike. Measured per iteration: the stage times (explore, select,
regenerate, update; evaluation excluded) and, every --eval-every iterations, the held-out
reward of the EMA adapter (fixed prompts and seeds, 20 Euler steps, high precision).

Time-to-parity (the paper's protocol): for a baseline B and progress p in 25/50/75/100 %,
target = r0 + p (max_B - r0) where r0 is the reward before training and max_B the best of B's
seed-averaged curve; speedup = time B needs to reach the target / time sol_rl needs. Times are
read off piecewise-linear seed-averaged curves; "never" when a curve does not reach the target.

Emulated NVFP4 on a CPU is *slower* than float32 (it does the float32 matmul plus the
quantisation), so the measured CPU wall time cannot show the paper's explore speed-up. We
therefore also report a second clock, "denoiser-equivalents": each transformer forward of a
candidate costs 1 in high precision and `--fp4-cost` (default 0.5) in NVFP4; each training
forward+backward costs 3. Its speed-ups are what the algorithm would give where NVFP4 runs at
that relative cost (a Blackwell GPU); its measured CPU counterpart is also printed.

    python benchmarks/convergence.py --out benchmarks/results/convergence   # full (~2 h on 2 cores)
    python benchmarks/convergence.py --quick --out /tmp/conv                # smoke (~1 min)
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import bench_common as C
import numpy as np
import torch

BASELINES = ("naive_scaling", "diffusionnft")
PROGRESS = (0.25, 0.5, 0.75, 1.0)


def run_specs(modes, seeds, pools, pool_seeds, n_default):
    specs = []
    for s in seeds:
        for m in modes:
            specs.append({"name": f"{m}/seed{s}", "mode": m, "seed": s, "n": n_default, "group": m})
    for s in pool_seeds:
        for n in pools:
            if n != n_default:
                specs.append({"name": f"sol_rl_N{n}/seed{s}", "mode": "sol_rl", "seed": s, "n": n, "group": f"sol_rl_N{n}"})
    return specs


def config_for(base, spec, args):
    over = {"run.mode": spec["mode"], "run.seed": spec["seed"], "explore.n": spec["n"], "eval.every": 0}
    if spec["mode"] == "naive_scaling":
        over["explore.precision"] = "high"
    if args.prompts:
        over["prompts.per_iteration"] = args.prompts
    # the held-out evaluation set (one prompt per held-out pairing, at most --eval-prompts of them)
    over["eval.sets"], over["eval.held_out_prompts"], over["eval.seeds_per_prompt"] = ["held_out"], args.eval_prompts, args.eval_seeds
    return base.with_overrides(**over)  # all at once: the mode and its explore precision are validated together


def denoiser_cost(cfg, fp4_cost):
    """Transformer-forward equivalents one iteration spends (per prompt x prompts)."""
    P, N, K = cfg.prompts.per_iteration, cfg.explore.n, cfg.select.k
    low = fp4_cost if cfg.explore.precision in ("nvfp4", "fp8") else 1.0
    mode = cfg.run.mode
    explore = 0.0 if mode == "diffusionnft" else P * N * (cfg.rollout.steps if mode.startswith("naive") else cfg.explore.steps) * low
    regen = P * K * cfg.rollout.steps if mode in ("sol_rl", "diffusionnft") else 0.0
    n_times = max(1, int(cfg.rollout.steps * cfg.nft.timestep_fraction))
    # per sample and training time: old + ref forwards (no grad) + theta forward/backward (~3)
    train = P * K * n_times * (2 + 3)
    return explore + regen + train


def first_crossing(times, rewards, target):
    """Earliest time a piecewise-linear curve reaches target (None if never)."""
    for i in range(len(rewards)):
        if rewards[i] >= target:
            if i == 0:
                return times[0]
            t0, t1, r0, r1 = times[i - 1], times[i], rewards[i - 1], rewards[i]
            return t0 + (t1 - t0) * (target - r0) / (r1 - r0) if r1 != r0 else t1
    return None


def mean_curve(runs, clock, gain=False):
    """Seed-averaged (time, reward) at the common eval points: time and reward averaged. With
    `gain`, each run's reward before training is subtracted first (its eval draws set that level)."""
    k = min(len(r["eval"]) for r in runs)
    t = np.mean([[e[clock] for e in r["eval"][:k]] for r in runs], axis=0)
    y = np.mean([[e["reward"] - (r["eval"][0]["reward"] if gain else 0.0) for e in r["eval"][:k]] for r in runs], axis=0)
    it = [e["iteration"] for e in runs[0]["eval"][:k]]
    return it, t.tolist(), y.tolist()


def parity(groups, clock):
    out = {}
    sol = groups.get("sol_rl")
    if not sol:
        return out
    _, ts, ys = mean_curve(sol, clock)
    for b in BASELINES:
        if b not in groups:
            continue
        _, tb, yb = mean_curve(groups[b], clock)
        r0, top = yb[0], max(yb)
        rows = []
        for p in PROGRESS:
            target = r0 + p * (top - r0)
            tb_p, ts_p = first_crossing(tb, yb, target), first_crossing(ts, ys, target)
            rows.append({"progress": p, "target": target, "baseline_time": tb_p, "sol_rl_time": ts_p,
                         "speedup": (tb_p / ts_p) if (tb_p and ts_p) else None})
        out[b] = {"r0": r0, "baseline_best": top, "rows": rows}
    return out


def pool_groups(result):
    """{N: runs} for the pool-size comparison. The preset-N sol_rl runs are cut down to the
    pool seeds, so every N is compared over the same training seeds (and eval draws)."""
    pool_seeds = set(result["args"]["pool_seeds"])
    out = {}
    for r in result["runs"]:
        if r["group"].startswith("sol_rl_N"):
            out.setdefault(r["n"], []).append(r)
        elif r["group"] == "sol_rl" and r["seed"] in pool_seeds:
            out.setdefault(r["n"], []).append(r)
    return dict(sorted(out.items())) if len(out) > 1 else {}


def _final_stats(runs):
    last = [r["eval"][-1]["reward"] for r in runs]
    # Late mean: every eval in the second half of training, all seeds. One eval of a few
    # dozen images is noisy; this is the steadier figure to compare groups by. Gains are taken
    # run by run against the run's own start: the eval draws follow the training seed.
    half = max(e["iteration"] for e in runs[0]["eval"]) / 2
    late = [(e["reward"], e["reward"] - r["eval"][0]["reward"]) for r in runs for e in r["eval"] if e["iteration"] > half]
    nan = float("nan")
    return {
        "seeds": len(runs),
        "r0": float(np.mean([r["eval"][0]["reward"] for r in runs])),
        "final_mean": float(np.mean(last)),
        "late_mean": float(np.mean([x for x, _ in late])) if late else nan,
        "final_gain": float(np.mean([r["eval"][-1]["reward"] - r["eval"][0]["reward"] for r in runs])),
        "late_gain": float(np.mean([g for _, g in late])) if late else nan,
        "final_spread": float((max(last) - min(last)) / 2),
    }


def groups_of(result) -> dict[str, list]:
    """Runs by group (a mode, or sol_rl_N<n>), in run order."""
    groups = {}
    for r in result["runs"]:
        groups.setdefault(r["group"], []).append(r)
    return groups


def plot(result, out_dir: Path):
    import matplotlib.ticker

    plt = C.pyplot()
    groups = groups_of(result)
    colors = {"sol_rl": "C0", "diffusionnft": "C1", "naive_scaling": "C2", "naive_quant": "C3"}
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.6))
    for g, runs in groups.items():
        if g not in colors:
            continue
        for ax, clock in zip(axes, ("iteration", "seconds", "denoiser_equiv")):
            for r in runs:
                ax.plot([e[clock] for e in r["eval"]], [e["reward"] - r["eval"][0]["reward"] for e in r["eval"]], color=colors[g], alpha=0.25, lw=0.8)
            it, t, y = mean_curve(runs, clock, gain=True)
            ax.plot(t, y, color=colors[g], lw=2, label=f"{g} ({len(runs)} seeds)")
    for ax, lab in zip(axes, ("iteration", "training wall time on this CPU (s)", "denoiser-forward equivalents (NVFP4 = %.2f)" % result["args"]["fp4_cost"])):
        ax.set_xlabel(lab)
        ax.set_ylabel("held-out reward gain over iteration 0")
        ax.axhline(0, color="k", lw=0.6)
        ax.grid(alpha=0.3)
    axes[0].legend()
    axes[0].xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    fig.suptitle("shapes: the four modes, reward gain of each run over its own start (thin: one training seed; thick: mean)")
    C.save_figure(fig, out_dir, "convergence_modes")

    pools = pool_groups(result)
    if pools:
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.4))
        for i, (n, runs) in enumerate(pools.items()):
            it, t, y = mean_curve(runs, "iteration", gain=True)
            axes[0].plot(it, y, color=plt.cm.viridis(i / max(1, len(pools) - 1)), lw=2, label=f"N = {n}")
        axes[0].set_xlabel("iteration")
        axes[0].xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        axes[0].set_ylabel("held-out reward gain (mean of pool seeds)")
        axes[0].legend()
        axes[0].grid(alpha=0.3)
        summ = result["summary"]["pool_size"]
        ns = [row["n"] for row in summ]
        axes[1].errorbar(ns, [row["final_mean"] for row in summ], yerr=[row["final_spread"] for row in summ], marker="o", capsize=4, label="final eval")
        axes[1].plot(ns, [row["late_mean"] for row in summ], marker="s", ls="--", label="mean of 2nd-half evals")
        axes[1].set_xlabel("pool size N (K = 24 kept)")
        axes[1].set_ylabel("held-out reward (mean of pool seeds)")
        axes[1].legend()
        axes[1].grid(alpha=0.3)
        C.save_figure(fig, out_dir, "convergence_pool_size")


def summarise(result):
    groups = groups_of(result)
    finals = {}
    for g, runs in groups.items():
        finals[g] = {
            **_final_stats(runs),
            "seconds_per_iteration": float(np.mean([np.mean(r["seconds_per_iteration"]) for r in runs])),
            "denoiser_equiv_per_iteration": runs[0]["denoiser_equiv_per_iteration"],
        }
    pool = [{"n": n, **_final_stats(runs), "seeds": [r["seed"] for r in runs]} for n, runs in pool_groups(result).items()]
    return {
        "final": finals,
        "parity_seconds": parity(groups, "seconds"),
        "parity_denoiser_equiv": parity(groups, "denoiser_equiv"),
        "pool_size": sorted(pool, key=lambda x: x["n"]),
    }


def merge_results(results):
    """One result from several runs of this script that differ only in which runs they hold."""
    first = results[0]
    same = ("iterations", "eval_every", "eval_prompts", "eval_seeds", "fp4_cost", "n", "prompts", "threads")
    for other in results[1:]:
        diff = [k for k in same if other["args"].get(k) != first["args"].get(k)]
        if diff:
            raise SystemExit(f"cannot merge: these results differ in {', '.join(diff)}; rerun with the same settings.")
    names = [r["name"] for res in results for r in res["runs"]]
    if len(names) != len(set(names)):
        raise SystemExit("cannot merge: the same run (mode/seed) appears in two results.")
    merged = dict(first)
    merged["args"] = dict(first["args"])
    for key in ("seeds", "pool_seeds", "modes", "pools"):
        merged["args"][key] = sorted({v for res in results for v in res["args"][key]}, key=str)
    merged["partial"] = any(res["partial"] for res in results)
    merged["runs"] = [r for res in results for r in res["runs"]]
    merged["merged_from"] = len(results)
    return merged


def print_summary(result, out_dir: Path | None = None):
    lines = []
    emit = lines.append  # collected, then printed and kept as convergence.md
    s = result["summary"]
    emit("\n| run group | seeds | reward before | final reward (mean ± half-range) | gain, final | gain, 2nd half | s / iteration (CPU) | denoiser-equiv / iteration |")
    emit("|---|---|---|---|---|---|---|---|")
    for g, f in s["final"].items():
        emit(f"| {g} | {f['seeds']} | {f['r0']:.4f} | {f['final_mean']:.4f} ± {f['final_spread']:.4f} | {f['final_gain']:+.4f} | {f['late_gain']:+.4f} "
             f"| {f['seconds_per_iteration']:.1f} | {f['denoiser_equiv_per_iteration']:,.0f} |")
    if s["pool_size"]:
        emit("\n| pool size N | seeds | final reward | late mean (2nd half) |")
        emit("|---|---|---|---|")
        for row in s["pool_size"]:
            emit(f"| {row['n']} | {row['seeds']} | {row['final_mean']:.4f} | {row['late_mean']:.4f} |")
    for clock in ("parity_denoiser_equiv", "parity_seconds"):
        for b, d in s[clock].items():
            cells = " | ".join("never" if r["speedup"] is None else f"{r['speedup']:.2f}x" for r in d["rows"])
            emit(f"\nsol_rl vs {b} ({clock}): speed-up at 25/50/75/100 % of {b}'s progress ({d['r0']:.4f} -> {d['baseline_best']:.4f}): {cells}")
    text = "\n".join(lines)
    print(text)
    if out_dir is not None:
        C.write_summary(out_dir, "convergence", text)


def main(argv=None):
    ap = C.parser(__doc__)
    C.add_model_args(ap)
    ap.add_argument("--iterations", type=int, default=16)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="training seeds (run.seed)")
    ap.add_argument("--modes", nargs="+", default=["sol_rl", "diffusionnft", "naive_scaling", "naive_quant"])
    ap.add_argument("--pools", type=int, nargs="*", default=[24, 48, 72, 96], help="pool sizes N for sol_rl")
    ap.add_argument("--pool-seeds", type=int, nargs="*", default=[0], help="training seeds of the pool-size runs (N = the preset's comes from --seeds)")
    ap.add_argument("--prompts", type=int, default=0, help="prompts per iteration (0 = the preset's)")
    ap.add_argument("--eval-every", type=int, default=2)
    ap.add_argument("--eval-prompts", type=int, default=24)
    ap.add_argument("--eval-seeds", type=int, default=2)
    ap.add_argument("--fp4-cost", type=float, default=0.5, help="cost of an NVFP4 transformer forward relative to high precision, for the denoiser-equivalent clock")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 2 iterations, 1 seed, 1 prompt, N 8/16, K 4, tiny eval")
    ap.add_argument("--out", default="benchmarks/results/convergence")
    ap.add_argument("--replot", metavar="JSON", nargs="+",
                    help="only re-summarise and re-plot (possibly partial) convergence.json files into --out; several files "
                         "(e.g. more training seeds run later with the same settings) are merged run by run")
    args = ap.parse_args(argv)
    if args.replot:
        result = merge_results([json.loads(Path(f).read_text()) for f in args.replot])
        result["summary"] = summarise(result)
        out_dir = Path(args.out)
        C.write_json(out_dir, "convergence", result)
        plot(result, out_dir)
        print_summary(result, out_dir)
        return result
    if args.quick:
        args.iterations, args.seeds, args.pool_seeds, args.pools, args.prompts = 2, [0], [0], [8, 16], 1
        args.eval_every, args.eval_prompts, args.eval_seeds = 1, 2, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    from solrl.models import load_policy
    from solrl.plan import primary_explore
    from solrl.stages import TrainState, evaluate, run_iteration
    from storage.selection import select_seeds

    base = C.base_config(args)
    n_default = base.explore.n if not args.quick else 16
    if args.quick:  # the pipeline tests' tiny sizes
        base = base.with_overrides(**{"explore.n": 16, "explore.steps": 3, "select.k": 4, "rollout.steps": 5, "nft.micro_batch": 8, "eval.steps": 4})
    args.n = n_default
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    specs = run_specs(args.modes, args.seeds, args.pools if "sol_rl" in args.modes else [], args.pool_seeds, n_default)
    runs = []
    for spec in specs:
        cfg = config_for(base, spec, args)
        policy = load_policy(cfg)
        state = TrainState.fresh(policy, cfg)
        ev = evaluate(policy, state.ema, cfg, with_media=False)
        runs.append({**spec, "cfg": cfg, "policy": policy, "state": state, "clock": 0.0, "equiv": 0.0,
                     "eval": [{"iteration": 0, "seconds": 0.0, "denoiser_equiv": 0.0, "reward": float(np.mean(ev["reward"]))}],
                     "seconds_per_iteration": [], "stage_seconds": [], "train_reward": [],
                     "denoiser_equiv_per_iteration": denoiser_cost(cfg, args.fp4_cost)})
    # Compile the NVFP4 fake-quant kernel for every batch size before any clock starts.
    from solrl.stages import explore_quant

    warm = runs[0]["policy"]
    fp4, _ = warm.sampler_copy(explore_quant(warm, runs[0]["cfg"], primary_explore(runs[0]["cfg"])))
    for b in sorted({min(r["cfg"].explore.n, r["cfg"].explore.batch) for r in runs}):
        warm.sample(fp4, ["a red circle"] * b, list(range(b)), 1)
    print(f"{len(runs)} runs x {args.iterations} iterations; reward before training {runs[0]['eval'][0]['reward']:.4f}", flush=True)
    t_start = time.perf_counter()
    for it in range(args.iterations):
        for r in runs:
            res = run_iteration(r["policy"], r["state"], r["cfg"], it, select_seeds)
            secs = sum(res.seconds.values())
            r["clock"] += secs
            r["equiv"] += r["denoiser_equiv_per_iteration"]
            r["seconds_per_iteration"].append(secs)
            r["stage_seconds"].append(res.seconds)
            r["train_reward"].append(res.metrics[-1]["reward_mean"])
            if (it + 1) % args.eval_every == 0 or it + 1 == args.iterations:
                ev = evaluate(r["policy"], r["state"].ema, r["cfg"], with_media=False)
                r["eval"].append({"iteration": it + 1, "seconds": r["clock"], "denoiser_equiv": r["equiv"], "reward": float(np.mean(ev["reward"]))})
        line = "  ".join(f"{r['name']}={r['eval'][-1]['reward']:.3f}" for r in runs)
        print(f"[{time.perf_counter() - t_start:7.0f} s] iteration {it + 1}/{args.iterations}: {line}", flush=True)
        _write(runs, args, out_dir, partial=it + 1 < args.iterations)
    result = _write(runs, args, out_dir, partial=False)
    plot(result, out_dir)
    print_summary(result, out_dir)
    return result


def _write(runs, args, out_dir, partial):
    keep = ("name", "mode", "seed", "n", "group", "eval", "seconds_per_iteration", "stage_seconds", "train_reward", "denoiser_equiv_per_iteration")
    result = {
        "args": {k: v for k, v in vars(args).items()},
        "machine": C.machine(),
        "partial": partial,
        "runs": [{k: r[k] for k in keep} for r in runs],
    }
    result["summary"] = summarise(result)
    C.write_json(out_dir, "convergence", result)
    return result


if __name__ == "__main__":
    main()
