"""Low-precision explore backends, torchao-style: one verb, one config.

    report = quantize_(model, NVFP4Config(skip=["x_embedder", ...], min_dim=0, backend="emulated"))

Backends: `emulated` NVFP4 W4A4 with torchao numerics (any device; what runs on the CPU and in
tests), computed as a block-scaled MMA: y = (S_a·S_w)·(A′ @ W′ᵀ) + b with A′ = q·s, W′ exact in
bfloat16 and float32 accumulation; `transformer_engine` NVFP4 on Blackwell GPUs, `fp8` (E4M3
per-tensor current scaling, the same block product), `int8` (W8A8 on the CPU's integer GEMM
kernels: torch's dynamic quantised Linear, fbgemm or oneDNN; solrl/quant/int8.py) and `none`
(ablations). `NVFP4Config(lowrank=r)`
adds SVDQuant's rank-r bfloat16 branch to `emulated`. See ALGORITHM.md §4.
"""

from .config import NVFP4Config, QuantReport, select_linears
from .int8 import Int8Linear, int8_engine
from .linear import EmulatedLinear, quantize_
from .lowrank import lowrank_split
from .numerics import block_mm, fake_quantize_fp8, fake_quantize_nvfp4, fp8_factors, nvfp4_factors, nvfp4_pack, nvfp4_unpack

__all__ = [
    "NVFP4Config",
    "QuantReport",
    "EmulatedLinear",
    "Int8Linear",
    "int8_engine",
    "quantize_",
    "select_linears",
    "fake_quantize_nvfp4",
    "fake_quantize_fp8",
    "nvfp4_pack",
    "nvfp4_unpack",
    "nvfp4_factors",
    "fp8_factors",
    "block_mm",
    "lowrank_split",
]
