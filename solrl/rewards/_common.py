"""Shared plumbing of the learned rewards: where weights are looked for, clear errors, device,
batch size and the torch-side image preprocessing.

Settings (solrl/settings.py, from the environment, read at call time): SOLRL_REWARD_DEVICE,
SOLRL_REWARD_BATCH, HF_HUB_OFFLINE, the Hugging Face cache location, SOLRL_<REWARD>_PATH.
"""

from __future__ import annotations

import importlib
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..settings import settings

EXTRA = "pip install 'sol-rl[rewards]'"

# Preprocessing constants of OpenAI CLIP (also used by open_clip ViT-H-14, PickScore, HPSv2, BLIP).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class RewardUnavailable(RuntimeError):
    """A learned reward cannot be built: a package (`kind="package"`) or weights (`kind="weights"`) are missing."""

    def __init__(self, message: str, kind: str):
        super().__init__(message)
        self.kind = kind


def require(reward: str, modules: Sequence[str]) -> None:
    """Import each third-party module, or raise one sentence naming the extra to install."""
    for mod in modules:
        try:
            importlib.import_module(mod)
        except ImportError as e:
            raise RewardUnavailable(
                f"reward {reward!r} needs the Python module {mod!r}, which could not be imported ({e}): "
                f"install the rewards extra with {EXTRA}",
                "package",
            ) from e


def hf_offline() -> bool:
    return settings().hf_offline


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, resolved from the environment now (not at import time)."""
    return settings().hub_cache


def hf_snapshot(repo_id: str, cache: Path | None = None, need: Sequence[Sequence[str]] = ()) -> Path | None:
    """The cached snapshot folder of `repo_id` holding, for every group in `need`, one of its files.

    Pure file-system look-up (no network): the snapshot `refs/main` points at first, then the
    others, newest first.
    """
    root = (cache or hf_cache_dir()) / f"models--{repo_id.replace('/', '--')}"
    snaps = root / "snapshots"
    if not snaps.is_dir():
        return None
    order: list[Path] = []
    ref = root / "refs" / "main"
    if ref.is_file():
        order.append(snaps / ref.read_text().strip())
    order += sorted((p for p in snaps.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True)
    for snap in order:
        if snap.is_dir() and all(any((snap / f).is_file() for f in group) for group in need):
            return snap
    return None


def env_path(var: str) -> str | None:
    """A SOLRL_<NAME> path setting (solrl/settings.py), or None when unset or empty."""
    v = getattr(settings(), var.removeprefix("SOLRL_").lower())
    return (v or "").strip() or None


def looks_like_repo_id(value: str) -> bool:
    return value.count("/") == 1 and not value.startswith(("/", ".", "~")) and not Path(value).exists()


def missing_weights(
    reward: str, searched: Sequence[str], hint: str, cause: Exception | None = None
) -> RewardUnavailable:
    tail = f" (last error: {type(cause).__name__}: {cause})" if cause is not None else ""
    offline = " with downloads off (HF_HUB_OFFLINE=1)" if hf_offline() else ""
    return RewardUnavailable(
        f"reward {reward!r} found no weights{offline}; searched {'; '.join(searched)}: {hint}{tail}", "weights"
    )


def load_checkpoint(path: Path) -> Any:
    """torch.load on the cpu: tensors only if possible; a checkpoint that also pickles other objects
    (training checkpoints do) is read in full, trusting the named repos these files come from."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        return torch.load(path, map_location="cpu", weights_only=False)


def reward_device() -> torch.device:
    device = settings().reward_device
    return torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")


def reward_dtype(device: torch.device) -> torch.dtype:
    """float16 on a GPU (half the memory of float32; CLIP models were trained in mixed
    precision), float32 on a CPU (exact as before)."""
    return torch.float16 if device.type == "cuda" else torch.float32


def reward_batch() -> int:
    return settings().reward_batch


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def prepare_images(
    images: torch.Tensor,
    size: int | Sequence[int],
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
    *,
    quantize: bool = False,
    resize: int | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """[B, 3, H, W] in [-1, 1] -> normalized float32 [B, 3, *size] on `device`, in torch.

    The CLIP-style evaluation transform: [0, 1] pixels (rounded to 8-bit levels if `quantize`,
    as when the official code goes through PIL), bicubic antialiased resize of the shorter side to
    `resize` (default: the crop size; the longer side floor-scaled, as torchvision's Resize(int)),
    clamp to [0, 1], centre crop to `size`, then (x - mean) / std per channel.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"reward images must be [B, 3, H, W], got {tuple(images.shape)}")
    x = images.detach().to(device=device or images.device, dtype=torch.float32)
    x = (x.clamp(-1, 1) + 1) / 2
    if quantize:
        x = torch.round(x * 255) / 255
    th, tw = _pair(size)
    short = resize or max(th, tw)
    h, w = x.shape[-2:]
    if h <= w:
        nh, nw = short, max(short, int(short * w / h))
    else:
        nh, nw = max(short, int(short * h / w)), short
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True).clamp_(0, 1)
    if nh < th or nw < tw:
        raise ValueError(f"cannot crop {th}x{tw} out of {nh}x{nw} (resize={resize})")
    top, left = int(round((nh - th) / 2)), int(round((nw - tw) / 2))
    x = x[..., top : top + th, left : left + tw]
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


def check_prompts(images: torch.Tensor, prompts: Sequence[str]) -> list[str]:
    prompts = list(prompts)
    if len(prompts) != images.shape[0]:
        raise ValueError(f"got {images.shape[0]} images but {len(prompts)} prompts")
    return prompts
