"""Deterministic seeds and initial noise (docs/algorithm.md, "Seeds and noise").

A seed is a pure function of (run seed, iteration, prompt index, candidate index): a keyed
blake2b hash, never Python's `hash()` (salted per process). Noise is drawn on the CPU generator
in float32 and only then moved/cast, so explore and regenerate of one seed start from the same
noise on any device and dtype.
"""

from __future__ import annotations

import hashlib
import struct

import torch

_KEY = b"sol-rl/seed/v1"


def _hash63(*parts: int, person: bytes) -> int:
    data = struct.pack(f"<{len(parts)}q", *parts)
    digest = hashlib.blake2b(data, digest_size=8, key=_KEY, person=person).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def seed(run_seed: int, iteration: int, prompt_index: int, candidate: int) -> int:
    """63-bit seed of one candidate."""
    return _hash63(run_seed, iteration, prompt_index, candidate, person=b"candidate")


def seeds(run_seed: int, iteration: int, prompt_index: int, n: int) -> list[int]:
    return [seed(run_seed, iteration, prompt_index, c) for c in range(n)]


def stream_seed(run_seed: int, *keys: int, name: str = "") -> int:
    """A seed for any other keyed random stream (prompt draw, training noise, eval seeds)."""
    return _hash63(run_seed, *keys, person=name.encode()[:16].ljust(16, b"-"))


def eval_seed(prompt: str, j: int) -> int:
    """Seed j of an evaluation prompt: keyed on the prompt's text only (never on the run seed or
    the mode), so every run renders the same (prompt, seed) pairs and gains are paired."""
    return _hash63(
        int.from_bytes(hashlib.blake2b(prompt.encode(), digest_size=8).digest(), "little") >> 1, j, person=b"eval"
    )


def noise(
    seed_value: int,
    shape: tuple[int, ...] | torch.Size,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """N(0, I) drawn on the CPU in float32 from `seed_value`, then moved/cast."""
    g = torch.Generator("cpu").manual_seed(int(seed_value))
    x = torch.randn(tuple(shape), generator=g, dtype=torch.float32)
    if device is not None or dtype is not None:
        x = x.to(device=device or "cpu", dtype=dtype or torch.float32)
    return x


def noise_batch(seed_values: list[int], shape: tuple[int, ...], device=None, dtype=None) -> torch.Tensor:
    """Stack of per-seed noise: row i depends only on seed_values[i] (batching never changes it)."""
    return torch.stack([noise(s, shape) for s in seed_values]).to(device=device or "cpu", dtype=dtype or torch.float32)


def draw_prompts(run_seed: int, iteration: int, prompts: tuple[str, ...] | list[str], k: int) -> list[int]:
    """Indices of `k` distinct prompts for an iteration, keyed by (run seed, iteration)."""
    if k > len(prompts):
        from .errors import ConfigError

        raise ConfigError(f"prompts.per_iteration ({k}) exceeds the {len(prompts)} prompts it draws from: lower it")
    g = torch.Generator("cpu").manual_seed(stream_seed(run_seed, iteration, name="prompts"))
    return sorted(torch.randperm(len(prompts), generator=g)[:k].tolist())
