"""The CPU explore variants side by side: explore per candidate ÷ the high-precision rollout per candidate.

In one process, on one prompt of the shapes model (batch explore.batch = 96 candidates, one
torch thread with --threads 1), interleaved repeats in a shuffled order, medians of the
per-repeat ratio to the rollout (rollout.steps = 10, high precision, model.dtype auto) timed in
the same repeat:

    nvfp4-f32out   emulated NVFP4, the exact block product in float32 (explore.emulation_output: float32)
    nvfp4-bf16out  emulated NVFP4, a bf16 GEMM emitting bf16 + one fused float32 epilogue
                   (explore.emulation_output: bfloat16); compiled quantiser and epilogue
    int8           W8A8 on the CPU's integer GEMMs (explore.precision: int8)
    high           the unquantised explore copy at the explore's steps (for scale)

plus, per variant, the time of one quantised Linear at the shapes model's largest shape (the
layer alone), and what `explore.emulation_output: auto` resolves to on this host. Measure the
AVX2 kind on a larger machine with `ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2`.

    python benchmarks/explore_variants.py --threads 1 --out benchmarks/results/cost
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python benchmarks/explore_variants.py --threads 1 --out benchmarks/results/cost

Writes explore_variants-<kind>.json and .md (kind: avx512 or avx2).
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import bench_common as C

VARIANTS = {  # name -> (explore.precision, explore.emulation_output)
    "nvfp4-f32out": ("nvfp4", "float32"),
    "nvfp4-bf16out": ("nvfp4", "bfloat16"),
    "int8": ("int8", "float32"),
    "high": ("high", "float32"),
}
LAYER = (6144, 192, 768)  # tokens × in → out: the shapes model's largest quantised Linear at batch 96


def host_kind() -> str:
    import torch

    cap = torch.backends.cpu.get_cpu_capability().upper()
    return "avx512" if cap.startswith("AVX512") else cap.lower()


def sampling(args, cfg, policy, prompt) -> dict:
    from solrl.compute import explore_quant
    from solrl.plan import primary_explore

    spec = primary_explore(cfg)
    copies = {}
    for name, (precision, output) in VARIANTS.items():
        c = cfg.with_overrides(**{"explore.emulation_output": output})
        quant = explore_quant(policy, c, replace(spec, precision=precision, lowrank=0))
        copies[name] = policy.sampler_copy(quant)
    B, e, R = args.batch, cfg.explore.steps, cfg.rollout.steps
    seeds, prompts = list(range(B)), [prompt] * B
    cond = policy.encode_rows(prompts)
    solver = cfg.rollout.solver
    fns = {
        f"{n}/{e}": (lambda m=copies[n][0]: policy.sample(m, prompts, seeds, e, solver, cond=cond)) for n in VARIANTS
    }
    fns[f"rollout/{R}"] = lambda: policy.sample(copies["high"][0], prompts, seeds, R, solver, cond=cond)
    rows = C.shuffled_ratios(fns, args.repeats, f"rollout/{R}", B, "explore_variants")
    # per round: (bf16out / rollout) / (f32out / rollout) = bf16out / f32out
    bf, f32 = rows[f"nvfp4-bf16out/{e}"]["over_rollout_all"], rows[f"nvfp4-f32out/{e}"]["over_rollout_all"]
    return {
        "batch": B,
        "explore_steps": e,
        "rollout_steps": R,
        "repeats": args.repeats,
        "dtype": str(policy.dtype).replace("torch.", ""),
        "quant": {n: copies[n][1].summary() for n in VARIANTS},
        "rows": rows,
        "bf16out_over_f32out": C.median([x / y for x, y in zip(bf, f32)]),
        "bf16out_over_f32out_all": [x / y for x, y in zip(bf, f32)],
    }


def layer(args, dtype) -> dict:
    """ms of one quantised Linear (LAYER) per variant, interleaved, medians."""
    import torch

    from solrl.quant import EmulatedLinear, Int8Linear

    M, K, N = LAYER
    g = torch.Generator().manual_seed(0)
    lin = torch.nn.Linear(K, N).to(dtype)
    x = torch.randn(M, K, generator=g).to(dtype)
    layers = {
        "nvfp4-f32out": EmulatedLinear(lin),
        "nvfp4-bf16out": EmulatedLinear(lin, output="bfloat16"),
        "int8": Int8Linear(lin),
        "high": lin,
    }
    fns = {n: (lambda m=m: m(x)) for n, m in layers.items()}
    secs = C.interleaved(fns, args.layer_repeats)
    return {
        "shape": list(LAYER),
        "dtype": str(dtype).replace("torch.", ""),
        "ms": {n: 1000 * C.median(v) for n, v in secs.items()},
    }


def run(args) -> dict:
    import torch

    from solrl.models import resolve
    from solrl.quant import emulation_output, int8_engine

    torch.set_flush_denormal(True)
    cfg = C.base_config(args)
    resolved = resolve(cfg)
    policy = C.load_policy(cfg)
    prompt = policy.train_prompts()[0]
    res = {
        "kind": host_kind(),
        "int8_engine": int8_engine(),
        "model_dtype_auto": resolved.dtype,
        "emulation_output_auto": emulation_output("auto", resolved.dtype, resolved.device),
        "config": {"config_file": str(args.config), "model": C.model_label(cfg), "prompt": prompt},
        "quick": args.quick,
    }
    res["layer"] = layer(args, policy.dtype) if args.layer_repeats else None
    res["sampling"] = sampling(args, cfg, policy, prompt)
    return res


def summary(res: dict) -> str:
    m, s = res["machine"], res["sampling"]
    e = s["explore_steps"]
    lines = [
        f"# Explore variants on the {res['kind']} kind ({m['cpu_model']}; torch capability {m['aten_cpu_capability']}, "
        f"ATEN_CPU_CAPABILITY={m['env_ATEN_CPU_CAPABILITY']}, ONEDNN_MAX_CPU_ISA={m['env_ONEDNN_MAX_CPU_ISA']}; "
        f"{m['torch_threads']} torch thread(s); load average at start {m['loadavg_at_start']})\n",
        f"model.dtype auto → {res['model_dtype_auto']}; explore.emulation_output auto → "
        f"{res['emulation_output_auto']}; int8 engine {res['int8_engine']}.\n",
        f"## Per candidate: explore ({e} steps) ÷ the high-precision rollout ({s['rollout_steps']} steps), "
        f"batch {s['batch']}, {s['repeats']} interleaved repeats (shuffled), medians of per-repeat ratios\n",
    ]
    rows = [
        [
            k,
            f"{r['ms_per_candidate']:.2f}",
            f"**{r['over_rollout']:.3f}**",
            f"{r['over_rollout_min']:.3f}..{r['over_rollout_max']:.3f}",
        ]
        for k, r in s["rows"].items()
    ]
    lines += [C.md_table(["variant", "ms / candidate", "÷ rollout (median)", "min..max"], rows), ""]
    lines.append(
        f"NVFP4 bf16-output ÷ float32-output, per repeat: median {s['bf16out_over_f32out']:.3f} "
        f"({', '.join(f'{x:.2f}' for x in s['bf16out_over_f32out_all'])}).\n"
    )
    if res.get("layer"):
        L = res["layer"]
        lines.append(
            f"## One Linear {L['shape'][0]}×{L['shape'][1]}→{L['shape'][2]} ({L['dtype']} input), ms, medians\n"
        )
        lines += [C.md_table(list(L["ms"]), [[f"{v:.2f}" for v in L["ms"].values()]]), ""]
    lines.append("Quantised copies: " + "; ".join(f"{k}: {v}" for k, v in s["quant"].items()))
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = C.parser(__doc__, "cost", quick="batch 8, 2 repeats, 2 layer repeats")
    C.add_model_args(ap)
    C.add_threads_arg(ap)
    ap.add_argument("--batch", type=int, default=None, help="candidates per sampling call (default 96; quick 8)")
    ap.add_argument("--repeats", type=int, default=None, help="interleaved sampling repeats (default 5; quick 2)")
    ap.add_argument(
        "--layer-repeats",
        type=int,
        default=None,
        help="interleaved repeats of the one-Linear timing (default 9; 0 = skip)",
    )
    args = ap.parse_args(argv)
    C.set_threads(args.threads)
    q = args.quick
    args.batch = args.batch or (8 if q else 96)
    args.repeats = args.repeats or (2 if q else 5)
    args.layer_repeats = args.layer_repeats if args.layer_repeats is not None else (2 if q else 9)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    machine = C.machine()
    res = run(args)
    res["machine"] = machine
    res["wall_seconds"] = time.perf_counter() - t0
    return C.finish(out, f"explore_variants-{res['kind']}", res, summary(res), [])


if __name__ == "__main__":
    main()
