"""A run's LoRA adapter in the diffusers format (`sol-rl export-lora`), from the committed
checkpoint alone: the model is not loaded."""

from __future__ import annotations

import json
from pathlib import Path

from solrl.errors import MissingInput

from .run import Run


def export_lora(run: Run, out: Path, ema: bool = False, iteration: int | None = None) -> tuple[Path, str, int]:
    """Write the trained (or EMA) adapter of a committed update; (folder, pipeline class, iteration)."""
    from safetensors.torch import load

    from solrl.models.diffusers_base import export_diffusers_lora
    from solrl.registry import family_class

    done = [i for i in run.store.iterations() if run.stage(i, "update").record]
    if not done:
        raise MissingInput(f"run {run.run_id} has no committed update yet: run at least one iteration first")
    i = done[-1] if iteration is None else iteration
    if i not in done:
        raise MissingInput(f"iteration {i} of run {run.run_id} has no committed update: choose one of {done}")
    h = run.stage(i, "update")
    folder = "state/ema" if ema else "state/policy"
    tensors = load(run.store.read_bytes(h.file(f"{folder}/adapter_model.safetensors")))
    lora = json.loads(run.store.read_bytes(h.file(f"{folder}/adapter_config.json")))
    pipeline = family_class(run.cfg.model.family).pipeline_class
    return (
        export_diffusers_lora(pipeline, tensors, out, lora["r"], lora["lora_alpha"], sorted(lora["target_modules"])),
        pipeline,
        i,
    )
