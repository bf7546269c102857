"""Model families behind one small interface (see base.Policy)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .base import Policy

# Where each real family looks for its diffusers weights when the config gives no path.
DEFAULT_WEIGHTS = {
    "flux": "black-forest-labs/FLUX.1-dev",
    "sd3": "stabilityai/stable-diffusion-3.5-large",
    "sana": "Efficient-Large-Model/Sana_1600M_1024px_BF16_diffusers",
}


def _hf_snapshot(repo: str) -> Path | None:
    home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    snaps = home / "hub" / f"models--{repo.replace('/', '--')}" / "snapshots"
    found = sorted(snaps.glob("*")) if snaps.exists() else []
    return found[-1] if found else None


def resolve_weights(family: str, weights: str | None) -> Path:
    """The local directory of a real family's weights, or one sentence saying where we looked."""
    repo = DEFAULT_WEIGHTS[family]
    candidates = [Path(weights)] if weights else []
    snap = _hf_snapshot(repo)
    if snap:
        candidates.append(snap)
    for c in candidates:
        if (c / "model_index.json").exists() or (c / "transformer").exists():
            return c
    home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    looked = ", ".join(str(c) for c in candidates) if candidates else f"model.weights (not set) and the Hugging Face cache under {home}"
    raise FileNotFoundError(
        f"the {family} weights are missing: looked in {looked}; download {repo} with `huggingface-cli download {repo}` "
        f"on a machine with access and set model.weights to its local path"
    )


FAMILIES = {"flux": ("flux", "FluxPolicy"), "sd3": ("sd3", "SD3Policy"), "sana": ("sana", "SanaPolicy")}


def check_weights(family: str, weights: str | None) -> None:
    """Fail before any compute, in one sentence, when a model's weights are not on disk."""
    if family == "shapes":
        from ..shapes.model import WEIGHTS_DIR

        path = Path(weights or WEIGHTS_DIR) / "shapes.safetensors"
        if not path.exists():
            raise FileNotFoundError(f"the shapes model weights are missing: looked for {path}; rebuild them with `sol-rl pretrain-shapes` or reinstall the package")
    elif family in DEFAULT_WEIGHTS:
        resolve_weights(family, weights)


def check_model(cfg) -> None:
    """Everything a run needs from disk before it computes: weights, the prompt files, and
    the packages and checkpoints of the configured rewards."""
    from ..rewards import check as check_reward

    check_weights(cfg.model.family, cfg.model.weights)
    if cfg.model.family != "shapes":
        from .diffusers_base import split_prompts

        try:
            split_prompts(cfg.prompts.file, cfg.prompts.eval_file)
        except ValueError as e:
            raise FileNotFoundError(str(e)) from None
    for name in dict.fromkeys([*cfg.reward.weights, *cfg.reward.report]):
        check_reward(name)


def policy_kwargs(cfg) -> dict:
    """What `load_policy` takes from a RunConfig."""
    m = cfg.model
    kw = dict(weights=m.weights, lora_rank=m.lora_rank, lora_alpha=m.lora_alpha, seed=cfg.run.seed)
    if m.family != "shapes":
        kw.update(resolution=m.resolution, device=m.device, dtype=m.dtype, max_sequence_length=m.max_sequence_length,
                  prompt_file=cfg.prompts.file, eval_prompt_file=cfg.prompts.eval_file, offload=m.offload)
    return kw


def load_policy(family: str, **kw) -> Policy:
    # Trained weights produce denormal intermediates; on x86 CPUs they cost ~10x per op.
    # Flushing them to zero changes nothing measurable in the outputs (see shapes-probe notes).
    torch.set_flush_denormal(True)
    if family == "shapes":
        from .shapes import ShapesPolicy

        return ShapesPolicy(**kw)
    if family in FAMILIES:
        import importlib

        module, cls = FAMILIES[family]
        return getattr(importlib.import_module(f".{module}", __name__), cls)(**kw)
    raise ValueError(f"unknown model family {family!r}: choose shapes, flux, sd3 or sana")


__all__ = ["Policy", "check_model", "check_weights", "load_policy", "policy_kwargs", "resolve_weights"]
