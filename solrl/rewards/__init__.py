"""Reward registry. A reward maps (images [B, 3, H, W] in [-1, 1], prompts) -> float64 [B].

`shapes` and `shapes_strict` are built in (the shapes world). The learned rewards, scaled as the
official code scales them, are:

- ``clipscore``: CLIP ViT-L/14 logit / 100 (`clip_based`);
- ``pickscore``: PickScore_v1 logit / 26 (`clip_based`);
- ``hpsv2``: HPS v2.1 cosine similarity (`clip_based`, needs open_clip);
- ``imagereward``: ImageReward-v1.0 raw score (`imagereward`).

They need the ``rewards`` extra (``pip install 'sol-rl[rewards]'``) and their weights on disk or in
the Hugging Face cache; the env vars that point at local copies are listed in the docstrings of
`clip_based` and `imagereward`. Each is built once per process, on first use, and cached;
`check` tells, without building anything, whether a reward can be built.
"""

from __future__ import annotations

import threading
from typing import Callable

import torch

from ._common import RewardUnavailable

RewardFn = Callable[[torch.Tensor, list[str]], torch.Tensor]

BUILTIN = ("shapes", "shapes_strict")
LEARNED = ("imagereward", "pickscore", "clipscore", "hpsv2")
KNOWN = BUILTIN + LEARNED

__all__ = [
    "BUILTIN", "KNOWN", "LEARNED", "LOADERS", "RewardFn", "RewardUnavailable",
    "check", "clear_cache", "get_reward", "score_all", "weighted_sum",
]


def _load_clipscore() -> RewardFn:
    from .clip_based import load_clipscore

    return load_clipscore()


def _load_pickscore() -> RewardFn:
    from .clip_based import load_pickscore

    return load_pickscore()


def _load_hpsv2() -> RewardFn:
    from .clip_based import load_hpsv2

    return load_hpsv2()


def _load_imagereward() -> RewardFn:
    from .imagereward import load_imagereward

    return load_imagereward()


# name -> builder of the scorer; called at most once per process per name (see `get_reward`).
LOADERS: dict[str, Callable[[], RewardFn]] = {
    "clipscore": _load_clipscore,
    "pickscore": _load_pickscore,
    "hpsv2": _load_hpsv2,
    "imagereward": _load_imagereward,
}

_CACHE: dict[str, RewardFn] = {}
_LOCK = threading.Lock()


def clear_cache() -> None:
    """Forget the built learned rewards (their memory is freed once nothing else holds them)."""
    with _LOCK:
        _CACHE.clear()


def check(name: str) -> None:
    """Raise `RewardUnavailable` (one sentence: the extra to install or the paths searched) if the
    reward cannot be built here; builds nothing."""
    if name in BUILTIN:
        return
    if name not in LEARNED:
        raise ValueError(f"unknown reward {name!r}: choose one of {', '.join(KNOWN)}")
    if name == "imagereward":
        from .imagereward import check as check_ir

        check_ir()
    else:
        from .clip_based import check as check_clip

        check_clip(name)


def get_reward(name: str) -> RewardFn:
    if name == "shapes":
        from ..shapes.reward import shapes_reward

        return shapes_reward
    if name == "shapes_strict":
        from ..shapes.reward import shapes_strict

        return shapes_strict
    if name in LEARNED:
        fn = _CACHE.get(name)
        if fn is None:
            with _LOCK:
                fn = _CACHE.get(name)
                if fn is None:
                    fn = _CACHE[name] = LOADERS[name]()
        return fn
    raise ValueError(f"unknown reward {name!r}: choose one of {', '.join(KNOWN)}")


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
