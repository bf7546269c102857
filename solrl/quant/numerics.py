"""Low-precision numerics: NVFP4 (through torchao) and FP8 E4M3 per-tensor fake quantisation,
and the block products the emulated Linear multiplies with.

NVFP4 (docs/algorithm.md, "NVFP4 numerics"): E2M1 elements in blocks of 16 along the last (reduction) dimension,
one E4M3 scale per block, one FP32 per-tensor scale S = amax / (448 * 6); x̂ = q * s * S.
The reference numerics are torchao's `NVFP4Tensor` with two-level scaling; `nvfp4_pack` calls
it directly. `fake_quantize_nvfp4` is the same arithmetic without packing the 4-bit codes into
bytes (E2M1 rounding by `round_e2m1`, arithmetic instead of torchao's bit twiddling, ~8x faster
compiled); tests assert it is bit-identical to the torchao round trip. One guarded difference:
an all-zero tensor gives exact zeros (torchao divides by S = 0 and returns NaN).

Block products. q (E2M1, <= 2 significant bits) times s (E4M3, <= 4 significant bits, a normal
number in [2^-6, 448]) has <= 6 significant bits and lies in [2^-7, 2688]: the factor q·s is
a bfloat16 number, exactly. `nvfp4_factors` returns (q·s, S) instead of q·(s·S), and
a Linear computes y = (S_a·S_w) · (A′ @ W′ᵀ) with exact products and float32 accumulation: the
arithmetic of a block-scaled MMA (tcgen05 on Blackwell). FP8 likewise: `fp8_factors` returns
(e4m3 code value, S), 4 significant bits, also exact in bfloat16. `block_mm` is the GEMM.
"""

from __future__ import annotations

import os
import warnings
from contextlib import contextmanager

import torch
import torch.nn.functional as F

# torchao probes optional CUDA/C++ extensions at import and warns when they are absent; on a
# CPU-only machine that is expected, so keep those messages out of users' logs.
# (The "torchao" logger itself is set to ERROR in solrl/__init__.py.)
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from torchao.prototype.mx_formats.constants import F4_E2M1_MAX, F8E4M3_MAX
    from torchao.prototype.mx_formats.nvfp4_tensor import NVFP4Tensor, per_tensor_amax_to_scale

BLOCK = 16
E4M3_TINY = torch.finfo(torch.float8_e4m3fn).tiny


def _check_blocks(x: torch.Tensor) -> None:
    if x.shape[-1] % BLOCK:
        raise ValueError(f"NVFP4 needs the last dimension to be a multiple of {BLOCK}, got shape {tuple(x.shape)}")


def _as_2d(x: torch.Tensor) -> torch.Tensor:
    _check_blocks(x)
    return x.float().reshape(-1, x.shape[-1]).contiguous()


def nvfp4_pack(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """torchao NVFP4 quantisation of a 2-D tensor: (packed uint8 codes [M, K/2],
    E4M3 block scales [M, K/16], float32 per-tensor scale S)."""
    x2 = _as_2d(x)
    amax = x2.abs().amax()
    if amax == 0:  # torchao would divide by S = 0
        m, k = x2.shape
        dev = x2.device
        return (
            torch.zeros(m, k // 2, dtype=torch.uint8, device=dev),
            torch.zeros(m, k // BLOCK, dtype=torch.float8_e4m3fn, device=dev),
            torch.zeros((), dtype=torch.float32, device=dev),
        )
    t = NVFP4Tensor.to_nvfp4(x2, per_tensor_scale=per_tensor_amax_to_scale(amax))
    return t.qdata, t.scale, t.per_tensor_scale


def nvfp4_unpack(qdata: torch.Tensor, scale: torch.Tensor, per_tensor_scale: torch.Tensor, shape) -> torch.Tensor:
    """Dequantise torchao-packed NVFP4 back to float32 of `shape`."""
    if float(per_tensor_scale) == 0.0:
        return torch.zeros(shape, dtype=torch.float32, device=qdata.device)
    t = NVFP4Tensor(qdata, scale, BLOCK, torch.float32, per_tensor_scale)
    return t.dequantize(torch.float32).reshape(shape)


def nvfp4_unpack_factors(
    qdata: torch.Tensor, scale: torch.Tensor, shape, dtype: torch.dtype = torch.bfloat16
) -> torch.Tensor:
    """The block-product factor q·s of torchao-packed NVFP4 (no per-tensor scale), of `shape`:
    torchao's dequantisation with per_tensor_scale=None, exact in bfloat16."""
    t = NVFP4Tensor(qdata, scale, BLOCK, torch.float32, None)
    return t.dequantize(torch.float32).reshape(shape).to(dtype)


def round_e2m1(v: torch.Tensor) -> torch.Tensor:
    """Round float32 v in [-6, 6] to the nearest E2M1 value, ties to the even code: the grid has
    spacing 1/2 on [0, 2), 1 on [2, 4), 2 on [4, 6], and a code's parity is its grid index's, so
    it is round-half-even of v/spacing (power-of-two scalings: exact). Bitwise equal to torchao's
    f4_unpacked_to_f32(f32_to_f4_unpacked(v)) on every float32 in [-6, 6] (checked exhaustively,
    signed zeros included; tests re-check ties and their neighbours) and ~8x cheaper compiled."""
    a = v.abs()
    inv = torch.where(a < 2.0, 2.0, torch.where(a < 4.0, 1.0, 0.5))
    return torch.round(v * inv) * (1.0 / inv)


def _blocks(x: torch.Tensor) -> torch.Tensor:
    """x [..., K] as [M, K/16, 16] (a view when x is contiguous). The kernels take and return
    this blocked shape: with dynamic shapes, inductor then vectorises every store (a [M, K]
    output costs a scalar loop: it cannot prove K = 16·(K/16))."""
    _check_blocks(x)
    return x.reshape(-1, x.shape[-1] // BLOCK, BLOCK)


def _nvfp4_parts(xb: torch.Tensor):
    """torchao's two-level NVFP4 arithmetic on blocks xb [M, K/16, 16]: E2M1 values q (same
    shape), E4M3 block scales s [M, K/16] (as float32), the per-tensor scale (1 where amax = 0)
    and amax > 0."""
    xb = xb.float()
    amax = xb.abs().amax()
    s_tensor = per_tensor_amax_to_scale(amax)
    nonzero = amax > 0
    safe = torch.where(nonzero, s_tensor, torch.ones_like(s_tensor))
    block = xb.abs().amax(-1) / F4_E2M1_MAX
    s8 = torch.clamp(block / safe, min=E4M3_TINY, max=F8E4M3_MAX).to(torch.float8_e4m3fn).float()
    q = round_e2m1(torch.clamp(xb * ((1.0 / safe) / s8).unsqueeze(-1), -F4_E2M1_MAX, F4_E2M1_MAX))
    return q, s8, safe, nonzero


def _fake_nvfp4_blocks(xb: torch.Tensor) -> torch.Tensor:
    q, s8, safe, nonzero = _nvfp4_parts(xb)
    out = q * (safe * s8).unsqueeze(-1)  # torchao's order: (S·s) first, then ·q
    return torch.where(nonzero, out, torch.zeros_like(out))


def _fake_nvfp4(x: torch.Tensor) -> torch.Tensor:
    """The eager NVFP4 round trip of x (any shape [..., K]), float32."""
    return _fake_nvfp4_blocks(_blocks(x)).reshape(x.shape)


def _nvfp4_factors(xb: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    q, s8, safe, nonzero = _nvfp4_parts(xb)
    a = (q * s8.unsqueeze(-1)).to(dtype)  # exact: <= 6 significant bits
    return a, torch.where(nonzero, safe, torch.zeros_like(safe))


def _fp8_factors(x: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    xf = x.float()
    amax = xf.abs().amax()
    nonzero = amax > 0
    scale = amax / F8E4M3_MAX
    safe = torch.where(nonzero, scale, torch.ones_like(scale))
    a = (xf / safe).clamp(-F8E4M3_MAX, F8E4M3_MAX).to(torch.float8_e4m3fn).to(dtype)  # exact in bf16
    return a, torch.where(nonzero, scale, torch.zeros_like(scale))


_compiled: dict = {}


def _kernel(fn, compiled: bool | None, dtype: torch.dtype = torch.float32):
    """`fn` itself, or its torch.compile'd form (default: unless SOLRL_NO_COMPILE=1), one per
    factor container `dtype` (each compiles its own graph and is checked on its own)."""
    if compiled is None:
        from ..settings import settings

        compiled = not settings().no_compile
    if not compiled:
        return fn
    key = (fn, dtype)
    if key not in _compiled:
        _own_cache_per_capability()
        # One fused kernel instead of ~12 elementwise passes: ~7x faster activation quantisation
        # on the CPU, and the same bits (checked by tests against torchao and the eager twin).
        _compiled[key] = _checked(fn, torch.compile(fn, dynamic=True), dtype)
    return _compiled[key]


def _own_cache_per_capability() -> None:
    """A process held to another CPU capability (ATEN_CPU_CAPABILITY=avx2 on an AVX-512 host, how
    the AVX2 kind is measured) compiles its kernels into a cache of its own. Measured with torch
    2.13: inductor's on-disk cache does not key on that variable, so such a process and a normal
    one on the same machine served each other's kernels: NaNs, wrong scales, heap corruption."""
    from ..settings import set_inductor_cache_dir, settings

    cap = settings().aten_cpu_capability
    if not cap:
        return
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    from torch._inductor.utils import clear_caches

    default = os.path.abspath(default_cache_dir())
    if (
        settings().torchinductor_cache_dir or default
    ) == default:  # not chosen by the user (torch sets it on first use)
        set_inductor_cache_dir(f"{default}-{cap.lower()}")
        clear_caches()


def _bf16_epilogue(y: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """(S_a·S_w)·y + b of a bfloat16 GEMM output y [..., N], computed in float32 and rounded once
    to bfloat16: the epilogue of a block-scaled MMA that emits bf16 (Blackwell's NVFP4 GEMM). One
    fused pass compiled; in eager bf16 ops each op would round again (and run ~10x slower)."""
    return (y.float() * scale + bias).to(torch.bfloat16)


def _probe_args(fn, x: torch.Tensor, dtype: torch.dtype) -> tuple:
    if fn is _bf16_epilogue:  # y [M, N] in bf16, a scalar scale, a bias [N]
        return (x.bfloat16(), torch.tensor(0.37), torch.linspace(-2.0, 3.0, x.shape[-1]))
    return (x,) if fn is _fake_nvfp4_blocks else (x, dtype)


def _checked(fn, cfn, dtype: torch.dtype = torch.float32):
    """`cfn` when it gives `fn`'s bits on probe inputs (blocked [M, K/16, 16] for the NVFP4
    kernels, [M, K] for FP8 and the epilogue; a small odd M and a model-sized one; the factor
    kernels asked for `dtype` factors), else `fn` with a warning.
    A defence: a compiled kernel served from a cache made under another CPU capability gave
    wrong scales and NaNs (see _own_cache_per_capability); the eager kernel is always right."""
    g = torch.Generator().manual_seed(0)
    for m, k in ((7, 48), (1000, 192)):
        x = torch.randn(m, k, generator=g) * 3
        if fn not in (_fp8_factors, _bf16_epilogue):
            x = x.reshape(m, k // BLOCK, BLOCK)
        want, got = fn(*_probe_args(fn, x, dtype)), cfn(*_probe_args(fn, x, dtype))
        want, got = (want, got) if isinstance(want, tuple) else ((want,), (got,))
        if not all(torch.equal(a, b) for a, b in zip(want, got)):
            warnings.warn(
                f"the torch.compile'd {fn.__name__.lstrip('_')} kernel differs from the eager one on this CPU "
                f"(torch {torch.__version__}, inductor ISA {_vec_isa()}; a compile cache made under another CPU capability "
                "does this): using the eager kernel (same bits, slower)",
                stacklevel=3,
            )
            return fn
    return cfn


def _vec_isa() -> str:
    try:
        from torch._inductor.cpu_vec_isa import pick_vec_isa

        return str(pick_vec_isa())
    except Exception:  # noqa: BLE001 - only for the message
        return "?"


def fake_quantize_nvfp4(x: torch.Tensor, compiled: bool | None = None) -> torch.Tensor:
    """Quantise to NVFP4 and back (float32), per-tensor scale from this tensor's amax.
    `compiled` (default: unless SOLRL_NO_COMPILE=1) uses the torch.compile'd kernel."""
    return _kernel(_fake_nvfp4_blocks, compiled)(_blocks(x)).reshape(x.shape)


def nvfp4_factors(
    x: torch.Tensor, dtype: torch.dtype = torch.bfloat16, compiled: bool | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """NVFP4-quantise `x` (per-tensor scale from its amax) into block-product factors:
    (A′ = q·s of x's shape, exact in bfloat16, held in `dtype`; S float32 scalar), so that
    A′·S = fake_quantize_nvfp4(x) up to the one rounding of the product. All-zero x: (0, 0).
    `compiled` as for fake_quantize_nvfp4 (the eager and compiled kernels are bit-identical)."""
    a, s = _kernel(_nvfp4_factors, compiled, dtype)(_blocks(x), dtype)
    return a.reshape(x.shape), s


def fp8_factors(
    x: torch.Tensor, dtype: torch.dtype = torch.bfloat16, compiled: bool | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """FP8 E4M3 with per-tensor current scaling as block-product factors: (the e4m3 values of
    x/S, exact in bfloat16, held in `dtype`; S = amax / 448), A′·S = fake_quantize_fp8(x).
    All-zero x: (0, 0). `compiled` as for fake_quantize_nvfp4."""
    a, s = _kernel(_fp8_factors, compiled, dtype)(x.reshape(-1, x.shape[-1]), dtype)
    return a.reshape(x.shape), s


def bf16_epilogue(
    y: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None, compiled: bool | None = None
) -> torch.Tensor:
    """scale·y (+ bias) of a bfloat16 GEMM output, in float32 and rounded once to bfloat16
    (`compiled` as for fake_quantize_nvfp4; checked against the eager form like the quantisers)."""
    if bias is None:
        return (y.float() * scale).to(torch.bfloat16)
    return _kernel(_bf16_epilogue, compiled)(y, scale, bias.float())


def fake_quantize_fp8(x: torch.Tensor) -> torch.Tensor:
    """FP8 E4M3 with per-tensor current scaling: scale = amax / 448."""
    xf = x.float()
    amax = xf.abs().amax()
    if amax == 0:
        return torch.zeros_like(xf)
    scale = amax / F8E4M3_MAX
    return (xf / scale).clamp(-F8E4M3_MAX, F8E4M3_MAX).to(torch.float8_e4m3fn).float() * scale


@contextmanager
def bf16_fpmath():
    """Let oneDNN run float32 matmuls on bfloat16 inputs (float32 accumulation and output):
    `torch.backends.mkldnn.matmul.fp32_precision = "bf16"`, restored on exit. Exact for operands
    whose values are bfloat16 numbers, which is all `block_mm` is given. Process-global while
    active (like every torch.backends flag): do not run unrelated float32 matmuls concurrently."""
    m = getattr(getattr(torch.backends, "mkldnn", None), "matmul", None)
    old = getattr(m, "fp32_precision", None)
    if old is None:  # no such flag in this torch: plain float32 matmuls
        yield
        return
    m.fp32_precision = "bf16"
    try:
        yield
    finally:
        m.fp32_precision = old


def block_mm(a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """A′ @ W′ᵀ (a [..., K], w [N, K]) in float32, for factors holding bfloat16 numbers (in a
    bfloat16 or float32 container): exact products, float32 accumulation, float32 result.

    CPU: torch 2.13 has no CPU kernel with bfloat16 inputs and a float32 output (mm/addmm/bmm
    with out_dtype are CUDA-only; every CPU bf16 matmul rounds its output to bf16). So the
    operands are float32 (upcasting bf16 is exact) and the matmul runs in oneDNN with bf16
    fpmath: an AMX CPU then multiplies in bf16 with float32 accumulation; an AVX-512 one runs
    oneDNN's float32 brgemm (~2x MKL's sgemm on AMD); both are exact since the inputs are bf16
    numbers.
    Elsewhere (CUDA), bfloat16 operands go to `torch.mm(..., out_dtype=torch.float32)`: a bf16
    tensor-core GEMM with float32 accumulation and a float32 result, no float32 copy of the
    weight. Float32 operands (or a torch without that overload) take a float32 matmul; TF32
    would be exact for them too (11-bit significand)."""
    if a.device.type == "cpu":
        a, w = a.float(), w.float()
        with bf16_fpmath():
            return F.linear(a, w)
    if a.dtype == w.dtype == torch.bfloat16 and _HAS_MM_OUT_DTYPE[0]:
        try:
            out = torch.mm(a.reshape(-1, a.shape[-1]), w.t(), out_dtype=torch.float32)
            return out.reshape(*a.shape[:-1], w.shape[0])
        except (TypeError, NotImplementedError):  # an older torch: no out_dtype overload
            _HAS_MM_OUT_DTYPE[0] = False
    return F.linear(a.float(), w.float())


_HAS_MM_OUT_DTYPE = [True]
