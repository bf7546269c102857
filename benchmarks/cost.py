"""Cost of the explore proxy (issue 7, item 2): time, memory and selection on the shapes preset.

1. Per-candidate wall time of explore sampling for each precision (nvfp4 = W4A4 NVFP4 emulated,
   fp8, none = full precision) and step count, against the high-precision rollout (float32,
   10 Euler steps). One process, one prompt, the same seeds; every repeat times every variant
   once in a shuffled order (and each thread count in turn), so drift and background load hit
   all variants alike; reported are medians over repeats of the ms per candidate and of the
   per-repeat ratio to the rollout measured in that same repeat. The explore batch is
   explore.batch (96); the rollout is timed at that batch and at K = 24, the batch the
   pipeline regenerates one prompt's kept seeds in. Decoding + the shapes reward is timed
   separately (it is the same for every variant).
2. Explore-weight memory: packed NVFP4 / FP8 bytes from the QuantReport vs the same layers in
   bf16 (2 bytes per weight), and the whole transformer (unquantised layers stay bf16).
3. DuckDB selection time (storage.selection.select_seeds, the pipeline's SQL) over synthetic
   explore tables of 1 M and 10 M rows (N = 96 candidates per prompt, K = 24).

Emulated NVFP4 on a CPU does the float32 matmul *plus* the quantisation of every activation, so
it is slower than full precision here; the speed-up of the paper needs NVFP4 tensor cores.

    python benchmarks/cost.py --out benchmarks/results/cost --threads 1 2   # full
    python benchmarks/cost.py --quick --out /tmp/cost                       # smoke
"""

from __future__ import annotations

import os
import random
import time
from contextlib import contextmanager
from pathlib import Path

import bench_common as C

PRECISIONS = ("nvfp4", "fp8", "none")


@contextmanager
def eager_nvfp4():
    old = os.environ.get("SOLRL_NO_COMPILE")
    os.environ["SOLRL_NO_COMPILE"] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("SOLRL_NO_COMPILE")
        else:
            os.environ["SOLRL_NO_COMPILE"] = old


# --- 1. time per candidate ---------------------------------------------------------------------
def variants(args, cfg) -> list[dict]:
    out = [{"name": f"{p}/{s}", "precision": p, "steps": s, "batch": args.batch, "kind": "explore"} for p in PRECISIONS for s in args.steps]
    if os.environ.get("SOLRL_NO_COMPILE") != "1":  # also the eager kernel (what the tests run), at the default steps
        out.append({"name": f"nvfp4-eager/{cfg.explore.steps}", "precision": "nvfp4", "steps": cfg.explore.steps, "batch": args.batch, "kind": "explore", "eager": True})
    out.append({"name": "rollout", "precision": "none", "steps": cfg.rollout.steps, "batch": args.batch, "kind": "rollout"})
    out.append({"name": f"rollout-b{cfg.select.k}", "precision": "none", "steps": cfg.rollout.steps, "batch": min(cfg.select.k, args.batch), "kind": "rollout"})
    return out


def time_sampling(args, cfg, policy, models) -> dict:
    import torch

    prompt = policy.train_prompts()[0]
    seeds = list(range(args.batch))
    cond_full = policy.encode([prompt] * args.batch)
    vs = variants(args, cfg)

    def once(v, steps=None) -> float:
        idx = torch.arange(v["batch"])
        cond = policy.select_cond(cond_full, idx)
        model = models[v["precision"]][0]
        t = time.perf_counter()
        if v.get("eager"):
            with eager_nvfp4():
                policy.sample(model, [prompt] * v["batch"], seeds[: v["batch"]], steps or v["steps"], cfg.rollout.solver, cond=cond)
        else:
            policy.sample(model, [prompt] * v["batch"], seeds[: v["batch"]], steps or v["steps"], cfg.rollout.solver, cond=cond)
        return 1000.0 * (time.perf_counter() - t) / v["batch"]

    t0 = time.perf_counter()
    for th in args.threads:  # warm-up: the first call compiles the NVFP4 kernel; every shape once
        C.set_threads(th)
        for v in vs:
            once(v, steps=1)
    warmup = time.perf_counter() - t0
    ms = {th: {v["name"]: [] for v in vs} for th in args.threads}
    ratio = {th: {v["name"]: [] for v in vs} for th in args.threads}
    for r in range(args.repeats):
        for th in C.rotated(list(args.threads), r):
            C.set_threads(th)
            order = list(vs)
            random.Random(r * 1009 + th).shuffle(order)
            this = {v["name"]: once(v) for v in order}
            for name, x in this.items():
                ms[th][name].append(x)
                ratio[th][name].append(x / this["rollout"])
        print(f"[cost] timing repeat {r + 1}/{args.repeats} done", flush=True)
    C.set_threads(args.threads[0])

    # decode + reward, per candidate (the same for every variant)
    x0 = policy.sample(models["none"][0], [prompt] * args.batch, seeds, 1, cond=cond_full)
    from solrl.stages import score

    score_ms = []
    for _ in range(max(3, args.repeats)):  # as an iteration scores: decode, weighted and report rewards
        t = time.perf_counter()
        score(policy, cfg, x0, [prompt] * args.batch)
        score_ms.append(1000.0 * (time.perf_counter() - t) / args.batch)

    out = {"warmup_seconds": warmup, "variants": vs, "by_threads": {}, "score_ms_per_candidate": C.median(score_ms)}
    import numpy as np

    for th in args.threads:
        rows = {}
        for v in vs:
            rows[v["name"]] = {**v, "ms_per_candidate": C.median(ms[th][v["name"]]), "ms_all": ms[th][v["name"]],
                               "over_rollout": C.median(ratio[th][v["name"]]), "ms_per_candidate_step": C.median(ms[th][v["name"]]) / v["steps"]}
        fits = {}
        for p in PRECISIONS:
            if len(args.steps) >= 2:
                slope, icpt = np.polyfit(args.steps, [rows[f"{p}/{s}"]["ms_per_candidate"] for s in args.steps], 1)
                fits[p] = {"ms_per_step": float(slope), "ms_fixed": float(icpt)}
        for p in PRECISIONS:
            if p in fits:
                fits[p]["per_step_over_none"] = fits[p]["ms_per_step"] / fits["none"]["ms_per_step"]
        # one iteration's sampling for one prompt (N explore + K regenerate) vs sampling all N at full precision
        n, k, e = cfg.explore.n, cfg.select.k, cfg.explore.steps
        derived = {}
        if f"nvfp4/{e}" in rows:
            t_ex, t_b24, t_b = rows[f"nvfp4/{e}"]["ms_per_candidate"], rows[f"rollout-b{k}"]["ms_per_candidate"], rows["rollout"]["ms_per_candidate"]
            derived = {
                "sol_rl_ms_per_prompt": n * t_ex + k * t_b24,
                "naive_scaling_ms_per_prompt": n * t_b,
                "sol_rl_over_naive_scaling": (n * t_ex + k * t_b24) / (n * t_b),
                "explore_share_of_sol_rl_sampling": n * t_ex / (n * t_ex + k * t_b24),
            }
        out["by_threads"][str(th)] = {"rows": rows, "linear_fit": fits, "per_prompt_sampling": derived}
    return out


# --- 2. memory -------------------------------------------------------------------------------------
def memory(models, total_params: int) -> dict:
    out = {"transformer_params": total_params, "whole_bf16_bytes": 2 * total_params, "whole_fp32_bytes": 4 * total_params}
    for p in ("nvfp4", "fp8"):
        rep = models[p][1]
        bf16 = 2 * rep.weights
        whole = 2 * (total_params - rep.weights) + rep.packed_bytes
        out[p] = {
            "layers": len(rep.modules),
            "weights": rep.weights,
            "packed_bytes": rep.packed_bytes,
            "bits_per_weight": rep.bits_per_weight,
            "selected_bf16_bytes": bf16,
            "selected_fp32_bytes": rep.dense_bytes,
            "packed_over_bf16": rep.packed_bytes / bf16,
            "whole_explore_bytes": whole,
            "whole_over_bf16": whole / (2 * total_params),
            "share_of_params_quantised": rep.weights / total_params,
        }
    return out


# --- 3. DuckDB selection ---------------------------------------------------------------------------
def synthetic_explore(rows: int, n: int, prompts: tuple[str, ...], seed: int = 0):
    """~rows explore rows: rows // n prompts x n candidates (prompt text, 63-bit seed, reward)."""
    import numpy as np
    import pyarrow as pa

    n_prompts = max(1, rows // n)
    rng = np.random.default_rng(seed)
    pid = np.repeat(np.arange(n_prompts, dtype=np.int32), n)
    texts = pa.array([f"{prompts[i % len(prompts)]} #{i}" for i in range(n_prompts)], type=pa.string())
    prompt = pa.DictionaryArray.from_arrays(pa.array(pid), texts).dictionary_decode()
    return pa.table({
        "prompt_id": pa.array(pid),
        "prompt": prompt,
        "seed": pa.array(rng.integers(0, 2**63 - 1, size=pid.size, dtype=np.int64)),
        "reward": pa.array(rng.random(pid.size)),
    })


def time_selection(args, cfg, prompts) -> dict:
    """select_seeds (select.sql: top-N aggregates) against the reference window query it
    replaces (select_window.sql via select_seeds_window), interleaved on the same tables; every
    repeat checks the two tables are identical. `seconds` is select_seeds'."""
    import duckdb

    from storage.selection import select_seeds, select_seeds_window

    n, k = cfg.explore.n, cfg.select.k
    warm = synthetic_explore(10 * n, n, prompts)
    for fn in (select_seeds, select_seeds_window):  # warm-up: SQL parse, DuckDB start
        fn(warm, k)
    tables, out = {}, {}
    for rows in args.rows:
        t, tab = C.timed(synthetic_explore, rows, n, prompts, seed=rows)
        tables[rows] = tab
        out[str(rows)] = {"rows": tab.num_rows, "prompts": tab.num_rows // n, "build_seconds": t, "arrow_bytes": tab.nbytes, "seconds_all": [], "window_seconds_all": []}
    fns = {"seconds_all": select_seeds, "window_seconds_all": select_seeds_window}
    for r in range(args.select_repeats):
        for rows in C.rotated(list(args.rows), r):
            d = out[str(rows)]
            got = {}
            for key in C.rotated(list(fns), r):
                t, (got[key], _) = C.timed(fns[key], tables[rows], k)
                d[key].append(t)
            sel = got["seconds_all"]
            d["selected_rows"] = sel.num_rows
            if sel.num_rows != d["prompts"] * k:
                raise AssertionError(f"selection over {rows} rows returned {sel.num_rows} rows, expected {d['prompts'] * k}")
            if not sel.equals(got["window_seconds_all"]):
                raise AssertionError(f"selection over {rows} rows differs from the reference window query")
        print(f"[cost] selection repeat {r + 1}/{args.select_repeats} done", flush=True)
    for d in out.values():
        d["seconds"] = C.median(d["seconds_all"])
        d["window_seconds"] = C.median(d["window_seconds_all"])
        d["window_over_select"] = C.median([w / s for w, s in zip(d["window_seconds_all"], d["seconds_all"])])
        d["rows_per_second"] = d["rows"] / d["seconds"]
        d["ms_per_prompt"] = 1000.0 * d["seconds"] / d["prompts"]
    con = duckdb.connect()
    meta = {"duckdb": duckdb.__version__, "duckdb_threads": int(con.execute("SELECT current_setting('threads')").fetchone()[0]), "n": n, "k": k}
    con.close()
    return {"meta": meta, "sizes": out}


# --- report ------------------------------------------------------------------------------------------
def summary(res: dict) -> str:
    cfg = res["config"]
    lines = [f"## Explore cost on the shapes preset (batch {cfg['batch']}, {cfg['repeats']} interleaved repeats, medians)", ""]
    for th, d in res["timing"]["by_threads"].items():
        head = ["variant", "precision", "steps", "batch", "ms / candidate", "ms / candidate-step", "× rollout (same repeat)"]
        rows = [[name, v["precision"] + (" (eager kernel)" if v.get("eager") else ""), v["steps"], v["batch"], v["ms_per_candidate"], v["ms_per_candidate_step"], v["over_rollout"]]
                for name, v in d["rows"].items()]
        lines += [f"### torch threads = {th}", "", C.md_table(head, rows), ""]
        if d["linear_fit"]:
            lines.append("linear fit ms/candidate = fixed + per_step × steps: " + "; ".join(
                f"{p}: {f['ms_per_step']:.2f} ms/step ({f['per_step_over_none']:.2f}× none) + {f['ms_fixed']:.2f} ms" for p, f in d["linear_fit"].items()))
        if d["per_prompt_sampling"]:
            s = d["per_prompt_sampling"]
            lines.append(f"sampling per prompt: sol_rl (N nvfp4 explore + K rollout) {s['sol_rl_ms_per_prompt'] / 1000:.2f} s vs naive_scaling (N rollout) "
                         f"{s['naive_scaling_ms_per_prompt'] / 1000:.2f} s = {s['sol_rl_over_naive_scaling']:.2f}×; explore is {100 * s['explore_share_of_sol_rl_sampling']:.0f} % of sol_rl sampling")
        lines.append("")
    lines.append(f"decode + shapes reward: {res['timing']['score_ms_per_candidate']:.3f} ms / candidate (same for every variant; not in the times above); "
                 f"warm-up (incl. compile) {res['timing']['warmup_seconds']:.1f} s")
    m = res["memory"]
    lines += ["", "### Explore-weight memory", ""]
    head = ["format", "layers", "weights", "packed bytes", "bits / weight", "same layers bf16", "packed / bf16", "whole transformer", "whole / bf16"]
    rows = [[p, m[p]["layers"], f"{m[p]['weights']:,}", f"{m[p]['packed_bytes']:,}", m[p]["bits_per_weight"], f"{m[p]['selected_bf16_bytes']:,}", m[p]["packed_over_bf16"], f"{m[p]['whole_explore_bytes']:,}", m[p]["whole_over_bf16"]]
            for p in ("nvfp4", "fp8")]
    rows.append(["bf16", "", f"{m['transformer_params']:,} params", "", 16.0, "", 1.0, f"{m['whole_bf16_bytes']:,}", 1.0])
    lines.append(C.md_table(head, rows))
    s = res["selection"]
    lines += ["", f"### DuckDB selection (select_seeds, N = {s['meta']['n']}, K = {s['meta']['k']}; duckdb {s['meta']['duckdb']}, {s['meta']['duckdb_threads']} threads)", ""]
    head = ["rows", "prompts", "selected rows", "seconds (median)", "rows / s", "ms / prompt", "table build s"]
    rows = [[f"{d['rows']:,}", f"{d['prompts']:,}", f"{d['selected_rows']:,}", d["seconds"], f"{d['rows_per_second']:,.0f}", d["ms_per_prompt"], d["build_seconds"]] for d in s["sizes"].values()]
    lines.append(C.md_table(head, rows))
    return "\n".join(lines)


def plot(res: dict, out: Path) -> list[Path]:
    plt = C.pyplot()
    cfg = res["config"]
    colours = {"nvfp4": "tab:red", "fp8": "tab:blue", "none": "tab:green"}
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.3))
    styles = ["-", "--", ":"]
    for i, (th, d) in enumerate(res["timing"]["by_threads"].items()):
        for p in PRECISIONS:
            ys = [d["rows"][f"{p}/{s}"]["over_rollout"] for s in cfg["steps"]]
            axes[0].plot(cfg["steps"], ys, "o" + styles[i % 3], color=colours[p], label=f"{p}, {th} thread(s)")
    axes[0].axhline(1.0, color="k", lw=1, ls=":", label="rollout (fp32, 10 steps)")
    axes[0].set(title="explore time per candidate / rollout time", xlabel="explore steps", ylabel="× rollout (median of per-repeat ratios)")
    axes[0].set_xticks(cfg["steps"])
    m = res["memory"]
    names = ["bf16", "fp8", "nvfp4"]
    sel = [m["nvfp4"]["selected_bf16_bytes"], m["fp8"]["packed_bytes"], m["nvfp4"]["packed_bytes"]]
    whole = [m["whole_bf16_bytes"], m["fp8"]["whole_explore_bytes"], m["nvfp4"]["whole_explore_bytes"]]
    x = range(len(names))
    axes[1].bar([i - 0.2 for i in x], [b / 2**20 for b in sel], 0.4, label="quantised layers")
    axes[1].bar([i + 0.2 for i in x], [b / 2**20 for b in whole], 0.4, label="whole transformer")
    axes[1].set_xticks(list(x), names)
    axes[1].set(title="explore weights (MiB)", ylabel="MiB")
    sizes = res["selection"]["sizes"]
    axes[2].loglog([d["rows"] for d in sizes.values()], [d["seconds"] for d in sizes.values()], "o-")
    for d in sizes.values():
        axes[2].annotate(f"{d['seconds']:.2f} s", (d["rows"], d["seconds"]), textcoords="offset points", xytext=(5, -12), fontsize=8)
    axes[2].set(title="DuckDB selection time (select_seeds)", xlabel="explore rows", ylabel="seconds (median)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7) if ax.get_legend_handles_labels()[0] else None
    fig.suptitle("shapes explore cost (emulated low precision on CPU)", fontsize=11)
    return C.save_figure(fig, out, "cost")


def main(argv=None) -> dict:
    ap = C.parser(__doc__, "cost", quick="batch 8, steps 2 4, 2 repeats, 10k selection rows")
    ap.add_argument("--steps", type=int, nargs="+", default=None, help="explore step counts (default 2 4 6 8 10; quick 2 4)")
    ap.add_argument("--batch", type=int, default=None, help="candidates per sampling call (default explore.batch = 96; quick 8)")
    ap.add_argument("--repeats", type=int, default=None, help="interleaved timing repeats (default 5; quick 2)")
    ap.add_argument("--rows", type=int, nargs="+", default=None, help="synthetic explore rows for the selection timing (default 1000000 10000000; quick 10000)")
    ap.add_argument("--select-repeats", type=int, default=None, help="selection repeats per size (default 3; quick 2)")
    ap.add_argument("--threads", type=int, nargs="+", default=None, help="torch thread counts to time, interleaved (default: torch's default)")
    args = ap.parse_args(argv)
    q = args.quick
    import torch

    torch.set_flush_denormal(True)
    args.threads = args.threads or [torch.get_num_threads()]
    args.steps = sorted(set(args.steps or ([2, 4] if q else [2, 4, 6, 8, 10])))
    args.batch = args.batch or (8 if q else 96)
    args.repeats = args.repeats or (2 if q else 5)
    args.rows = args.rows or ([10_000] if q else [1_000_000, 10_000_000])
    args.select_repeats = args.select_repeats or (2 if q else 3)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    C.set_threads(args.threads[0])
    machine = C.machine()

    from solrl.config import load_config
    from solrl.models import load_policy
    from solrl.stages import explore_quant

    t_start = time.perf_counter()
    cfg = load_config(C.REPO / "configs" / "shapes.yaml")
    policy = load_policy(cfg.model.family, weights=cfg.model.weights, lora_rank=cfg.model.lora_rank, lora_alpha=cfg.model.lora_alpha, seed=cfg.run.seed)
    models = {}
    for p in PRECISIONS:
        quant = None if p == "none" else explore_quant(policy, cfg.with_overrides(**{"explore.precision": p}))
        models[p] = policy.sampler_copy(quant)
    total_params = sum(x.numel() for x in models["none"][0].parameters())
    res = {
        "config": {"steps": args.steps, "batch": args.batch, "repeats": args.repeats, "threads": args.threads, "rollout_steps": cfg.rollout.steps,
                   "solver": cfg.rollout.solver, "explore_n": cfg.explore.n, "k": cfg.select.k, "explore_steps_default": cfg.explore.steps},
        "quant": {p: models[p][1].summary() for p in PRECISIONS},
        "memory": memory(models, total_params),
        "timing": time_sampling(args, cfg, policy, models),
        "selection": time_selection(args, cfg, policy.train_prompts()),
        "machine": machine,
        "quick": q,
    }
    res["wall_seconds"] = time.perf_counter() - t_start
    text = summary(res)
    return C.finish(out, "cost", res, text, plot(res, out))


if __name__ == "__main__":
    main()
