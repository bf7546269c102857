"""Every setting sol-rl reads from the environment, in one place (pydantic-settings).

A setting is read when `settings()` is called (not at import), so a process or a test may
change the environment first. Variables of other tools (AWS_*, HF_HOME, HF_HUB_OFFLINE, ...)
are read by those tools themselves; the few we consult are named here with their aliases.

| variable | meaning |
|---|---|
| SOLRL_RUN_ROOT | default run root when neither --run-root nor storage.run_root is given |
| SOLRL_S3_ENDPOINT (or AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL) | S3 endpoint of s3:// run stores |
| AWS_REGION (or AWS_DEFAULT_REGION) | S3 region |
| SOLRL_NO_COMPILE=1 | use the eager NVFP4 activation kernel instead of torch.compile (bit-identical; tests) |
| SOLRL_REWARD_DEVICE | device of the learned reward models (default: cuda if available, else cpu) |
| SOLRL_REWARD_BATCH | images per forward pass of a learned reward model (default 16) |
| HPS_ROOT | folder of the HPS v2.1 checkpoint (default ~/.cache/hpsv2) |
| SOLRL_CLIPSCORE_PATH, SOLRL_PICKSCORE_PATH, SOLRL_PICKSCORE_PROCESSOR_PATH | local copies of the learned rewards' weights (see solrl/rewards/) |
| SOLRL_HPSV2_PATH, SOLRL_IMAGEREWARD_PATH, SOLRL_IMAGEREWARD_TOKENIZER | the same, for HPS v2.1 and ImageReward |
| HF_HUB_CACHE, HF_HOME, XDG_CACHE_HOME | where model and reward weights are looked up in the Hugging Face cache (read at call time) |
| HF_HUB_OFFLINE, TRANSFORMERS_OFFLINE | weights only from disk (sol-rl never downloads at run time anyway) |
| SOLRL_LEASE_TIMEOUT_S | a run lease whose heartbeat is older than this is stale (default 120) |
| SOLRL_DEBUG=1 | full tracebacks instead of one-sentence errors (as --debug) |
| SOLRL_UPDATE_TIMEOUT_S | a collective (or the rendezvous) of the multi-rank update waiting longer fails the rank (default 1800) |
| SOLRL_UPDATE_STORE_HOST | the address the workers reach the flow's process at, for the multi-rank rendezvous |
| SOLRL_UPDATE_PAUSE_S | test hook of the multi-rank update: each rank sleeps this long after each micro-batch (default 0) |
| CUDA_VISIBLE_DEVICES | the GPUs this process may use (a scheduler's allocation; `sol-rl status --gpus`) |
| ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA | a process held to a lower CPU capability (the AVX2 kind on a larger CPU): |
| | `model.dtype: auto`, the int8 engine and the compiled NVFP4 kernels' cache follow them |
| TORCHINDUCTOR_CACHE_DIR | torch's compiled-kernel cache; a process held to another CPU capability gets its own |
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SOLRL_", extra="ignore", frozen=True)

    run_root: str | None = None
    s3_endpoint: str | None = Field(
        None, validation_alias=AliasChoices("SOLRL_S3_ENDPOINT", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
    )
    s3_region: str | None = Field(
        None, validation_alias=AliasChoices("SOLRL_S3_REGION", "AWS_REGION", "AWS_DEFAULT_REGION")
    )
    no_compile: bool = False
    reward_device: str | None = None
    reward_batch: int = Field(16, ge=1)
    hps_root: str = Field("~/.cache/hpsv2", validation_alias=AliasChoices("HPS_ROOT", "SOLRL_HPS_ROOT"))
    lease_timeout_s: float = Field(120.0, gt=0)
    debug: bool = False
    update_pause_s: float = Field(0.0, ge=0)
    update_timeout_s: float = Field(1800.0, gt=0)
    update_store_host: str | None = None
    clipscore_path: str | None = None
    pickscore_path: str | None = None
    pickscore_processor_path: str | None = None
    hpsv2_path: str | None = None
    imagereward_path: str | None = None
    imagereward_tokenizer: str | None = None
    hf_hub_cache: str | None = Field(None, validation_alias=AliasChoices("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"))
    hf_home: str | None = Field(None, validation_alias=AliasChoices("HF_HOME"))
    xdg_cache_home: str | None = Field(None, validation_alias=AliasChoices("XDG_CACHE_HOME"))
    hf_offline: bool = Field(False, validation_alias=AliasChoices("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    cuda_visible_devices: str | None = Field(None, validation_alias=AliasChoices("CUDA_VISIBLE_DEVICES"))
    aten_cpu_capability: str | None = Field(None, validation_alias=AliasChoices("ATEN_CPU_CAPABILITY"))
    onednn_max_cpu_isa: str | None = Field(None, validation_alias=AliasChoices("ONEDNN_MAX_CPU_ISA"))
    torchinductor_cache_dir: str | None = Field(None, validation_alias=AliasChoices("TORCHINDUCTOR_CACHE_DIR"))

    @property
    def hub_cache(self) -> Path:
        """The Hugging Face hub cache folder, as huggingface_hub would compute it."""
        if self.hf_hub_cache:
            return Path(self.hf_hub_cache).expanduser()
        home = self.hf_home or str(Path(self.xdg_cache_home or "~/.cache") / "huggingface")
        return Path(home).expanduser() / "hub"


def set_inductor_cache_dir(path: str) -> None:
    """Point torch's compiled-kernel cache (inductor reads this variable whenever it looks for the
    cache, and has no other setting for it) at `path`, for this process and its children."""
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = path


_PREFIXES = (
    "SOLRL_",
    "AWS_",
    "HF_",
    "HUGGINGFACE_",
    "XDG_",
    "HPS_",
    "TRANSFORMERS_",
    "CUDA_VISIBLE_DEVICES",
    "ATEN_CPU_CAPABILITY",
    "ONEDNN_MAX_CPU_ISA",
    "TORCHINDUCTOR_CACHE_DIR",
)


def settings() -> Settings:
    """The settings as the environment says now (parsed again only when a variable they read
    changed: building them costs ~1.5 ms, a look-up ~20 µs, so hot paths may call this)."""
    return _parsed(tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith(_PREFIXES))))


@lru_cache(maxsize=16)
def _parsed(_environment: tuple) -> Settings:
    return Settings()
