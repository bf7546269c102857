"""Low-precision numerics: NVFP4 (through torchao) and FP8 E4M3 per-tensor fake quantisation.

NVFP4 (ALGORITHM.md §4): E2M1 elements in blocks of 16 along the last (reduction) dimension,
one E4M3 scale per block, one FP32 per-tensor scale S = amax / (448 * 6); x̂ = q * s * S.
The reference numerics are torchao's `NVFP4Tensor` with two-level scaling; `nvfp4_pack` calls
it directly. `fake_quantize_nvfp4` is the same arithmetic without packing the 4-bit codes into
bytes (what the emulated matmul needs on every call); tests assert it is bit-identical to the
torchao round trip. One guarded difference: an all-zero tensor gives exact zeros (torchao
divides by S = 0 and returns NaN).
"""

from __future__ import annotations

import os
import warnings

import torch

# torchao probes optional CUDA/C++ extensions at import and warns when they are absent; on a
# CPU-only machine that is expected, so keep those messages out of users' logs.
# (The "torchao" logger itself is set to ERROR in solrl/__init__.py.)
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from torchao.prototype.mx_formats.constants import F4_E2M1_MAX, F8E4M3_MAX
    from torchao.prototype.mx_formats.kernels import f4_unpacked_to_f32, f32_to_f4_unpacked
    from torchao.prototype.mx_formats.nvfp4_tensor import NVFP4Tensor, per_tensor_amax_to_scale

BLOCK = 16
E4M3_TINY = torch.finfo(torch.float8_e4m3fn).tiny


def _as_2d(x: torch.Tensor) -> torch.Tensor:
    if x.shape[-1] % BLOCK:
        raise ValueError(f"NVFP4 needs the last dimension to be a multiple of {BLOCK}, got shape {tuple(x.shape)}")
    return x.float().reshape(-1, x.shape[-1]).contiguous()


def nvfp4_pack(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """torchao NVFP4 quantisation of a 2-D tensor: (packed uint8 codes [M, K/2],
    E4M3 block scales [M, K/16], float32 per-tensor scale S)."""
    x2 = _as_2d(x)
    amax = x2.abs().amax()
    if amax == 0:  # torchao would divide by S = 0
        m, k = x2.shape
        return (torch.zeros(m, k // 2, dtype=torch.uint8), torch.zeros(m, k // BLOCK, dtype=torch.float8_e4m3fn), torch.zeros((), dtype=torch.float32))
    t = NVFP4Tensor.to_nvfp4(x2, per_tensor_scale=per_tensor_amax_to_scale(amax))
    return t.qdata, t.scale, t.per_tensor_scale


def nvfp4_unpack(qdata: torch.Tensor, scale: torch.Tensor, per_tensor_scale: torch.Tensor, shape) -> torch.Tensor:
    """Dequantise torchao-packed NVFP4 back to float32 of `shape`."""
    if float(per_tensor_scale) == 0.0:
        return torch.zeros(shape, dtype=torch.float32)
    t = NVFP4Tensor(qdata, scale, BLOCK, torch.float32, per_tensor_scale)
    return t.dequantize(torch.float32).reshape(shape)


def _fake_nvfp4(x: torch.Tensor) -> torch.Tensor:
    shape = x.shape
    xb = x.float().reshape(-1, shape[-1] // BLOCK, BLOCK)
    amax = xb.abs().amax()
    s_tensor = per_tensor_amax_to_scale(amax)
    safe = torch.where(amax > 0, s_tensor, torch.ones_like(s_tensor))
    block = xb.abs().amax(-1) / F4_E2M1_MAX
    s8 = torch.clamp(block / safe, min=E4M3_TINY, max=F8E4M3_MAX).to(torch.float8_e4m3fn).float()
    q = torch.clamp(xb * ((1.0 / safe) / s8).unsqueeze(-1), -F4_E2M1_MAX, F4_E2M1_MAX)
    q = f4_unpacked_to_f32(f32_to_f4_unpacked(q))
    out = q * (safe * s8).unsqueeze(-1)
    return torch.where(amax > 0, out, torch.zeros_like(out)).reshape(shape)


_compiled = None


def fake_quantize_nvfp4(x: torch.Tensor, compiled: bool | None = None) -> torch.Tensor:
    """Quantise to NVFP4 and back (float32), per-tensor scale from this tensor's amax.
    `compiled` (default: unless SOLRL_NO_COMPILE=1) uses the torch.compile'd kernel."""
    if x.shape[-1] % BLOCK:
        raise ValueError(f"NVFP4 needs the last dimension to be a multiple of {BLOCK}, got shape {tuple(x.shape)}")
    global _compiled
    if compiled is None:
        compiled = os.environ.get("SOLRL_NO_COMPILE") != "1"
    if not compiled:
        return _fake_nvfp4(x)
    if _compiled is None:
        # One fused kernel instead of ~12 elementwise passes: ~3x faster activation quantisation
        # on the CPU, and the same bits (checked by tests against torchao).
        _compiled = torch.compile(_fake_nvfp4, dynamic=True)
    return _compiled(x)


def fake_quantize_fp8(x: torch.Tensor) -> torch.Tensor:
    """FP8 E4M3 with per-tensor current scaling: scale = amax / 448."""
    xf = x.float()
    amax = xf.abs().amax()
    if amax == 0:
        return torch.zeros_like(xf)
    scale = amax / F8E4M3_MAX
    return (xf / scale).clamp(-F8E4M3_MAX, F8E4M3_MAX).to(torch.float8_e4m3fn).float() * scale
