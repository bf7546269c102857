"""Reward registry. A reward maps (images [B, 3, H, W] in [-1, 1], prompts) -> float64 [B].

`shapes` and `shapes_strict` are built in (the shapes world). Learned rewards (imagereward,
pickscore, clipscore, hpsv2) need the `rewards` extra and their checkpoints on disk.
"""

from __future__ import annotations

from typing import Callable

import torch

RewardFn = Callable[[torch.Tensor, list[str]], torch.Tensor]

BUILTIN = ("shapes", "shapes_strict")
LEARNED = ("imagereward", "pickscore", "clipscore", "hpsv2")
KNOWN = BUILTIN + LEARNED


def get_reward(name: str) -> RewardFn:
    if name == "shapes":
        from ..shapes.reward import shapes_reward

        return shapes_reward
    if name == "shapes_strict":
        from ..shapes.reward import shapes_strict

        return shapes_strict
    if name in LEARNED:
        raise RuntimeError(
            f"reward {name!r} needs the optional 'rewards' extra and its checkpoint, which this build does not wire up yet: "
            "use reward 'shapes' on the shapes preset"
        )
    raise ValueError(f"unknown reward {name!r}: choose one of {', '.join(KNOWN)}")


def score_all(names: list[str], images: torch.Tensor, prompts: list[str]) -> dict[str, torch.Tensor]:
    return {n: get_reward(n)(images, prompts).double() for n in names}


def weighted_sum(scores: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    """R = Σ_k w_k R_k (a weighted sum, as the official code's 'avg' really is)."""
    total = None
    for name, w in weights.items():
        term = w * scores[name]
        total = term if total is None else total + term
    return total
