"""W8A8 int8 on the CPU's integer GEMM kernels: torch's dynamic quantised Linear.

Weights: symmetric int8 with one scale per output channel (amax / 127), quantised once when the
explore copy is built. Activations: asymmetric uint8 with one dynamic scale and zero point per
tensor (the call's whole input, min/max), computed inside the kernel on every call. Per tensor,
not per token, because that is what the fused kernels do: `quantized::linear_dynamic` quantises
the input, runs the u8×s8 GEMM with int32 accumulation and dequantises with the bias in one op.
Per-token scales would need the quantisation as separate torch ops around `torch._int_mm`
(torchao's Int8DynamicActivationInt8Weight does exactly that on the CPU), measured 3–5× slower
than this on the shapes model's Linear shapes (benchmarks/results/cost/int8_kernels-*.md). The
NVFP4 emulation's activation scale is per tensor too, so both proxies see a batch alike.

Which library runs the GEMM (`int8_engine`), chosen by what the CPU has, measured on the shapes
model's shapes with one thread:

* `onednn` where the CPU has AVX-512 VNNI or AMX-INT8 (oneDNN's brgemm kernels; 2–4× faster
  than fbgemm there), unless torch or oneDNN are held to AVX2 (`ATEN_CPU_CAPABILITY=avx2`,
  `ONEDNN_MAX_CPU_ISA=AVX2`);
* `fbgemm` elsewhere on x86 (AVX2: ~0.45–0.6 of a float32 Linear, where oneDNN's int8 is no
  faster than float32). fbgemm's AVX2 kernel multiplies u8×s8 pairs into int16 with saturation,
  so activations are quantised to 7 bits there (`reduce_range`, as torch's own dynamic Linear does);
* `qnnpack` on ARM.

Integer products and int32 sums are exact, so the result does not depend on threads or on the
blocking of the GEMM: one machine gives bit-identical runs. Another machine kind may pick another
engine (and activation range): its numbers differ, as float kernels do across machines.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from functools import cache
from pathlib import Path

import torch
from torch import nn

from ..settings import settings

QMAX = 127


def _cpu_flags() -> set[str]:
    try:
        return set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return set()


@cache
def int8_engine() -> str:
    """The quantised engine the int8 explore runs on, on this machine (see the module docstring)."""
    engines = set(torch.backends.quantized.supported_engines)
    flags = _cpu_flags()
    aten_avx512 = torch.backends.cpu.get_cpu_capability().upper().startswith("AVX512")
    isa_cap = (settings().onednn_max_cpu_isa or "ALL").upper()
    onednn_avx512 = isa_cap in ("ALL", "DEFAULT") or isa_cap.startswith(("AVX512", "AVX10", "AMX"))
    if "onednn" in engines and aten_avx512 and onednn_avx512 and ("avx512_vnni" in flags or "amx_int8" in flags):
        return "onednn"
    if "fbgemm" in engines:
        return "fbgemm"
    if "qnnpack" in engines:
        return "qnnpack"
    raise RuntimeError(
        f"explore.precision int8 needs a quantised CPU engine (fbgemm, onednn or qnnpack); this torch has {sorted(engines)}: use precision nvfp4"
    )


@contextmanager
def _engine(name: str):
    """The packing op reads the global engine; the packed weight then carries its own kernel."""
    before = torch.backends.quantized.engine
    torch.backends.quantized.engine = name
    try:
        yield
    finally:
        torch.backends.quantized.engine = before


def quantize_weight_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8: (codes int8 [out, in], scales float32 [out]) with
    w ≈ codes · scale[:, None]; an all-zero row gets scale 1 (codes 0)."""
    w = w.detach().float()
    scale = w.abs().amax(1) / QMAX
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    codes = torch.clamp(torch.round(w / scale[:, None]), -QMAX, QMAX).to(torch.int8)
    return codes, scale


class Int8Linear(nn.Module):
    """W8A8 Linear on torch's `quantized::linear_dynamic` (an integer GEMM), inference only.

    Buffers `weight_int8` / `weight_scale` hold what was quantised (what the report counts);
    the engine's packed form of them is what runs. The input is cast to float32 (the op's
    input; bf16 models hand bf16 in) and the output back to the input's dtype."""

    def __init__(self, linear: nn.Linear, engine: str | None = None):
        super().__init__()
        if linear.weight.device.type != "cpu":
            raise ValueError("explore.precision int8 runs on the CPU's integer kernels: use nvfp4 or fp8 on a GPU")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.engine = engine or int8_engine()
        codes, scale = quantize_weight_int8(linear.weight)
        self.register_buffer("weight_int8", codes)
        self.register_buffer("weight_scale", scale)
        self.bias = (
            None if linear.bias is None else nn.Parameter(linear.bias.detach().float().clone(), requires_grad=False)
        )
        self.reduce_range = self.engine == "fbgemm"  # see the module docstring
        with (
            warnings.catch_warnings()
        ):  # torch marks its quantised tensor type deprecated (pytorch#184982); the prepack op still takes one
            warnings.simplefilter("ignore")
            qweight = torch._make_per_channel_quantized_tensor(
                codes, scale.double(), torch.zeros(self.out_features, dtype=torch.long), 0
            )
        with _engine(self.engine):
            self._packed = torch.ops.quantized.linear_prepack(qweight, self.bias)
        self.packed_bytes = codes.numel() + 4 * scale.numel()
        self.dense_bytes = linear.weight.numel() * linear.weight.element_size()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        y = torch.ops.quantized.linear_dynamic(x.float(), self._packed, self.reduce_range)
        return y.to(dtype)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, int8 W8A8 ({self.engine})"


_ENGINE_WHY = {"onednn": "oneDNN, this CPU has AVX-512 VNNI / AMX-INT8", "fbgemm": "fbgemm, AVX2", "qnnpack": "QNNPACK"}


def describe_explore(precision: str, backend: str, device_type: str) -> str:
    """One line for a run's output: which explore runs here and why (measurements: docs/cpu-explore.md)."""
    if precision == "int8":
        engine = int8_engine()
        return (
            f"explore: int8 W8A8 on integer GEMMs ({_ENGINE_WHY.get(engine, engine)}): on the CPU kinds measured it samples a candidate "
            "faster than emulated NVFP4 and ranks seeds closer to high precision (docs/cpu-explore.md)"
        )
    if precision == "nvfp4" and backend == "emulated" and device_type == "cpu":
        return (
            "explore: NVFP4 W4A4 emulated: exact NVFP4 numerics, not fast on a CPU "
            "(explore.precision: int8 is the CPU's fast explore, docs/cpu-explore.md)"
        )
    if precision == "high":
        return "explore: high precision (naive scaling)"
    return f"explore: {precision}" + (f" ({backend})" if precision == "nvfp4" else "")
