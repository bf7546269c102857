"""The DiffusionNFT update (docs/algorithm.md, "The DiffusionNFT loss"), readable top to bottom.

rewards --advantages--> r in [0, 1]
x_t = (1 - t) x0 + t eps;  v_theta (trainable), v_old (old adapter), v_ref (no adapter)
v+ = beta v_theta + (1 - beta) v_old          v- = (1 + beta) v_old - beta v_theta
x0+- = x_t - t v+-;   w+- = max(mean|x0+- - x0|, 1e-5)   (per sample, detached, float64)
L+- = mean((x0+- - x0)^2 / w+-);   l = (r L+ + (1 - r) L-) / beta
loss = 5 mean(l) + kl_beta mean((v_theta - v_ref)^2)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

ADV_CLIP = 5.0


def timesteps_per_sample(rollout_steps: int, timestep_fraction: float) -> int:
    """How many of the rollout's timesteps each kept sample is trained on (at least one)."""
    return max(1, int(rollout_steps * timestep_fraction))


def advantages(rewards: torch.Tensor, prompt_ids: Sequence[int] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(A_clipped, r). `rewards` is the weighted-sum reward per kept sample (float64).

    A = (R - mean of R over the same prompt) / (population std of R over all samples + 1e-4),
    A_c = clip(A, -5, 5), r = A_c / 10 + 0.5. Groups whose rewards all tie get r = 0.5."""
    R = rewards.double()
    pid = torch.as_tensor(prompt_ids)
    mean = torch.zeros_like(R)
    for p in pid.unique():
        m = pid == p
        mean[m] = R[m].mean()
    std = R.std(unbiased=False) if R.numel() > 1 else torch.zeros((), dtype=R.dtype)
    A = ((R - mean) / (std + 1e-4)).clamp(-ADV_CLIP, ADV_CLIP)
    return A, A / (2 * ADV_CLIP) + 0.5


def _adaptive_mse(x0_hat: torch.Tensor, x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    dims = tuple(range(1, x0.dim()))
    err = x0_hat - x0
    with torch.no_grad():
        w = err.double().abs().mean(dims, keepdim=True).clamp_min(1e-5)
    return (err.double() ** 2 / w).mean(dims), w.flatten()


def nft_loss(
    x0: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    v_theta: torch.Tensor,
    v_old: torch.Tensor,
    v_ref: torch.Tensor | None,
    r: torch.Tensor,
    beta: float = 1.0,
    kl_beta: float = 1e-4,
    with_terms: bool = True,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The DiffusionNFT loss of one micro-batch at one time per sample. `t` has shape [B].
    `with_terms=False` skips the logged floats (the memory plan runs this on the meta device)."""
    tt = t.view(-1, *([1] * (x0.dim() - 1))).to(x_t.dtype)
    v_old = v_old.detach()
    v_pos = beta * v_theta + (1 - beta) * v_old
    v_neg = (1 + beta) * v_old - beta * v_theta
    L_pos, w_pos = _adaptive_mse(x_t - tt * v_pos, x0)
    L_neg, w_neg = _adaptive_mse(x_t - tt * v_neg, x0)
    r = r.double().view(-1)
    per_sample = (r * L_pos + (1 - r) * L_neg) / beta
    policy = ADV_CLIP * per_sample.mean()
    if v_ref is not None and kl_beta:
        kl = ((v_theta - v_ref.detach()) ** 2).double().mean()
    else:
        kl = torch.zeros((), dtype=torch.float64, device=x0.device)
    loss = policy + kl_beta * kl
    if not with_terms:
        return loss, {}
    terms = {
        "loss": float(loss.detach()),
        "policy_loss": float(policy.detach()),
        "kl": float(kl.detach()),
        "loss_pos": float(L_pos.detach().mean()),
        "loss_neg": float(L_neg.detach().mean()),
        "w_pos": float(w_pos.mean()),
        "w_neg": float(w_neg.mean()),
    }
    return loss, terms


# Old-policy decay schedules: d(s) = 0 if s < flat else min((s - flat) * uprate, uphold).
DECAY_SCHEDULES = {0: (0, 0.0, 0.0), 1: (0, 0.001, 0.5), 2: (75, 0.0075, 0.999)}


def old_decay(step: int, decay_type: int = 1) -> float:
    """d of `old <- d old + (1 - d) theta` after optimizer step count `step`."""
    if decay_type not in DECAY_SCHEDULES:
        raise ValueError(f"unknown old-policy decay type {decay_type}: use 0, 1 or 2")
    flat, uprate, uphold = DECAY_SCHEDULES[decay_type]
    if step < flat:
        return 0.0
    return min((step - flat) * uprate, uphold)


def ema_decay(step: int, cap: float = 0.9) -> float:
    """EMA decay after optimizer step `step`: min((1 + s) / (10 + s), cap)."""
    return min((1 + step) / (10 + step), cap)


@torch.no_grad()
def lerp_(target: dict[str, torch.Tensor], source: dict[str, torch.Tensor], keep: float) -> None:
    """target <- keep * target + (1 - keep) * source, tensor by tensor (old-policy decay, EMA)."""
    for k, v in target.items():
        v.mul_(keep).add_(source[k].to(v.dtype), alpha=1 - keep)
