"""The stages of one Sol-RL iteration as plain functions (no Prefect, no storage).

    explore    -> N candidates per prompt, proxy rewards (low precision, few steps)  "Explore"
    select     -> K/2 top + K/2 bottom seeds per prompt (DuckDB, given as select_fn) "Selection"
    regenerate -> the selected seeds in high precision, full steps                   "Regenerate"
    audit      -> every explored seed of the first prompts in high precision  "The audit and the fidelity guard"
    update     -> DiffusionNFT steps, old-policy decay, EMA                   "The DiffusionNFT loss"
    evaluate   -> fixed (prompt, seed) pairs, EMA weights: `train` and `held_out` sets "Evaluation"

Each takes the policy, the config and plain data, and returns columns (dict of lists) plus,
where later stages need them, tensors. The step functions of the stage table (tasks/steps.py,
tasks/stages.py) call them with what the artifact store holds; a run kept in memory uses the
same steps over an in-memory store (tasks/in_memory.py).
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from . import nft
from .config import RunConfig
from .interrupt import check as check_stop
from .models.base import Policy
from .plan import ExploreSpec, IterationPlan
from .quant import FP8Config, Int8Config, NVFP4Config, QuantConfig
from .rewards import score_all, weighted_sum
from .seeds import eval_seed, stream_seed
from .seeds import seed as candidate_seed

Progress = Callable[[int], None]  # called with the number of candidates (or samples) just finished
# (explore table with prompt_id, prompt, seed, reward; K; on_short_prompt) -> (selected table, stats)
SelectFn = Callable[..., tuple]
SAMPLE_KEYS = ("prompt_id", "prompt", "seed", "side", "proxy_rank", "proxy_reward")


# --- shared helpers -------------------------------------------------------------------------------
def explore_quant(policy: Policy, cfg: RunConfig, spec: ExploreSpec) -> QuantConfig | None:
    """The quantisation of the explore copy (None: high precision): NVFP4Config or FP8Config by
    the spec's precision, on the configured backend (emulated or Transformer Engine)."""
    if not spec.low_precision:
        return None
    skip = cfg.explore.skip if cfg.explore.skip is not None else policy.quant_skip
    min_dim = cfg.explore.min_dim if cfg.explore.min_dim is not None else policy.quant_min_dim
    if spec.precision == "fp8":
        return FP8Config(skip=skip, min_dim=min_dim, backend=cfg.explore.backend)
    if spec.precision == "int8":
        return Int8Config(skip=skip, min_dim=min_dim)
    kw = ({"lowrank": spec.lowrank} if spec.lowrank else {}) | {"output": cfg.explore.emulation_output}
    return NVFP4Config(skip=skip, min_dim=min_dim, backend=cfg.explore.backend, **kw)


def score_images(
    cfg: RunConfig, images: torch.Tensor, prompts: list[str]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(weighted training reward, every reward scored: the weighted ones and the report-only ones)."""
    names = list(dict.fromkeys([*cfg.reward.weights, *cfg.reward.report]))
    scores = score_all(names, images, prompts)
    return weighted_sum(scores, cfg.reward.weights), scores


def score(
    policy: Policy, cfg: RunConfig, x0: torch.Tensor, prompts: list[str]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    return score_images(cfg, policy.decode(x0), prompts)


def png_bytes(image: torch.Tensor, px: int | None = None) -> bytes:
    """An image in [-1, 1] as PNG; downscaled (area filter) to at most `px` on its longer side."""
    from PIL import Image

    arr = ((image.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    im = Image.fromarray(arr)
    if px and max(im.size) > px:
        im.thumbnail((px, px), Image.Resampling.BOX)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
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
        x0 = policy.sample(
            model, [prompts[i] for i in idx], [seeds[i] for i in idx], steps, solver, cond=policy.select_cond(cond, idx)
        )
        durations += [1000.0 * (time.perf_counter() - t0) / len(idx)] * len(idx)
        outs.append(x0)
        if progress:
            progress(len(idx))
    return torch.cat(outs), durations


# --- explore -------------------------------------------------------------------------------------
@dataclass
class ExploreResult:
    columns: dict[str, list]
    x0: torch.Tensor | None = None  # kept only when the mode trains on explore samples


def explore(
    policy: Policy,
    cfg: RunConfig,
    spec: ExploreSpec,
    iteration: int,
    prompts,
    model=None,
    progress: Progress | None = None,
) -> ExploreResult:
    """N candidates per prompt from the explore copy (base + old adapter, quantised)."""
    if model is None:
        model, _ = policy.sampler_copy(explore_quant(policy, cfg, spec))
    cols: dict[str, list] = {
        k: [] for k in ("prompt_id", "prompt", "candidate", "seed", "precision", "steps", "reward", "duration_ms")
    }
    x0_all = []
    for pid, text in prompts:
        seeds = [candidate_seed(cfg.run.seed, iteration, pid, c) for c in range(spec.n)]
        texts = [text] * len(seeds)
        x0, dur = sample_batched(
            policy,
            model,
            texts,
            seeds,
            spec.steps,
            cfg.rollout.solver,
            cfg.explore.batch,
            policy.encode_rows(texts),
            progress,
        )
        images = policy.decode(x0)
        total, scores = score_images(cfg, images, texts)
        cols["prompt_id"] += [pid] * len(seeds)
        cols["prompt"] += texts
        cols["candidate"] += list(range(len(seeds)))
        cols["seed"] += seeds
        cols["precision"] += [spec.precision] * len(seeds)
        cols["steps"] += [spec.steps] * len(seeds)
        cols["reward"] += total.tolist()
        for name, s in scores.items():
            cols.setdefault(f"reward_{name}", []).extend(s.tolist())
        cols["duration_ms"] += dur
        if spec.thumbnails:
            px = cfg.explore.thumbnail_px or min(64, max(images.shape[-2:]))
            cols.setdefault("thumbnail", []).extend(png_bytes(im, px) for im in images)
        if spec.keep_x0:
            x0_all.append(x0)
    return ExploreResult(cols, torch.cat(x0_all) if spec.keep_x0 else None)


# --- select ---------------------------------------------------------------------------------------
def select(cfg: RunConfig, plan: IterationPlan, explore_columns: dict[str, list] | None, select_fn: SelectFn | None):
    """The kept seeds: K/2 top + K/2 bottom of the explored (DuckDB, `select_fn`), or the first
    K seeds of each prompt when the mode does not explore. Returns (columns, stats)."""
    if cfg.mode.selection == "first_k":
        cols: dict[str, list] = {k: [] for k in SAMPLE_KEYS}
        for pid, text in plan.prompts:
            for c in range(cfg.select.k):
                for k, v in zip(
                    SAMPLE_KEYS, (pid, text, candidate_seed(cfg.run.seed, plan.iteration, pid, c), "all", None, None)
                ):
                    cols[k].append(v)
        return cols, {"non_finite": 0, "skipped_prompts": []}
    import pyarrow as pa

    table = pa.table({k: explore_columns[k] for k in ("prompt_id", "prompt", "seed", "reward")})
    selected, stats = select_fn(table, cfg.select.k, cfg.select.on_short_prompt)
    return selected.to_pydict(), stats


# --- regenerate -----------------------------------------------------------------------------------
@dataclass
class Samples:
    """What the update trains on: one row per kept sample."""

    prompt_ids: list[int]
    prompts: list[str]
    x0: torch.Tensor
    rewards: torch.Tensor  # weighted-sum training reward, float64
    columns: dict[str, list] = field(default_factory=dict)


def regenerate(
    policy: Policy,
    cfg: RunConfig,
    selected: dict[str, list],
    model=None,
    progress: Progress | None = None,
    with_media: bool = True,
) -> Samples:
    """The selected seeds again, same noise, high precision, rollout steps."""
    if model is None:
        model, _ = policy.sampler_copy(None)
    texts, seeds = list(selected["prompt"]), list(selected["seed"])
    x0 = torch.empty(len(seeds), *policy.latent_shape)
    duration = [0.0] * len(seeds)
    for pid in dict.fromkeys(selected["prompt_id"]):  # one conditioning per prompt
        idx = [i for i, p in enumerate(selected["prompt_id"]) if p == pid]
        part, d = sample_batched(
            policy,
            model,
            [texts[i] for i in idx],
            [seeds[i] for i in idx],
            cfg.rollout.steps,
            cfg.rollout.solver,
            cfg.rollout.batch,
            policy.encode_rows([texts[i] for i in idx]),
            progress,
        )
        x0[idx] = part
        for i, v in zip(idx, d):
            duration[i] = v
    images = policy.decode(x0)
    total, scores = score_images(cfg, images, texts)
    cols = {k: list(selected[k]) for k in SAMPLE_KEYS}
    cols["precision"] = ["high"] * len(seeds)
    cols["steps"] = [cfg.rollout.steps] * len(seeds)
    cols["reward"] = total.tolist()
    for name, s in scores.items():
        cols[f"reward_{name}"] = s.tolist()
    cols["duration_ms"] = duration
    if with_media:
        cols["image"] = [png_bytes(im) for im in images]
        cols["x0"] = [tensor_bytes(x) for x in x0]
        cols["x0_shape"] = [list(x0.shape[1:])] * len(seeds)
    return Samples(list(selected["prompt_id"]), texts, x0, total, cols)


def samples_from_explore(
    policy: Policy,
    cfg: RunConfig,
    explore_columns: dict[str, list],
    explore_x0: torch.Tensor,
    selected: dict[str, list],
    with_media: bool = True,
) -> Samples:
    """Modes that train on explore samples: the explore samples of the selected seeds, with
    their explore rewards (what the update trains on in naive_scaling / naive_quant)."""
    index = {s: i for i, s in enumerate(explore_columns["seed"])}
    rows = [index[s] for s in selected["seed"]]
    x0 = explore_x0[rows]
    cols = {k: list(selected[k]) for k in SAMPLE_KEYS}
    for k in ["precision", "steps", "reward", "duration_ms"] + [c for c in explore_columns if c.startswith("reward_")]:
        cols[k] = [explore_columns[k][i] for i in rows]
    if with_media:
        cols["image"] = [png_bytes(im) for im in policy.decode(x0)]
        cols["x0"] = [tensor_bytes(x) for x in x0]
        cols["x0_shape"] = [list(x0.shape[1:])] * len(rows)
    rewards = torch.tensor(cols["reward"], dtype=torch.float64)
    return Samples(list(selected["prompt_id"]), list(selected["prompt"]), x0, rewards, cols)


# --- audit ----------------------------------------------------------------------------------------
def audit(
    policy: Policy,
    cfg: RunConfig,
    plan: IterationPlan,
    explore_columns: dict[str, list],
    kept: dict[int, float],
    model=None,
    primary_model=None,
    progress: Progress | None = None,
) -> dict[str, list]:
    """Unbiased fidelity: for the first `fidelity.audit_prompts` prompts, every explored
    seed in high precision (the kept ones reuse their regenerated reward: `kept` maps seed ->
    reward), beside its proxy reward. When the guard made this iteration explore with a
    fallback, the configured (primary) explore is re-run on those prompts too, so the guard
    keeps measuring the proxy it guards. Returns audit rows (one per seed and proxy)."""
    if model is None:
        model, _ = policy.sampler_copy(None)
    audited = plan.prompts[: cfg.fidelity.audit_prompts]
    proxies = [("explore", plan.explore)]
    if plan.primary is not None and plan.primary != plan.explore:
        proxies.append(("primary", plan.primary))
    cols: dict[str, list] = {
        k: []
        for k in (
            "prompt_id",
            "prompt",
            "candidate",
            "seed",
            "proxy",
            "proxy_precision",
            "proxy_steps",
            "proxy_reward",
            "proxy_rank",
            "selected",
            "reward",
            "duration_ms",
        )
    }
    for pid, text in audited:
        rows = [i for i, p in enumerate(explore_columns["prompt_id"]) if p == pid]
        seeds = [explore_columns["seed"][i] for i in rows]
        todo = [s for s in seeds if s not in kept]
        truth = dict(kept)
        dur = []
        if todo:  # (N = K: every seed was kept and regenerated already)
            x0, dur = sample_batched(
                policy,
                model,
                [text] * len(todo),
                todo,
                cfg.rollout.steps,
                cfg.rollout.solver,
                cfg.rollout.batch,
                policy.encode_rows([text] * len(todo)),
                progress,
            )
            truth.update(zip(todo, score(policy, cfg, x0, [text] * len(todo))[0].tolist()))
        ms = dict(zip(todo, dur))
        for name, spec in proxies:
            if name == "explore":
                proxy = [explore_columns["reward"][i] for i in rows]
            else:
                pmodel = (
                    primary_model
                    if primary_model is not None
                    else policy.sampler_copy(explore_quant(policy, cfg, spec))[0]
                )
                proxy = explore(policy, cfg, spec, plan.iteration, [(pid, text)], pmodel).columns["reward"]
            order = sorted(range(len(seeds)), key=lambda j: (-proxy[j], seeds[j]))
            rank = {seeds[j]: r + 1 for r, j in enumerate(order)}
            for j, s in enumerate(seeds):
                for k, v in zip(
                    cols,
                    (
                        pid,
                        text,
                        explore_columns["candidate"][rows[j]],
                        s,
                        name,
                        spec.precision,
                        spec.steps,
                        proxy[j],
                        rank[s],
                        s in kept,
                        truth[s],
                        ms.get(s, 0.0),
                    ),
                ):
                    cols[k].append(v)
    return cols


# --- update ---------------------------------------------------------------------------------------
@dataclass
class TrainState:
    """Everything the update carries across iterations (saved and restored on resume)."""

    optimizer: torch.optim.Optimizer
    ema: dict[str, torch.Tensor]
    step: int = 0

    @classmethod
    def fresh(cls, policy: Policy, cfg: RunConfig) -> TrainState:
        opt = torch.optim.AdamW(
            policy.trainable_parameters(),
            lr=cfg.nft.lr,
            betas=(0.9, 0.999),
            weight_decay=cfg.nft.weight_decay,
            eps=1e-8,
        )
        return cls(opt, policy.adapter_state("default"), 0)


def train_micro_batch(
    policy: Policy, cfg: RunConfig, x0, x_t, t, c, r, divisor: int, with_terms: bool = True
) -> dict[str, float]:
    """Forward and backward of one micro-batch: v_old and v_ref without gradients, v_θ with
    them, the DiffusionNFT loss, gradients accumulated (scaled by 1/divisor). The memory plan
    (solrl/memplan.py) runs this same function on the meta device to measure the update."""
    with torch.no_grad():
        v_old = policy.velocity(x_t, t, c, "old")
        v_ref = policy.velocity(x_t, t, c, None) if cfg.nft.kl_beta else None
    v_theta = policy.velocity(x_t, t, c, "default")
    loss, terms = nft.nft_loss(
        x0, x_t, t, v_theta, v_old, v_ref, r, cfg.nft.beta, cfg.nft.kl_beta, with_terms=with_terms
    )
    (loss / divisor).backward()
    return terms


def update(
    policy: Policy,
    state: TrainState,
    cfg: RunConfig,
    iteration: int,
    samples: Samples,
    progress: Progress | None = None,
    ranks=None,
) -> list[dict[str, float]]:
    """DiffusionNFT over the kept samples: `nft.steps_per_iteration` optimizer steps, each over
    its share of the samples × training times; EMA after every step; the old policy decays once,
    after the last step (docs/algorithm.md, "Old policy and EMA"). One metrics row per optimizer step. Samples with a
    non-finite reward are left out ("Advantages"); `n_dropped` counts them.

    `ranks` (solrl/ddp.py, data parallel): this process computes only the micro-batches it owns,
    and gradients and loss terms are summed over the ranks before the optimizer step."""
    finite = torch.isfinite(samples.rewards)
    dropped = int((~finite).sum())
    if dropped:
        keep = finite.nonzero().flatten().tolist()
        samples = Samples(
            [samples.prompt_ids[i] for i in keep],
            [samples.prompts[i] for i in keep],
            samples.x0[keep],
            samples.rewards[keep],
        )
    A, r = nft.advantages(samples.rewards, samples.prompt_ids)
    grid = torch.tensor(
        np.asarray(policy.sigmas(cfg.rollout.steps))[:-1], dtype=torch.float32
    )  # without the terminal 0
    n_times = nft.timesteps_per_sample(cfg.rollout.steps, cfg.nft.timestep_fraction)
    n = samples.x0.shape[0]
    g = torch.Generator().manual_seed(stream_seed(cfg.run.seed, iteration, name="train"))
    # A random subset of distinct grid times per sample, and fresh noise per (time, sample).
    times = torch.stack([torch.randperm(len(grid), generator=g)[:n_times] for _ in range(n)])
    eps = torch.randn((n_times, n, *policy.latent_shape), generator=g)
    cond = policy.encode_rows(samples.prompts)
    steps = min(cfg.nft.steps_per_iteration, n)
    if steps == 1:
        parts = [torch.arange(n)]
    else:  # the samples in a seeded order, split into `steps` near-equal parts
        order = torch.randperm(
            n, generator=torch.Generator().manual_seed(stream_seed(cfg.run.seed, iteration, name="split"))
        )
        parts = list(torch.tensor_split(order, steps))
    params = policy.trainable_parameters()
    dev = policy.device  # samples and noise live on the CPU; each micro-batch moves to the model
    rows = []
    for part in parts:
        chunks = [part[lo : lo + cfg.nft.micro_batch] for lo in range(0, len(part), cfg.nft.micro_batch)]
        state.optimizer.zero_grad(set_to_none=True)
        sums: dict[str, float] = {}
        for j in range(n_times):
            for ci, idx in enumerate(chunks):
                if ranks is not None and not ranks.owns(ci):
                    continue
                check_stop()
                t = grid[times[idx, j]].to(dev)
                tt = t.view(-1, *([1] * (samples.x0.dim() - 1)))
                x0 = samples.x0[idx].to(dev)
                x_t = (1 - tt) * x0 + tt * eps[j, idx].to(dev)
                terms = train_micro_batch(
                    policy, cfg, x0, x_t, t, policy.select_cond(cond, idx), r[idx].to(dev), len(chunks) * n_times
                )
                for k, v in terms.items():
                    sums[k] = sums.get(k, 0.0) + v / (len(chunks) * n_times)
                if progress:
                    progress(len(idx))
        if ranks is not None:
            sums = ranks.all_reduce(params, sums)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.nft.max_grad_norm))
        applied = bool(np.isfinite(sums["loss"]) and np.isfinite(grad_norm))
        ema_d = nft.ema_decay(state.step + 1)
        if applied:  # a non-finite step is skipped: no optimizer step, no EMA update
            state.optimizer.step()
            state.step += 1
            nft.lerp_(state.ema, policy.adapter_state("default"), ema_d)
        state.optimizer.zero_grad(set_to_none=True)
        rows.append(
            {
                **sums,
                "grad_norm": grad_norm,
                "applied": float(applied),
                "lr": cfg.nft.lr,
                "optimizer_step": float(state.step),
                "ema_decay": ema_d,
                "n_samples": float(len(part)),
            }
        )
    # The old (sampling) policy decays towards θ once per iteration, after its last step.
    decay = nft.old_decay(state.step, cfg.nft.decay_type)
    old = policy.adapter_state("old")
    nft.lerp_(old, policy.adapter_state("default"), decay)
    policy.load_adapter("old", old)
    common = {
        "old_decay": decay,
        "reward_mean": float(samples.rewards.mean()),
        "reward_std": float(samples.rewards.std(unbiased=False)),
        "adv_abs_mean": float(A.abs().mean()),
        "adv_clipped_frac": float((A.abs() >= nft.ADV_CLIP).double().mean()),
        "r_mean": float(r.mean()),
        "n_times": float(n_times),
        "n_dropped": float(dropped),
    }
    return [{"step_in_iteration": float(i), **row, **common} for i, row in enumerate(rows)]


# --- evaluate -------------------------------------------------------------------------------------
def eval_prompts(policy: Policy, cfg: RunConfig) -> dict[str, tuple[tuple[int, str], ...]]:
    """The evaluation sets (docs/algorithm.md, "Evaluation"): `train` = the training pool (or, without a pool, 16
    training prompts drawn once on a constant key), `held_out` = the family's stratified sample of
    held-out prompts. Ids index the training set and the held-out set respectively."""
    return eval_prompt_sets(type(policy), cfg, policy.train_prompts(), policy.eval_prompts(), policy.resolved.pool)


def eval_prompt_sets(
    family, cfg: RunConfig, train: tuple[str, ...], held: tuple[str, ...], pool: tuple[str, ...] | None
) -> dict[str, tuple[tuple[int, str], ...]]:
    """`eval_prompts` from the family class and its prompt sets (no model needed)."""
    out = {}
    if "train" in cfg.eval.sets:
        if pool is None:
            g = torch.Generator().manual_seed(stream_seed(0, len(train), name="eval-train"))
            pool = tuple(
                train[i] for i in sorted(torch.randperm(len(train), generator=g)[: min(16, len(train))].tolist())
            )
        where = {p: i for i, p in enumerate(train)}
        out["train"] = tuple((where[p], p) for p in pool[: cfg.eval.train_prompts])
    if "held_out" in cfg.eval.sets:
        where = {p: i for i, p in enumerate(held)}
        out["held_out"] = tuple((where[p], p) for p in family.held_out_eval_prompts(cfg, held))
    return out


def eval_model(policy: Policy, ema: dict[str, torch.Tensor]):
    """The high-precision sampler copy with `ema` merged (the policy's own adapters unchanged)."""
    current = policy.adapter_state("default")
    policy.load_adapter("default", ema)
    try:
        return policy.sampler_copy(None, adapter="default")[0]
    finally:
        policy.load_adapter("default", current)


def evaluate(
    policy: Policy,
    ema: dict[str, torch.Tensor] | None,
    cfg: RunConfig,
    with_media: bool = True,
    progress: Progress | None = None,
    rows: range | None = None,
    model=None,
) -> dict[str, list]:
    """Every evaluation set × `eval.seeds_per_prompt` fixed seeds, with the given adapter state
    (the EMA; the LoRA init for the baseline = the base model), eval steps, high precision.
    `rows`: only these rows (an eval shard: whole sampling batches, so it computes what the
    unsharded evaluation computes); `model`: `eval_model(policy, ema)` made already."""
    if model is None:
        model = eval_model(policy, ema)
    cols: dict[str, list] = {"set": [], "prompt_id": [], "prompt": [], "seed": []}
    for name, prompts in eval_prompts(policy, cfg).items():
        for pid, text in prompts:
            for j in range(cfg.eval.seeds_per_prompt):
                for k, v in zip(cols, (name, pid, text, eval_seed(text, j))):
                    cols[k].append(v)
    if rows is not None:
        cols = {k: v[rows.start : rows.stop] for k, v in cols.items()}
    texts = cols["prompt"]
    x0, _ = sample_batched(
        policy,
        model,
        texts,
        cols["seed"],
        cfg.eval.steps,
        "euler",
        cfg.rollout.batch,
        policy.encode_rows(texts),
        progress,
    )
    images = policy.decode(x0)
    total, scores = score_images(cfg, images, texts)
    cols["reward"] = total.tolist()
    for name, s in scores.items():
        cols[f"reward_{name}"] = s.tolist()
    if with_media:
        cols["image"] = [png_bytes(im) for im in images]
    return cols
