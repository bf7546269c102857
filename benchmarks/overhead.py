"""Orchestration and storage overhead (issue 7, item 3): one shapes iteration, Prefect flow vs direct.

One default `shapes` iteration through the Prefect flow vs the same stage functions called
directly.

Three ways to run iteration 0 of a fresh run with the same config, in one process:
  flow    the Prefect flow `sol-rl` (ephemeral Prefect, a private temporary PREFECT_HOME), i.e.
          what `sol-rl run` does: subflow, tasks, per-prompt shards, artifacts, plus storage;
  steps   tasks.steps.run_steps: the same stage steps with storage (Parquet, PNG and x0 bytes,
          adapters, sha256 commits) but no Prefect, i.e. `sol-rl run --no-prefect`;
  direct  solrl.stages.run_iteration: the stage functions in memory, no storage.
All three do the same compute (same prompts, seeds, models; the train and eval rewards are
compared). One-time costs are measured first and reported apart: importing Prefect and the
flow, starting the ephemeral Prefect server (a no-op flow), the first real flow run (loads the
policy, compiles the NVFP4 kernel) and loading the direct path's policy. Then --repeats rounds,
each running the three in a rotated order. Per repeat:
  orchestration share = (flow - steps) / flow,  storage share = (steps - direct) / flow,
  together            = (flow - direct) / flow;
medians over repeats. Per-stage times come from the commit records (flow, steps) and from
run_iteration (direct).

    python benchmarks/overhead.py --out benchmarks/results/overhead          # full: default iteration, 5 repeats
    python benchmarks/overhead.py --quick --out /tmp/overhead                # smoke: a tiny iteration, 1 repeat
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import bench_common as C

STAGES = ("explore", "select", "regenerate", "update", "eval")
VARIANTS = ("flow", "steps", "direct")
# --quick: the pipeline tests' tiny iteration (tests/pipeline_helpers.py TINY), eval on
QUICK = {
    "prompts.per_iteration": 2, "explore.n": 8, "explore.steps": 3, "select.k": 4, "rollout.steps": 5,
    "nft.micro_batch": 8, "eval.prompts": 2, "eval.seeds_per_prompt": 1, "eval.steps": 4,
}


def prefect_env() -> str:
    """A private Prefect home (SQLite DB, settings) and quiet logs, before Prefect is imported."""
    home = tempfile.mkdtemp(prefix="solrl-bench-prefect-")
    os.environ["PREFECT_HOME"] = home
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    return home


def stage_seconds(run_uri: str) -> dict[str, float]:
    from tasks.steps import open_run

    run = open_run(run_uri)
    out = {}
    for s in STAGES:
        rec = run.store.commit_record(0, s)
        if rec:
            out[s] = rec["finished_at"] - rec["started_at"]
    return out


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def run(args) -> dict:
    home = prefect_env()
    import torch

    torch.set_flush_denormal(True)
    C.set_threads(args.threads)
    logging.getLogger("solrl").setLevel(logging.WARNING)  # no per-stage progress lines
    machine = C.machine()
    root = Path(tempfile.mkdtemp(prefix="solrl-bench-runs-"))
    config_path = str(C.REPO / "configs" / "shapes.yaml")
    overrides = dict(QUICK) if args.quick else {}
    one_time = {}
    try:
        t, _ = C.timed(__import__, "flows.sol_rl")
        one_time["import_prefect_and_flow_s"] = t
        from prefect import flow

        from flows.sol_rl import sol_rl
        from solrl.config import load_config
        from solrl.models import load_policy
        from solrl.stages import TrainState, run_iteration
        from storage.store import join
        from tasks.steps import open_run, run_steps

        cfg = load_config(config_path)
        if overrides:
            cfg = cfg.with_overrides(**overrides)

        @flow(name="bench-noop")
        def noop() -> int:
            return 1

        one_time["first_noop_flow_s"] = C.timed(noop)[0]
        if not args.quick:
            one_time["second_noop_flow_s"] = C.timed(noop)[0]

        def via_flow(name):
            t, summaries = C.timed(sol_rl, config=config_path, run_id=name, iterations=1, run_root=str(root), overrides=overrides or None)
            s = summaries[0]
            return t, {"train_reward": s["train_reward"], "eval_reward": s.get("eval_reward")}, stage_seconds(join(str(root), name))

        def via_steps(name):
            r = open_run(join(str(root), name), cfg)
            t, s = C.timed(run_steps, r, 0)
            return t, {"train_reward": s["train_reward"], "eval_reward": s.get("eval_reward")}, stage_seconds(join(str(root), name))

        t, _ = C.timed(via_flow, "warmup-flow")
        one_time["first_flow_iteration_s"] = t
        t, policy = C.timed(load_policy, cfg.model.family, weights=cfg.model.weights, lora_rank=cfg.model.lora_rank, lora_alpha=cfg.model.lora_alpha, seed=cfg.run.seed)
        one_time["direct_policy_load_s"] = t
        init = policy.adapter_state("default")

        def via_direct(name):
            policy.load_adapter("default", init)
            policy.load_adapter("old", init)
            state = TrainState.fresh(policy, cfg)  # EMA = a copy of the adapter just reset
            t, res = C.timed(run_iteration, policy, state, cfg, 0)
            ev = res.eval["reward"] if res.eval else None
            return t, {"train_reward": res.metrics["reward_mean"], "eval_reward": sum(ev) / len(ev) if ev else None}, dict(res.seconds)

        if not args.quick:  # (the flow's warm-up already ran every code path once)
            t, _ = C.timed(via_direct, "warmup-direct")
            one_time["first_direct_iteration_s"] = t

        fns = {"flow": via_flow, "steps": via_steps, "direct": via_direct}
        reps = []
        for r in range(args.repeats):
            rep = {}
            for v in C.rotated(list(VARIANTS), r):
                t, rewards, stages = fns[v](f"{v}-{r}")
                rep[v] = {"seconds": t, "stages": stages, "stage_sum": sum(stages.values()), **rewards}
                if v != "direct":
                    rep[v]["bytes_written"] = dir_bytes(root / f"{v}-{r}")
            f, s, d = rep["flow"]["seconds"], rep["steps"]["seconds"], rep["direct"]["seconds"]
            rep["orchestration_share"] = (f - s) / f
            rep["storage_share"] = (s - d) / f
            rep["overhead_share"] = (f - d) / f
            rep["flow_outside_stages_s"] = f - rep["flow"]["stage_sum"]
            reps.append(rep)
            print(f"[overhead] repeat {r + 1}/{args.repeats}: flow {f:.1f} s, steps {s:.1f} s, direct {d:.1f} s", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)

    med, shares = aggregate(reps)
    same = {k: max(abs(r[a][k] - r["direct"][k]) for r in reps for a in ("flow", "steps")) if reps[0]["direct"][k] is not None else None
            for k in ("train_reward", "eval_reward")}
    return {
        "config": {"quick": args.quick, "overrides": overrides, "repeats": args.repeats, "threads": torch.get_num_threads(),
                   "prompts": cfg.prompts.per_iteration, "explore_n": cfg.explore.n, "explore_steps": cfg.explore.steps, "k": cfg.select.k,
                   "rollout_steps": cfg.rollout.steps, "eval_every": cfg.eval.every, "eval_prompts": cfg.eval.prompts,
                   "eval_seeds_per_prompt": cfg.eval.seeds_per_prompt},
        "one_time": one_time,
        "repeats": reps,
        "median": med,
        "shares": shares,
        "max_abs_reward_difference_vs_direct": same,
        "machine": machine,
    }


SHARES = ("orchestration_share", "storage_share", "overhead_share", "outside_stages_share")


def aggregate(reps: list[dict]) -> tuple[dict, dict]:
    """Medians over repeats of every way's wall and stage times, and of the per-repeat shares
    (with their min and max: the shares are differences of noisy walls, so show the spread)."""
    med = {v: {"seconds": C.median([r[v]["seconds"] for r in reps]),
               "stages": {s: C.median([r[v]["stages"][s] for r in reps]) for s in STAGES if s in reps[0][v]["stages"]}}
           for v in VARIANTS}
    for v in ("flow", "steps"):
        med[v]["bytes_written"] = int(C.median([r[v]["bytes_written"] for r in reps]))
    for r in reps:  # the Prefect-only part measured without compute noise: flow wall outside its stage spans
        r["outside_stages_share"] = r["flow_outside_stages_s"] / r["flow"]["seconds"]
    shares = {}
    for k in SHARES:
        xs = [r[k] for r in reps]
        shares[k], shares[k + "_min"], shares[k + "_max"] = C.median(xs), min(xs), max(xs)
    shares["orchestration_s"] = C.median([r["flow"]["seconds"] - r["steps"]["seconds"] for r in reps])
    shares["storage_s"] = C.median([r["steps"]["seconds"] - r["direct"]["seconds"] for r in reps])
    shares["overhead_s"] = C.median([r["flow"]["seconds"] - r["direct"]["seconds"] for r in reps])
    shares["flow_outside_stages_s"] = C.median([r["flow_outside_stages_s"] for r in reps])
    return med, shares


def summary(res: dict) -> str:
    cfg, med, sh = res["config"], res["median"], res["shares"]
    it = f"{cfg['prompts']} prompts × N {cfg['explore_n']} ({cfg['explore_steps']} steps), K {cfg['k']}, rollout {cfg['rollout_steps']} steps, eval {cfg['eval_prompts']}×{cfg['eval_seeds_per_prompt']}"
    lines = [f"## One shapes iteration ({it}): Prefect flow vs stage functions ({cfg['repeats']} interleaved repeat(s), medians, {cfg['threads']} torch thread(s))", ""]
    head = ["way", "wall s"] + [f"{s} s" for s in STAGES] + ["sum of stages s", "bytes written"]
    rows = []
    for v in ("flow", "steps", "direct"):
        st = med[v]["stages"]
        rows.append([v, med[v]["seconds"]] + [st.get(s, "") for s in STAGES] + [sum(st.values()), f"{med[v].get('bytes_written', 0):,}" if v != "direct" else "0"])
    lines.append(C.md_table(head, rows))
    lines += [
        "",
        C.md_table(["share of the flow's wall time", "median", "min .. max over repeats", "seconds (median)"], [
            [label, f"{100 * sh[k]:.1f} %", f"{100 * sh[k + '_min']:.1f} .. {100 * sh[k + '_max']:.1f} %", sh[sec]]
            for label, k, sec in (
                ("orchestration (Prefect): (flow − steps) / flow", "orchestration_share", "orchestration_s"),
                ("storage (Parquet, PNG, commits): (steps − direct) / flow", "storage_share", "storage_s"),
                ("orchestration + storage: (flow − direct) / flow", "overhead_share", "overhead_s"),
                ("Prefect outside the committed stage spans / flow", "outside_stages_share", "flow_outside_stages_s"),
            )
        ]),
        "",
        "Per repeat (wall s): " + "; ".join(
            f"#{i + 1} flow {r['flow']['seconds']:.1f}, steps {r['steps']['seconds']:.1f}, direct {r['direct']['seconds']:.1f}" for i, r in enumerate(res["repeats"])),
        "",
        "One-time costs, seconds (not in the above; first_noop_flow = ephemeral Prefect server start, first_flow_iteration = "
        "policy load + NVFP4 compile + first tasks): " + "; ".join(f"{k.removesuffix('_s')} {v:.1f}" for k, v in res["one_time"].items()),
        "",
        "Same compute check, max |reward difference| vs direct over repeats: " + ", ".join(
            f"{k} {v:.2e}" if v is not None else f"{k} n/a" for k, v in res["max_abs_reward_difference_vs_direct"].items()),
    ]
    return "\n".join(lines)


def plot(res: dict, out: Path) -> list[Path]:
    plt = C.pyplot()
    med = res["median"]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.3), gridspec_kw={"width_ratios": [3, 2]})
    colours = {"explore": "tab:red", "select": "tab:purple", "regenerate": "tab:blue", "update": "tab:green", "eval": "tab:olive", "other": "lightgrey"}
    ways = ["direct", "steps", "flow"]
    for i, v in enumerate(ways):
        left = 0.0
        for s in STAGES:
            w = med[v]["stages"].get(s, 0.0)
            axes[0].barh(i, w, left=left, color=colours[s], label=s if i == 0 else None)
            left += w
        other = max(0.0, med[v]["seconds"] - left)
        axes[0].barh(i, other, left=left, color=colours["other"], label="outside stages" if i == 0 else None)
        axes[0].text(max(med[v]["seconds"], left), i, f" {med[v]['seconds']:.1f} s", va="center", fontsize=8)
    axes[0].set_yticks(range(len(ways)), ["direct\n(run_iteration)", "steps\n(storage, no Prefect)", "flow\n(Prefect + storage)"])
    axes[0].set(xlabel="seconds (median)", title="one iteration, per stage")
    axes[0].legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=6)
    axes[0].set_xlim(0, 1.12 * max(max(med[v]["seconds"], sum(med[v]["stages"].values())) for v in ways))
    sh = res["shares"]
    keys = ("orchestration_share", "storage_share", "overhead_share", "outside_stages_share")
    vals = [100 * sh[k] for k in keys]
    err = [[100 * (sh[k] - sh[k + "_min"]) for k in keys], [100 * (sh[k + "_max"] - sh[k]) for k in keys]]
    axes[1].bar(["orchestration", "storage", "both", "Prefect outside\nstage spans"], vals, yerr=err, capsize=4, color=["tab:orange", "tab:cyan", "tab:grey", "tab:brown"])
    for i, v in enumerate(vals):
        axes[1].text(i, v, f" {v:.1f} %", ha="left", va="bottom", fontsize=8)
    axes[1].axhline(0, color="k", lw=0.8)
    axes[1].set(ylabel="% of the flow's wall time", title="overhead share (median; bars: min..max over repeats)")
    for ax in axes:
        ax.grid(alpha=0.3, axis="x" if ax is axes[0] else "y")
    return C.save_figure(fig, out, "overhead")


def main(argv=None) -> dict:
    ap = C.parser(__doc__, "overhead", quick="the tests' tiny iteration, 1 repeat")
    ap.add_argument("--repeats", type=int, default=None, help="interleaved repeats (default 5; quick 1)")
    C.add_threads_arg(ap)
    args = ap.parse_args(argv)
    args.repeats = args.repeats or (1 if args.quick else 5)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    res = run(args)
    res["wall_seconds"] = time.perf_counter() - t0
    res["quick"] = args.quick
    text = summary(res)
    return C.finish(out, "overhead", res, text, plot(res, out))


if __name__ == "__main__":
    main()
