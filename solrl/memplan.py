"""The memory plan: which modules live on the accelerator in each stage, and how many bytes that is.

One residency schedule (`resident`) says, per stage and phase, which components are on the
accelerator. The runtime moves modules by the same schedule — `frozen_on_device` places the
text encoders and the VAE (solrl/models/diffusers_base.py `_place`), `sampler_on_device` decides
which cached sampler copies stay (tasks/cache.py) — so the plan cannot drift from the code.

`plan(cfg)` builds the configured family at real size on the meta device (no memory, no weights)
from its architecture: the public diffusers configs shipped in solrl/models/arch/*.json, or the
component configs of `model.weights` when that is a local diffusers folder. It attaches LoRA with
the policy's own `setup_pipeline` (so `attach_lora`, gradient checkpointing and the bf16 LoRA
path are the runtime's), and measures, on the meta device:

  * the update: one micro-batch of `solrl.compute.train_micro_batch` (the function the update
    runs) — bytes saved for backward (`torch.autograd.graph.saved_tensors_hooks`) and the peak of
    live tensors over forward and backward (a dispatch mode that follows every tensor storage
    created until it is freed, recomputation under checkpointing included);
  * sampling: one transformer forward of a sampler batch; encoding: each text encoder on one
    prompt; decoding: the VAE on one decode chunk; scoring: the reward model on one batch.

Attention is counted as a fused (flash / memory-efficient) kernel keeps it — output and
log-sum-exp saved, no score matrix — which is what PyTorch picks for bf16 on a GPU (and for the
CPU's flash kernel the tiny-pipeline test measures against).

Component sizes are parameter and buffer bytes in the dtype each runs in on the GPU (transformer
and text encoders bf16, VAE float32, rewards float16, adapters float32). A stage's peak is the
largest, over its phases, of the resident components plus that phase's measured transient peak,
plus a fixed allowance for the CUDA context. Not counted: allocator fragmentation, cuDNN/cuBLAS
workspaces, torch.compile caches.
"""

from __future__ import annotations

import json
import re
import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import Resolved, RunConfig
from .errors import ConfigError

# The schedule the plan adds up (solrl/residency.py; the runtime moves modules by it too)
from .residency import (
    COMPONENTS,
    STAGE_PHASES,
    STAGES,
    decode_chunk,
    resident,
    reward_names,
)

ARCH_DIR = Path(__file__).resolve().parent / "models" / "arch"
ARCH_FILES = {"flux": "flux.json", "sd3": "sd3.json", "sana": "sana.json"}
GB = 10**9
# The common GPUs a plan is checked against: usable memory as torch reports it (total_memory).
GPUS = {"80 GB (A100/H100)": 80 * GB, "141 GB (H200)": 141 * GB, "180 GB (B200)": 180 * GB}
CUDA_CONTEXT = 1 * GB  # CUDA context + kernels loaded by torch: an allowance, not measured here


# --- the plan -----------------------------------------------------------------------------------
@dataclass
class MemoryPlan:
    family: str
    resolution: int
    dtype: str
    sizes: dict[str, int]  # component -> bytes (activations: per phase below)
    activations: dict[str, int]  # phase -> measured transient peak bytes (sample_<stage> per stage)
    saved_for_backward: int  # bytes autograd saves for one update micro-batch (outside checkpointed blocks)
    table: dict[str, dict[str, int]]  # stage -> component -> bytes, at the stage's peak phase
    phases: dict[tuple[str, str], dict[str, int]]  # (stage, phase) -> component -> bytes, every phase
    peak_phase: dict[str, str]
    peak_by_stage: dict[str, int]
    peak: int
    peak_stage: str
    fits: dict[str, bool]  # GPU label -> fits
    gpu_memory: int | None = None
    notes: list[str] = field(default_factory=list)

    def shortfall(self, memory: int) -> tuple[str, int] | None:
        """(first stage over `memory`, bytes over) or None when every stage fits."""
        for stage in STAGES:
            if stage in self.peak_by_stage and self.peak_by_stage[stage] > memory:
                return stage, self.peak_by_stage[stage] - memory
        return None


def plan(cfg: RunConfig, gpu_memory: int | None = None, device_type: str = "cuda") -> MemoryPlan:
    """The memory plan of `cfg` on a GPU (`device_type="cpu"`: the same arithmetic for a CPU run,
    where nothing is offloaded and the emulated NVFP4 factors are float32)."""
    if cfg.model.family == "shapes":
        raise ConfigError(
            "the memory plan covers the GPU families (flux, sd3, sana); the shapes model runs on a CPU in megabytes"
        )
    from .plan import primary_explore

    dtype = _plan_dtype(cfg, device_type)
    policy = meta_policy(cfg, dtype)
    sizes, notes = _component_sizes(policy, cfg, device_type)
    acts: dict[str, int] = {}
    with fused_attention_on_meta():
        saved, acts["train"] = measure_update(policy, cfg)
        acts["sample_explore"] = measure_sampling(policy, cfg.explore.batch)
        acts["sample"] = (
            acts["sample_explore"]
            if cfg.rollout.batch == cfg.explore.batch
            else measure_sampling(policy, cfg.rollout.batch)
        )
        acts["encode"] = measure_encoders(policy)
        acts["decode"] = measure_decode(policy)
        acts["score"], more = measure_rewards(cfg, device_type)
    notes += more
    spec = primary_explore(cfg)
    if spec is not None and spec.low_precision and (cfg.explore.backend == "emulated" or spec.precision == "fp8"):
        notes.append(
            "explore activations are counted as the bf16 model's; an emulated layer's float32 temporaries (one layer at a time) are not"
        )
    table, peak_phase, peak_by_stage, phases = {}, {}, {}, {}
    for stage in STAGES:
        if not _stage_runs(cfg, stage):
            continue
        best = None
        for phase in STAGE_PHASES[stage]:
            row = {}
            for c in resident(cfg, stage, phase, device_type):
                if c == "activations":
                    key = "sample_explore" if (phase == "sample" and stage == "explore") else phase
                    row[c] = acts.get(key, 0)
                elif c == "adapters" and stage == "update":
                    row[c] = sizes["adapters"] + sizes["adapter_grads"]
                else:
                    row[c] = sizes[c]
            total = sum(row.values())
            phases[(stage, phase)] = row
            if best is None or total > best[0]:
                best = (total, phase, row)
        peak_by_stage[stage], peak_phase[stage], table[stage] = best
    peak_stage = max(peak_by_stage, key=peak_by_stage.get)
    peak = peak_by_stage[peak_stage]
    fits = {label: peak <= mem for label, mem in GPUS.items()}
    if gpu_memory is not None:
        fits[f"{gpu_memory / GB:g} GB (given)"] = peak <= gpu_memory
    return MemoryPlan(
        cfg.model.family,
        policy.resolution,
        dtype,
        sizes,
        acts,
        saved,
        table,
        phases,
        peak_phase,
        peak_by_stage,
        peak,
        peak_stage,
        fits,
        gpu_memory,
        notes,
    )


def _plan_dtype(cfg: RunConfig, device_type: str) -> str:
    if cfg.model.dtype != "auto":
        return cfg.model.dtype
    if device_type == "cuda":
        return "bfloat16"
    from .cpu import cpu_has_bf16_matmul

    return "bfloat16" if cpu_has_bf16_matmul() else "float32"


def _stage_runs(cfg: RunConfig, stage: str) -> bool:
    """Whether the config's mode and settings run `stage` at all (solrl/plan.py's rules)."""
    m = cfg.mode
    if stage == "explore":
        return m.explores
    if stage == "audit":
        return bool(cfg.fidelity.audit_prompts) and m.explores
    if stage in ("baseline", "eval"):
        return bool(cfg.eval.every)
    return True


# --- building the family on the meta device -----------------------------------------------------
def architecture(cfg: RunConfig) -> dict[str, Any]:
    """The family's components as {name: (library, class, config)} plus the scheduler config:
    from `model.weights` when it is a local diffusers folder, else the shipped public configs."""
    weights = Path(cfg.model.weights) if cfg.model.weights else None
    if weights is not None and (weights / "model_index.json").exists():
        index = json.loads((weights / "model_index.json").read_text())
        comps, sched = {}, {}
        for name, spec in index.items():
            if name.startswith("_") or not isinstance(spec, list) or spec[0] is None:
                continue
            library, cls = spec
            path = weights / name
            if name == "scheduler":
                sched = json.loads((path / "scheduler_config.json").read_text())
            elif library in ("diffusers", "transformers") and (path / "config.json").exists():
                comps[name] = (library, cls, json.loads((path / "config.json").read_text()))
        return {"pipeline": index["_class_name"], "components": comps, "scheduler": sched}
    spec = json.loads((ARCH_DIR / ARCH_FILES[cfg.model.family]).read_text())
    comps = {
        "transformer": ("diffusers", spec["transformer"]["class"], spec["transformer"]["config"]),
        "vae": ("diffusers", spec["vae"]["class"], spec["vae"]["config"]),
    }
    for name, enc in spec["text_encoders"].items():
        comps[name] = ("transformers", enc["class"], {"_config_class": enc["config_class"], **enc["config"]})
    return {"pipeline": spec["pipeline"], "components": comps, "scheduler": spec["scheduler"]}


def _build_component(library: str, cls: str, config: dict) -> nn.Module:
    if library == "diffusers":
        import diffusers

        klass = getattr(diffusers, cls)
        return klass.from_config({k: v for k, v in config.items() if not k.startswith("_")})
    import transformers

    config = dict(config)
    if "_config_class" in config:
        conf = getattr(transformers, config.pop("_config_class"))(**config)
    else:
        conf = transformers.AutoConfig.for_model(**{k: v for k, v in config.items() if not k.startswith("_")})
    return getattr(transformers, cls)(conf)


def meta_pipeline(cfg: RunConfig, dtype: torch.dtype):
    """The family's diffusers pipeline at real size on the meta device (no tokenizers)."""
    import diffusers

    arch = architecture(cfg)
    with torch.device("meta"):
        modules = {name: _build_component(*spec).to(dtype).eval() for name, spec in arch["components"].items()}
    modules["scheduler"] = diffusers.FlowMatchEulerDiscreteScheduler.from_config(arch["scheduler"])
    pipe_cls = getattr(diffusers, arch["pipeline"])
    import inspect

    params = inspect.signature(pipe_cls.__init__).parameters
    kwargs = {name: modules.get(name) for name in params if name != "self"}
    return pipe_cls(**kwargs)


def meta_policy(cfg: RunConfig, dtype: str = "bfloat16"):
    """The configured policy on the meta device: the family's class, its `setup_pipeline` (LoRA,
    checkpointing, bf16 LoRA path as the runtime sets them) over a meta pipeline."""
    from .models.base import DTYPES
    from .registry import family_class

    cls = family_class(cfg.model.family)
    policy = cls.__new__(cls)
    # What Policy.setup sets, without reading prompt files (a plan needs none).
    policy.cfg = cfg
    policy.resolved = Resolved(device="meta", dtype=dtype, prompts_digest="", pool=None)
    policy.device, policy.dtype = torch.device("meta"), DTYPES[dtype]
    policy._train = policy._held = ()
    pipe = meta_pipeline(cfg, policy.dtype)
    with torch.device("meta"):
        policy.setup_pipeline(pipe)
    return policy


# --- component sizes ----------------------------------------------------------------------------
def _nbytes(module: nn.Module, skip_lora: bool = False) -> int:
    total = 0
    for name, t in [*module.named_parameters(), *module.named_buffers()]:
        if skip_lora and "lora_" in name:
            continue
        total += t.numel() * t.element_size()
    return total


def _lora_numel(policy) -> int:
    return sum(p.numel() for p in policy.trainable_parameters())


def explore_copy_bytes(policy, cfg: RunConfig, device_type: str = "cuda") -> int:
    """The explore copy: the merged transformer with the selected layers replaced by the
    backend's layers, plus the largest replaced layer (it is built layer by layer, so the dense
    layer and its replacement coexist for one layer at a time)."""
    from .compute import explore_quant
    from .plan import primary_explore
    from .quant import select_linears

    arch = architecture(cfg)
    with torch.device("meta"):  # the merged copy's module tree: the transformer without peft's wrappers
        plain = _build_component(*arch["components"]["transformer"]).to(policy.dtype)
    dense = _nbytes(plain)
    spec = primary_explore(cfg)
    if spec is None or not spec.low_precision:
        return dense
    quant = explore_quant(policy, cfg, spec)
    names = select_linears(plain, quant)
    w_bytes = policy.dtype.itemsize
    per_weight = _bytes_per_weight(spec.precision, cfg.explore.backend, device_type)
    total, largest = dense, 0
    for name in names:
        mod = plain.get_submodule(name)
        w = mod.weight
        n = w.numel()
        extra = spec.lowrank * (w.shape[0] + int(n // w.shape[0])) * 2 if spec.lowrank else 0
        total += int(n * per_weight) + extra - n * w_bytes
        if mod.bias is not None:
            total += mod.bias.numel() * (4 - mod.bias.element_size())  # kept in float32
        largest = max(largest, n * w_bytes)
    return total + largest


def _bytes_per_weight(precision: str, backend: str, device_type: str) -> float:
    """Bytes per weight of a replaced layer. NVFP4 keeps its packed codes (1/2 B) and E4M3 block
    scales (1/16 B) beside the block-product factor W' = q·s, which is exact in bf16 and held in
    bf16 on a GPU (float32 on the CPU, where the GEMM takes float32); Transformer Engine's layer
    keeps its bf16 weight and the NVFP4 copy. FP8: the factor (bf16 on a GPU); through Transformer
    Engine the bf16 weight and an FP8 copy."""
    factor = 2.0 if device_type == "cuda" else 4.0
    if precision == "nvfp4":
        return factor + 0.5 + 1 / 16 if backend != "transformer_engine" else 2.0 + 0.5 + 1 / 16
    return 2.0 + 1.0 if backend == "transformer_engine" else factor


def _component_sizes(policy, cfg: RunConfig, device_type: str) -> tuple[dict[str, int], list[str]]:
    notes = []
    transformer = _nbytes(policy.peft, skip_lora=True)
    lora = _lora_numel(policy) * 4
    # default + old + EMA + AdamW's two moments (float32); gradients during the update only;
    # low memory: the spare sampler slot and the sampler's own snapshot.
    adapters = lora * (5 + (2 if cfg.model.low_memory else 0))
    frozen = policy.frozen_modules()
    text = sum(_nbytes(m) for name, m in frozen.items() if name != "vae")
    vae = _nbytes(frozen["vae"]) if "vae" in frozen else 0
    copy = 0 if cfg.model.low_memory else transformer
    rewards, more = reward_sizes(cfg, device_type)
    notes += more
    sizes = {
        "transformer": transformer,
        "adapters": adapters,
        "adapter_grads": lora,
        "explore_copy": explore_copy_bytes(policy, cfg, device_type),
        "regenerate_copy": copy,
        "eval_copy": copy,
        "text_encoders": text,
        "vae": vae,
        "rewards": rewards,
        "cuda_context": CUDA_CONTEXT if device_type == "cuda" else 0,
    }
    return sizes, notes


def _reward_models(cfg: RunConfig, device_type: str) -> tuple[list[tuple[str, nn.Module, dict]], list[str]]:
    import transformers

    spec = json.loads((ARCH_DIR / "rewards.json").read_text())
    dtype = torch.float16 if device_type == "cuda" else torch.float32
    out, notes = [], []
    for name in reward_names(cfg):
        if name in ("shapes", "shapes_strict"):
            continue
        if name not in spec:
            notes.append(f"reward {name} is not modelled by the plan (its memory is not counted)")
            continue
        r = spec[name]
        conf = transformers.CLIPConfig(
            text_config=r["text_config"], vision_config=r["vision_config"], projection_dim=r["projection_dim"]
        )
        with torch.device("meta"):
            out.append((name, transformers.CLIPModel(conf).to(dtype).eval(), r))
    return out, notes


def reward_sizes(cfg: RunConfig, device_type: str = "cuda") -> tuple[int, list[str]]:
    models, notes = _reward_models(cfg, device_type)
    return sum(_nbytes(m) for _, m, _ in models), notes


# --- measuring on the meta device ---------------------------------------------------------------
class LiveBytes:
    """Follows every tensor storage created while active until it is freed: `peak` is the most
    bytes alive at once. Storages that existed before (weights, inputs) are never counted."""

    def __init__(self, *existing):
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_flatten

        self.known = {s for s in (_storage_key(t) for t in _tensors(existing)) if s is not None}
        self.live: dict[int, Any] = {}
        self.current = self.peak = 0
        tracker = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                for t in tree_flatten(out)[0]:
                    if isinstance(t, torch.Tensor):
                        tracker._track(t)
                return out

        self.mode = Mode()

    def _track(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        key = storage._cdata
        if key in self.known or key in self.live:
            return
        n = storage.nbytes()
        self.current += n
        self.peak = max(self.peak, self.current)

        def freed(key=key, n=n):
            self.current -= n
            self.live.pop(key, None)

        self.live[key] = weakref.finalize(storage, freed)

    def __enter__(self):
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        return self.mode.__exit__(*exc)


def _storage_key(t: torch.Tensor) -> int | None:
    try:
        return t.untyped_storage()._cdata
    except (RuntimeError, NotImplementedError):
        return None


def _tensors(objs) -> list[torch.Tensor]:
    out = []
    for o in objs:
        if isinstance(o, torch.Tensor):
            out.append(o)
        elif isinstance(o, nn.Module):
            out += list(o.parameters()) + list(o.buffers()) + [p.grad for p in o.parameters() if p.grad is not None]
        elif isinstance(o, (list, tuple)):
            out += _tensors(o)
        elif isinstance(o, dict):
            out += _tensors(list(o.values()))
    return out


class _FusedAttention(torch.autograd.Function):
    """What a fused attention kernel allocates and saves: the output and the float32 log-sum-exp
    per query (no score matrix); its backward allocates dq, dk, dv."""

    @staticmethod
    def forward(ctx, q, k, v, mask):
        out = q.new_empty(*q.shape[:-1], v.shape[-1])
        lse = q.new_empty(q.shape[:-1], dtype=torch.float32)
        ctx.save_for_backward(q, k, v, out, lse, *(() if mask is None else (mask,)))
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, *_ = ctx.saved_tensors
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), None


@contextmanager
def fused_attention_on_meta():
    """Within: scaled_dot_product_attention on meta tensors is counted as a fused kernel."""
    F = torch.nn.functional
    original = F.scaled_dot_product_attention

    def sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        if query.device.type != "meta":
            return original(
                query,
                key,
                value,
                attn_mask=attn_mask,
                dropout_p=dropout_p,
                is_causal=is_causal,
                scale=scale,
                enable_gqa=enable_gqa,
            )
        return _FusedAttention.apply(query, key, value, attn_mask)

    F.scaled_dot_product_attention = sdpa
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


def meta_condition(policy, batch: int):
    """A conditioning of `batch` prompts as the family's `encode` returns it, on the meta device."""
    tc = policy.pipe.transformer.config
    L = policy.max_sequence_length
    d = policy.dtype
    with torch.device("meta"):
        if policy.family == "flux":
            return torch.empty(batch, L, tc.joint_attention_dim, dtype=d), torch.empty(
                batch, tc.pooled_projection_dim, dtype=d
            )
        if policy.family == "sd3":  # CLIP hidden states (77 tokens) then T5's
            return torch.empty(batch, 77 + L, tc.joint_attention_dim, dtype=d), torch.empty(
                batch, tc.pooled_projection_dim, dtype=d
            )
        if policy.family == "sana":
            return torch.empty(batch, L, tc.caption_channels, dtype=d), torch.empty(batch, L, dtype=torch.long)
    raise ConfigError(f"the memory plan has no conditioning for family {policy.family}")


def measure_update(policy, cfg: RunConfig) -> tuple[int, int]:
    """(bytes saved for backward, peak transient bytes) of one update micro-batch."""
    from .compute import train_micro_batch

    n = cfg.nft.micro_batch
    with torch.device("meta"):
        x0 = torch.empty(n, *policy.latent_shape)
        eps = torch.empty(n, *policy.latent_shape)
        t = torch.empty(n)
        r = torch.empty(n, dtype=torch.float64)
    params = policy.trainable_parameters()
    for p in params:  # accumulated in place after the first micro-batch: persistent, counted in adapters
        p.grad = torch.zeros_like(p)
    cond = meta_condition(policy, n)
    saved: dict[int, int] = {}
    existing = {
        k for k in (_storage_key(x) for x in _tensors([policy.peft, x0, eps, t, r, list(cond)])) if k is not None
    }

    def pack(x):
        key = _storage_key(x)
        if key is not None and key not in existing:
            saved[key] = x.untyped_storage().nbytes()
        return x

    tracker = LiveBytes(policy.peft, x0, eps, t, r, list(cond))
    with tracker, torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        tt = t.view(-1, *([1] * (x0.dim() - 1)))
        x_t = (1 - tt) * x0 + tt * eps
        train_micro_batch(policy, cfg, x0, x_t, t, cond, r, 1, with_terms=False)
    for p in params:
        p.grad = None
    return sum(saved.values()), tracker.peak


def measure_sampling(policy, batch: int) -> int:
    """Peak transient bytes of one sampler forward (no gradients) of `batch` candidates, plus the
    solver's latents (x, v and the previous step, float32)."""
    with torch.device("meta"):
        x = torch.empty(batch, *policy.latent_shape)
        t = torch.empty(batch)
    cond = meta_condition(policy, batch)
    tracker = LiveBytes(policy.peft, x, t, list(cond))
    with tracker, torch.no_grad():
        policy.velocity(x, t, cond, "old")
    latents = 4 * x.numel() * 4
    return tracker.peak + latents


def measure_encoders(policy) -> int:
    """Peak transient bytes of encoding one prompt (the encoders run one after another)."""
    peak = 0
    for name, module in policy.frozen_modules().items():
        if name == "vae":
            continue
        length = 77 if "CLIP" in type(module).__name__ else policy.max_sequence_length
        with torch.device("meta"):
            ids = torch.zeros(1, length, dtype=torch.long)
            mask = torch.ones(1, length, dtype=torch.long)
        tracker = LiveBytes(module, ids, mask)
        with tracker, torch.no_grad():
            kwargs = {"attention_mask": mask} if "Gemma" in type(module).__name__ else {}
            module(input_ids=ids, **kwargs)
        peak = max(peak, tracker.peak)
    return peak


def measure_decode(policy) -> int:
    """Peak transient bytes of decoding one chunk of latents (float32 VAE)."""
    vae = policy.frozen_modules().get("vae")
    if vae is None:
        return 0
    side = policy.resolution // policy.pipe.vae_scale_factor
    with torch.device("meta"):
        lat = torch.empty(decode_chunk(policy.cfg), vae.config.latent_channels, side, side, dtype=torch.float32)
    tracker = LiveBytes(vae, lat)
    with tracker, torch.no_grad():
        vae.decode(lat, return_dict=False)
    return tracker.peak


def measure_rewards(cfg: RunConfig, device_type: str = "cuda") -> tuple[int, list[str]]:
    """Peak transient bytes of one reward batch (image and text towers)."""
    from .settings import settings

    batch = settings().reward_batch
    models, notes = _reward_models(cfg, device_type)
    peak = 0
    for _, model, r in models:
        dtype = next(model.parameters()).dtype
        with torch.device("meta"):
            pixels = torch.empty(batch, 3, r["image_size"], r["image_size"], dtype=dtype)
            ids = torch.zeros(batch, r["text_length"], dtype=torch.long)
        tracker = LiveBytes(model, pixels, ids)
        with tracker, torch.no_grad():
            a = model.get_image_features(pixel_values=pixels)
            b = model.get_text_features(input_ids=ids)
            del a, b
        peak = max(peak, tracker.peak)
    return peak, notes


# --- sizes as text ------------------------------------------------------------------------------
def parse_size(text: str) -> int:
    """'80GB', '141 GB', '80' (GB), '76GiB', '81559MiB' -> bytes."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(gb|g|gib|mb|mib|tb)?\s*", str(text).lower())
    if not m:
        raise ConfigError(f"--gpu-memory {text!r} is not a size: write it like 80GB, 141GB or 81559MiB")
    value, unit = float(m.group(1)), m.group(2) or "gb"
    scale = {"gb": GB, "g": GB, "gib": 2**30, "mb": 10**6, "mib": 2**20, "tb": 10**12}[unit]
    return int(value * scale)


def gb(n: int) -> str:
    return f"{n / GB:.1f}"


def format_plan(p: MemoryPlan) -> str:
    """The table `sol-rl plan` prints: stage × component GB at the stage's peak phase, the peak
    and the GPUs it fits."""
    cols = [c for c in COMPONENTS if any(c in row for row in p.table.values())]
    head = ["stage (peak phase)", *cols, "peak"]
    shown = [(s, p.peak_phase[s]) for s in p.table]
    if ("update", "train") in p.phases and p.peak_phase.get(
        "update"
    ) != "train":  # the training phase is what the update settings change
        shown.insert(shown.index(("update", p.peak_phase["update"])) + 1, ("update", "train"))
    rows = [
        [
            f"{s} ({ph})",
            *[gb(p.phases[(s, ph)][c]) if c in p.phases[(s, ph)] else "-" for c in cols],
            gb(sum(p.phases[(s, ph)].values())),
        ]
        for s, ph in shown
    ]
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]

    def line(r):
        return (
            "| "
            + " | ".join(str(x).rjust(w) if i else str(x).ljust(w) for i, (x, w) in enumerate(zip(r, widths)))
            + " |"
        )

    out = [line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)]
    out.append("")
    out.append(
        f"peak {gb(p.peak)} GB in {p.peak_stage} ({p.peak_phase[p.peak_stage]}); update micro-batch: {gb(p.saved_for_backward)} "
        f"GB saved for backward outside checkpointed blocks, {gb(p.activations['train'])} GB transient peak"
    )
    out.append("fits: " + ", ".join(f"{label} {'yes' if ok else 'no'}" for label, ok in p.fits.items()))
    out += [f"note: {n}" for n in p.notes]
    return "\n".join(out)


def check_fits(cfg: RunConfig, memory: int, what: str) -> MemoryPlan:
    """Raise ConfigError (one sentence) when the plan's peak exceeds `memory` bytes."""
    p = plan(cfg, memory)
    over = p.shortfall(memory)
    if over is not None:
        stage, excess = over
        raise ConfigError(
            f"the memory plan of this {cfg.model.family} config needs {gb(p.peak_by_stage[stage])} GB in the {stage} stage, "
            f"{gb(excess)} GB more than the {gb(memory)} GB of {what}: see `sol-rl plan CONFIG --gpu-memory {gb(memory)}GB` and docs/gpus.md "
            f"(nft.gradient_checkpointing, nft.micro_batch, model.low_memory), or pass --no-memory-check"
        )
    return p
