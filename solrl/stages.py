"""The stages of one Sol-RL iteration as plain functions (no Prefect, no storage).

    explore    -> per-candidate proxy rewards (low precision, few steps)       ALGORITHM §4
    select     -> K/2 top + K/2 bottom seeds per prompt (storage/select.sql)    §5
    regenerate -> the selected seeds in high precision, full steps              §6
    update     -> DiffusionNFT step, old-policy decay, EMA                     §7
    evaluate   -> held-out prompts, fixed seeds, EMA weights                    §8

Each takes the policy, the config and plain data, and returns columns (dict of lists) plus,
where later stages need them, tensors. `run_iteration` chains them in memory; the Prefect
tasks call the same functions and put their outputs through the artifact store.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from . import nft
from .config import RunConfig
from .models.base import Policy
from .quant import NVFP4Config
from .rewards import score_all, weighted_sum
from .seeds import draw_prompts, seed as candidate_seed, stream_seed

Progress = Callable[[int], None]  # called with the number of candidates just finished


# --- what an iteration works on -----------------------------------------------------------------
def iteration_prompts(policy: Policy, cfg: RunConfig, iteration: int) -> list[tuple[int, str]]:
    train = policy.train_prompts()
    return [(i, train[i]) for i in draw_prompts(cfg.run.seed, iteration, train, cfg.prompts.per_iteration)]


def explore_quant(policy: Policy, cfg: RunConfig) -> NVFP4Config | None:
    if cfg.explore.precision == "high":
        return None
    backend = "fp8" if cfg.explore.precision == "fp8" else cfg.explore.backend
    skip = cfg.explore.skip if cfg.explore.skip is not None else policy.quant_skip
    min_dim = cfg.explore.min_dim if cfg.explore.min_dim is not None else policy.quant_min_dim
    return NVFP4Config(skip=skip, min_dim=min_dim, backend=backend)


def explore_steps(cfg: RunConfig) -> int:
    """naive_* modes train on explore samples, so they explore at the rollout step count."""
    return cfg.rollout.steps if cfg.run.mode in ("naive_scaling", "naive_quant") else cfg.explore.steps


def score(policy: Policy, cfg: RunConfig, x0: torch.Tensor, prompts: list[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(weighted reward, every reward scored: the weighted ones and the report-only ones) of decoded x0."""
    images = policy.decode(x0)
    names = list(dict.fromkeys([*cfg.reward.weights, *cfg.reward.report]))
    scores = score_all(names, images, prompts)
    return weighted_sum(scores, cfg.reward.weights), scores


def png_bytes(image: torch.Tensor) -> bytes:
    from PIL import Image

    arr = ((image.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def tensor_bytes(x: torch.Tensor) -> bytes:
    from safetensors.torch import save

    return save({"x0": x.detach().contiguous().cpu()})


def tensor_from_bytes(b: bytes) -> torch.Tensor:
    from safetensors.torch import load

    return load(b)["x0"]


def sample_batched(policy, model, prompts, seeds, steps, solver, batch, cond, progress: Progress | None = None):
    """policy.sample in chunks of `batch` candidates; (x0, per-candidate milliseconds)."""
    outs, durations = [], []
    for lo in range(0, len(seeds), batch):
        idx = torch.arange(lo, min(lo + batch, len(seeds)))
        t0 = time.perf_counter()
        x0 = policy.sample(model, [prompts[i] for i in idx], [seeds[i] for i in idx], steps, solver, cond=policy.select_cond(cond, idx))
        durations += [1000.0 * (time.perf_counter() - t0) / len(idx)] * len(idx)
        outs.append(x0)
        if progress:
            progress(len(idx))
    return torch.cat(outs), durations


# --- explore -----------------------------------------------------------------------------------
@dataclass
class ExploreResult:
    columns: dict[str, list]
    x0: torch.Tensor | None = None  # kept only when the mode trains on explore samples
    quant_summary: str = ""


def explore(policy: Policy, cfg: RunConfig, iteration: int, prompts: list[tuple[int, str]], progress: Progress | None = None, model=None) -> ExploreResult:
    """N candidates per prompt from the explore copy (base + old adapter, quantised)."""
    quant = explore_quant(policy, cfg)
    if model is None:
        model, report = policy.sampler_copy(quant)
        summary = report.summary()
    else:
        summary = "(given model)"
    precision = cfg.explore.precision
    steps = explore_steps(cfg)
    keep_x0 = cfg.run.mode in ("naive_scaling", "naive_quant")
    cols: dict[str, list] = {k: [] for k in ("prompt_id", "prompt", "candidate", "seed", "precision", "steps", "reward", "duration_ms")}
    x0_all = []
    for pid, text in prompts:
        seeds = [candidate_seed(cfg.run.seed, iteration, pid, c) for c in range(cfg.explore.n)]
        texts = [text] * len(seeds)
        cond = policy.encode_rows(texts)
        x0, dur = sample_batched(policy, model, texts, seeds, steps, cfg.rollout.solver, cfg.explore.batch, cond, progress)
        total, scores = score(policy, cfg, x0, texts)
        cols["prompt_id"] += [pid] * len(seeds)
        cols["prompt"] += texts
        cols["candidate"] += list(range(len(seeds)))
        cols["seed"] += seeds
        cols["precision"] += [precision] * len(seeds)
        cols["steps"] += [steps] * len(seeds)
        cols["reward"] += total.tolist()
        for name, s in scores.items():
            cols.setdefault(f"reward_{name}", []).extend(s.tolist())
        cols["duration_ms"] += dur
        if keep_x0:
            x0_all.append(x0)
    return ExploreResult(cols, torch.cat(x0_all) if keep_x0 else None, summary)


# --- select ------------------------------------------------------------------------------------
def select(explore_columns: dict[str, list], cfg: RunConfig):
    """DuckDB selection over the explore rows; returns (selected columns, stats)."""
    import pyarrow as pa

    from storage.selection import select_seeds

    table = pa.table({k: explore_columns[k] for k in ("prompt_id", "prompt", "seed", "reward")})
    selected, stats = select_seeds(table, cfg.select.k, cfg.select.on_short_prompt)
    return selected.to_pydict(), stats


def all_seeds_selection(cfg: RunConfig, iteration: int, prompts: list[tuple[int, str]]) -> dict[str, list]:
    """diffusionnft mode: no explore; candidates 0..K-1 of each prompt are the kept set."""
    cols: dict[str, list] = {k: [] for k in ("prompt_id", "prompt", "seed", "side", "proxy_rank", "proxy_reward")}
    for pid, text in prompts:
        for c in range(cfg.select.k):
            cols["prompt_id"].append(pid)
            cols["prompt"].append(text)
            cols["seed"].append(candidate_seed(cfg.run.seed, iteration, pid, c))
            cols["side"].append("all")
            cols["proxy_rank"].append(None)
            cols["proxy_reward"].append(None)
    return cols


# --- regenerate --------------------------------------------------------------------------------
@dataclass
class Samples:
    """What the update trains on: one row per kept sample."""

    prompt_ids: list[int]
    prompts: list[str]
    x0: torch.Tensor
    rewards: torch.Tensor  # weighted-sum training reward, float64
    columns: dict[str, list] = field(default_factory=dict)


def regenerate(policy: Policy, cfg: RunConfig, selected: dict[str, list], progress: Progress | None = None, model=None, with_media: bool = True) -> Samples:
    """The selected seeds again, same noise, high precision, rollout steps."""
    if model is None:
        model, _ = policy.sampler_copy(None)
    texts, seeds = list(selected["prompt"]), list(selected["seed"])
    x0_parts, durs = [], []
    for pid in dict.fromkeys(selected["prompt_id"]):  # one conditioning per prompt
        idx = [i for i, p in enumerate(selected["prompt_id"]) if p == pid]
        cond = policy.encode_rows([texts[i] for i in idx])
        x0, d = sample_batched(policy, model, [texts[i] for i in idx], [seeds[i] for i in idx], cfg.rollout.steps, cfg.rollout.solver, cfg.rollout.batch, cond, progress)
        x0_parts.append((idx, x0))
        durs.append((idx, d))
    x0 = torch.empty(len(seeds), *policy.latent_shape)
    duration = [0.0] * len(seeds)
    for (idx, part), (_, d) in zip(x0_parts, durs):
        x0[idx] = part
        for i, v in zip(idx, d):
            duration[i] = v
    total, scores = score(policy, cfg, x0, texts)
    cols = {k: list(selected[k]) for k in ("prompt_id", "prompt", "seed", "side", "proxy_rank", "proxy_reward")}
    cols["precision"] = ["high"] * len(seeds)
    cols["steps"] = [cfg.rollout.steps] * len(seeds)
    cols["reward"] = total.tolist()
    for name, s in scores.items():
        cols[f"reward_{name}"] = s.tolist()
    cols["duration_ms"] = duration
    if with_media:
        images = policy.decode(x0)
        cols["image"] = [png_bytes(im) for im in images]
        cols["x0"] = [tensor_bytes(x) for x in x0]
        cols["x0_shape"] = [list(x0.shape[1:])] * len(seeds)
    return Samples(list(selected["prompt_id"]), texts, x0, total, cols)


def samples_from_explore(cfg: RunConfig, ex: ExploreResult, selected: dict[str, list]) -> Samples:
    """naive_* modes: the explore samples of the selected seeds are the training samples."""
    index = {s: i for i, s in enumerate(ex.columns["seed"])}
    rows = [index[s] for s in selected["seed"]]
    rewards = torch.tensor([ex.columns["reward"][i] for i in rows], dtype=torch.float64)
    cols = {k: list(selected[k]) for k in ("prompt_id", "prompt", "seed", "side", "proxy_rank", "proxy_reward")}
    cols["precision"] = [ex.columns["precision"][i] for i in rows]
    cols["steps"] = [ex.columns["steps"][i] for i in rows]
    cols["reward"] = rewards.tolist()
    return Samples(list(selected["prompt_id"]), list(selected["prompt"]), ex.x0[rows], rewards, cols)


# --- update ------------------------------------------------------------------------------------
@dataclass
class TrainState:
    """Everything the update carries across iterations (saved and restored on resume)."""

    optimizer: torch.optim.Optimizer
    ema: dict[str, torch.Tensor]
    step: int = 0

    @classmethod
    def fresh(cls, policy: Policy, cfg: RunConfig) -> "TrainState":
        opt = torch.optim.AdamW(policy.trainable_parameters(), lr=cfg.nft.lr, betas=(0.9, 0.999), weight_decay=cfg.nft.weight_decay, eps=1e-8)
        return cls(opt, policy.adapter_state("default"), 0)


def update(policy: Policy, state: TrainState, cfg: RunConfig, iteration: int, samples: Samples, progress: Progress | None = None) -> dict[str, float]:
    """One DiffusionNFT optimizer step over all kept samples x training times."""
    A, r = nft.advantages(samples.rewards, samples.prompt_ids)
    grid = torch.tensor(np.asarray(policy.sigmas(cfg.rollout.steps))[:-1], dtype=torch.float32)  # without the terminal 0
    n_times = max(1, int(cfg.rollout.steps * cfg.nft.timestep_fraction))
    n = samples.x0.shape[0]
    g = torch.Generator().manual_seed(stream_seed(cfg.run.seed, iteration, name="train"))
    # A random subset of distinct grid times per sample, and fresh noise per (time, sample).
    times = torch.stack([torch.randperm(len(grid), generator=g)[:n_times] for _ in range(n)])
    eps = torch.randn((n_times, n, *policy.latent_shape), generator=g)
    cond = policy.encode_rows(samples.prompts)
    chunks = [torch.arange(lo, min(lo + cfg.nft.micro_batch, n)) for lo in range(0, n, cfg.nft.micro_batch)]
    params = policy.trainable_parameters()
    state.optimizer.zero_grad(set_to_none=True)
    sums: dict[str, float] = {}
    dev = policy.device  # samples and noise live on the CPU; each micro-batch moves to the model
    for j in range(n_times):
        for idx in chunks:
            t = grid[times[idx, j]].to(dev)
            tt = t.view(-1, *([1] * (samples.x0.dim() - 1)))
            x0 = samples.x0[idx].to(dev)
            x_t = (1 - tt) * x0 + tt * eps[j, idx].to(dev)
            c = policy.select_cond(cond, idx)
            with torch.no_grad():
                v_old = policy.velocity(x_t, t, c, "old")
                v_ref = policy.velocity(x_t, t, c, None) if cfg.nft.kl_beta else None
            v_theta = policy.velocity(x_t, t, c, "default")
            loss, terms = nft.nft_loss(x0, x_t, t, v_theta, v_old, v_ref, r[idx].to(dev), cfg.nft.beta, cfg.nft.kl_beta)
            (loss / (len(chunks) * n_times)).backward()
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v / (len(chunks) * n_times)
            if progress:
                progress(len(idx))
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.nft.max_grad_norm))
    applied = bool(np.isfinite(sums["loss"]) and np.isfinite(grad_norm))
    if applied:
        state.optimizer.step()
        state.step += 1
    state.optimizer.zero_grad(set_to_none=True)
    decay = nft.old_decay(state.step, cfg.nft.decay_type)
    theta = policy.adapter_state("default")
    old = policy.adapter_state("old")
    nft.lerp_(old, theta, decay)
    policy.load_adapter("old", old)
    ema_d = nft.ema_decay(state.step)
    nft.lerp_(state.ema, theta, ema_d)
    return {
        **sums,
        "grad_norm": grad_norm,
        "applied": float(applied),
        "lr": cfg.nft.lr,
        "optimizer_step": float(state.step),
        "old_decay": decay,
        "ema_decay": ema_d,
        "reward_mean": float(samples.rewards.mean()),
        "reward_std": float(samples.rewards.std(unbiased=False)),
        "adv_abs_mean": float(A.abs().mean()),
        "adv_clipped_frac": float((A.abs() >= nft.ADV_CLIP).double().mean()),
        "r_mean": float(r.mean()),
        "n_samples": float(n),
        "n_times": float(n_times),
    }


# --- evaluate ----------------------------------------------------------------------------------
def evaluate(policy: Policy, state: TrainState, cfg: RunConfig, with_media: bool = True) -> dict[str, list]:
    """Held-out prompts, fixed seeds, EMA weights, eval steps, high precision."""
    held = policy.eval_prompts()[: cfg.eval.prompts]
    current = policy.adapter_state("default")
    policy.load_adapter("default", state.ema)
    try:
        model, _ = policy.sampler_copy(None, adapter="default")
    finally:
        policy.load_adapter("default", current)
    texts, seeds, pids = [], [], []
    for i, p in enumerate(held):
        for j in range(cfg.eval.seeds_per_prompt):
            texts.append(p)
            seeds.append(stream_seed(cfg.run.seed, i, j, name="eval"))
            pids.append(i)
    x0 = policy.sample(model, texts, seeds, cfg.eval.steps, "euler")
    total, scores = score(policy, cfg, x0, texts)
    cols = {"prompt_id": pids, "prompt": texts, "seed": seeds, "reward": total.tolist()}
    for name, s in scores.items():
        cols[f"reward_{name}"] = s.tolist()
    if with_media:
        cols["image"] = [png_bytes(im) for im in policy.decode(x0)]
    return cols


# --- one iteration in memory ------------------------------------------------------------------------
@dataclass
class IterationResult:
    iteration: int
    explore: dict[str, list] | None
    selected: dict[str, list]
    samples: Samples
    metrics: dict[str, float]
    eval: dict[str, list] | None
    seconds: dict[str, float]


def run_iteration(policy: Policy, state: TrainState, cfg: RunConfig, iteration: int, with_media: bool = False, progress: Progress | None = None) -> IterationResult:
    """explore -> select -> regenerate -> update (-> evaluate), in memory, for any mode."""
    seconds: dict[str, float] = {}
    prompts = iteration_prompts(policy, cfg, iteration)
    t = time.perf_counter()
    ex = None
    if cfg.run.mode == "diffusionnft":
        selected = all_seeds_selection(cfg, iteration, prompts)
    else:
        ex = explore(policy, cfg, iteration, prompts, progress)
        seconds["explore"] = time.perf_counter() - t
        t = time.perf_counter()
        selected, _ = select(ex.columns, cfg)
        seconds["select"] = time.perf_counter() - t
    t = time.perf_counter()
    if cfg.run.mode in ("sol_rl", "diffusionnft"):
        samples = regenerate(policy, cfg, selected, progress, with_media=with_media)
        seconds["regenerate"] = time.perf_counter() - t
    else:
        samples = samples_from_explore(cfg, ex, selected)
    t = time.perf_counter()
    metrics = update(policy, state, cfg, iteration, samples, progress)
    seconds["update"] = time.perf_counter() - t
    ev = None
    if cfg.eval.every and iteration % cfg.eval.every == 0:
        t = time.perf_counter()
        ev = evaluate(policy, state, cfg, with_media=with_media)
        seconds["eval"] = time.perf_counter() - t
    return IterationResult(iteration, ex.columns if ex else None, selected, samples, metrics, ev, seconds)
