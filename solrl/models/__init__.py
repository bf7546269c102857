"""Model families behind one small interface (base.Policy); `load_policy(cfg)` builds one.

The families are listed in solrl/registry.py; each family's facts are class attributes of its
class (shapes.py, flux.py, sd3.py, sana.py).
"""

from __future__ import annotations

import torch

from ..config import Resolved, RunConfig
from ..registry import family_class
from .base import Policy


def check_model(cfg: RunConfig) -> None:
    """Everything a run needs before it computes, one sentence per problem: the explore
    backend's Transformer Engine and GPU, the model's weights, the prompt files, and the
    packages and checkpoints of the rewards."""
    from ..accelerator import check_accelerator
    from ..rewards import check as check_reward

    check_accelerator(cfg)  # the explore backend's needs (Transformer Engine, the GPU) first
    family_class(cfg.model.family).check(cfg)
    for name in dict.fromkeys([*cfg.reward.weights, *cfg.reward.report]):
        check_reward(name)


def resolve(cfg: RunConfig) -> Resolved:
    """What the config's `auto` values and prompt settings mean on this machine."""
    return family_class(cfg.model.family).resolve(cfg)


def load_policy(cfg: RunConfig, resolved: Resolved | None = None) -> Policy:
    """The one constructor of a policy (CLI, flow, benchmarks and tests all call it)."""
    # Trained weights produce denormal intermediates; on x86 CPUs they cost ~10x per op.
    # Flushing them to zero changes nothing measurable in the outputs (see shapes-probe notes).
    torch.set_flush_denormal(True)
    cls = family_class(cfg.model.family)
    return cls(cfg, resolved or cls.resolve(cfg))


__all__ = ["Policy", "check_model", "load_policy", "resolve"]
