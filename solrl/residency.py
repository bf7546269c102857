"""The residency schedule: which components live on the accelerator in each stage and phase.

One schedule, read by the runtime (solrl/models/diffusers_base.py moves the frozen encoders and
the VAE by it, tasks/cache.py drops sampler copies by it) and added up by the memory plan
(solrl/memplan.py), so the plan cannot drift from what the code does. Torch-free.
"""

from __future__ import annotations

from .config import RunConfig

DECODE_CHUNK = 4  # latents the VAE decodes at once (DiffusersPolicy.decode); 1 with model.low_memory


def decode_chunk(cfg: RunConfig) -> int:
    """How many latents the VAE decodes at once: the runtime's and the plan's figure."""
    return 1 if cfg.model.low_memory else DECODE_CHUNK


STAGES = ("baseline", "explore", "select", "regenerate", "audit", "update", "eval")
COMPONENTS = (
    "transformer",
    "adapters",
    "explore_copy",
    "regenerate_copy",
    "eval_copy",
    "text_encoders",
    "vae",
    "rewards",
    "activations",
    "cuda_context",
)
SAMPLING_PHASES = ("encode", "sample", "decode", "score")
STAGE_PHASES = {
    "baseline": SAMPLING_PHASES,
    "explore": SAMPLING_PHASES,
    "select": ("idle",),
    "regenerate": SAMPLING_PHASES,
    "audit": SAMPLING_PHASES,
    "update": ("encode", "train"),
    "eval": SAMPLING_PHASES,
}
# The sampler copy a stage uses (select: the explore copy is still cached from explore).
SAMPLER = {
    "baseline": "eval_copy",
    "eval": "eval_copy",
    "explore": "explore_copy",
    "select": "explore_copy",
    "regenerate": "regenerate_copy",
    "audit": "regenerate_copy",
}


# --- the residency schedule ---------------------------------------------------------------------
def frozen_on_device(cfg: RunConfig, phase: str, device_type: str = "cuda") -> set[str]:
    """Which frozen components (text_encoders, vae) are on the accelerator in `phase`. Off a GPU
    everything stays where it is (there is one memory); with `model.offload` the text encoders
    come for encoding only and the VAE for decoding only."""
    if device_type != "cuda" or not cfg.model.offload:
        return {"text_encoders", "vae"}
    return {"encode": {"text_encoders"}, "decode": {"vae"}}.get(phase, set())


def sampler_on_device(cfg: RunConfig, stage: str) -> set[str]:
    """The sampler copies kept on the accelerator during `stage` (the cache drops the others)."""
    on = set()
    if stage in SAMPLER and (SAMPLER[stage] != "explore_copy" or cfg.mode.explores):
        on.add(SAMPLER[stage])
    if stage == "audit" and cfg.fidelity.guard.enabled:
        on.add("explore_copy")  # the guard's fallback audit re-runs the configured proxy
    return on


def resident(cfg: RunConfig, stage: str, phase: str, device_type: str = "cuda") -> tuple[str, ...]:
    """The components on the accelerator in (stage, phase): THE schedule."""
    on = {"transformer", "adapters", "cuda_context"}
    if any(r not in ("shapes", "shapes_strict") for r in reward_names(cfg)):
        on.add("rewards")  # built once per process on the GPU, never moved
    on |= sampler_on_device(cfg, stage)
    on |= frozen_on_device(cfg, phase, device_type)
    if phase != "idle":
        on.add("activations")
    return tuple(c for c in COMPONENTS if c in on)


def reward_names(cfg: RunConfig) -> list[str]:
    return list(dict.fromkeys([*cfg.reward.weights, *cfg.reward.report]))
