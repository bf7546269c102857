"""Orchestration and storage overhead: one shapes iteration through the Prefect flow, through
the same stage steps without Prefect, and through those steps over an in-memory store.

One default `shapes` iteration (--config, default configs/shapes.yaml; --weights another model),
iteration 0 of a fresh run with the same config, three ways in one process:
  flow    the Prefect flow `sol-rl` (ephemeral Prefect, a private temporary PREFECT_HOME), i.e.
          what `sol-rl run` does: subflow, tasks, per-prompt shards, artifacts, plus storage;
  steps   tasks.stages.run_steps on a run folder on disk: the same stage steps with storage
          (Parquet, PNG and x0 bytes, adapters, sha256 commits) but no Prefect, i.e.
          `sol-rl run --no-prefect`;
  memory  the same steps over fsspec's in-memory file system (tasks/in_memory.py): what the
          disk adds is gone, the serialisation (Parquet, PNG, safetensors, hashes) stays.
Each includes the baseline evaluation before iteration 0 when eval is on. All three do the same
compute (same prompts, seeds, models; the train reward and the mean eval and baseline rewards
per evaluation set are compared). One-time costs are measured first and reported apart:
importing Prefect and the flow, starting the ephemeral Prefect server (a no-op flow), the first
real flow run (loads the policy, compiles the NVFP4 activation quantiser). Then --repeats
rounds, each running the three in a rotated order. Per repeat:
  orchestration share = (flow - steps) / flow,  disk share = (steps - memory) / flow,
  together            = (flow - memory) / flow;
medians over repeats. Per-stage times come from the commit records. (Before the in-memory store
replaced it, the third way was an in-memory executor with no serialisation at all: the results
committed from then call it "direct".)

    python benchmarks/overhead.py --threads 1 --out benchmarks/results/overhead    # full: default iteration, 5 repeats
    python benchmarks/overhead.py --quick --threads 1 --out /tmp/overhead          # smoke: a tiny iteration, 1 repeat
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path

import bench_common as C

STAGES = ("baseline", "plan", "explore", "select", "regenerate", "update", "eval")
VARIANTS = ("flow", "steps", "memory")


def stage_seconds(run_uri: str) -> dict[str, float]:
    """Seconds of iteration 0's stages (and the run's baseline) from their commit records."""
    from tasks.run import open_run

    run = open_run(run_uri)
    out = {}
    for s in STAGES:
        rec = run.stage(None if s == "baseline" else 0, s).record  # the baseline is run-scoped
        if rec:
            out[s] = rec["finished_at"] - rec["started_at"]
    return out


def stored_rewards(run_uri: str) -> dict:
    """Mean reward per evaluation set of the committed eval and baseline of iteration 0."""
    from storage.queries import read_stage
    from tasks.run import open_run

    run = open_run(run_uri)
    out = {}
    for name, it in (("eval", 0), ("baseline", None)):
        if run.stage(it, name).record:
            out[name] = set_means(read_stage(run.store, it, name, "set, reward").to_pydict())
    return out


def set_means(cols: dict) -> dict[str, float]:
    sets = {}
    for s, r in zip(cols["set"], cols["reward"]):
        sets.setdefault(s, []).append(r)
    return {s: sum(v) / len(v) for s, v in sorted(sets.items())}


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def run(args) -> dict:
    home = C.prefect_env()
    import torch

    torch.set_flush_denormal(True)
    C.set_threads(args.threads)
    logging.getLogger("solrl").setLevel(logging.WARNING)  # no per-stage progress lines
    machine = C.machine()
    root = Path(tempfile.mkdtemp(prefix="solrl-bench-runs-"))
    config_path = str(args.config)
    overrides = dict(C.QUICK_ITERATION) if args.quick else {}
    if args.weights:
        overrides["model.weights"] = str(Path(args.weights).resolve())
    one_time = {}
    try:
        t, _ = C.timed(__import__, "flows.sol_rl")
        one_time["import_prefect_and_flow_s"] = t
        from prefect import flow

        from flows.sol_rl import sol_rl
        from solrl.config import load_config
        from storage.queries import read_stage
        from storage.store import join
        from tasks.run import open_run
        from tasks.stages import run_steps

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
            t, summaries = C.timed(
                sol_rl, config=config_path, run_id=name, iterations=1, run_root=str(root), overrides=overrides or None
            )
            uri = join(str(root), name)
            return t, {"train_reward": summaries[0]["train_reward"], **stored_rewards(uri)}, stage_seconds(uri)

        def via_steps(name):
            uri = join(str(root), name)
            r = open_run(uri, cfg)
            r.acquire()
            try:
                t, s = C.timed(run_steps, r, 0)
            finally:
                r.release()
            return t, {"train_reward": s["train_reward"], **stored_rewards(uri)}, stage_seconds(uri)

        if not args.quick:  # (quick: the one repeat is the first flow run, cold)
            t, _ = C.timed(via_flow, "warmup-flow")
            one_time["first_flow_iteration_s"] = t

        def via_memory(name):
            from tasks.in_memory import discard, iteration_data, memory_run

            r = memory_run(cfg, name)
            t, summary = C.timed(run_steps, r, 0)  # the baseline included, as in the other two ways
            data = iteration_data(r, 0)
            rewards = {}
            if cfg.eval.every:
                rewards["baseline"] = set_means(read_stage(r.store, None, "baseline").to_pydict())
                rewards["eval"] = set_means(data.eval)
            stages = {**data.seconds}
            base = r.stage(None, "baseline").record
            if base:
                stages["baseline"] = base["finished_at"] - base["started_at"]
            discard(r)
            return t, {"train_reward": summary["train_reward"], **rewards}, stages

        if not args.quick:  # (after the flow's warm-up: every code path ran once)
            t, _ = C.timed(via_memory, "warmup-memory")
            one_time["first_memory_iteration_s"] = t

        fns = {"flow": via_flow, "steps": via_steps, "memory": via_memory}
        reps = []
        for r in range(args.repeats):
            rep = {}
            for v in C.rotated(list(VARIANTS), r):
                t, rewards, stages = fns[v](f"{v}-{r}")
                rep[v] = {"seconds": t, "stages": stages, "stage_sum": sum(stages.values()), **rewards}
                if v != "memory":
                    rep[v]["bytes_written"] = dir_bytes(root / f"{v}-{r}")
            f, s, d = rep["flow"]["seconds"], rep["steps"]["seconds"], rep["memory"]["seconds"]
            rep["orchestration_share"] = (f - s) / f
            rep["storage_share"] = (s - d) / f
            rep["overhead_share"] = (f - d) / f
            rep["flow_outside_stages_s"] = f - rep["flow"]["stage_sum"]
            reps.append(rep)
            print(
                f"[overhead] repeat {r + 1}/{args.repeats}: flow {f:.1f} s, steps {s:.1f} s, memory {d:.1f} s",
                flush=True,
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)

    med, shares = aggregate(reps)
    same = {
        "train_reward": max(
            abs(r[a]["train_reward"] - r["memory"]["train_reward"]) for r in reps for a in ("flow", "steps")
        )
    }
    for key in ("eval", "baseline"):  # mean reward per evaluation set
        same[f"{key}_reward"] = (
            max(
                abs(r[a][key][s] - r["memory"][key][s])
                for r in reps
                for a in ("flow", "steps")
                for s in r["memory"][key]
            )
            if key in reps[0]["memory"]
            else None
        )
    return {
        "config": {
            "quick": args.quick,
            "overrides": overrides,
            "repeats": args.repeats,
            "threads": torch.get_num_threads(),
            "prompts": cfg.prompts.per_iteration,
            "explore_n": cfg.explore.n,
            "explore_steps": cfg.explore.steps,
            "k": cfg.select.k,
            "rollout_steps": cfg.rollout.steps,
            "eval_every": cfg.eval.every,
            "eval_sets": list(cfg.eval.sets),
            "eval_train_prompts": cfg.eval.train_prompts,
            "eval_held_out_prompts": cfg.eval.held_out_prompts,
            "eval_seeds_per_prompt": cfg.eval.seeds_per_prompt,
            "config_file": config_path,
            "model": C.model_label(cfg),
        },
        "one_time": one_time,
        "repeats": reps,
        "median": med,
        "shares": shares,
        "max_abs_reward_difference_vs_memory": same,
        "machine": machine,
    }


SHARES = ("orchestration_share", "storage_share", "overhead_share", "outside_stages_share")


def aggregate(reps: list[dict]) -> tuple[dict, dict]:
    """Medians over repeats of every way's wall and stage times, and of the per-repeat shares
    (with their min and max: the shares are differences of noisy walls, so show the spread)."""
    med = {
        v: {
            "seconds": C.median([r[v]["seconds"] for r in reps]),
            "stages": {s: C.median([r[v]["stages"][s] for r in reps]) for s in STAGES if s in reps[0][v]["stages"]},
        }
        for v in VARIANTS
    }
    for v in ("flow", "steps"):
        med[v]["bytes_written"] = int(C.median([r[v]["bytes_written"] for r in reps]))
    for r in reps:  # the Prefect-only part measured without compute noise: flow wall outside its stage spans
        r["outside_stages_share"] = r["flow_outside_stages_s"] / r["flow"]["seconds"]
    shares = {}
    for k in SHARES:
        xs = [r[k] for r in reps]
        shares[k], shares[k + "_min"], shares[k + "_max"] = C.median(xs), min(xs), max(xs)
    shares["orchestration_s"] = C.median([r["flow"]["seconds"] - r["steps"]["seconds"] for r in reps])
    shares["storage_s"] = C.median([r["steps"]["seconds"] - r["memory"]["seconds"] for r in reps])
    shares["overhead_s"] = C.median([r["flow"]["seconds"] - r["memory"]["seconds"] for r in reps])
    shares["flow_outside_stages_s"] = C.median([r["flow_outside_stages_s"] for r in reps])
    return med, shares


def summary(res: dict) -> str:
    cfg, med, sh = res["config"], res["median"], res["shares"]
    it = (
        f"{cfg['prompts']} prompts × N {cfg['explore_n']} ({cfg['explore_steps']} steps), K {cfg['k']}, "
        f"rollout {cfg['rollout_steps']} steps, eval sets {'+'.join(cfg['eval_sets'])} × {cfg['eval_seeds_per_prompt']} seed(s), "
        f"model {cfg['model']}"
    )
    lines = [
        f"## One shapes iteration ({it}): Prefect flow vs stage functions ({cfg['repeats']} interleaved repeat(s), medians, {cfg['threads']} torch thread(s))",
        "",
    ]
    head = ["way", "wall s"] + [f"{s} s" for s in STAGES] + ["sum of stages s", "bytes written"]
    rows = []
    for v in ("flow", "steps", "memory"):
        st = med[v]["stages"]
        rows.append(
            [v, med[v]["seconds"]]
            + [st.get(s, "") for s in STAGES]
            + [sum(st.values()), f"{med[v].get('bytes_written', 0):,}" if v != "memory" else "0"]
        )
    lines.append(C.md_table(head, rows))
    lines += [
        "",
        C.md_table(
            ["share of the flow's wall time", "median", "min .. max over repeats", "seconds (median)"],
            [
                [label, f"{100 * sh[k]:.1f} %", f"{100 * sh[k + '_min']:.1f} .. {100 * sh[k + '_max']:.1f} %", sh[sec]]
                for label, k, sec in (
                    ("orchestration (Prefect): (flow − steps) / flow", "orchestration_share", "orchestration_s"),
                    ("disk (the run folder vs memory): (steps − memory) / flow", "storage_share", "storage_s"),
                    ("orchestration + storage: (flow − memory) / flow", "overhead_share", "overhead_s"),
                    (
                        "Prefect outside the committed stage spans / flow",
                        "outside_stages_share",
                        "flow_outside_stages_s",
                    ),
                )
            ],
        ),
        "",
        "Per repeat (wall s): "
        + "; ".join(
            f"#{i + 1} flow {r['flow']['seconds']:.1f}, steps {r['steps']['seconds']:.1f}, memory {r['memory']['seconds']:.1f}"
            for i, r in enumerate(res["repeats"])
        ),
        "",
        "One-time costs, seconds (not in the above; first_noop_flow = ephemeral Prefect server start, first_flow_iteration = "
        "policy load + quantiser compile + first tasks): "
        + "; ".join(f"{k.removesuffix('_s')} {v:.1f}" for k, v in res["one_time"].items()),
        "",
        "Same compute check, max |reward difference| vs memory over repeats: "
        + ", ".join(
            f"{k} {v:.2e}" if v is not None else f"{k} n/a"
            for k, v in res["max_abs_reward_difference_vs_memory"].items()
        ),
    ]
    return "\n".join(lines)


def plot(res: dict, out: Path) -> list[Path]:
    plt = C.pyplot()
    med = res["median"]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.3), gridspec_kw={"width_ratios": [3, 2]})
    colours = {
        "baseline": "tab:brown",
        "plan": "tab:cyan",
        "explore": "tab:red",
        "select": "tab:purple",
        "regenerate": "tab:blue",
        "update": "tab:green",
        "eval": "tab:olive",
        "other": "lightgrey",
    }
    ways = ["memory", "steps", "flow"]
    for i, v in enumerate(ways):
        left = 0.0
        for s in STAGES:
            w = med[v]["stages"].get(s, 0.0)
            axes[0].barh(i, w, left=left, color=colours[s], label=s if i == 0 else None)
            left += w
        other = max(0.0, med[v]["seconds"] - left)
        axes[0].barh(i, other, left=left, color=colours["other"], label="outside stages" if i == 0 else None)
        axes[0].text(max(med[v]["seconds"], left), i, f" {med[v]['seconds']:.1f} s", va="center", fontsize=8)
    axes[0].set_yticks(
        range(len(ways)),
        ["memory\n(steps, in-memory store)", "steps\n(storage, no Prefect)", "flow\n(Prefect + storage)"],
    )
    axes[0].set(xlabel="seconds (median)", title="one iteration, per stage")
    axes[0].legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=6)
    axes[0].set_xlim(0, 1.12 * max(max(med[v]["seconds"], sum(med[v]["stages"].values())) for v in ways))
    sh = res["shares"]
    keys = ("orchestration_share", "storage_share", "overhead_share", "outside_stages_share")
    vals = [100 * sh[k] for k in keys]
    err = [[100 * (sh[k] - sh[k + "_min"]) for k in keys], [100 * (sh[k + "_max"] - sh[k]) for k in keys]]
    axes[1].bar(
        ["orchestration", "storage", "both", "Prefect outside\nstage spans"],
        vals,
        yerr=err,
        capsize=4,
        color=["tab:orange", "tab:cyan", "tab:grey", "tab:brown"],
    )
    for i, v in enumerate(vals):
        axes[1].text(i, v, f" {v:.1f} %", ha="left", va="bottom", fontsize=8)
    axes[1].axhline(0, color="k", lw=0.8)
    axes[1].set(ylabel="% of the flow's wall time", title="overhead share (median; bars: min..max over repeats)")
    for ax in axes:
        ax.grid(alpha=0.3, axis="x" if ax is axes[0] else "y")
    return C.save_figure(fig, out, "overhead")


def main(argv=None) -> dict:
    ap = C.parser(__doc__, "overhead", quick="the tests' tiny iteration, 1 repeat, no warm-up runs")
    C.add_model_args(ap)
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
