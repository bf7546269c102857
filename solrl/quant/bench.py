"""Per-call time of the emulated NVFP4 Linear against plain Linears, one thread, CPU.

    python -m solrl.quant.bench [--repeats 41]

Variants, timed interleaved (one call of each per round) so machine load hits them alike;
medians over rounds and ratios within a shape are what to read (absolute times are noisy on a
shared machine):
  fp32-emu@HEAD    the EmulatedLinear this replaces: fake-quantise x to float32 x̂ = q·(s·S) with
                   torchao's E2M1 bit-twiddling (compiled), float32 F.linear against the cached
                   float32 ŵ (MKL sgemm), + bias
  fp32-emulation   the same with today's quantiser (round_e2m1)
  block-product    EmulatedLinear now: A′ = q·s (compiled quantiser), (S_a·S_w)·block_mm(A′, W′) + b
  block-bf16-box   the same with the factors held in bfloat16 and upcast for the GEMM
  block-mkl        the block product with the GEMM left on MKL's sgemm (no oneDNN bf16 fpmath)
  bf16-linear      plain F.linear, bfloat16 x, weight and bias (bf16 output)
  fp32-linear      plain F.linear, float32
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from .linear import EmulatedLinear
from .numerics import (
    E4M3_TINY,
    F4_E2M1_MAX,
    F8E4M3_MAX,
    _kernel,
    block_mm,
    fake_quantize_nvfp4,
    nvfp4_factors,
    nvfp4_unpack,
    per_tensor_amax_to_scale,
)


def _fake_nvfp4_head(x: torch.Tensor) -> torch.Tensor:
    """The activation kernel as it was before the block product (git HEAD), for the baseline."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torchao.prototype.mx_formats.kernels import f4_unpacked_to_f32, f32_to_f4_unpacked
    shape = x.shape
    xb = x.float().reshape(-1, shape[-1] // 16, 16)
    amax = xb.abs().amax()
    s_tensor = per_tensor_amax_to_scale(amax)
    safe = torch.where(amax > 0, s_tensor, torch.ones_like(s_tensor))
    block = xb.abs().amax(-1) / F4_E2M1_MAX
    s8 = torch.clamp(block / safe, min=E4M3_TINY, max=F8E4M3_MAX).to(torch.float8_e4m3fn).float()
    q = torch.clamp(xb * ((1.0 / safe) / s8).unsqueeze(-1), -F4_E2M1_MAX, F4_E2M1_MAX)
    q = f4_unpacked_to_f32(f32_to_f4_unpacked(q))
    out = q * (safe * s8).unsqueeze(-1)
    return torch.where(amax > 0, out, torch.zeros_like(out)).reshape(shape)


def variants(x: torch.Tensor, lin: nn.Linear) -> dict:
    layer = EmulatedLinear(lin)
    w_hat = nvfp4_unpack(layer.qdata, layer.block_scale, layer.tensor_scale, lin.weight.shape)
    w_bf = layer.weight_qs.bfloat16()
    b = lin.bias.detach()
    xb, wb, bb = x.bfloat16(), lin.weight.detach().bfloat16(), b.bfloat16()
    w32 = lin.weight.detach()
    s_w = layer.tensor_scale

    head = _kernel(_fake_nvfp4_head, None)

    def fp32_emulation_head():
        return F.linear(head(x), w_hat) + b

    def fp32_emulation():
        return F.linear(fake_quantize_nvfp4(x), w_hat) + b

    def block_bf16_box():
        a, s_a = nvfp4_factors(x, torch.bfloat16)
        return block_mm(a, w_bf).mul_(s_a * s_w).add_(b)

    def block_mkl():
        a, s_a = nvfp4_factors(x, torch.float32)
        return F.linear(a, layer.weight_qs).mul_(s_a * s_w).add_(b)

    return {
        "fp32-emu@HEAD": fp32_emulation_head,
        "fp32-emulation": fp32_emulation,
        "block-product": lambda: layer(x),
        "block-bf16-box": block_bf16_box,
        "block-mkl": block_mkl,
        "bf16-linear": lambda: F.linear(xb, wb, bb),
        "fp32-linear": lambda: F.linear(x, w32, b),
    }


def run(
    repeats: int = 41, shapes=((96, 64, 192, 768), (96, 64, 768, 192), (1, 64, 192, 768), (1, 64, 768, 192))
) -> list[dict]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(repeats, shapes)
    finally:
        torch.set_num_threads(threads)


def _run(repeats, shapes) -> list[dict]:
    rows = []
    for bsz, tokens, k, n in shapes:
        g = torch.Generator().manual_seed(0)
        lin = nn.Linear(k, n)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(n, k, generator=g) / k**0.5)
        x = torch.randn(bsz, tokens, k, generator=g)
        fns = variants(x, lin)
        with torch.no_grad():
            for f in fns.values():  # warm up (and compile)
                f(), f()
            times = {name: [] for name in fns}
            for _ in range(repeats):
                for name, f in fns.items():
                    t0 = time.perf_counter()
                    f()
                    times[name].append(time.perf_counter() - t0)
        med = {name: statistics.median(v) for name, v in times.items()}
        for name, m in med.items():
            rows.append(
                {
                    "shape": f"[{bsz}x{tokens}, {k}] @ [{k}, {n}]",
                    "variant": name,
                    "median_ms": 1e3 * m,
                    "x_fp32_linear": m / med["fp32-linear"],
                    "x_bf16_linear": m / med["bf16-linear"],
                    "x_fp32_emu_head": m / med["fp32-emu@HEAD"],
                }
            )
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=41)
    args = ap.parse_args()
    rows = run(args.repeats)
    print(f"threads={torch.get_num_threads()} repeats={args.repeats} (interleaved; medians)")
    print(f"{'shape':28s} {'variant':16s} {'median ms':>10s} {'/fp32-lin':>10s} {'/bf16-lin':>10s} {'/emu@HEAD':>10s}")
    for r in rows:
        print(
            f"{r['shape']:28s} {r['variant']:16s} {r['median_ms']:10.3f} {r['x_fp32_linear']:10.2f} {r['x_bf16_linear']:10.2f} {r['x_fp32_emu_head']:10.2f}"
        )


if __name__ == "__main__":
    main()
