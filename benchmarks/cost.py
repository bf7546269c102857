"""Cost of Sol-RL's sampling and of one iteration on a shapes model: explore vs rollout, float32 vs bf16, selection.

1. Per-candidate sampling time, side by side in one process, one prompt, the same seeds: the
   explore copy (nvfp4 = W4A4 NVFP4 emulated as exact bf16 block products, nvfp4-r<r> = with
   the SVDQuant low-rank branch, fp8, high) at each step count, in the config's model.dtype
   (auto: bf16 on a CPU with avx512_bf16/AMX), against the high-precision rollouts
   (rollout.steps = 10): bf16 (the reference), bf16 at batch K (one prompt's kept seeds) and
   float32. Every repeat times every variant once in a shuffled order (and each thread count in
   turn); reported are medians of ms per candidate and of the per-repeat ratio to the bf16
   rollout measured in the same repeat. The goal: explore (NVFP4, 6 steps) ÷ rollout (bf16, 10
   steps) ≤ 0.9. What limits it is measured in an instrumented pass (timers around every
   quantised layer, its activation quantiser and its block GEMM, and around the same layers of
   the bf16 rollout): the NVFP4 block product runs as a float32 GEMM (oneDNN, bf16 fpmath)
   because no CPU kernel takes bf16 inputs and returns a float32 result, plus the quantiser of
   every activation; with --layer-bench-repeats, solrl.quant.bench's per-layer timings too.
2. One default iteration of the config end to end, in memory (the stage steps over an in-memory store, with
   the DuckDB selection), model.dtype float32 vs bfloat16: interleaved repeats of iteration 0
   from the same fresh adapters, medians, per-repeat ratio float32 ÷ bf16 (goal ≥ 2).
3. Explore-weight memory: packed NVFP4 / FP8 bytes from the QuantReport vs the same layers in bf16.
4. DuckDB selection time (storage.selection.select_seeds, the pipeline's SQL) over synthetic
   explore tables of 1 M and 10 M rows (N = 96 candidates per prompt, K = 24), against the
   reference window query.

    python benchmarks/cost.py --threads 1 --out benchmarks/results/cost                # full (20-25 min)
    python benchmarks/cost.py --threads 1 2 --out benchmarks/results/cost              # also at 2 threads (part 1 only)
    python benchmarks/cost.py --quick --threads 1 --out /tmp/cost                      # smoke

5. `--cpu-explore` (instead of 1-4): what a CPU user gets on this host kind. Per candidate, side by
   side in one process (interleaved repeats in a shuffled order, medians of the per-repeat ratio):
   the int8 explore (W8A8 on integer GEMMs) and the NVFP4 explore (emulated) at explore.steps vs
   the high-precision rollout at rollout.steps, all in the model.dtype `auto` resolves to here
   (the dtype a run on this host uses); then one Sol-RL iteration (int8 explore, NVFP4 explore)
   vs one naive-scaling iteration of the config, in memory, interleaved repeats, medians of the
   per-repeat ratio (iteration 1: no evaluation; no fidelity audit). Also a bf16 vs float32
   matmul timing and the int8 engine, which show the kernels the host kind gets. To measure the
   AVX2 kind on a larger CPU, run it with ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2.
   Writes cpu_explore-<kind>.json/.md (kind: avx512 / avx2, from torch's CPU capability).
   With --int8-kernels, only one Linear per shapes-model shape: float32, bf16 and the int8
   kernels a CPU has (int8_kernels-<kind>.json/.md): what chose the int8 explore's kernel.

    python benchmarks/cost.py --cpu-explore --threads 1 --out benchmarks/results/cost
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python benchmarks/cost.py --cpu-explore --threads 1 --out benchmarks/results/cost
    python benchmarks/cost.py --cpu-explore --int8-kernels --threads 1 --out benchmarks/results/cost
"""

from __future__ import annotations

import os
import random
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import bench_common as C

PRECISIONS = ("nvfp4", "fp8", "high")
GOAL_EXPLORE_OVER_ROLLOUT = 0.9
GOAL_FP32_OVER_BF16_ITERATION = 2.0


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


def explore_copies(policy, cfg, lowranks) -> dict:
    """name -> (explore copy, QuantReport): nvfp4, nvfp4-r<r>, fp8, high."""
    from solrl.compute import explore_quant
    from solrl.plan import primary_explore

    spec = primary_explore(cfg)
    specs = {p: replace(spec, precision=p, lowrank=0) for p in PRECISIONS}
    specs |= {f"nvfp4-r{r}": replace(spec, precision="nvfp4", lowrank=r) for r in lowranks if r}
    return {name: policy.sampler_copy(explore_quant(policy, cfg, s)) for name, s in specs.items()}


# --- 1. time per candidate ---------------------------------------------------------------------
def variants(args, cfg) -> list[dict]:
    e, B, ed = cfg.explore.steps, args.batch, args.explore_dtype
    out = [
        {"name": f"{p}/{s}", "copy": p, "steps": s, "batch": B, "kind": "explore", "dtype": ed}
        for p in PRECISIONS
        for s in args.steps
    ]
    out += [
        {"name": f"nvfp4-r{r}/{e}", "copy": f"nvfp4-r{r}", "steps": e, "batch": B, "kind": "explore", "dtype": ed}
        for r in args.lowranks
        if r
    ]
    if os.environ.get("SOLRL_NO_COMPILE") != "1":  # also the eager quantiser (what the tests run), at the default steps
        out.append(
            {
                "name": f"nvfp4-eager/{e}",
                "copy": "nvfp4",
                "steps": e,
                "batch": B,
                "kind": "explore",
                "dtype": ed,
                "eager": True,
            }
        )
    R, K = cfg.rollout.steps, min(cfg.select.k, B)
    out.append({"name": "rollout-bf16", "copy": "rollout", "steps": R, "batch": B, "kind": "rollout", "dtype": "bf16"})
    out.append(
        {"name": f"rollout-bf16-b{K}", "copy": "rollout", "steps": R, "batch": K, "kind": "rollout", "dtype": "bf16"}
    )
    out.append({"name": "rollout-fp32", "copy": "rollout", "steps": R, "batch": B, "kind": "rollout", "dtype": "fp32"})
    return out


def time_sampling(args, cfg, policies, copies, prompt) -> dict:
    """copies: dtype -> name -> (model, report); the rollout copy is copies[d]["high"]."""
    import numpy as np
    import torch

    seeds = list(range(args.batch))
    cond_full = {d: p.encode_rows([prompt] * args.batch) for d, p in policies.items()}
    vs = variants(args, cfg)

    def once(v, steps=None) -> float:
        d = v["dtype"]
        policy = policies[d]
        cond = policy.select_cond(cond_full[d], torch.arange(v["batch"]))
        model = copies[d]["high" if v["copy"] == "rollout" else v["copy"]][0]
        call = lambda: policy.sample(
            model, [prompt] * v["batch"], seeds[: v["batch"]], steps or v["steps"], cfg.rollout.solver, cond=cond
        )  # noqa: E731
        t = time.perf_counter()
        if v.get("eager"):
            with eager_nvfp4():
                call()
        else:
            call()
        return 1000.0 * (time.perf_counter() - t) / v["batch"]

    t0 = time.perf_counter()
    for th in args.threads:  # warm-up: the first call compiles the quantiser; every shape once
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
                ratio[th][name].append(x / this["rollout-bf16"])
        print(f"[cost] sampling repeat {r + 1}/{args.repeats} done", flush=True)
    C.set_threads(args.threads[0])

    from solrl.compute import score  # decode + reward per candidate (the same for every variant)

    pe = policies[args.explore_dtype]
    x0 = pe.sample(
        copies[args.explore_dtype]["high"][0], [prompt] * args.batch, seeds, 1, cond=cond_full[args.explore_dtype]
    )
    score_ms = []
    for _ in range(max(3, args.repeats)):
        t = time.perf_counter()
        score(pe, cfg, x0, [prompt] * args.batch)
        score_ms.append(1000.0 * (time.perf_counter() - t) / args.batch)

    out = {
        "warmup_seconds": warmup,
        "variants": vs,
        "reference": "rollout-bf16",
        "by_threads": {},
        "score_ms_per_candidate": C.median(score_ms),
    }
    e, K = cfg.explore.steps, min(cfg.select.k, args.batch)
    for th in args.threads:
        rows = {}
        for v in vs:
            rows[v["name"]] = {
                **v,
                "ms_per_candidate": C.median(ms[th][v["name"]]),
                "ms_all": ms[th][v["name"]],
                "over_rollout_bf16": C.median(ratio[th][v["name"]]),
                "over_rollout_fp32": C.median([a / b for a, b in zip(ms[th][v["name"]], ms[th]["rollout-fp32"])]),
                "ms_per_candidate_step": C.median(ms[th][v["name"]]) / v["steps"],
            }
        fits = {}
        if len(args.steps) >= 2:
            for p in PRECISIONS:
                slope, icpt = np.polyfit(args.steps, [rows[f"{p}/{s}"]["ms_per_candidate"] for s in args.steps], 1)
                fits[p] = {"ms_per_step": float(slope), "ms_fixed": float(icpt)}
            R = cfg.rollout.steps
            fits["rollout-bf16"] = {"ms_per_step": rows["rollout-bf16"]["ms_per_candidate"] / R, "ms_fixed": 0.0}
            for p in fits:
                fits[p]["per_step_over_bf16_rollout_step"] = (
                    fits[p]["ms_per_step"] / fits["rollout-bf16"]["ms_per_step"]
                )
        headline = {}
        if f"nvfp4/{e}" in rows:
            x = rows[f"nvfp4/{e}"]["over_rollout_bf16"]
            n = cfg.explore.n
            t_ex, t_bk, t_b = (
                rows[f"nvfp4/{e}"]["ms_per_candidate"],
                rows[f"rollout-bf16-b{K}"]["ms_per_candidate"],
                rows["rollout-bf16"]["ms_per_candidate"],
            )
            headline = {
                "explore_variant": f"nvfp4/{e}",
                "explore_over_rollout_bf16": x,
                "goal": GOAL_EXPLORE_OVER_ROLLOUT,
                "goal_met": bool(x <= GOAL_EXPLORE_OVER_ROLLOUT),
                "explore_over_rollout_fp32": rows[f"nvfp4/{e}"]["over_rollout_fp32"],
                "rollout_fp32_over_bf16": rows["rollout-fp32"]["over_rollout_bf16"],
                # one prompt's sampling: sol_rl (N explore + K rollouts) vs naive_scaling (N rollouts), bf16 rollouts
                "sol_rl_over_naive_scaling_sampling": (n * t_ex + cfg.select.k * t_bk) / (n * t_b),
                "explore_share_of_sol_rl_sampling": n * t_ex / (n * t_ex + cfg.select.k * t_bk),
            }
        out["by_threads"][str(th)] = {"rows": rows, "linear_fit": fits, "headline": headline}
    return out


# --- 1b. what limits the ratio ------------------------------------------------------------------------
class LayerClock:
    """Wall time spent inside the named modules of a model (forward pre/post hooks)."""

    def __init__(self, model, names):
        self.seconds, self.handles, self._t = 0.0, [], {}
        for name in names:
            mod = model.get_submodule(name)
            self.handles.append(mod.register_forward_pre_hook(self._pre))
            self.handles.append(mod.register_forward_hook(self._post))

    def _pre(self, mod, args):
        self._t[id(mod)] = time.perf_counter()

    def _post(self, mod, args, out):
        self.seconds += time.perf_counter() - self._t.pop(id(mod))

    def remove(self):
        for h in self.handles:
            h.remove()


@contextmanager
def quant_clocks(model):
    """Seconds in the activation quantiser and in the block GEMM of every EmulatedLinear of `model`
    (wrapping each layer's quantiser and solrl.quant.linear.block_mm, restored on exit)."""
    import solrl.quant.linear as QL

    acc = {"quantiser": 0.0, "block_gemm": 0.0, "calls": 0}

    def clocked(fn, key):
        def wrapper(*a, **kw):
            t = time.perf_counter()
            out = fn(*a, **kw)
            acc[key] += time.perf_counter() - t
            if key == "block_gemm":
                acc["calls"] += 1
            return out

        return wrapper

    layers = [m for m in model.modules() if isinstance(m, QL.EmulatedLinear)]
    saved = [(m, m._act) for m in layers]
    orig_mm = QL.block_mm
    for m in layers:
        m._act = clocked(m._act, "quantiser")
    QL.block_mm = clocked(orig_mm, "block_gemm")
    try:
        yield acc
    finally:
        QL.block_mm = orig_mm
        for m, act in saved:
            m._act = act


def limits(args, cfg, policies, copies, prompt) -> dict:
    """One instrumented explore (nvfp4, explore.steps) and one bf16 rollout: where the time goes,
    per candidate, and the ratio if parts of the NVFP4 layer cost less."""
    e, R, B = cfg.explore.steps, cfg.rollout.steps, args.batch
    seeds = list(range(B))
    pe, pb = policies[args.explore_dtype], policies["bf16"]
    explore_model, report = copies[args.explore_dtype]["nvfp4"]
    rollout_model = copies["bf16"]["high"][0]
    reps = max(1, args.limit_repeats)
    res = {
        "explore_total": [],
        "explore_layers": [],
        "quantiser": [],
        "block_gemm": [],
        "rollout_total": [],
        "rollout_layers": [],
    }
    cond_e, cond_b = pe.encode_rows([prompt] * B), pb.encode_rows([prompt] * B)
    for _ in range(reps):
        clock = LayerClock(explore_model, report.modules)
        with quant_clocks(explore_model) as acc:
            t, _ = C.timed(pe.sample, explore_model, [prompt] * B, seeds, e, cfg.rollout.solver, cond=cond_e)
        clock.remove()
        res["explore_total"].append(t)
        res["explore_layers"].append(clock.seconds)
        res["quantiser"].append(acc["quantiser"])
        res["block_gemm"].append(acc["block_gemm"])
        clock = LayerClock(rollout_model, report.modules)
        t, _ = C.timed(pb.sample, rollout_model, [prompt] * B, seeds, R, cfg.rollout.solver, cond=cond_b)
        clock.remove()
        res["rollout_total"].append(t)
        res["rollout_layers"].append(clock.seconds)
    ms = {k: 1000.0 * C.median(v) / B for k, v in res.items()}
    T_e, T_r, L_e, L_r = ms["explore_total"], ms["rollout_total"], ms["explore_layers"], ms["rollout_layers"]
    q, g = ms["quantiser"], ms["block_gemm"]
    bf16_layers_at_explore_steps = L_r * e / R
    out = {
        "explore": f"nvfp4, {e} steps, {args.explore_dtype}",
        "rollout": f"bf16, {R} steps",
        "batch": B,
        "repeats": reps,
        "quantised_layers": len(report.modules),
        "ms_per_candidate": {
            "explore_total": T_e,
            "explore_quantised_layers": L_e,
            "explore_quantiser": q,
            "explore_block_gemm": g,
            "explore_layer_other": L_e - q - g,  # per-tensor scales, bias, casts
            "explore_rest": T_e - L_e,  # attention, norms, unquantised layers, solver
            "rollout_total": T_r,
            "rollout_same_layers_bf16": L_r,
            "rollout_rest": T_r - L_r,
        },
        "shares_of_explore": {
            "quantiser": q / T_e,
            "block_gemm": g / T_e,
            "layer_other": (L_e - q - g) / T_e,
            "rest": (T_e - L_e) / T_e,
        },
        "nvfp4_layer_over_bf16_layer_per_step": (L_e / e) / (L_r / R) if L_r else None,
        "block_gemm_over_bf16_layer_per_step": (g / e) / (L_r / R) if L_r else None,
        "explore_over_rollout": {
            "measured (instrumented)": T_e / T_r,
            "without the activation quantiser": (T_e - q) / T_r,
            "quantised layers at bf16-Linear speed": (T_e - L_e + bf16_layers_at_explore_steps) / T_r,
            "quantised layers at 4x bf16-Linear speed (FP4 tensor cores)": (
                T_e - L_e + bf16_layers_at_explore_steps / 4
            )
            / T_r,
            "quantised layers free (floor)": (T_e - L_e) / T_r,
        },
    }
    return out


def layer_bench(args) -> list[dict]:
    """solrl.quant.bench's per-layer timings (it sets one torch thread; restored after)."""
    import torch

    from solrl.quant import bench

    th = torch.get_num_threads()
    shapes = ((args.batch, 64, 192, 768), (args.batch, 64, 768, 192))
    try:
        return bench.run(args.layer_bench_repeats, shapes)
    finally:
        torch.set_num_threads(th)


# --- 2. one iteration, float32 vs bf16 ---------------------------------------------------------------
def time_iterations(args, cfg) -> dict:
    from tasks.in_memory import discard, memory_run

    cfgs = {d: cfg.with_overrides(**{"model.dtype": C.DTYPES[d]}) for d in ("fp32", "bf16")}
    pols = cfgs  # (each iteration a fresh in-memory run from the LoRA init)

    def once(d):
        run = memory_run(cfgs[d])
        t, res = C.memory_iteration(run, 0)
        discard(run)
        ev = res.eval["reward"] if res.eval else []
        return {
            "seconds": t,
            "stages": dict(res.seconds),
            "train_reward": res.metrics[-1]["reward_mean"],
            "eval_reward": sum(ev) / len(ev) if ev else None,
        }

    warm = {}
    if args.iteration_warmup:
        for d in pols:
            warm[d] = once(d)["seconds"]
            print(f"[cost] warm-up iteration {d}: {warm[d]:.1f} s", flush=True)
    reps = []
    for r in range(args.iteration_repeats):
        rep = {d: once(d) for d in C.rotated(list(pols), r)}
        rep["fp32_over_bf16"] = rep["fp32"]["seconds"] / rep["bf16"]["seconds"]
        reps.append(rep)
        print(
            f"[cost] iteration repeat {r + 1}/{args.iteration_repeats}: fp32 {rep['fp32']['seconds']:.1f} s, bf16 {rep['bf16']['seconds']:.1f} s",
            flush=True,
        )
    stages = list(reps[0]["fp32"]["stages"])
    med = {
        d: {
            "seconds": C.median([x[d]["seconds"] for x in reps]),
            "stages": {s: C.median([x[d]["stages"][s] for x in reps]) for s in stages},
            "train_reward": C.median([x[d]["train_reward"] for x in reps]),
        }
        for d in ("fp32", "bf16")
    }
    ratio = C.median([x["fp32_over_bf16"] for x in reps])
    return {
        "iteration": {
            "prompts": cfg.prompts.per_iteration,
            "explore_n": cfg.explore.n,
            "explore_steps": cfg.explore.steps,
            "explore_precision": cfg.explore.precision,
            "k": cfg.select.k,
            "rollout_steps": cfg.rollout.steps,
            "eval_every": cfg.eval.every,
            "eval_steps": cfg.eval.steps,
        },
        "warmup_seconds": warm,
        "repeats": reps,
        "median": med,
        "stage_fp32_over_bf16": {
            s: med["fp32"]["stages"][s] / med["bf16"]["stages"][s] for s in stages if med["bf16"]["stages"][s] > 0
        },
        "fp32_over_bf16": ratio,
        "fp32_over_bf16_min": min(x["fp32_over_bf16"] for x in reps),
        "fp32_over_bf16_max": max(x["fp32_over_bf16"] for x in reps),
        "goal": GOAL_FP32_OVER_BF16_ITERATION,
        "goal_met": bool(ratio >= GOAL_FP32_OVER_BF16_ITERATION),
    }


# --- 3. memory -------------------------------------------------------------------------------------
def memory(copies, total_params: int) -> dict:
    out = {
        "transformer_params": total_params,
        "whole_bf16_bytes": 2 * total_params,
        "whole_fp32_bytes": 4 * total_params,
    }
    for name, (_, rep) in copies.items():
        if not rep.weights:
            continue
        bf16 = 2 * rep.weights
        whole = 2 * (total_params - rep.weights) + rep.packed_bytes
        out[name] = {
            "layers": len(rep.modules),
            "weights": rep.weights,
            "packed_bytes": rep.packed_bytes,
            "bits_per_weight": rep.bits_per_weight,
            "selected_bf16_bytes": bf16,
            "selected_dense_bytes": rep.dense_bytes,
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
    return pa.table(
        {
            "prompt_id": pa.array(pid),
            "prompt": prompt,
            "seed": pa.array(rng.integers(0, 2**63 - 1, size=pid.size, dtype=np.int64)),
            "reward": pa.array(rng.random(pid.size)),
        }
    )


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
        out[str(rows)] = {
            "rows": tab.num_rows,
            "prompts": tab.num_rows // n,
            "build_seconds": t,
            "arrow_bytes": tab.nbytes,
            "seconds_all": [],
            "window_seconds_all": [],
        }
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
                raise AssertionError(
                    f"selection over {rows} rows returned {sel.num_rows} rows, expected {d['prompts'] * k}"
                )
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
    meta = {
        "duckdb": duckdb.__version__,
        "duckdb_threads": int(con.execute("SELECT current_setting('threads')").fetchone()[0]),
        "n": n,
        "k": k,
    }
    con.close()
    return {"meta": meta, "sizes": out}


# --- report ------------------------------------------------------------------------------------------
def summary(res: dict) -> str:
    cfg = res["config"]
    m = res["machine"]
    flags = ", ".join(f for f, on in m["cpu_flags"].items() if on)
    lines = [
        f"## Cost on {m['cpu_model']} ({flags}); explore copies in {cfg['explore_dtype']}, batch {cfg['batch']}, {cfg['repeats']} interleaved repeats, medians",
        "",
    ]
    for th, d in res["timing"]["by_threads"].items():
        head = [
            "variant",
            "copy",
            "dtype",
            "steps",
            "batch",
            "ms / candidate",
            "ms / candidate-step",
            "× bf16 rollout",
            "× fp32 rollout",
        ]
        rows = [
            [
                name,
                v["copy"] + (" (eager quantiser)" if v.get("eager") else ""),
                v["dtype"],
                v["steps"],
                v["batch"],
                v["ms_per_candidate"],
                v["ms_per_candidate_step"],
                v["over_rollout_bf16"],
                v["over_rollout_fp32"],
            ]
            for name, v in d["rows"].items()
        ]
        lines += [f"### torch threads = {th}", "", C.md_table(head, rows), ""]
        h = d["headline"]
        if h:
            lines.append(
                f"**explore ({h['explore_variant']}) ÷ rollout (bf16, {cfg['rollout_steps']} steps) = {h['explore_over_rollout_bf16']:.2f}** "
                f"(goal ≤ {h['goal']}: {'met' if h['goal_met'] else 'not met'}); ÷ float32 rollout {h['explore_over_rollout_fp32']:.2f}; "
                f"float32 rollout ÷ bf16 rollout {h['rollout_fp32_over_bf16']:.2f}. Per prompt, sol_rl sampling (N explore + K bf16 rollouts) ÷ naive_scaling "
                f"(N bf16 rollouts) = {h['sol_rl_over_naive_scaling_sampling']:.2f}; explore "
                f"is {100 * h['explore_share_of_sol_rl_sampling']:.0f} % of sol_rl sampling."
            )
        if d["linear_fit"]:
            lines.append(
                "linear fit ms/candidate = fixed + per_step × steps: "
                + "; ".join(
                    f"{p}: {f['ms_per_step']:.2f} ms/step ({f['per_step_over_bf16_rollout_step']:.2f}× a bf16 rollout step) + {f['ms_fixed']:.2f} ms"
                    for p, f in d["linear_fit"].items()
                )
            )
        lines.append("")
    lines.append(
        f"decode + reward: {res['timing']['score_ms_per_candidate']:.3f} ms / candidate (same for every variant; not in the times above); "
        f"warm-up (incl. compile) {res['timing']['warmup_seconds']:.1f} s"
    )
    lim = res["limits"]
    ms = lim["ms_per_candidate"]
    lines += [
        "",
        f"### What limits explore ÷ rollout (instrumented, {lim['explore']} vs "
        f"{lim['rollout']}, batch {lim['batch']}, {lim['quantised_layers']} quantised layers)",
        "",
    ]
    lines.append(
        C.md_table(
            ["part", "ms / candidate", "share of explore"],
            [
                ["explore total", ms["explore_total"], 1.0],
                [
                    "  activation quantiser (NVFP4 factors of every input)",
                    ms["explore_quantiser"],
                    lim["shares_of_explore"]["quantiser"],
                ],
                [
                    "  block GEMM (float32 oneDNN, bf16 fpmath)",
                    ms["explore_block_gemm"],
                    lim["shares_of_explore"]["block_gemm"],
                ],
                [
                    "  rest of the quantised layers (scales, bias, casts)",
                    ms["explore_layer_other"],
                    lim["shares_of_explore"]["layer_other"],
                ],
                [
                    "  everything else (attention, norms, unquantised layers, solver)",
                    ms["explore_rest"],
                    lim["shares_of_explore"]["rest"],
                ],
                ["bf16 rollout total", ms["rollout_total"], ""],
                ["  the same layers as bf16 Linear", ms["rollout_same_layers_bf16"], ""],
            ],
        )
    )
    lines += [
        "",
        "Per step, an NVFP4 layer costs "
        + (
            f"{lim['nvfp4_layer_over_bf16_layer_per_step']:.2f}× a bf16 Linear (its block GEMM alone {lim['block_gemm_over_bf16_layer_per_step']:.2f}×). "
            if lim["nvfp4_layer_over_bf16_layer_per_step"]
            else "n/a. "
        )
        + "Explore ÷ rollout if ...: "
        + "; ".join(f"{k}: {v:.2f}" for k, v in lim["explore_over_rollout"].items())
        + ".",
    ]
    if res.get("layer_bench"):
        lines += ["", "### Per layer (solrl.quant.bench, 1 thread, medians)", ""]
        lines.append(
            C.md_table(
                ["shape", "variant", "median ms", "× fp32 Linear", "× bf16 Linear"],
                [
                    [r["shape"], r["variant"], r["median_ms"], r["x_fp32_linear"], r["x_bf16_linear"]]
                    for r in res["layer_bench"]
                ],
            )
        )
    it = res.get("iteration")
    if it:
        i = it["iteration"]
        lines += [
            "",
            f"### One iteration in memory (the stage steps over an in-memory store: {i['prompts']} prompts × N "
            f"{i['explore_n']} {i['explore_precision']} {i['explore_steps']} steps, K {i['k']}, "
            f"rollout {i['rollout_steps']} steps, eval every {i['eval_every']}), float32 vs bf16, {len(it['repeats'])} interleaved repeat(s), medians",
            "",
        ]
        stages = list(it["median"]["fp32"]["stages"])
        rows = [
            [d, it["median"][d]["seconds"]]
            + [it["median"][d]["stages"][s] for s in stages]
            + [it["median"][d]["train_reward"]]
            for d in ("fp32", "bf16")
        ]
        rows.append(
            ["fp32 ÷ bf16", it["fp32_over_bf16"]] + [it["stage_fp32_over_bf16"].get(s, "") for s in stages] + [""]
        )
        lines.append(C.md_table(["model.dtype", "wall s"] + [f"{s} s" for s in stages] + ["train reward"], rows))
        lines.append(
            f"\n**float32 ÷ bf16 iteration = {it['fp32_over_bf16']:.2f}×** ({it['fp32_over_bf16_min']:.2f}..{it['fp32_over_bf16_max']:.2f} over repeats; "
            f"goal ≥ {it['goal']}×: {'met' if it['goal_met'] else 'not met'})"
        )
    mem = res["memory"]
    lines += ["", "### Explore-weight memory", ""]
    head = [
        "format",
        "layers",
        "weights",
        "packed bytes",
        "bits / weight",
        "same layers bf16",
        "packed / bf16",
        "whole transformer",
        "whole / bf16",
    ]
    rows = [
        [
            p,
            x["layers"],
            f"{x['weights']:,}",
            f"{x['packed_bytes']:,}",
            x["bits_per_weight"],
            f"{x['selected_bf16_bytes']:,}",
            x["packed_over_bf16"],
            f"{x['whole_explore_bytes']:,}",
            x["whole_over_bf16"],
        ]
        for p, x in mem.items()
        if isinstance(x, dict)
    ]
    rows.append(
        ["bf16", "", f"{mem['transformer_params']:,} params", "", 16.0, "", 1.0, f"{mem['whole_bf16_bytes']:,}", 1.0]
    )
    lines.append(C.md_table(head, rows))
    s = res["selection"]
    lines += [
        "",
        f"### DuckDB selection (select_seeds, N = {s['meta']['n']}, K = {s['meta']['k']}; duckdb {s['meta']['duckdb']}, {s['meta']['duckdb_threads']} threads)",
        "",
    ]
    head = [
        "rows",
        "prompts",
        "selected rows",
        "seconds (median)",
        "rows / s",
        "ms / prompt",
        "window query ÷ select_seeds",
        "table build s",
    ]
    rows = [
        [
            f"{d['rows']:,}",
            f"{d['prompts']:,}",
            f"{d['selected_rows']:,}",
            d["seconds"],
            f"{d['rows_per_second']:,.0f}",
            d["ms_per_prompt"],
            d["window_over_select"],
            d["build_seconds"],
        ]
        for d in s["sizes"].values()
    ]
    lines.append(C.md_table(head, rows))
    return "\n".join(lines)


def plot(res: dict, out: Path) -> list[Path]:
    plt = C.pyplot()
    cfg = res["config"]
    colours = {"nvfp4": "tab:red", "fp8": "tab:blue", "high": "tab:green"}
    fig, axes = plt.subplots(1, 4, figsize=(21, 4.6))
    styles = ["-", "--", ":"]
    for i, (th, d) in enumerate(res["timing"]["by_threads"].items()):
        for p in PRECISIONS:
            ys = [d["rows"][f"{p}/{s}"]["over_rollout_bf16"] for s in cfg["steps"]]
            axes[0].plot(cfg["steps"], ys, "o" + styles[i % 3], color=colours[p], label=f"{p}, {th} thread(s)")
        for name, v in d["rows"].items():
            if name.startswith("nvfp4-r") or name.startswith("nvfp4-eager"):
                axes[0].plot(
                    [v["steps"]],
                    [v["over_rollout_bf16"]],
                    "x",
                    color="tab:purple" if "-r" in name else "tab:orange",
                    label=f"{name}, {th} thread(s)",
                )
        axes[0].axhline(
            d["rows"]["rollout-fp32"]["over_rollout_bf16"], color="grey", lw=1, ls="-.", label="float32 rollout"
        )
    axes[0].axhline(1.0, color="k", lw=1, ls=":", label=f"bf16 rollout ({cfg['rollout_steps']} steps)")
    axes[0].axhline(
        GOAL_EXPLORE_OVER_ROLLOUT, color="tab:red", lw=1, ls="--", label=f"goal {GOAL_EXPLORE_OVER_ROLLOUT}"
    )
    axes[0].set(
        title="sampling time per candidate ÷ bf16 rollout",
        xlabel="explore steps",
        ylabel="× bf16 rollout (median of per-repeat ratios)",
    )
    axes[0].set_xticks(cfg["steps"])
    lim = res["limits"]["ms_per_candidate"]
    parts = [
        ("quantiser", lim["explore_quantiser"], "tab:red"),
        ("block GEMM", lim["explore_block_gemm"], "tab:orange"),
        ("layer other", lim["explore_layer_other"], "tab:pink"),
        ("rest", lim["explore_rest"], "lightgrey"),
    ]
    left = 0.0
    for label, w, c in parts:
        axes[1].barh(1, w, left=left, color=c, label=label)
        left += w
    axes[1].barh(0, lim["rollout_same_layers_bf16"], color="tab:blue", label="same layers, bf16 Linear")
    axes[1].barh(0, lim["rollout_rest"], left=lim["rollout_same_layers_bf16"], color="lightgrey")
    axes[1].set_yticks([0, 1], [f"rollout\n{res['limits']['rollout']}", f"explore\n{res['limits']['explore']}"])
    axes[1].set(title="where the time goes (ms / candidate)", xlabel="ms per candidate")
    axes[1].legend(fontsize=7)
    it = res.get("iteration")
    if it:
        stages = list(it["median"]["fp32"]["stages"])
        cols = plt.get_cmap("tab10")
        for j, dt in enumerate(("fp32", "bf16")):
            left = 0.0
            for k, s in enumerate(stages):
                w = it["median"][dt]["stages"][s]
                axes[2].barh(j, w, left=left, color=cols(k), label=s if j == 0 else None)
                left += w
            axes[2].text(left, j, f" {it['median'][dt]['seconds']:.1f} s", va="center", fontsize=8)
        axes[2].set_yticks([0, 1], ["float32", "bf16"])
        axes[2].set(
            title=f"one iteration in memory: float32 ÷ bf16 = {it['fp32_over_bf16']:.2f}× (goal ≥ {it['goal']})",
            xlabel="seconds (median)",
        )
        axes[2].legend(fontsize=7)
    else:
        axes[2].set_axis_off()
    sizes = res["selection"]["sizes"]
    axes[3].loglog([d["rows"] for d in sizes.values()], [d["seconds"] for d in sizes.values()], "o-")
    for d in sizes.values():
        axes[3].annotate(
            f"{d['seconds']:.2f} s", (d["rows"], d["seconds"]), textcoords="offset points", xytext=(5, -12), fontsize=8
        )
    axes[3].set(title="DuckDB selection time (select_seeds)", xlabel="explore rows", ylabel="seconds (median)")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=6)
    fig.suptitle(f"shapes cost on {res['machine']['cpu_model']} (emulated low precision on CPU)", fontsize=11)
    return C.save_figure(fig, out, "cost")


def main(argv=None) -> dict:
    ap = C.parser(
        __doc__, "cost", quick="batch 8, steps 2 6, 2 repeats, the tests' tiny iteration once, 10k selection rows"
    )
    C.add_model_args(ap)
    ap.add_argument(
        "--steps", type=int, nargs="+", default=None, help="explore step counts (default 2 6 10; quick 2 6)"
    )
    ap.add_argument(
        "--lowranks",
        type=int,
        nargs="+",
        default=None,
        help="NVFP4 low-rank branch ranks also timed at explore.steps (default 32; quick 8)",
    )
    ap.add_argument(
        "--explore-dtype",
        choices=["fp32", "bf16"],
        default=None,
        help="model.dtype of the explore copies (default: the config's, auto resolved)",
    )
    ap.add_argument(
        "--batch", type=int, default=None, help="candidates per sampling call (default explore.batch = 96; quick 8)"
    )
    ap.add_argument("--repeats", type=int, default=None, help="interleaved sampling repeats (default 5; quick 2)")
    ap.add_argument(
        "--limit-repeats",
        type=int,
        default=None,
        help="instrumented passes for the 'what limits' breakdown (default 3; quick 1)",
    )
    ap.add_argument(
        "--layer-bench-repeats",
        type=int,
        default=None,
        help="rounds of solrl.quant.bench per layer shape (default 21; quick 2; 0 = skip)",
    )
    ap.add_argument(
        "--iteration-repeats",
        type=int,
        default=None,
        help="interleaved repeats of the float32 vs bf16 iteration (default 3; quick 1; 0 = skip)",
    )
    ap.add_argument(
        "--no-iteration-warmup",
        dest="iteration_warmup",
        action="store_false",
        default=None,
        help="skip the untimed first iteration per dtype",
    )
    ap.add_argument(
        "--rows",
        type=int,
        nargs="+",
        default=None,
        help="synthetic explore rows for the selection timing (default 1000000 10000000; quick 10000)",
    )
    ap.add_argument("--select-repeats", type=int, default=None, help="selection repeats per size (default 3; quick 2)")
    ap.add_argument(
        "--threads",
        type=int,
        nargs="+",
        default=None,
        help="torch thread counts to time part 1 at, interleaved (default: torch's default); parts 2-4 use the first",
    )
    ap.add_argument(
        "--int8-kernels",
        action="store_true",
        help="with --cpu-explore: only time one Linear per shapes-model shape, float32 / bf16 / the int8 kernels",
    )
    ap.add_argument(
        "--cpu-explore",
        action="store_true",
        help="part 5 only: int8 and NVFP4 explore vs the rollout, and Sol-RL vs naive-scaling iterations, on this host kind",
    )
    args = ap.parse_args(argv)
    q = args.quick
    import torch

    torch.set_flush_denormal(True)
    args.threads = args.threads or [torch.get_num_threads()]
    args.steps = sorted(set(args.steps or ([2, 6] if q else [2, 6, 10])))
    args.lowranks = sorted(set(args.lowranks if args.lowranks is not None else ([8] if q else [32])))
    args.batch = args.batch or (8 if q else 96)
    args.repeats = args.repeats or (2 if q else 5)
    args.limit_repeats = args.limit_repeats or (1 if q else 3)
    args.layer_bench_repeats = args.layer_bench_repeats if args.layer_bench_repeats is not None else (2 if q else 21)
    args.iteration_repeats = args.iteration_repeats if args.iteration_repeats is not None else (1 if q else 3)
    args.iteration_warmup = (not q) if args.iteration_warmup is None else args.iteration_warmup
    args.rows = args.rows or ([10_000] if q else [1_000_000, 10_000_000])
    args.select_repeats = args.select_repeats or (2 if q else 3)
    if args.cpu_explore:
        return cpu_explore_main(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    C.set_threads(args.threads[0])
    machine = C.machine()

    from solrl.models import resolve

    t_start = time.perf_counter()
    cfg = C.base_config(args)
    args.explore_dtype = args.explore_dtype or {v: k for k, v in C.DTYPES.items()}[resolve(cfg).dtype]
    policies = {d: C.load_policy(cfg, C.DTYPES[d]) for d in ("fp32", "bf16")}
    copies = {
        d: explore_copies(policies[d], cfg, args.lowranks)
        if d == args.explore_dtype
        else {"high": policies[d].sampler_copy(None)}
        for d in policies
    }
    prompt = policies["bf16"].train_prompts()[0]
    total_params = sum(x.numel() for x in copies[args.explore_dtype]["high"][0].parameters())
    res = {
        "config": {
            "config_file": str(args.config),
            "model": C.model_label(cfg),
            "steps": args.steps,
            "lowranks": args.lowranks,
            "batch": args.batch,
            "repeats": args.repeats,
            "threads": args.threads,
            "explore_dtype": C.DTYPES[args.explore_dtype],
            "rollout_steps": cfg.rollout.steps,
            "solver": cfg.rollout.solver,
            "explore_n": cfg.explore.n,
            "k": cfg.select.k,
            "explore_steps_default": cfg.explore.steps,
            "prompt": prompt,
        },
        "machine": machine,
        "quant": {name: rep.summary() for name, (_, rep) in copies[args.explore_dtype].items()},
        "memory": memory(copies[args.explore_dtype], total_params),
        "timing": time_sampling(args, cfg, policies, copies, prompt),
        "limits": limits(args, cfg, policies, copies, prompt),
        "layer_bench": layer_bench(args) if args.layer_bench_repeats else [],
        "quick": q,
    }
    del copies, policies
    if args.iteration_repeats:
        res["iteration"] = time_iterations(args, cfg.with_overrides(**C.QUICK_ITERATION) if q else cfg)
    res["selection"] = time_selection(args, cfg, cfg_prompts(cfg))
    res["wall_seconds"] = time.perf_counter() - t_start
    text = summary(res)
    return C.finish(out, "cost", res, text, plot(res, out))


# --- 5. the CPU explore on this host kind ---------------------------------------------------------------
GOAL_INT8_OVER_ROLLOUT_AVX2 = 0.45
GOAL_SOL_OVER_NAIVE_ITERATION = 0.8
CPU_EXPLORES = ("int8", "nvfp4")


def matmul_kernels(repeats: int = 7) -> dict:
    """ms of a 1024² float32 and bf16 matmul (one thread as set): a bf16 matmul much slower than
    float32 means no bf16 instructions are used (AVX2), faster means AVX-512 BF16 / AMX."""
    import torch

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(1024, 1024, generator=g), torch.randn(1024, 1024, generator=g)
    fns = {"fp32": lambda: a @ b, "bf16": (lambda a16=a.bfloat16(), b16=b.bfloat16(): a16 @ b16)}
    secs = C.interleaved(fns, repeats)
    ms = {k: 1000 * C.median(v) for k, v in secs.items()}
    return {"ms": ms, "bf16_over_fp32": ms["bf16"] / ms["fp32"]}


def cpu_explore_sampling(args, cfg, policy, prompt) -> dict:
    import torch

    from solrl.compute import explore_quant
    from solrl.plan import primary_explore

    spec = primary_explore(cfg)
    copies = {
        p: policy.sampler_copy(explore_quant(policy, cfg, replace(spec, precision=p, lowrank=0))) for p in CPU_EXPLORES
    }
    copies["high"] = policy.sampler_copy(None)
    B, e, R = args.batch, cfg.explore.steps, cfg.rollout.steps
    seeds = list(range(B))
    cond = policy.encode_rows([prompt] * B)
    fns = {
        f"{p}/{e}": (lambda m=copies[p][0]: policy.sample(m, [prompt] * B, seeds, e, cfg.rollout.solver, cond=cond))
        for p in CPU_EXPLORES
    }
    fns[f"high/{e}"] = lambda: policy.sample(copies["high"][0], [prompt] * B, seeds, e, cfg.rollout.solver, cond=cond)
    fns[f"rollout/{R}"] = lambda: policy.sample(
        copies["high"][0], [prompt] * B, seeds, R, cfg.rollout.solver, cond=cond
    )
    rows = C.shuffled_ratios(fns, args.repeats, f"rollout/{R}", B, "cost cpu-explore")
    return {
        "batch": B,
        "explore_steps": e,
        "rollout_steps": R,
        "repeats": args.repeats,
        "dtype": str(policy.dtype).replace("torch.", ""),
        "quant": {p: copies[p][1].summary() for p in CPU_EXPLORES},
        "rows": rows,
        "torch_threads": torch.get_num_threads(),
    }


def cpu_explore_iterations(args, cfg) -> dict:
    """One iteration of each mode from the same fresh adapters, interleaved (rotated), medians."""
    from solrl.models import resolve
    from tasks.in_memory import discard, memory_run

    base = cfg.with_overrides(**{"fidelity.audit_prompts": 0, "eval.every": 0})
    modes = {
        "sol_rl-int8": base.with_overrides(**{"run.mode": "sol_rl", "explore.precision": "int8"}),
        "sol_rl-nvfp4": base.with_overrides(**{"run.mode": "sol_rl", "explore.precision": "nvfp4"}),
        "naive_scaling": base.with_overrides(**{"run.mode": "naive_scaling", "explore.precision": "high"}),
    }

    def once(name):
        run = memory_run(modes[name])  # iteration 0 of a fresh run (no evaluation: eval.every 0)
        t, res = C.memory_iteration(run, 0)
        discard(run)
        return {"seconds": t, "stages": dict(res.seconds)}

    if args.iteration_warmup:
        for name in modes:
            once(name)
    reps = []
    for r in range(args.iteration_repeats):
        rep = {name: once(name) for name in C.rotated(list(modes), r)}
        reps.append(rep)
        print(
            f"[cost] cpu-explore iteration repeat {r + 1}/{args.iteration_repeats}: "
            + ", ".join(f"{k} {v['seconds']:.1f} s" for k, v in rep.items()),
            flush=True,
        )
    med = {
        k: {
            "seconds": C.median([x[k]["seconds"] for x in reps]),
            "stages": {s: C.median([x[k]["stages"][s] for x in reps]) for s in reps[0][k]["stages"]},
        }
        for k in modes
    }
    ratios = {
        k: C.median([x[k]["seconds"] / x["naive_scaling"]["seconds"] for x in reps])
        for k in modes
        if k != "naive_scaling"
    }
    return {
        "iteration": {
            "prompts": base.prompts.per_iteration,
            "explore_n": base.explore.n,
            "explore_steps": base.explore.steps,
            "k": base.select.k,
            "rollout_steps": base.rollout.steps,
            "dtype": resolve(base).dtype,
        },
        "repeats": reps,
        "median": med,
        "over_naive_scaling": ratios,
        "goal": GOAL_SOL_OVER_NAIVE_ITERATION,
        "goal_met": {k: bool(v <= GOAL_SOL_OVER_NAIVE_ITERATION) for k, v in ratios.items()},
    }


def cpu_explore_summary(res: dict) -> str:
    m, s, k = res["machine"], res["sampling"], res["kernels"]
    lines = [
        f"# CPU explore on the {res['kind']} kind ({m['cpu_model']}; torch capability {m['aten_cpu_capability']}, "
        f"ATEN_CPU_CAPABILITY={m['env_ATEN_CPU_CAPABILITY']}, ONEDNN_MAX_CPU_ISA={m['env_ONEDNN_MAX_CPU_ISA']}; {m['torch_threads']} torch thread(s))\n",
        f"Kernels: a 1024² matmul takes {k['ms']['fp32']:.1f} ms in float32, {k['ms']['bf16']:.1f} "
        f"ms in bf16 (× {k['bf16_over_fp32']:.2f}); int8 engine: {res['int8_engine']}; "
        f"model.dtype auto → {s['dtype']}.\n",
        f"## Per candidate: explore ({s['explore_steps']} steps) ÷ the high-precision rollout "
        f"({s['rollout_steps']} steps), batch {s['batch']}, {s['repeats']} interleaved repeats, medians\n",
    ]
    rows = [
        [
            name,
            f"{r['ms_per_candidate']:.2f}",
            f"{r['over_rollout']:.3f}",
            f"{r['over_rollout_min']:.3f}..{r['over_rollout_max']:.3f}",
        ]
        for name, r in s["rows"].items()
    ]
    lines += [C.md_table(["variant", "ms / candidate", "÷ rollout (median)", "min..max"], rows), ""]
    if res["kind"] == "avx2":
        x = s["rows"][f"int8/{s['explore_steps']}"]["over_rollout"]
        lines.append(
            f"Goal on the AVX2 kind: int8 explore ≤ {GOAL_INT8_OVER_ROLLOUT_AVX2} of the "
            f"rollout: {x:.3f} ({'met' if x <= GOAL_INT8_OVER_ROLLOUT_AVX2 else 'not met'}).\n"
        )
    it = res.get("iterations")
    if it:
        n = len(it["repeats"])
        lines.append(
            f"## One iteration ({it['iteration']['prompts']} prompts × {it['iteration']['explore_n']} "
            f"candidates, K {it['iteration']['k']}; {n} interleaved repeats, medians)\n"
        )
        stages = sorted({st for v in it["median"].values() for st in v["stages"]})
        rows = [
            [k, f"{v['seconds']:.1f}", f"{it['over_naive_scaling'][k]:.3f}" if k in it["over_naive_scaling"] else "1"]
            + [f"{v['stages'].get(st, 0):.1f}" for st in stages]
            for k, v in it["median"].items()
        ]
        lines += [C.md_table(["mode", "seconds", "÷ naive_scaling"] + [f"{st} s" for st in stages], rows), ""]
        lines.append(
            f"Goal: a Sol-RL iteration ≤ {GOAL_SOL_OVER_NAIVE_ITERATION}× a naive-scaling iteration: "
            + ", ".join(f"{k} {'met' if v else 'not met'}" for k, v in it["goal_met"].items())
            + "."
        )
    return "\n".join(lines)


# the shapes model's quantised Linear shapes at explore.batch 96: (tokens M, in K, out N)
SHAPES_LINEARS = (
    (6144, 192, 192),
    (6144, 192, 768),
    (6144, 768, 192),
    (7296, 192, 768),
    (1152, 192, 192),
    (96, 192, 1152),
)


def int8_kernels(args) -> dict:
    """ms per call of one Linear, float32 / bf16 / the int8 candidates, interleaved repeats,
    medians: torch's dynamic quantised Linear on fbgemm and on oneDNN (quantized::linear_dynamic),
    oneDNN's qlinear_pointwise with a dynamic per-tensor uint8 input quantised before it,
    torch._int_mm with per-token int8 activations quantised around it, and torchao's
    Int8DynamicActivationInt8WeightConfig (quantize_)."""
    import warnings

    import torch
    import torch.nn.functional as F

    from solrl.quant.int8 import Int8Linear, quantize_weight_int8

    engines = [e for e in ("fbgemm", "onednn") if e in torch.backends.quantized.supported_engines]
    out = {"shapes": [], "repeats": args.repeats}
    for M, K, N in SHAPES_LINEARS[:2] if args.quick else SHAPES_LINEARS:
        g = torch.Generator().manual_seed(0)
        x, b = torch.randn(M, K, generator=g), torch.randn(N, generator=g)
        lin = torch.nn.Linear(K, N)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(N, K, generator=g) / K**0.5)
            lin.bias.copy_(b)
        w = lin.weight.detach()
        codes, scale = quantize_weight_int8(w)
        fns = {
            "float32": lambda: F.linear(x, w, b),
            "bf16": (lambda x16=x.bfloat16(), w16=w.bfloat16(), b16=b.bfloat16(): F.linear(x16, w16, b16)),
        }
        for e in engines:
            fns[f"linear_dynamic[{e}]"] = lambda m=Int8Linear(lin, e): m(x)
        if hasattr(torch.ops, "onednn") and hasattr(torch.ops.onednn, "qlinear_prepack"):
            packed = torch.ops.onednn.qlinear_prepack(codes, None)

            def qpw():
                lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
                s = (hi - lo) / 255
                zp = int(round(-lo / s))
                xq = torch.clamp(torch.round(x / s) + zp, 0, 255).to(torch.uint8)
                return torch.ops.onednn.qlinear_pointwise(
                    xq, s, zp, packed, scale, torch.zeros(N, dtype=torch.long), b, 1.0, 0, torch.float32, "none", [], ""
                )

            fns["onednn.qlinear_pointwise"] = qpw

        def int_mm():
            sa = x.abs().amax(1, keepdim=True).clamp_min(1e-12) / 127
            a8 = torch.round(x / sa).to(torch.int8)
            return torch._int_mm(a8, codes.t()).float() * (sa * scale) + b

        fns["_int_mm per-token"] = int_mm
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

                m = torch.nn.Sequential(torch.nn.Linear(K, N))
                m[0].load_state_dict(lin.state_dict())
                quantize_(m, Int8DynamicActivationInt8WeightConfig())
            fns["torchao Int8DynamicActivationInt8Weight"] = lambda m=m: m(x)
        except Exception as e:  # noqa: BLE001 - report, do not fail the benchmark
            out.setdefault("errors", []).append(f"torchao at {(M, K, N)}: {e!r}"[:300])
        with torch.no_grad():
            secs = C.interleaved(fns, args.repeats)
        ms = {k: 1000 * C.median(v) for k, v in secs.items()}
        out["shapes"].append(
            {"M": M, "K": K, "N": N, "ms": ms, "over_float32": {k: v / ms["float32"] for k, v in ms.items()}}
        )
        print(f"[cost] int8 kernels {(M, K, N)}: " + ", ".join(f"{k} {v:.2f}" for k, v in ms.items()), flush=True)
    return out


def int8_kernels_summary(res: dict) -> str:
    m = res["machine"]
    names = list(res["kernels"]["shapes"][0]["ms"])
    lines = [
        f"# One Linear of the shapes model, ms per call ({res['kind']} kind: torch capability "
        f"{m['aten_cpu_capability']}, ONEDNN_MAX_CPU_ISA={m['env_ONEDNN_MAX_CPU_ISA']}; "
        f"{m['torch_threads']} thread; {res['kernels']['repeats']} interleaved repeats, medians)\n"
    ]
    rows = [[f"{r['M']}×{r['K']}→{r['N']}"] + [f"{r['ms'][k]:.2f}" for k in names] for r in res["kernels"]["shapes"]]
    lines.append(C.md_table(["M×K→N"] + names, rows))
    return "\n".join(lines)


def cpu_explore_main(args) -> dict:
    import torch

    from solrl.quant import int8_engine

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    C.set_threads(args.threads[0])
    t0 = time.perf_counter()
    kind = (
        "avx512"
        if torch.backends.cpu.get_cpu_capability().upper().startswith("AVX512")
        else torch.backends.cpu.get_cpu_capability().lower()
    )
    cfg = C.base_config(args)
    policy = C.load_policy(cfg)
    prompt = policy.train_prompts()[0]
    if args.int8_kernels:
        res = {
            "quick": args.quick,
            "machine": C.machine(),
            "kind": kind,
            "int8_engine": int8_engine(),
            "kernels": int8_kernels(args),
        }
        res["wall_seconds"] = time.perf_counter() - t0
        return C.finish(out, f"int8_kernels-{kind}", res, int8_kernels_summary(res), [])
    res = {
        "quick": args.quick,
        "machine": C.machine(),
        "kind": kind,
        "int8_engine": int8_engine(),
        "kernels": matmul_kernels(),
        "config": {"config_file": str(args.config), "model": C.model_label(cfg), "prompt": prompt},
    }
    res["sampling"] = cpu_explore_sampling(args, cfg, policy, prompt)
    del policy
    if args.iteration_repeats:
        res["iterations"] = cpu_explore_iterations(args, cfg.with_overrides(**C.QUICK_ITERATION) if args.quick else cfg)
    res["wall_seconds"] = time.perf_counter() - t0
    return C.finish(out, f"cpu_explore-{kind}", res, cpu_explore_summary(res), [])


def cfg_prompts(cfg) -> tuple[str, ...]:
    from solrl.registry import family_class

    return family_class(cfg.model.family).prompt_sets(cfg)[0]


if __name__ == "__main__":
    main()
