"""The names a config may use, and where each lives: model families and rewards.

Torch-free on purpose: a config is validated against these tables before anything heavy is
imported. Each entry is a "module:attribute" path, imported on first use.

* A family is a `Policy` subclass (solrl/models/). Its class attributes hold every fact about
  the family: the default Hugging Face repo, the diffusers pipeline class, LoRA targets, the
  NVFP4 skip rules, and how its weights and prompts are checked.
* A reward is a module exposing `build(name) -> RewardFn` and `check(name)` (one sentence when
  the reward cannot be built here). Several names may share a module.
"""

from __future__ import annotations

import importlib

FAMILIES: dict[str, str] = {
    "shapes": "solrl.models.shapes:ShapesPolicy",
    "flux": "solrl.models.flux:FluxPolicy",
    "sd3": "solrl.models.sd3:SD3Policy",
    "sana": "solrl.models.sana:SanaPolicy",
}

REWARDS: dict[str, str] = {
    "shapes": "solrl.shapes.reward",  # the shapes world's continuous reward (default)
    "shapes_strict": "solrl.shapes.reward",  # every attribute right or not (reported at eval)
    "clipscore": "solrl.rewards.clip_based",  # CLIP ViT-L/14 logit / 100
    "pickscore": "solrl.rewards.clip_based",  # PickScore_v1 logit / 26
    "hpsv2": "solrl.rewards.clip_based",  # HPS v2.1 cosine (open_clip)
    "imagereward": "solrl.rewards.imagereward",  # ImageReward-v1.0 raw score
}


def load(path: str):
    """Import "module:attribute" (or a whole module)."""
    module, _, attr = path.partition(":")
    mod = importlib.import_module(module)
    return getattr(mod, attr) if attr else mod


def family_class(name: str):
    if name not in FAMILIES:
        raise ValueError(f"unknown model family {name!r}: choose one of {', '.join(FAMILIES)}")
    return load(FAMILIES[name])


def reward_module(name: str):
    if name not in REWARDS:
        raise ValueError(f"unknown reward {name!r}: choose one of {', '.join(REWARDS)}")
    return load(REWARDS[name])
