"""Run configuration: one YAML file = one experiment, validated before any compute."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

Mode = Literal["sol_rl", "diffusionnft", "naive_scaling", "naive_quant"]
CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RunSection(_Strict):
    seed: int = 0
    mode: Mode = "sol_rl"
    iterations: int = Field(3, ge=1)


class ModelSection(_Strict):
    family: Literal["shapes", "flux", "sd3", "sana"] = "shapes"
    weights: str | None = None  # a local path; None = the family's default location
    lora_rank: int = Field(32, ge=1)
    lora_alpha: int = Field(64, ge=1)
    # Real families only (shapes ignores them): image side in pixels (None = the family's:
    # flux 512, sd3/sana 1024), where and in which dtype the transformer runs (auto = bf16 on a
    # GPU, float32 on the CPU), the text encoders' token budget, and whether the text encoders
    # and VAE leave the GPU between uses.
    resolution: int | None = Field(None, ge=16)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "bfloat16", "float32"] = "auto"
    max_sequence_length: int | None = Field(None, ge=1)
    offload: bool = True


class PromptSection(_Strict):
    per_iteration: int = Field(4, ge=1)
    # Real families: a text file with one prompt per line (e.g. the PickScore prompt set), and
    # optionally a held-out file (without it every 10th line of `file` is held out).
    file: str | None = None
    eval_file: str | None = None


class ExploreSection(_Strict):
    n: int = Field(96, ge=2)
    steps: int = Field(6, ge=1)
    precision: Literal["nvfp4", "fp8", "high"] = "nvfp4"
    backend: Literal["emulated", "transformer_engine"] = "emulated"
    skip: tuple[str, ...] | None = None  # None = the family's default skip patterns
    min_dim: int | None = None
    batch: int = Field(96, ge=1)


class SelectSection(_Strict):
    k: int = Field(24, ge=2)
    on_short_prompt: Literal["error", "skip"] = "error"

    @field_validator("k")
    @classmethod
    def _even(cls, v: int) -> int:
        if v % 2:
            raise ValueError(f"select.k must be even (K/2 top + K/2 bottom), got {v}")
        return v


class RolloutSection(_Strict):
    steps: int = Field(10, ge=1)
    solver: Literal["euler", "dpm2"] = "euler"
    batch: int = Field(96, ge=1)


class RewardSection(_Strict):
    weights: dict[str, float] = {"shapes": 1.0}
    report: tuple[str, ...] = ("shapes_strict",)

    @field_validator("weights")
    @classmethod
    def _known(cls, v: dict[str, float]) -> dict[str, float]:
        from .rewards import KNOWN

        bad = [k for k in v if k not in KNOWN]
        if bad or not v:
            raise ValueError(f"reward.weights names unknown rewards {bad}: choose from {list(KNOWN)}")
        return v


class NFTSection(_Strict):
    beta: float = Field(1.0, gt=0)
    kl_beta: float = Field(1e-4, ge=0)
    lr: float = Field(3e-4, gt=0)
    weight_decay: float = 1e-4
    max_grad_norm: float = Field(1.0, gt=0)
    timestep_fraction: float = Field(0.6, gt=0, le=1)
    decay_type: Literal[0, 1, 2] = 1
    micro_batch: int = Field(48, ge=1)


class EvalSection(_Strict):
    every: int = Field(1, ge=0)  # 0 = never
    steps: int = Field(20, ge=1)
    prompts: int = Field(8, ge=1)
    seeds_per_prompt: int = Field(2, ge=1)


class StorageSection(_Strict):
    run_root: str = "runs"
    # s3:// only; unset = the standard AWS variables (AWS_ENDPOINT_URL, AWS_REGION, ...)
    s3_endpoint: str | None = None
    s3_region: str | None = None


class RunConfig(_Strict):
    run: RunSection = RunSection()
    model: ModelSection = ModelSection()
    prompts: PromptSection = PromptSection()
    explore: ExploreSection = ExploreSection()
    select: SelectSection = SelectSection()
    rollout: RolloutSection = RolloutSection()
    reward: RewardSection = RewardSection()
    nft: NFTSection = NFTSection()
    eval: EvalSection = EvalSection()
    storage: StorageSection = StorageSection()

    @model_validator(mode="after")
    def _consistent(self) -> "RunConfig":
        if self.run.mode != "diffusionnft" and self.explore.n < self.select.k:
            raise ValueError(f"explore.n ({self.explore.n}) must be >= select.k ({self.select.k}): explore at least as many seeds as you keep")
        if self.run.mode == "sol_rl" and self.explore.precision == "high":
            raise ValueError("mode sol_rl explores in low precision: set explore.precision to nvfp4 or fp8 (or use mode naive_scaling)")
        return self

    def hash(self) -> str:
        """sha256 of the canonical JSON of every setting (what resume compares)."""
        return hashlib.sha256(json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()

    def with_overrides(self, **dotted) -> "RunConfig":
        data = self.model_dump(mode="json")
        for key, value in dotted.items():
            section, _, field = key.partition(".")
            data[section][field] = value
        return RunConfig.model_validate(data)


class ConfigError(ValueError):
    pass


def load_config(path: str | Path) -> RunConfig:
    """Load and validate a YAML config; errors are one sentence naming the file and key."""
    p = Path(path)
    if not p.exists() and (CONFIG_DIR / f"{path}.yaml").exists():
        p = CONFIG_DIR / f"{path}.yaml"
    if not p.exists():
        raise ConfigError(f"config file {path} does not exist: pass a YAML path or a preset name (shapes, flux, sd35, sana)")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p} is not valid YAML: {e}") from None
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"]) or "(top level)"
        raise ConfigError(f"{p}: {where}: {err['msg']} (fix that key and run again)") from None


def diff_keys(a: RunConfig, b: RunConfig) -> list[str]:
    """Dotted keys whose values differ between two configs."""
    da, db = a.model_dump(mode="json"), b.model_dump(mode="json")
    out = []
    for section in da:
        for k in set(da[section]) | set(db[section]):
            if da[section].get(k) != db[section].get(k):
                out.append(f"{section}.{k}")
    return sorted(out)
