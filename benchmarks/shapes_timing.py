"""Side-by-side timing of shapes models (e.g. of different widths), in one process, interleaved repeats.

For each model directory (default: --weights, i.e. the shipped model) and each model.dtype in
--dtypes (default: the config's, auto resolved): per-candidate sampling time of explore (the
config's explore copy, NVFP4 emulated, explore.steps = 6) and of the high-precision rollout
(rollout.steps = 10), batch explore.batch (96); the wall time of one default iteration in
memory (the stage steps over an in-memory store, with the DuckDB selection; eval off, as in training between
evaluations) after one warm-up iteration; and optionally pretraining seconds per step (compiled;
the first step, which compiles, excluded). Medians of --repeats.

    python benchmarks/shapes_timing.py /tmp/pt/h128 /tmp/pt/h192 --dtypes float32 bfloat16 --threads 1 --out benchmarks/results/shapes_timing
    python benchmarks/shapes_timing.py --quick --threads 1 --out /tmp/st                    # smoke: shipped model, tiny iteration
"""

from __future__ import annotations

import time
from pathlib import Path

import bench_common as C


def run(args) -> dict:
    import torch

    torch.set_flush_denormal(True)
    from solrl.compute import explore_quant
    from solrl.models import resolve
    from solrl.plan import primary_explore
    from tasks.in_memory import memory_run

    base = C.base_config(args, **{"eval.every": 0, **(C.QUICK_ITERATION if args.quick else {})})
    dtypes = args.dtypes or [resolve(base).dtype]
    combos = {}
    for m in args.models:
        for d in dtypes:
            cfg = base.with_overrides(
                **{"model.weights": str(Path(m).resolve()) if m != "shipped" else None, "model.dtype": d}
            )
            pol = C.load_policy(cfg)
            combos[f"{m} [{d}]"] = {
                "model": m,
                "dtype": d,
                "cfg": cfg,
                "policy": pol,
                "explore": pol.sampler_copy(explore_quant(pol, cfg, primary_explore(cfg)))[0],
                "rollout": pol.sampler_copy(None)[0],
            }
    b = args.batch
    prompt = "a blue square above a yellow triangle"
    seeds = list(range(b))
    fns, per = {}, {}
    for name, c in combos.items():
        p, cfg = c["policy"], c["cfg"]
        cond = p.encode_rows([prompt] * b)
        fns[f"{name}|explore"] = lambda p=p, c=c, cfg=cfg, cond=cond: p.sample(
            c["explore"], [prompt] * b, seeds, cfg.explore.steps, cfg.rollout.solver, cond=cond
        )
        fns[f"{name}|rollout"] = lambda p=p, c=c, cfg=cfg, cond=cond: p.sample(
            c["rollout"], [prompt] * b, seeds, cfg.rollout.steps, cfg.rollout.solver, cond=cond
        )
        per[f"{name}|explore"] = per[f"{name}|rollout"] = b / 1000.0  # -> ms per candidate
    ms = C.interleaved(fns, args.repeats, per=per, warmup=True, log="shapes_timing")

    iters = {name: [] for name in combos}
    for c in combos.values():
        c["run"] = memory_run(c["cfg"])
    for i in range(args.repeats + 1):  # iteration 0 is the warm-up
        for name in C.rotated(list(combos), i):
            c = combos[name]
            t, res = C.memory_iteration(c["run"], i)
            if i:
                iters[name].append({"total": t, **{k: v for k, v in res.seconds.items() if k != "plan"}})
        print(f"[shapes_timing] iteration {i} done{' (warm-up)' if i == 0 else ''}", flush=True)
    out = {}
    for name, c in combos.items():
        e, r = C.median(ms[f"{name}|explore"]), C.median(ms[f"{name}|rollout"])
        out[name] = {
            "model": c["model"],
            "dtype": c["dtype"],
            "params": sum(x.numel() for x in c["rollout"].parameters()),
            "ms_per_candidate_explore": e,
            "ms_per_candidate_rollout": r,
            "explore_over_rollout": e / r,
            "iteration_seconds_median": C.median([x["total"] for x in iters[name]]),
            "iteration_stage_seconds": iters[name],
        }
    if args.pretrain_steps:
        from solrl.shapes import model as M
        from solrl.shapes.pretrain import pretrain

        for name, c in combos.items():
            if c["dtype"] != dtypes[0]:
                continue
            cfgm = M.load(Path(c["cfg"].model.weights) if c["cfg"].model.weights else M.WEIGHTS_DIR)[0]
            t = time.perf_counter()
            meta = pretrain(cfgm, 1 + args.pretrain_steps, Path("/tmp/solrl-timing-pretrain"), log=lambda s: None)
            first, last = meta["history"][0], meta["history"][-1]  # step 0 includes the compile
            out[name]["pretrain_s_per_step"] = (last["elapsed_s"] - first["elapsed_s"]) / max(
                1, last["step"] - first["step"]
            )
            out[name]["pretrain_wall_s"] = time.perf_counter() - t
    cfg = base
    return {
        "config": {
            "config_file": str(args.config),
            "models": args.models,
            "dtypes": dtypes,
            "batch": b,
            "repeats": args.repeats,
            "explore_steps": cfg.explore.steps,
            "explore_precision": cfg.explore.precision,
            "rollout_steps": cfg.rollout.steps,
            "prompts_per_iteration": cfg.prompts.per_iteration,
            "explore_n": cfg.explore.n,
            "k": cfg.select.k,
            "eval": "off",
        },
        "models": out,
    }


def summary(res) -> str:
    c = res["config"]
    head = [
        "model [dtype]",
        "params",
        f"explore ms / cand ({c['explore_precision']}, {c['explore_steps']} steps)",
        f"rollout ms / cand ({c['rollout_steps']} steps)",
        "explore ÷ rollout",
        "iteration s (median)",
        "pretrain s / step",
    ]
    rows = [
        [
            name,
            f"{d['params']:,}",
            d["ms_per_candidate_explore"],
            d["ms_per_candidate_rollout"],
            d["explore_over_rollout"],
            d["iteration_seconds_median"],
            d.get("pretrain_s_per_step", ""),
        ]
        for name, d in res["models"].items()
    ]
    return "\n".join(
        [
            f"## shapes models side by side (batch {c['batch']}, {c['repeats']} interleaved repeats, "
            f"medians; iteration: {c['prompts_per_iteration']} prompts × N {c['explore_n']}, "
            f"K {c['k']}, eval off)",
            "",
            C.md_table(head, rows),
        ]
    )


def plot(res, out: Path) -> list[Path]:
    import numpy as np

    plt = C.pyplot()
    names = list(res["models"])
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.5 * len(names) + 3.5))
    y = np.arange(len(names))
    m = res["models"]
    axes[0].barh(y - 0.2, [m[n]["ms_per_candidate_explore"] for n in names], 0.4, label="explore")
    axes[0].barh(y + 0.2, [m[n]["ms_per_candidate_rollout"] for n in names], 0.4, label="rollout")
    axes[0].set_yticks(y, names, fontsize=8)
    axes[0].set(xlabel="ms per candidate (median)", title="sampling cost per candidate")
    axes[0].legend(fontsize=8)
    axes[1].barh(y, [m[n]["iteration_seconds_median"] for n in names], color="tab:grey")
    axes[1].set_yticks(y, names, fontsize=8)
    axes[1].set(xlabel="seconds (median)", title="one iteration in memory (eval off)")
    for ax in axes:
        ax.grid(alpha=0.3, axis="x")
    return C.save_figure(fig, out, "shapes_timing")


def main(argv=None):
    ap = C.parser(__doc__, "shapes_timing", quick="the shipped model, batch 8, the tests' tiny iteration, 1 repeat")
    C.add_model_args(ap)
    ap.add_argument(
        "models",
        nargs="*",
        help="model directories (shapes.safetensors + config.json); default: --weights, else the shipped model",
    )
    ap.add_argument(
        "--dtypes",
        nargs="+",
        choices=["float32", "bfloat16"],
        default=None,
        help="model.dtype values to time (default: the config's, auto resolved)",
    )
    ap.add_argument(
        "--batch",
        type=int,
        default=None,
        help="candidates per timed sampling call (default explore.batch = 96; quick 8)",
    )
    ap.add_argument("--repeats", type=int, default=None, help="interleaved repeats (default 3; quick 1)")
    ap.add_argument(
        "--pretrain-steps",
        type=int,
        default=0,
        help="also time this many compiled pretraining steps per model (after the compiling first step)",
    )
    C.add_threads_arg(ap)
    args = ap.parse_args(argv)
    C.set_threads(args.threads)
    q = args.quick
    args.models = args.models or [args.weights or "shipped"]
    args.weights = None  # each model is given by its directory
    args.batch = args.batch or (8 if q else C.base_config(args).explore.batch)
    args.repeats = args.repeats or (1 if q else 3)
    return C.measure_and_finish(args, "shapes_timing", run, summary, plot)


if __name__ == "__main__":
    main()
