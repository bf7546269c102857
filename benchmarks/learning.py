"""Learning curves: paired evaluation gain over the base model vs iteration, for config variants × training seeds.

Every run goes through the artifact store (tasks.stages.run_steps, the code `sol-rl run
--no-prefect` runs), under --runs-root/<variant>-seed<s>: a study that is stopped resumes every
run at its last committed stage, and every number below can be re-derived from the committed
Parquet. Runs advance in lock-step (one iteration of each in turn), so whatever else loads the
machine loads every variant alike; progress JSON is rewritten after every round.

Measured per evaluated iteration and eval set (`train` = the training pool, `held_out`): the
paired gain over the run's baseline (the base model on the same prompts and seeds) with its SE
over the n (prompt, seed) pairs, and strict accuracy; per iteration: CPU seconds of the stages
and denoiser evaluations (transformer forwards: explore N·steps per prompt at `--fp4-cost`
for low precision, rollout K·steps, training K·times·5 per prompt, eval excluded).

    python benchmarks/learning.py --config configs/shapes-long.yaml --seeds 0 1 2 --out benchmarks/results/learning
    python benchmarks/learning.py --config configs/shapes.yaml --variant lr3e-3:nft.lr=0.003 --variant lr1e-3:nft.lr=0.001 --seeds 0
    python benchmarks/learning.py --quick --out /tmp/learning      # smoke (~1 min)
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import bench_common as C
import numpy as np


def parse_value(v: str):
    try:
        return json.loads(v)
    except json.JSONDecodeError:
        return v


def variants(args) -> dict[str, dict]:
    out = {}
    for spec in args.variant or ["default:"]:
        name, _, body = spec.partition(":")
        out[name] = {k: parse_value(v) for k, v in (kv.split("=", 1) for kv in body.split(",") if kv)}
    return out


def denoiser_cost(cfg, plan) -> float:
    """Transformer-forward equivalents of one iteration (explore + rollout/regenerate + train)."""
    m, P, K = cfg.mode, len(plan.prompts), cfg.select.k
    explore = 0.0
    if plan.explore is not None:
        explore = P * plan.explore.n * plan.explore.steps * (FP4_COST[0] if plan.explore.low_precision else 1.0)
    regen = P * K * cfg.rollout.steps if m.trains_on == "regenerated" else 0.0
    from solrl.nft import timesteps_per_sample

    n_times = timesteps_per_sample(cfg.rollout.steps, cfg.nft.timestep_fraction)
    train = P * K * n_times * 5  # old + ref forwards (no grad) + θ forward/backward (~3)
    return explore + regen + train


def audit_cost(cfg, plan) -> float:
    """Denoiser evaluations of the fidelity audit (measurement, not part of any mode's algorithm)."""
    return (
        cfg.fidelity.audit_prompts * (plan.explore.n - cfg.select.k) * cfg.rollout.steps if plan.runs("audit") else 0.0
    )


FP4_COST = [0.5]


def run_point(run, i: int) -> dict:
    """What one committed iteration contributes to a curve."""
    from tasks.run import plan_of
    from tasks.summary import iteration_summary

    s = iteration_summary(run, i)
    plan = plan_of(run, i)
    # the cost clocks leave out what only measures (eval, the fidelity audit), kept apart
    point = {
        "iteration": i,
        "train_reward": s["train_reward"],
        "seconds": sum(v for k, v in s["seconds"].items() if k not in ("eval", "audit")),
        "denoiser": denoiser_cost(run.cfg, plan),
        "audit_seconds": s["seconds"].get("audit", 0.0),
        "audit_denoiser": audit_cost(run.cfg, plan),
    }
    for name, g in s.get("eval", {}).items():
        point[name] = {k: g.get(k) for k in ("gain", "se", "n", "strict", "strict_base", "base", "reward")}
    if "audit" in s:
        point["audit"] = s["audit"]
    return point


def open_runs(args, base_cfg, names):
    from solrl.config import RunConfig
    from storage.store import join
    from tasks.run import open_run

    runs = {}
    for vname, over in variants(args).items():
        if names and vname not in names:
            continue
        for seed in args.seeds:
            data = base_cfg.model_dump(mode="json")
            cfg = RunConfig.model_validate(data).with_overrides(
                **{"run.seed": seed, "run.iterations": args.iterations, **over}
            )
            runs[f"{vname}-seed{seed}"] = {
                "variant": vname,
                "seed": seed,
                "run": open_run(join(args.runs_root, f"{vname}-seed{seed}"), cfg),
                "points": [],
            }
    return runs


def advance(runs: dict, iterations: int, on_round=None) -> None:
    """Every run to `iterations`, one iteration of each in turn (resuming what is committed)."""
    from tasks.stages import run_steps

    for i in range(iterations):
        for r in runs.values():
            run = r["run"]
            run.acquire(take_over=True)
            try:
                run_steps(run, i)
            finally:
                run.release()
            r["points"] = [run_point(run, j) for j in range(i + 1)]
        if on_round:
            on_round(i)


def curves(runs: dict, eval_set: str, key: str = "gain") -> dict[str, dict]:
    """Per variant: iteration -> (mean over seeds, SE over seeds, n seeds), cumulative clocks."""
    out: dict[str, dict] = {}
    for r in runs.values():
        v = out.setdefault(r["variant"], {"runs": []})
        v["runs"].append(r["points"])
    for v in out.values():
        k = min(len(p) for p in v["runs"])
        its, mean, se, cpu, den = [], [], [], [], []
        for j in range(k):
            vals = [p[j][eval_set][key] for p in v["runs"] if eval_set in p[j] and p[j][eval_set].get(key) is not None]
            if not vals:
                continue
            its.append(v["runs"][0][j]["iteration"])
            mean.append(float(np.mean(vals)))
            se.append(float(np.std(vals, ddof=1) / math.sqrt(len(vals))) if len(vals) > 1 else float("nan"))
            cpu.append(float(np.mean([sum(q["seconds"] for q in p[: j + 1]) for p in v["runs"]])))
            den.append(float(np.mean([sum(q["denoiser"] for q in p[: j + 1]) for p in v["runs"]])))
        v.update(iteration=its, mean=mean, se_seeds=se, cpu_seconds=cpu, denoiser=den, seeds=len(v["runs"]))
    return out


def final_table(runs: dict) -> tuple[list[str], list[list]]:
    header = [
        "run",
        "iterations",
        "CPU min",
        "train gain ± SE (n)",
        "held-out gain ± SE (n)",
        "strict train base → end",
        "strict held-out base → end",
    ]
    rows = []
    for name, r in runs.items():
        if not r["points"]:
            continue
        last = [p for p in r["points"] if "train" in p or "held_out" in p]
        p = last[-1] if last else r["points"][-1]
        cell = lambda s: f"{p[s]['gain']:+.4f} ± {p[s]['se']:.4f} ({p[s]['n']})" if s in p else "–"  # noqa: E731
        strict = lambda s: (
            f"{p[s]['strict_base']:.3f} → {p[s]['strict']:.3f}" if s in p and p[s].get("strict") is not None else "–"
        )  # noqa: E731
        rows.append(
            [
                name,
                len(r["points"]),
                sum(q["seconds"] for q in r["points"]) / 60,
                cell("train"),
                cell("held_out"),
                strict("train"),
                strict("held_out"),
            ]
        )
    return header, rows


def plot(runs: dict, out: Path, name: str) -> list[Path]:
    plt = C.pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    for ax, (eval_set, clock, xlabel) in zip(
        axes,
        (
            ("train", "iteration", "iteration"),
            ("held_out", "iteration", "iteration"),
            ("train", "cpu_seconds", "CPU minutes (stages, eval excluded)"),
        ),
    ):
        for vname, v in curves(runs, eval_set).items():
            if not v["iteration"]:
                continue
            x = np.array(v[clock]) / (60.0 if clock == "cpu_seconds" else 1.0)
            y, e = np.array(v["mean"]), np.array(v["se_seeds"])
            ax.plot(x, y, "o-", ms=3, label=f"{vname} ({v['seeds']} seed{'s' if v['seeds'] > 1 else ''})")
            if np.isfinite(e).any():
                ax.fill_between(x, y - e, y + e, alpha=0.2)
        for r in runs.values():  # each run's own paired SE, thin
            pts = [p for p in r["points"] if eval_set in p]
            if clock == "iteration" and len(runs) <= 6:
                ax.errorbar(
                    [p["iteration"] for p in pts],
                    [p[eval_set]["gain"] for p in pts],
                    yerr=[p[eval_set]["se"] for p in pts],
                    fmt="none",
                    ecolor="0.6",
                    lw=0.6,
                    capsize=1,
                )
        ax.axhline(0, color="0.5", lw=0.8)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"{eval_set}: reward − base model (paired)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_title("training pool")
    axes[1].set_title("held-out prompts")
    axes[2].set_title("training pool vs CPU time")
    fig.suptitle("Paired evaluation gain (band: ± 1 SE over seeds; grey bars: each run's paired SE)")
    return C.save_figure(fig, out, name)


def main(argv=None):
    ap = C.parser(__doc__, "learning", "2 iterations of a tiny config, one seed")
    ap.add_argument("--config", default="shapes-long", help="a preset name or a YAML path")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--iterations", type=int, default=None, help="default: run.iterations of the config")
    ap.add_argument(
        "--variant", action="append", help="name:key=value,key=value (dotted config keys); repeat for several"
    )
    ap.add_argument("--only", nargs="*", help="run only these variants")
    ap.add_argument(
        "--runs-root", default=None, help="where the runs live (default: <out>/runs); existing runs are resumed"
    )
    ap.add_argument(
        "--replot",
        action="store_true",
        help="plot the committed iterations under --runs-root, compute nothing (no lease taken)",
    )
    ap.add_argument(
        "--fp4-cost", type=float, default=0.5, help="cost of a low-precision forward in denoiser evaluations"
    )
    C.add_threads_arg(ap)
    args = ap.parse_args(argv)
    C.set_threads(args.threads)
    FP4_COST[0] = args.fp4_cost
    from solrl.config import load_config

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    args.runs_root = args.runs_root or str(out / "runs")
    base = load_config(args.config)
    if args.quick:
        base = base.with_overrides(
            **{
                "prompts.pool": 2,
                "prompts.per_iteration": 2,
                "explore.n": 8,
                "select.k": 4,
                "rollout.steps": 4,
                "explore.steps": 2,
                "eval.every": 1,
                "eval.steps": 2,
                "eval.seeds_per_prompt": 1,
                "eval.held_out_prompts": 2,
                "nft.micro_batch": 8,
            }
        )
        args.iterations, args.seeds = 2, args.seeds[:1]
    args.iterations = args.iterations or base.run.iterations
    t0 = time.time()
    runs = open_runs(args, base, args.only)
    res = {
        "quick": args.quick,
        "machine": C.machine(),
        "config": args.config,
        "variants": variants(args),
        "seeds": args.seeds,
        "iterations": args.iterations,
    }

    def dump(i):
        res["runs"] = {k: {"variant": r["variant"], "seed": r["seed"], "points": r["points"]} for k, r in runs.items()}
        res["wall_seconds"] = time.time() - t0
        C.write_json(out, "learning", res)
        print(
            f"round {i}: "
            + "; ".join(
                f"{k} {r['points'][-1].get('train', {}).get('gain', float('nan')):+.4f}" for k, r in runs.items()
            ),
            flush=True,
        )

    if args.replot:  # what is committed, nothing computed
        from tasks.stages import is_done

        for r in runs.values():
            r["points"] = [
                run_point(r["run"], i)
                for i in r["run"].store.iterations()
                if is_done(r["run"], r["run"].stage(i, "update"))
            ]
    else:
        advance(runs, args.iterations, dump)
    res["runs"] = {k: {"variant": r["variant"], "seed": r["seed"], "points": r["points"]} for k, r in runs.items()}
    res["wall_seconds"] = time.time() - t0
    header, rows = final_table(runs)
    text = f"# Learning curves: {args.config}\n\n" + C.md_table(header, rows)
    res["curves"] = {s: curves(runs, s) for s in ("train", "held_out")}
    for s in res["curves"].values():
        for v in s.values():
            v.pop("runs", None)
    return C.finish(out, "learning", res, text, plot(runs, out, "learning"))


if __name__ == "__main__":
    main()
