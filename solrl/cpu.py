"""What this CPU can do for torch: whether bf16 matrix products are fast here.

Host kinds differ between the machines people run on: AVX-512 BF16 or AMX hosts multiply bf16
on matrix units, AVX2-only hosts emulate it (~10-30x slower than float32). `model.dtype: auto`,
the NVFP4 emulation's output dtype and the memory plan follow this answer.
"""

from __future__ import annotations

from pathlib import Path

import torch


def cpu_has_bf16_matmul() -> bool:
    """True when the CPU has bf16 matrix instructions (x86 avx512_bf16 or AMX-BF16) and torch
    may use them: held to AVX2 (ATEN_CPU_CAPABILITY=avx2 or ONEDNN_MAX_CPU_ISA=AVX2, how an AVX2
    host is measured on a larger one) its bf16 kernels are ~10-30x slower than float32, as on an
    AVX2-only host."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    if not torch.backends.cpu.get_cpu_capability().upper().startswith("AVX512"):
        return False
    return ("avx512_bf16" in flags or "amx_bf16" in flags) and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
