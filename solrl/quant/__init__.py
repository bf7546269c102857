"""Low-precision explore backends, torchao-style: one verb, one config class per scheme.

    report = quantize_(model, NVFP4Config(skip=["x_embedder", ...], min_dim=0, backend="emulated"))
    report = quantize_(model, FP8Config(skip=[...], backend="transformer_engine"))

Schemes: NVFP4 W4A4 with torchao numerics (`NVFP4Config`) and FP8 E4M3 W8A8 with per-tensor
current scaling (`FP8Config`). Backends: `emulated` (any device; what runs on the CPU and in
tests), computed as a block-scaled MMA: y = (S_a·S_w)·(A′ @ W′ᵀ) + b with A′ = q·s, W′ exact in
bfloat16 and float32 accumulation (W′ held in bfloat16 on a GPU, bf16 GEMMs);
`transformer_engine` (TE's kernels: NVFP4 on Blackwell, FP8 on Ada/Hopper/Blackwell, with the
recipe flags that match the emulation, see solrl/accelerator.py); `none` (ablations).
`NVFP4Config(lowrank=r)` adds SVDQuant's rank-r bfloat16 branch to `emulated`;
`NVFP4Config(output="bfloat16")` makes its GEMM emit bf16 as a real NVFP4 GEMM does. `Int8Config`: W8A8
on the CPU's integer GEMM kernels (torch's dynamic quantised Linear, fbgemm or oneDNN;
solrl/quant/int8.py). See docs/algorithm.md, "NVFP4 numerics"; backends per GPU generation:
docs/gpus-hopper-blackwell.md; int8: docs/cpu-explore.md.
"""

from .config import FP8Config, Int8Config, NVFP4Config, QuantConfig, QuantReport, emulation_output, select_linears
from .engines import explore_engine
from .int8 import Int8Linear, int8_engine
from .linear import EmulatedLinear, quantize_
from .lowrank import lowrank_split
from .numerics import (
    block_mm,
    fake_quantize_fp8,
    fake_quantize_nvfp4,
    fp8_factors,
    nvfp4_factors,
    nvfp4_pack,
    nvfp4_unpack,
)

__all__ = [
    "NVFP4Config",
    "FP8Config",
    "Int8Config",
    "QuantConfig",
    "QuantReport",
    "EmulatedLinear",
    "Int8Linear",
    "int8_engine",
    "emulation_output",
    "explore_engine",
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
