"""Deterministic ODE solvers for rectified flow and the sigma grids (docs/algorithm.md, "Solvers and sigma grids").

Convention: x_t = (1 - σ) x0 + σ ε, the network predicts v = ε - x0, σ runs 1 -> 0.
`velocity(x, sigma) -> v` takes the current state and a Python float σ.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from .interrupt import check as check_stop

Velocity = Callable[[torch.Tensor, float], torch.Tensor]


def flux_mu(
    seq_len: int, base_seq_len: int = 256, max_seq_len: int = 4096, base_shift: float = 0.5, max_shift: float = 1.15
) -> float:
    """FLUX's dynamic shift μ: linear in the image sequence length (diffusers calculate_shift)."""
    m = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return seq_len * m + (base_shift - m * base_seq_len)


def sigma_grid(kind: str, steps: int, **kw) -> np.ndarray:
    """σ values, length steps + 1, from σ_0 to the terminal 0, in float64.

    kind = "linear": linspace(1, 0, n+1) (shapes, SANA);
    kind = "sd3":    diffusers FlowMatchEulerDiscreteScheduler grid with static shift (kw shift=3.0);
    kind = "flux":   linspace(1, 1/n, n) with the dynamic μ-shift from kw seq_len, then 0.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if kind == "linear":
        return np.linspace(1.0, 0.0, steps + 1)
    if kind == "sd3":
        shift = float(kw.get("shift", 3.0))

        def f(u):
            return shift * u / (1 + (shift - 1) * u)

        # diffusers: timesteps = linspace(f-applied? no) -> sigma_min = f(1/1000) is shifted again.
        s = f(np.linspace(1.0, f(1.0 / 1000.0), steps))
        return np.append(s, 0.0)
    if kind == "flux":
        mu = kw.get("mu")
        if mu is None:
            mu = flux_mu(int(kw["seq_len"]))
        t = np.linspace(1.0, 1.0 / steps, steps)
        s = math.exp(mu) / (math.exp(mu) + (1 / t - 1) ** 1.0)
        return np.append(s, 0.0)
    raise ValueError(f"unknown sigma grid {kind!r}: use 'linear', 'sd3' or 'flux'")


def _lam(s: float) -> float:
    """log-SNR λ(σ) = log((1 - σ)/σ); -inf at σ = 1, +inf at σ = 0."""
    if s >= 1.0:
        return -math.inf
    if s <= 0.0:
        return math.inf
    return math.log((1.0 - s) / s)


@torch.no_grad()
def solve(velocity: Velocity, x1: torch.Tensor, sigmas, solver: str = "euler") -> torch.Tensor:
    """Integrate from x at σ_0 (noise) to σ_N (= 0): returns the clean sample.

    euler: z <- z + (σ_{k+1} - σ_k) v.
    dpm2:  DPM-Solver++(2M) in x0 form on λ; first and last step Euler; the second step has
           σ_{k-1} = 1 (λ = -inf) so its correction term is 0 (special-cased, no NaN).
           Coefficients in float64, state in the input dtype.
    """
    sig = [float(s) for s in sigmas]
    n = len(sig) - 1
    z = x1
    if solver == "euler":
        for k in range(n):
            check_stop()  # a requested stop takes effect within one solver step
            v = velocity(z, sig[k])
            z = z + (sig[k + 1] - sig[k]) * v
        return z
    if solver != "dpm2":
        raise ValueError(f"unknown solver {solver!r}: use 'euler' or 'dpm2'")
    prev_x0 = None
    for k in range(n):
        check_stop()
        s, s_next = sig[k], sig[k + 1]
        v = velocity(z, s)
        x0 = z - s * v
        if k == 0 or k == n - 1 or s_next <= 0.0:
            z = z + (s_next - s) * v  # == (1-σ')x0 + σ' ε̂ (DDIM, η = 0); lands on x0 at σ' = 0
        else:
            lam_s, lam_next, lam_prev = _lam(s), _lam(s_next), _lam(sig[k - 1])
            h = lam_next - lam_s
            if math.isinf(lam_prev):
                d1 = torch.zeros_like(x0)  # r0 = ∞: the 2nd-order term vanishes
            else:
                r0 = (lam_s - lam_prev) / h
                d1 = (x0 - prev_x0) * (1.0 / r0)
            alpha_next = 1.0 - s_next
            z = (s_next / s) * z - (alpha_next * math.expm1(-h)) * (x0 + 0.5 * d1)
        prev_x0 = x0
    return z
