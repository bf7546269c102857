"""Dask scale-out of the explore stage: the in-process runner vs a Dask LocalCluster of 1, 2, ... workers.

Runs of the Prefect flow `sol-rl` (flows/sol_rl.py, what `sol-rl run` runs; ephemeral Prefect,
a private temporary PREFECT_HOME), one per runner, the same config and run seed, so every run
computes the same prompts, seeds and adapters (the artifacts are byte-identical whatever the
runner: tests/test_dask.py):

  in-process   cluster.workers = 0: every shard in the flow's process, one after another
  dask-<k>     cluster.workers = k, cluster.threads_per_worker = 1: a LocalCluster of k worker
               processes the run starts and closes (flows/cluster.py); explore and regenerate
               shards (one per prompt) go to the workers, the other stages stay in the flow's
               process. Dask starts its workers with OMP_NUM_THREADS = 1.

Every stage time is read from the committed commit records (started_at .. finished_at; what
`sol-rl status` shows), the explore compute from the committed explore rows (sum of the
per-candidate sampling milliseconds, per worker). Runs go in a rotated order per repeat.
Reported, over the warm iterations (iteration >= 1: the workers hold the model; iteration 0 is
reported apart as the cold start):
  * explore stage wall time per runner; speed-up over in-process; parallel efficiency
    E(k) = T(dask-1) / (k · T(dask-k)) (relative to in-process when dask-1 is not run) and per
    added worker T(dask-(k-1)) · (k-1) / (T(dask-k) · k) (goal >= 0.8);
  * the Dask runner's fixed costs: starting and closing the LocalCluster (timed apart, and as the
    flow's wall time outside its iterations, over in-process), the per-iteration cost of task
    submission and per-worker state (warm iteration of the smallest cluster, dask-1, minus
    in-process: the same compute),
    the first iteration's extra (worker imports, model load), each as a share of an iteration.

Use enough prompts per iteration (--prompts, default 4: the shapes preset) that every worker has
shards. On a machine with fewer free cores than workers, efficiency measures the contention.

    python benchmarks/scaling.py --threads 1 --out benchmarks/results/scaling         # full (20-30 min)
    python benchmarks/scaling.py --quick --threads 1 --out /tmp/scaling               # smoke (the tests' tiny iteration)
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import bench_common as C

GOAL_EFFICIENCY = 0.8
ITERATION_STAGES = ("plan", "explore", "select", "regenerate", "audit", "update", "eval")
QUICK = {"explore.n": 8, "explore.steps": 3, "select.k": 4, "rollout.steps": 5, "nft.micro_batch": 8, "eval.every": 0}


def read_run(uri: str) -> dict:
    """Per iteration: stage seconds and workers (tasks.status), spans from the commit records,
    explore/regenerate compute per worker from the committed rows."""
    from storage.queries import read_stage
    from tasks.run import open_run
    from tasks.status import status

    run = open_run(uri)
    out = {"iterations": []}
    base = run.stage(None, "baseline").record
    out["baseline_s"] = base["finished_at"] - base["started_at"] if base else 0.0
    for row in status(run):
        i = row["iteration"]
        recs = {s: run.stage(i, s).record for s in ITERATION_STAGES}
        recs = {s: r for s, r in recs.items() if r}
        it = {
            "iteration": i,
            "stages": {s: row[s][1] for s in recs},
            "workers": {s: sorted(w for w in row[s][2] if w) for s in recs},
            "started_at": min(r["started_at"] for r in recs.values()),
            "finished_at": max(r["finished_at"] for r in recs.values()),
        }
        it["span_s"] = it["finished_at"] - it["started_at"]
        for s in ("explore", "regenerate"):
            if s in recs:
                t = read_stage(run.store, i, s, "duration_ms, worker").to_pydict()
                by = {}
                for ms, w in zip(t["duration_ms"], t["worker"]):
                    by[w] = by.get(w, 0.0) + ms / 1000.0
                it[f"{s}_compute_s"] = sum(by.values())
                it[f"{s}_compute_by_worker_s"] = by
        out["iterations"].append(it)
    return out


def cluster_start_close(workers: int, repeats: int) -> dict:
    """Seconds to start and to close the LocalCluster the flow starts (flows.cluster.dask_cluster)."""
    from flows.cluster import dask_cluster
    from solrl.config import ClusterSection

    start, close = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        ctx = dask_cluster(ClusterSection(workers=workers, threads_per_worker=1))
        ctx.__enter__()
        t1 = time.perf_counter()
        ctx.__exit__(None, None, None)
        start.append(t1 - t0)
        close.append(time.perf_counter() - t1)
    return {"start_s": C.median(start), "close_s": C.median(close), "start_all": start, "close_all": close}


def warm(its: list[dict]) -> list[dict]:
    return [x for x in its if x["iteration"] >= 1] or its


def aggregate(runs: list[dict], workers: list[int], starts: dict) -> dict:
    names = ["in-process"] + [f"dask-{k}" for k in workers]
    per = {}
    for n in names:
        rs = [r for r in runs if r["variant"] == n]
        w = [x for r in rs for x in warm(r["iterations"])]
        first = [r["iterations"][0] for r in rs]
        per[n] = {
            "runs": len(rs),
            "explore_s": C.median([x["stages"]["explore"] for x in w]),
            "explore_compute_s": C.median([x["explore_compute_s"] for x in w]),
            "regenerate_s": C.median([x["stages"]["regenerate"] for x in w]),
            "iteration_s": C.median([x["span_s"] for x in w]),
            "first_explore_s": C.median([x["stages"]["explore"] for x in first]),
            "first_iteration_s": C.median([x["span_s"] for x in first]),
            "flow_s": C.median([r["flow_seconds"] for r in rs]),
            # the flow's wall time outside its iterations and the baseline: run open, lease, cluster start/close, Prefect
            "outside_iterations_s": C.median(
                [r["flow_seconds"] - sum(x["span_s"] for x in r["iterations"]) - r["baseline_s"] for r in rs]
            ),
            "explore_workers": sorted(
                {wk for x in w for wk in x["workers"].get("explore", [])}
            ),  # over all repeats (runs)
            "explore_workers_per_iteration": C.median([len(x["workers"].get("explore", [])) or 1 for x in w]),
            "explore_shards_per_worker": C.median([len(x["explore_compute_by_worker_s"]) for x in w]),
        }
    ip = per["in-process"]
    # E(k) is relative to one Dask worker; without a dask-1 run, to the in-process runner
    ref_name = "dask-1" if 1 in workers else "in-process"
    ref = per[ref_name]
    eff, marginal, speedup = {}, {}, {}
    for k in workers:
        p = per[f"dask-{k}"]
        speedup[str(k)] = ip["explore_s"] / p["explore_s"]
        eff[str(k)] = ref["explore_s"] / (k * p["explore_s"])
        prev = per.get(f"dask-{k - 1}") if k > 2 else (ref if k == 2 else None)
        if prev is not None:
            marginal[str(k)] = prev["explore_s"] * (k - 1) / (p["explore_s"] * k)
    it_s = ip["iteration_s"]
    # per-iteration cost of the runner: the smallest cluster's warm iteration minus in-process
    # (same compute when that is one worker; with more, net of the parallel gain)
    d0 = per[f"dask-{min(workers)}"]
    per_iter = d0["iteration_s"] - ip["iteration_s"]
    fixed = {
        "reference": f"dask-{min(workers)}",
        "per_iteration_s": per_iter,  # task submission, per-worker adapter restore and copies, result I/O
        "per_iteration_share": per_iter / it_s,
        "explore_per_iteration_s": d0["explore_s"] - ip["explore_s"],
        "first_iteration_extra_s": d0["first_iteration_s"] - d0["iteration_s"],  # worker imports and model load
        "first_iteration_extra_share": (d0["first_iteration_s"] - d0["iteration_s"]) / it_s,
    }
    for k in workers:
        s = starts.get(str(k))
        p = per[f"dask-{k}"]
        fixed[f"dask-{k}"] = {
            "cluster_start_s": s["start_s"] if s else None,
            "cluster_close_s": s["close_s"] if s else None,
            "cluster_start_close_share": (s["start_s"] + s["close_s"]) / it_s if s else None,
            "flow_outside_iterations_over_in_process_s": p["outside_iterations_s"] - ip["outside_iterations_s"],
            # a run of one iteration (`sol-rl run -n 1` per iteration) pays the cluster and the cold start every iteration
            "one_iteration_run_share": (
                p["first_iteration_s"] + p["outside_iterations_s"] - ip["iteration_s"] - ip["outside_iterations_s"]
            )
            / it_s,
        }
    return {
        "per_runner": per,
        "speedup_vs_in_process": speedup,
        "efficiency": eff,
        "efficiency_reference": ref_name,
        "efficiency_per_added_worker": marginal,
        "goal_efficiency": GOAL_EFFICIENCY,
        "goal_met": {k: bool(v >= GOAL_EFFICIENCY) for k, v in marginal.items()},
        "fixed_cost": fixed,
    }


def run(args) -> dict:
    home = C.prefect_env()
    import torch

    torch.set_flush_denormal(True)
    C.set_threads(args.threads)
    logging.getLogger("solrl").setLevel(logging.WARNING)
    machine = C.machine()
    root = Path(tempfile.mkdtemp(prefix="solrl-bench-scaling-"))
    overrides = {"prompts.per_iteration": args.prompts, **(QUICK if args.quick else {})}
    if args.no_eval:
        overrides["eval.every"] = 0
    if args.weights:
        overrides["model.weights"] = str(Path(args.weights).resolve())
    cfg = C.base_config(args, **overrides)
    runs, one_time = [], {}
    try:
        t, _ = C.timed(__import__, "flows.sol_rl")
        one_time["import_prefect_and_flow_s"] = t
        from prefect import flow

        from flows.sol_rl import sol_rl
        from storage.store import join

        @flow(name="bench-noop")
        def noop() -> int:
            return 1

        one_time["prefect_server_start_s"] = C.timed(noop)[0]
        starts = {}
        for k in args.workers:
            starts[str(k)] = cluster_start_close(k, 1 if args.quick else 3)
        one_time["cluster_start_close"] = starts

        def one(variant: str, workers: int, name: str, iterations: int | None = None) -> dict:
            over = {**overrides, "cluster.workers": workers, "cluster.threads_per_worker": 1}
            t, summaries = C.timed(
                sol_rl,
                config=str(args.config),
                run_id=name,
                iterations=iterations or args.iterations,
                run_root=str(root),
                overrides=over,
            )
            rec = {
                "variant": variant,
                "workers": workers,
                "run_id": name,
                "flow_seconds": t,
                **read_run(join(str(root), name)),
                "train_reward": [s["train_reward"] for s in summaries],
            }
            shutil.rmtree(root / name, ignore_errors=True)
            return rec

        variants = [("in-process", 0)] + [(f"dask-{k}", k) for k in args.workers]
        if (
            not args.quick
        ):  # the flow's process (update, eval) loads the model and compiles once, outside the timed runs
            t, _ = C.timed(one, "warm-up", 0, "warmup", 1)
            one_time["warmup_run_s"] = t
        for r in range(args.repeats):
            for v, k in C.rotated(variants, r):
                rec = one(v, k, f"{v}-{r}")
                rec["repeat"] = r
                runs.append(rec)
                its = rec["iterations"]
                print(
                    f"[scaling] repeat {r + 1}/{args.repeats} {v}: flow {rec['flow_seconds']:.1f} s, explore "
                    + ", ".join(f"{x['stages']['explore']:.1f}" for x in its)
                    + " s, iterations "
                    + ", ".join(f"{x['span_s']:.1f}" for x in its)
                    + " s",
                    flush=True,
                )
    finally:
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)
    same = {
        v: [r["train_reward"] for r in runs if r["variant"] == v] for v in dict.fromkeys(r["variant"] for r in runs)
    }
    ref = same["in-process"][0]
    return {
        "config": {
            "config_file": str(args.config),
            "model": C.model_label(cfg),
            "overrides": overrides,
            "iterations": args.iterations,
            "repeats": args.repeats,
            "workers": args.workers,
            "threads_in_process": torch.get_num_threads(),
            "threads_per_worker": 1,
            "prompts": cfg.prompts.per_iteration,
            "explore_n": cfg.explore.n,
            "explore_steps": cfg.explore.steps,
            "explore_precision": cfg.explore.precision,
            "k": cfg.select.k,
            "rollout_steps": cfg.rollout.steps,
            "eval_every": cfg.eval.every,
            "model_dtype": cfg.model.dtype,
        },
        "machine": machine,
        "machine_load_at_end": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "one_time": one_time,
        "runs": runs,
        "summary": aggregate(runs, args.workers, one_time["cluster_start_close"]),
        "same_train_rewards_as_in_process": all(x == ref for xs in same.values() for x in xs),
    }


def summary(res: dict) -> str:
    c, s = res["config"], res["summary"]
    per = s["per_runner"]
    it = (
        f"{c['prompts']} prompts × N {c['explore_n']} ({c['explore_precision']}, {c['explore_steps']} steps), K {c['k']}, "
        f"rollout {c['rollout_steps']} steps, eval every {c['eval_every']}"
    )
    lines = [
        f"## Explore scale-out with Dask ({it}; {c['iterations']} iteration(s) per run, {c['repeats']} rotated repeat(s), medians over warm iterations)",
        "",
    ]
    head = [
        "runner",
        "explore s",
        "explore compute s (sum over workers)",
        "speed-up vs in-process",
        "efficiency E(k)",
        "per added worker",
        "regenerate s",
        "iteration s",
        "first iteration s",
        "first explore s",
        "explore workers per iteration",
    ]
    rows = []
    for n, p in per.items():
        k = n.removeprefix("dask-") if n.startswith("dask-") else None
        rows.append(
            [
                n,
                p["explore_s"],
                p["explore_compute_s"],
                s["speedup_vs_in_process"].get(k, 1.0) if k else 1.0,
                s["efficiency"].get(k, "") if k else "",
                s["efficiency_per_added_worker"].get(k, "") if k else "",
                p["regenerate_s"],
                p["iteration_s"],
                p["first_iteration_s"],
                p["first_explore_s"],
                p["explore_workers_per_iteration"],
            ]
        )
    lines.append(C.md_table(head, rows))
    f = s["fixed_cost"]
    lines += [
        "",
        f"Parallel efficiency goal ≥ {s['goal_efficiency']}: "
        + (
            ", ".join(f"{k} workers {'met' if v else 'not met'}" for k, v in s["goal_met"].items())
            or "n/a (one worker size)"
        )
        + ".",
    ]
    if "per_iteration_s" in f:
        lines += [
            "",
            f"### Fixed cost of the Dask runner (E(k) relative to {s['efficiency_reference']})",
            "",
            C.md_table(
                ["cost", "seconds", "share of an in-process iteration"],
                [
                    [
                        f"per iteration: task submission, worker-side adapter restore and copies (warm {f['reference']} − in-process)",
                        f["per_iteration_s"],
                        f["per_iteration_share"],
                    ],
                    ["  of which in the explore stage", f["explore_per_iteration_s"], ""],
                    [
                        f"first iteration of a run: worker imports, model load ({f['reference']})",
                        f["first_iteration_extra_s"],
                        f["first_iteration_extra_share"],
                    ],
                ]
                + [
                    [
                        f"{k}: LocalCluster start + close with idle workers (timed apart: {f[k]['cluster_start_s']:.1f} + {f[k]['cluster_close_s']:.1f})",
                        f[k]["cluster_start_s"] + f[k]["cluster_close_s"],
                        f[k]["cluster_start_close_share"],
                    ]
                    for k in f
                    if k.startswith("dask-") and f[k]["cluster_start_s"] is not None
                ]
                + [
                    [
                        f"{k}: the flow's time outside its iterations, over in-process (cluster start, close after work, Prefect)",
                        f[k]["flow_outside_iterations_over_in_process_s"],
                        f[k]["flow_outside_iterations_over_in_process_s"]
                        / res["summary"]["per_runner"]["in-process"]["iteration_s"],
                    ]
                    for k in f
                    if k.startswith("dask-")
                ]
                + [
                    [
                        f"{k}: a run of one iteration, all fixed costs (cold iteration + outside iterations − in-process)",
                        "",
                        f[k]["one_iteration_run_share"],
                    ]
                    for k in f
                    if k.startswith("dask-")
                ],
            ),
        ]
    ot = res["one_time"]
    lines += [
        "",
        f"One-time: import Prefect and the flow {ot['import_prefect_and_flow_s']:.1f} s, ephemeral Prefect server {ot['prefect_server_start_s']:.1f} s"
        + (f", warm-up run {ot['warmup_run_s']:.1f} s" if "warmup_run_s" in ot else "")
        + f". Same train rewards in every runner: {res['same_train_rewards_as_in_process']}. "
        f"Load average at start {res['machine']['loadavg_at_start']}, at end {res['machine_load_at_end']} on {res['machine']['cpus_usable']} usable CPUs.",
    ]
    return "\n".join(lines)


def plot(res: dict, out: Path) -> list[Path]:
    plt = C.pyplot()
    s = res["summary"]
    per = s["per_runner"]
    names = list(per)
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.3))
    axes[0].bar(names, [per[n]["explore_s"] for n in names], color="tab:red", label="explore stage (commit record)")
    axes[0].plot(names, [per[n]["explore_compute_s"] for n in names], "ko", label="explore compute (sum over workers)")
    axes[0].set(ylabel="seconds (median, warm iterations)", title="explore stage wall time")
    axes[0].legend(fontsize=7)
    ks = [int(k) for k in s["efficiency"]]
    if ks:
        axes[1].plot(
            ks, [s["efficiency"][str(k)] for k in ks], "o-", label=f"E(k) = T({s['efficiency_reference']}) / (k·Tk)"
        )
        axes[1].plot(
            ks, [s["speedup_vs_in_process"][str(k)] / k for k in ks], "s--", label="speed-up over in-process / k"
        )
    axes[1].axhline(GOAL_EFFICIENCY, color="tab:red", ls="--", lw=1, label=f"goal {GOAL_EFFICIENCY}")
    axes[1].set(xlabel="Dask workers", ylabel="parallel efficiency", title="explore parallel efficiency", ylim=(0, 1.2))
    axes[1].set_xticks(ks or [1])
    axes[1].legend(fontsize=7)
    cols = plt.get_cmap("tab10")
    for j, n in enumerate(names):
        w = warm([x for r in res["runs"] if r["variant"] == n for x in r["iterations"]])
        left = 0.0
        for k, st in enumerate(ITERATION_STAGES):
            v = C.median([x["stages"].get(st, 0.0) for x in w])
            if v:
                axes[2].barh(j, v, left=left, color=cols(k), label=st if j == 0 else None)
                left += v
        axes[2].barh(
            j,
            max(0.0, per[n]["iteration_s"] - left),
            left=left,
            color="lightgrey",
            label="between stages" if j == 0 else None,
        )
    axes[2].set_yticks(range(len(names)), names)
    axes[2].set(xlabel="seconds (median)", title="one warm iteration per runner")
    axes[2].legend(fontsize=7)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(f"Dask scale-out on {res['machine']['cpus_usable']} CPUs ({res['machine']['cpu_model']})", fontsize=11)
    return C.save_figure(fig, out, "scaling")


# --- the update on N ranks (tasks/ddp.py) and the 8-GPU projection --------------------------------
# The FLOP model of one FLUX iteration (48 prompts × 96 candidates, K 24; estimated from the
# architecture): explore in FP4, regenerate and update in BF16. FP4 is taken at twice the BF16
# throughput (Blackwell tensor cores), so explore costs 874 / 2 BF16-equivalent units of time.
FLUX_PFLOP = {"explore": 874.0, "regenerate": 364.0, "update": 580.0}
FP4_SPEEDUP = 2.0
UPDATE_QUICK = {
    "explore.n": 8,
    "explore.steps": 3,
    "select.k": 4,
    "rollout.steps": 5,
    "nft.micro_batch": 2,
    "eval.every": 0,
    "fidelity.audit_prompts": 0,
}


def projection(shares: dict[str, float], units: dict[str, int], gpus: int, update_efficiency: float) -> dict:
    """Amdahl per stage on one node of `gpus` GPUs, from the stages' shares of a one-GPU iteration
    and each stage's parallel units (shards: prompts; the update: micro-batches per optimizer
    step), handed out whole: a stage of u units on w processes takes ceil(u / w) / u of its time.
    before (main): explore and regenerate on gpus − 1 workers (the flow's process keeps a GPU),
    audit, eval and the update in the flow's process. now: explore, regenerate, audit and eval
    sharded on gpus workers, the update on gpus ranks at `update_efficiency` (the flow's process
    holds no model); select (no model) stays in the flow's process."""
    import math

    def t(stage: str, workers: int, sharded: set[str]) -> float:
        v = shares[stage]
        if stage not in sharded:
            return v
        w = min(workers, units[stage])
        return (
            v * math.ceil(units[stage] / w) / units[stage] / (update_efficiency if stage == "update" and w > 1 else 1.0)
        )

    before = {s: t(s, gpus - 1, {"explore", "regenerate"}) for s in shares}
    now = {s: t(s, gpus, {"explore", "regenerate", "audit", "eval", "update"}) for s in shares}
    return {
        "gpus": gpus,
        "update_efficiency": update_efficiency,
        "units": units,
        "speedup_before": 1 / sum(before.values()),
        "speedup_now": 1 / sum(now.values()),
        "stage_share_now": {s: v / sum(now.values()) for s, v in now.items()},
    }


def run_update(args) -> dict:
    """Upstream stages once in this process; then the update stage (tasks.stages.run_stage(run, i, "update")) on
    1 rank (this process) and on 2 ranks (a 2-worker LocalCluster, gloo), interleaved, warm."""
    import math

    import torch

    C.set_threads(args.threads)
    logging.getLogger("solrl").setLevel(logging.WARNING)
    from distributed import Client

    from flows.cluster import dask_cluster
    from solrl.config import ClusterSection, load_config
    from tasks import stages
    from tasks.ddp import cluster_in_use
    from tasks.run import open_run

    machine = C.machine()
    root = Path(tempfile.mkdtemp(prefix="solrl-bench-update-"))
    overrides = {
        "prompts.per_iteration": args.prompts,
        "eval.every": 0 if args.quick else 1,
        **(UPDATE_QUICK if args.quick else {}),
    }
    cfg = C.base_config(args, **overrides)
    try:
        from storage.queries import read_stage

        if (
            not args.quick
        ):  # warm-up: a tiny run of the same model loads it and compiles the kernels, so the measured iteration is warm
            warm = open_run(str(root / "warm"), cfg.with_overrides(**UPDATE_QUICK))
            stages.run_steps(warm, 0)
        run = open_run(str(root / "up"), cfg)
        it = 0
        stage_s = {}
        stages.run_stage(run, it, "plan")
        for name in stages.plan_of(run, it).stages[1:]:  # in this process: the measured per-stage shares
            t, _ = C.timed(stages.run_stage, run, it, name)
            stage_s[name] = t
        update_dir = root / "up" / f"iter={it:05d}" / "update"
        shutil.rmtree(
            root / "up" / f"iter={it:05d}" / "eval", ignore_errors=True
        )  # (it reads the update: it would be stale)
        n_samples = len(read_stage(run.store, it, "regenerate", "seed"))
        shapes_units = {
            "explore": cfg.prompts.per_iteration,
            "regenerate": cfg.prompts.per_iteration,
            "select": 1,
            "audit": max(1, stages.shard_count(run, it, "audit")) if "audit" in stage_s else 1,
            "eval": stages.shard_count(run, it, "eval"),
            "update": math.ceil(n_samples / cfg.nft.steps_per_iteration / cfg.nft.micro_batch),
        }

        def once(ranks: int):
            shutil.rmtree(update_dir, ignore_errors=True)
            with cluster_in_use(address if ranks > 1 else None, ranks):
                stages.run_stage(run, it, "update")

        with dask_cluster(ClusterSection(workers=2)) as address, Client(address):
            times = C.interleaved(
                {f"{k} rank{'s' if k > 1 else ''}": (lambda k=k: once(k)) for k in (1, 2)},
                args.repeats,
                log="scaling update",
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    t1, t2 = C.median(times["1 rank"]), C.median(times["2 ranks"])
    measured_eff = t1 / (2 * t2)
    rest = {k: v for k, v in stage_s.items() if k in ("explore", "regenerate", "audit", "update", "eval", "select")}
    shapes_shares = {k: v / sum(rest.values()) for k, v in rest.items()}
    flux_time = {
        "explore": FLUX_PFLOP["explore"] / FP4_SPEEDUP,
        "regenerate": FLUX_PFLOP["regenerate"],
        "update": FLUX_PFLOP["update"],
    }
    flux_shares = {k: v / sum(flux_time.values()) for k, v in flux_time.items()}
    flux = load_config("flux")
    flux_units = {
        "explore": flux.prompts.per_iteration,
        "regenerate": flux.prompts.per_iteration,
        "update": math.ceil(
            flux.prompts.per_iteration * flux.select.k / flux.nft.steps_per_iteration / flux.nft.micro_batch
        ),
    }
    proj = {
        src: {
            f"update_efficiency_{name}": projection(shares, units, 8, e)
            for name, e in (("ideal", 1.0), ("measured_cpu", measured_eff))
        }
        for src, shares, units in (
            ("shapes_measured_shares", shapes_shares, shapes_units),
            ("flux_flop_model", flux_shares, flux_units),
        )
    }
    return {
        "config": {
            "config_file": str(args.config),
            "overrides": overrides,
            "samples": n_samples,
            "micro_batch": cfg.nft.micro_batch,
            "times": max(1, int(cfg.rollout.steps * cfg.nft.timestep_fraction)),
            "repeats": args.repeats,
            "threads_per_process": torch.get_num_threads(),
        },
        "machine": machine,
        "machine_load_at_end": [round(x, 2) for x in os.getloadavg()],
        "measured_iteration": it,
        "stage_seconds_in_process": stage_s,
        "update_seconds": times,
        "median_1_rank_s": t1,
        "median_2_ranks_s": t2,
        "speedup_2_ranks": t1 / t2,
        "parallel_efficiency_2_ranks": measured_eff,
        "flux_flop_model": {"pflop": FLUX_PFLOP, "fp4_speedup_over_bf16": FP4_SPEEDUP, "time_shares": flux_shares},
        "shapes_time_shares": shapes_shares,
        "flux_units": flux_units,
        "shapes_units": shapes_units,
        "projection_8_gpus": proj,
    }


def summary_update(res: dict) -> str:
    c = res["config"]
    lines = [
        f"## The update on 1 vs 2 CPU ranks (gloo; {c['samples']} kept samples × {c['times']} times, micro-batch {c['micro_batch']}; "
        f"{c['repeats']} interleaved repeats, medians; one thread per rank)",
        "",
        C.md_table(
            ["ranks", "update stage s (median)", "all repeats s", "speed-up", "parallel efficiency"],
            [
                [
                    "1 (this process)",
                    res["median_1_rank_s"],
                    " ".join(f"{x:.2f}" for x in res["update_seconds"]["1 rank"]),
                    1.0,
                    1.0,
                ],
                [
                    "2 (Dask workers)",
                    res["median_2_ranks_s"],
                    " ".join(f"{x:.2f}" for x in res["update_seconds"]["2 ranks"]),
                    res["speedup_2_ranks"],
                    res["parallel_efficiency_2_ranks"],
                ],
            ],
        ),
        "",
        f"Host: {res['machine']['cpu_model']}, {res['machine']['cpus_usable']} usable vCPUs shared with other jobs (load average at start "
        f"{res['machine']['loadavg_at_start']}, at end {res['machine_load_at_end']}): the 2-rank figures measure contention as much as scaling. "
        "The 2-rank time includes the launch (Dask submission, rendezvous, each rank reading the rows and restoring the adapters).",
        "",
        "## Projection (not a measurement): one iteration on one 8-GPU node",
        "",
        "Amdahl per stage, each stage's work handed out in whole units (prompts; eval: sampling batches; the update: micro-batches per optimizer step). "
        "Before (main): explore and regenerate on 7 workers (the flow's process keeps GPU 0), audit, eval and the update in the flow's process. "
        "Now: explore, regenerate, audit and eval sharded on 8 workers and the update on 8 ranks (the flow's process holds no model). "
        "Stage shares of a one-GPU iteration from two sources: measured on shapes in this process (warm iteration: "
        + ", ".join(f"{k} {v:.1f} s" for k, v in res["stage_seconds_in_process"].items())
        + "; units "
        + ", ".join(f"{k} {v}" for k, v in res["shapes_units"].items())
        + "), and the FLUX FLOP model (explore 874 PFLOP in FP4 at 2× the BF16 rate, regenerate 364, update 580 per iteration of 48 prompts × 96, K 24; "
        "eval and audit not in the model; units "
        + ", ".join(f"{k} {v}" for k, v in res["flux_units"].items())
        + "). Update efficiency per rank: 1.0 (ideal: the LoRA "
        "gradient all-reduce is one flat buffer per optimizer step) and the 2-rank CPU efficiency measured above.",
        "",
    ]
    rows = []
    for src, by_eff in res["projection_8_gpus"].items():
        for name, p in by_eff.items():
            rows.append(
                [
                    src,
                    f"{p['update_efficiency']:.2f} ({name.removeprefix('update_efficiency_')})",
                    p["speedup_before"],
                    p["speedup_now"],
                    ", ".join(f"{k} {v:.2f}" for k, v in p["stage_share_now"].items()),
                ]
            )
    lines.append(
        C.md_table(
            [
                "shares from",
                "update efficiency per rank",
                "speed-up over 1 GPU before",
                "speed-up now",
                "share of the 8-GPU iteration per stage (now)",
            ],
            rows,
        )
    )
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = C.parser(
        __doc__,
        "scaling",
        quick="the tests' tiny iteration (2 prompts × N 8, eval off), 1 iteration (cold), in-process vs 2 workers, 1 repeat",
    )
    C.add_model_args(ap)
    ap.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=None,
        help="LocalCluster sizes (default 1 2; quick 2). Without 1, E(k) is relative to the in-process runner",
    )
    ap.add_argument(
        "--prompts", type=int, default=None, help="prompts per iteration = explore shards (default 4; quick 2)"
    )
    ap.add_argument(
        "--iterations",
        type=int,
        default=None,
        help="iterations per run; iteration 0 is the cold start (default 3; quick 1)",
    )
    ap.add_argument("--repeats", type=int, default=None, help="rotated repeats of every runner (default 2; quick 1)")
    ap.add_argument("--no-eval", action="store_true", help="eval.every = 0 (the iteration without evaluation)")
    ap.add_argument(
        "--update",
        action="store_true",
        help="instead: the update stage on 1 vs 2 ranks (gloo, tasks/ddp.py) and the 8-GPU projection "
        "(writes scaling_update.json/.md; repeats default 5, quick 1)",
    )
    C.add_threads_arg(ap)
    args = ap.parse_args(argv)
    q = args.quick
    if args.update:
        args.prompts = args.prompts or (2 if q else 4)
        args.repeats = args.repeats or (1 if q else 5)
        if args.threads:
            os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)
        out = Path(args.out)
        t0 = time.perf_counter()
        res = run_update(args)
        res["wall_seconds"] = time.perf_counter() - t0
        res["quick"] = q
        return C.finish(out, "scaling_update", res, summary_update(res), [])
    args.workers = sorted(set(args.workers or ([2] if q else [1, 2])))
    args.prompts = args.prompts or (2 if q else 4)
    args.iterations = args.iterations or (1 if q else 3)
    args.repeats = args.repeats or (1 if q else 2)
    if args.threads:  # before torch is imported: every thread of this process (the flow's task threads too)
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    res = run(args)
    res["wall_seconds"] = time.perf_counter() - t0
    res["quick"] = q
    return C.finish(out, "scaling", res, summary(res), plot(res, out))


if __name__ == "__main__":
    main()
