"""What `explore.backend: transformer_engine` needs from the machine, checked before anything loads,
and the Transformer Engine recipes that compute what the emulation computes.

Torch-free at import, and it imports torch only when Transformer Engine is installed: on a
machine without TE, `sol-rl run configs/flux.yaml` refuses in about a second, before any weight,
prompt file or reward model is looked at.

Recipes (read from transformer_engine/common/recipe/__init__.py at the tags v2.8 … v2.18; the
field names below are the same in every one of them):

  nvfp4  NVFP4BlockScaling: E2M1 values in blocks of 16 along the reduction dimension, an E4M3
         scale per block, an FP32 scale per tensor: what `solrl.quant` emulates. Its defaults
         differ from the emulation in three ways, each switched off here: weights in 16×16 2-D
         blocks (`disable_2d_quantization`), random Hadamard transforms of the inputs
         (`disable_rht`), stochastic rounding of gradients (`disable_stochastic_rounding`; the
         explore copy runs no backward, set for clarity). TE 2.16 added per-row activation
         scales (`row_scaled_activation`), 2.17 the "4 over 6" adaptive block scales
         (`nvfp4_4over6`); both default off from environment variables and are pinned off
         where the installed class has them.
  fp8    Float8CurrentScaling with fp8_format E4M3: per-tensor scale amax / 448 from the tensor
         itself on every call, as the emulated FP8 does; `use_power_2_scales` off (TE would
         otherwise round the scale to a power of two when NVTE_FP8_CURRENT_SCALING_POWER_2_SCALES=1).
  Attention stays bf16 in both (`fp8_dpa`, `fp8_mha` off), as in the emulation.

Compute capability (TE's own checks, check_nvfp4_support / check_fp8_support): NVFP4 needs
sm_100+ (Blackwell), FP8 sm_89+ (Ada, Hopper, Blackwell).
"""

from __future__ import annotations

from .config import RunConfig
from .errors import ConfigError

TE_DISTRIBUTION = "transformer_engine"
TE_MIN_VERSION = (2, 8)  # the `gpu` extra's pin (pyproject.toml): the first release with NVFP4BlockScaling
TE_MIN_CAPABILITY = {"nvfp4": (10, 0), "fp8": (8, 9)}
TE_RECIPE_CLASS = {"nvfp4": "NVFP4BlockScaling", "fp8": "Float8CurrentScaling"}
GPU_NAMES = {"nvfp4": "a Blackwell GPU (sm_100+)", "fp8": "an Ada, Hopper or Blackwell GPU (sm_89+)"}

# Keyword arguments TE's recipe takes in every release from 2.8 on (formats by their TE enum name).
_RECIPE_KWARGS = {
    "nvfp4": {
        "fp4_format": "E2M1",
        "fp8_format": "E4M3",
        "disable_rht": True,
        "disable_stochastic_rounding": True,
        "disable_2d_quantization": True,
        "fp8_dpa": False,
        "fp8_mha": False,
    },
    "fp8": {"fp8_format": "E4M3", "use_power_2_scales": False, "fp8_dpa": False, "fp8_mha": False},
}
# Fields later releases added whose environment-set defaults could change the numerics: passed
# (switched off) only where the installed recipe class has them.
_NEWER_RECIPE_KWARGS = {
    "nvfp4": {"row_scaled_activation": False, "nvfp4_4over6": "none"},  # TE 2.16, 2.17
    "fp8": {},
}
_FORMAT_FIELDS = ("fp4_format", "fp8_format")


class TransformerEngineUnavailable(ConfigError, RuntimeError):
    """The config asks for Transformer Engine and this machine cannot run it (one sentence,
    naming a config that works here). A ConfigError: the CLI exits 2 with the sentence."""


def te_recipe_kwargs(fmt: str, fields: set[str] | frozenset[str] | None = None) -> dict[str, object]:
    """The keyword arguments of TE's recipe for `fmt` ("nvfp4" or "fp8") that make TE quantise
    as the emulation does (formats by name, e.g. "E2M1"). `fields`: the installed recipe class's
    field names; the newer flags it has are added (pinned off)."""
    if fmt not in _RECIPE_KWARGS:
        raise ValueError(f"no Transformer Engine recipe for format {fmt!r}: use nvfp4 or fp8")
    kw = dict(_RECIPE_KWARGS[fmt])
    if fields is not None:
        kw.update({k: v for k, v in _NEWER_RECIPE_KWARGS[fmt].items() if k in fields})
    return kw


def recipe_fields(recipe_cls) -> set[str]:
    """The constructor fields of a TE recipe class (a pydantic dataclass)."""
    return set(getattr(recipe_cls, "__dataclass_fields__", {}))


def build_te_recipe(fmt: str, recipe_module):
    """TE's recipe for `fmt`, built from `transformer_engine.common.recipe` with
    `te_recipe_kwargs`, then checked: the quantiser parameters TE derived from the flags
    (fp4_quant_fwd_inp / fp4_quant_fwd_weight, use_power_2_scales) are the emulation's."""
    cls = getattr(recipe_module, TE_RECIPE_CLASS[fmt])
    fields = recipe_fields(cls)
    kw = te_recipe_kwargs(fmt, fields)
    missing = sorted(set(kw) - fields)
    if missing:
        raise TransformerEngineUnavailable(
            f"the installed Transformer Engine's {cls.__name__} lacks the fields {missing} this version of sol-rl sets: "
            f"install Transformer Engine >= {'.'.join(map(str, TE_MIN_VERSION))} or set explore.backend: emulated"
        )
    for key in _FORMAT_FIELDS:
        if key in kw:
            kw[key] = recipe_module.Format[kw[key]]
    recipe = cls(**kw)
    _check_recipe(fmt, recipe)
    return recipe


def _check_recipe(fmt: str, recipe) -> None:
    if fmt == "nvfp4":
        inp, weight = recipe.fp4_quant_fwd_inp, recipe.fp4_quant_fwd_weight
        bad = [
            name
            for name, on in (
                ("random Hadamard transform of the inputs", inp.random_hadamard_transform),
                ("2-D weight blocks", weight.fp4_2d_quantization),
                ("stochastic rounding", inp.stochastic_rounding or weight.stochastic_rounding),
            )
            if on
        ]
    else:
        bad = ["power-of-two scales"] if recipe.use_power_2_scales else []
    if bad:
        raise TransformerEngineUnavailable(
            f"Transformer Engine built {type(recipe).__name__} with {', '.join(bad)}, which the emulated numerics do not have: "
            "unset the NVTE_* environment variables that turn them on, or set explore.backend: emulated"
        )


def te_formats(cfg: RunConfig) -> dict[str, str]:
    """The formats a run will ask Transformer Engine for -> the config key asking for each."""
    if cfg.explore.backend != "transformer_engine" or cfg.mode.explore_precision != "low":
        return {}
    out = {cfg.explore.precision: "explore.precision"}
    g = cfg.fidelity.guard
    if g.enabled and g.fallback_precision in ("nvfp4", "fp8"):
        out.setdefault(g.fallback_precision, "fidelity.guard.fallback_precision")
    return out


def installed_te_version() -> str | None:
    """Transformer Engine's installed version, from the package metadata (nothing is imported)."""
    from importlib import metadata

    try:
        return metadata.version(TE_DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return None


def _release(version: str) -> tuple[int, ...]:
    """(major, minor, ...) of a version string such as "2.8.0+cu12" or "2.10.0.dev0"."""
    import re

    m = re.match(r"(\d+(?:\.\d+)*)", version.strip())
    return tuple(int(x) for x in m.group(1).split(".")) if m else ()


def check_accelerator(cfg: RunConfig) -> str | None:
    """Refuse in one sentence (TransformerEngineUnavailable, naming a config that works) when the
    config asks for Transformer Engine and this machine cannot run it: the package, its version,
    a CUDA device, its compute capability, TE's own import, the recipes. Returns a line saying
    what will run ("Transformer Engine 2.8.0 on NVIDIA H200 (sm_90): fp8 Float8CurrentScaling"),
    None when the config does not use TE."""
    formats = te_formats(cfg)
    if not formats:
        return None
    need = "fp8" if set(formats) == {"fp8"} else "nvfp4"  # NVFP4 is the stricter
    key = "explore.backend: transformer_engine"
    if cfg.explore.lowrank:
        raise ConfigError(
            f"explore.lowrank ({cfg.explore.lowrank}) runs in the emulation only (Transformer "
            "Engine has no low-rank branch): set explore.backend: emulated or explore.lowrank: 0"
        )
    minimum = ".".join(map(str, TE_MIN_VERSION))
    version = installed_te_version()
    if version is None:
        raise TransformerEngineUnavailable(
            f"{key} needs NVIDIA Transformer Engine >= {minimum}, which is not installed here: "
            f"install it (pip install -e '.[gpu]') on {GPU_NAMES[need]}, or set "
            "explore.backend: emulated (the same numerics, without the low-precision speed-up)"
        )
    if _release(version)[:2] < TE_MIN_VERSION:
        raise TransformerEngineUnavailable(
            f"{key} needs Transformer Engine >= {minimum} and {version} is installed: upgrade it (pip "
            f"install -U 'transformer-engine[pytorch]>={minimum}') or set explore.backend: emulated"
        )
    import torch

    if not torch.cuda.is_available():
        raise TransformerEngineUnavailable(
            f"{key} needs a CUDA GPU and none is visible: run on {GPU_NAMES[need]}, or set explore.backend: emulated"
        )
    major, minor = torch.cuda.get_device_capability()
    name = torch.cuda.get_device_name()
    for fmt, asked_by in formats.items():
        if (major, minor) < TE_MIN_CAPABILITY[fmt]:
            fix = "explore.backend: emulated"
            if (
                fmt == "nvfp4"
                and (major, minor) >= TE_MIN_CAPABILITY["fp8"]
                and asked_by == "explore.precision"
                and not cfg.explore.lowrank
            ):
                fix = "explore.precision: fp8 (FP8 tensor cores on this GPU) or explore.backend: emulated"
            elif fmt == "nvfp4" and asked_by != "explore.precision":
                fix = f"{asked_by}: fp8 or explore.backend: emulated"
            raise TransformerEngineUnavailable(
                f"{asked_by}: {fmt} with {key} needs {GPU_NAMES[fmt]} and this one is {name} (sm_{major}{minor}): set {fix}"
            )
    try:
        import transformer_engine.pytorch  # noqa: F401  (loads TE's CUDA libraries: fails here, not mid-run)
        from transformer_engine.common import recipe as te_recipe
    except (ImportError, OSError, RuntimeError) as e:
        raise TransformerEngineUnavailable(
            f"{key}: Transformer Engine {version} is installed but does not load ({' '.join(str(e).split())[:200]}): "
            "reinstall it for this torch and CUDA, or set explore.backend: emulated"
        ) from None
    built = [f"{fmt} {type(build_te_recipe(fmt, te_recipe)).__name__}" for fmt in formats]
    return f"Transformer Engine {version} on {name} (sm_{major}{minor}): {', '.join(built)}"
