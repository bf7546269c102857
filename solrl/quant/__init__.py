"""Low-precision explore backends, torchao-style: one verb, one config.

    report = quantize_(model, NVFP4Config(skip=["x_embedder", ...], min_dim=0, backend="emulated"))

Backends: `emulated` NVFP4 W4A4 fake quantisation with torchao numerics (any device; what runs on
the CPU and in tests), `transformer_engine` NVFP4 on Blackwell GPUs, `fp8` (E4M3 per-tensor
current scaling) and `none` (ablations). See ALGORITHM.md §4.
"""

from .config import NVFP4Config, QuantReport, select_linears
from .linear import EmulatedLinear, quantize_
from .numerics import fake_quantize_fp8, fake_quantize_nvfp4, nvfp4_pack, nvfp4_unpack

__all__ = [
    "NVFP4Config",
    "QuantReport",
    "EmulatedLinear",
    "quantize_",
    "select_linears",
    "fake_quantize_nvfp4",
    "fake_quantize_fp8",
    "nvfp4_pack",
    "nvfp4_unpack",
]
