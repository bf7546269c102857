"""Adapter, EMA and optimizer state as bytes (what the update stage commits, and resume reads).

Files (under <run>/iter=i/update/state/):
  policy/adapter_model.safetensors  the trainable adapter θ ("default")
  old/adapter_model.safetensors     the sampling adapter ("old")
  ema/adapter_model.safetensors     EMA of θ (evaluation and export)
  */adapter_config.json             the peft LoraConfig, so peft/diffusers can load each adapter
  optimizer.safetensors             AdamW moments and step counts, by parameter index
  rng.json                          optimizer step count and the keyed streams the run uses
Tensors are stored in float32 exactly, so a resumed run continues bit for bit.
"""

from __future__ import annotations

import json

import torch
from safetensors.torch import load, save

from .compute import TrainState
from .models.base import Policy

ADAPTER_FILES = {"policy": "default", "old": "old", "ema": None}


def state_files(policy: Policy, state: TrainState) -> dict[str, bytes]:
    cfg = policy.peft.peft_config["default"]
    # peft keeps target_modules as a set: sort it, or the file's bytes would follow the
    # process's string-hash order and differ between two identical runs.
    adapter_config = json.dumps(cfg.to_dict(), indent=2, sort_keys=True, default=sorted).encode()
    out: dict[str, bytes] = {}
    for folder, adapter in ADAPTER_FILES.items():
        tensors = state.ema if adapter is None else policy.adapter_state(adapter)
        out[f"{folder}/adapter_model.safetensors"] = save(
            {k: v.contiguous() for k, v in tensors.items()}
        )  # peft's names minus the adapter name
        out[f"{folder}/adapter_config.json"] = adapter_config
    opt = state.optimizer.state_dict()
    flat = {}
    for idx, s in opt["state"].items():
        for k, v in s.items():
            flat[f"{idx}.{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
    out["optimizer.safetensors"] = save(flat, metadata={"param_groups": json.dumps(opt["param_groups"])})
    out["rng.json"] = json.dumps(
        {"optimizer_step": state.step, "streams": "keyed by (run seed, iteration); nothing else to restore"}
    ).encode()
    return out


def restore(policy: Policy, state: TrainState, files: dict[str, bytes]) -> None:
    """Load adapters, EMA and optimizer state written by `state_files` into policy/state, each
    tensor on the device of the parameter it belongs to (safetensors loads onto the CPU; on a GPU
    the first update after a resume would otherwise mix devices in the EMA's lerp)."""
    policy.load_adapter("default", load(files["policy/adapter_model.safetensors"]))
    policy.load_adapter("old", load(files["old/adapter_model.safetensors"]))
    params = policy._pairs["default"]  # the trainable adapter: what the EMA and the optimizer follow
    ema = load(files["ema/adapter_model.safetensors"])
    state.ema = {k: v.to(params[k].device if k in params else v.device, copy=True) for k, v in ema.items()}
    flat = load(files["optimizer.safetensors"])
    by_index = [p for group in state.optimizer.param_groups for p in group["params"]]
    per_param: dict[int, dict] = {}
    for key, v in flat.items():
        idx, name = key.split(".", 1)
        i = int(idx)
        # moments beside their parameter; the step count where torch keeps it (the CPU, unless
        # the optimizer is capturable or fused): load_state_dict decides that, we only place moments
        per_param.setdefault(i, {})[name] = v.to(by_index[i].device) if name != "step" and i < len(by_index) else v
    sd = state.optimizer.state_dict()
    sd["state"] = per_param
    state.optimizer.load_state_dict(sd)
    state.step = json.loads(files["rng.json"])["optimizer_step"]
