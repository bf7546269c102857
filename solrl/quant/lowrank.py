"""The low-rank high-precision branch of SVDQuant (Li et al., 2024): W ≈ L₁L₂ + NVFP4(W − L₁L₂).

L₁ [out, r] and L₂ [r, in] come from the truncated SVD of W (float64, √σ on each side) and are
stored in bfloat16, the precision of the GPU kernels' 16-bit low-rank branch. The residual is
formed from the stored (rounded) factors, R = W − L₁L₂, so the bf16 rounding of L is part of what
the 4-bit residual quantiser sees: the layer's weight is exactly L₁L₂ + R̂.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

LOWRANK_DTYPE = torch.bfloat16


@contextmanager
def _one_thread():
    """MKL's SVD depends on the thread count (checked: 1 vs 2 threads give different bits);
    one thread makes it reproducible run to run, whatever the process uses."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def lowrank_split(w: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(L₁ [out, r], L₂ [r, in] in bfloat16, R = W − L₁L₂ in float32), r = min(rank, in, out).

    Deterministic on a given machine: float64 SVD and products on one thread. R is the float64
    difference rounded once to float32 (the products of bf16 factors are exact in float64)."""
    if rank < 1:
        raise ValueError(f"lowrank_split needs rank >= 1, got {rank}")
    w64 = w.detach().to(torch.float64)
    r = min(rank, *w64.shape)
    with _one_thread():
        u, s, vh = torch.linalg.svd(w64, full_matrices=False)
        root = s[:r].sqrt()
        # float64 -> float32 -> bfloat16: the cast torch does anyway, written out
        l1 = (u[:, :r] * root).float().to(LOWRANK_DTYPE)
        l2 = (root[:, None] * vh[:r]).float().to(LOWRANK_DTYPE)
        res = (w64 - l1.double() @ l2.double()).float()
    return l1, l2, res
