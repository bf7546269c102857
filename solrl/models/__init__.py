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


def check_weights(family: str, weights: str | None) -> None:
    """Fail before any compute, in one sentence, when a model's weights are not on disk."""
    if family == "shapes":
        from ..shapes.model import WEIGHTS_DIR

        path = Path(weights or WEIGHTS_DIR) / "shapes.safetensors"
        if not path.exists():
            raise FileNotFoundError(f"the shapes model weights are missing: looked for {path}; rebuild them with `sol-rl pretrain-shapes` or reinstall the package")
    elif family in DEFAULT_WEIGHTS:
        resolve_weights(family, weights)


def load_policy(family: str, **kw) -> Policy:
    # Trained weights produce denormal intermediates; on x86 CPUs they cost ~10x per op.
    # Flushing them to zero changes nothing measurable in the outputs (see shapes-probe notes).
    torch.set_flush_denormal(True)
    if family == "shapes":
        from .shapes import ShapesPolicy

        return ShapesPolicy(**kw)
    if family in DEFAULT_WEIGHTS:
        path = resolve_weights(family, kw.get("weights"))
        raise RuntimeError(
            f"found {family} weights at {path}, but the {family} adapter is not part of this build yet: "
            "use the shapes preset, or a build that ships solrl/models/{family}.py"
        )
    raise ValueError(f"unknown model family {family!r}: choose shapes, flux, sd3 or sana")


__all__ = ["Policy", "check_weights", "load_policy", "resolve_weights"]
