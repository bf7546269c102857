"""Rewards: a reward maps (images [B, 3, H, W] in [-1, 1], prompts) -> float64 [B].

The names and the modules that build them are listed in solrl/registry.py (REWARDS); each
module exposes `build(name)` and `check(name)`. Built in: `shapes` and `shapes_strict` (the
shapes world). Learned, scaled as the official code scales them:

- ``clipscore``: CLIP ViT-L/14 logit / 100 (`clip_based`);
- ``pickscore``: PickScore_v1 logit / 26 (`clip_based`);
- ``hpsv2``: HPS v2.1 cosine similarity (`clip_based`, needs open_clip);
- ``imagereward``: ImageReward-v1.0 raw score (`imagereward`).

The learned ones need the ``rewards`` extra (``pip install 'sol-rl[rewards]'``) and their weights
on disk or in the Hugging Face cache (settings: solrl/settings.py). Each is built once per
process, on first use, and cached; `check` tells, without building anything, whether a reward
can be built here.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import torch

from ..registry import REWARDS, reward_module
from ._common import RewardUnavailable

RewardFn = Callable[[torch.Tensor, list[str]], torch.Tensor]
KNOWN = tuple(REWARDS)

__all__ = ["KNOWN", "RewardFn", "RewardUnavailable", "check", "clear_cache", "get_reward", "score_all", "weighted_sum"]

_CACHE: dict[str, RewardFn] = {}
_LOCK = threading.Lock()


def clear_cache() -> None:
    """Forget the built rewards (their memory is freed once nothing else holds them)."""
    with _LOCK:
        _CACHE.clear()


def check(name: str) -> None:
    """Raise `RewardUnavailable` (one sentence: the extra to install or the paths searched) if the
    reward cannot be built here; builds nothing."""
    reward_module(name).check(name)


def get_reward(name: str) -> RewardFn:
    fn = _CACHE.get(name)
    if fn is None:
        with _LOCK:
            fn = _CACHE.get(name)
            if fn is None:
                fn = _CACHE[name] = reward_module(name).build(name)
    return fn


def score_all(names: list[str], images: torch.Tensor, prompts: list[str]) -> dict[str, torch.Tensor]:
    """Every named reward on the same batch, each in its own float64 [B] column (cpu).

    All rewards are built (or found in the cache) before any is computed, so a missing package or
    checkpoint fails before any scoring work.
    """
    fns = {n: get_reward(n) for n in names}
    return {n: fn(images, prompts).double().cpu() for n, fn in fns.items()}


def weighted_sum(scores: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    """R = Σ_k w_k R_k (a weighted sum, as the official code's 'avg' really is)."""
    total = None
    for name, w in weights.items():
        term = w * scores[name]
        total = term if total is None else total + term
    return total
