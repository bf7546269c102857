"""The GPU path as far as a CPU can check it: the Transformer Engine recipes and the checks made
before a run loads anything, the emulated layers' accelerator layout (bf16 factors, a bf16 GEMM
with float32 accumulation: run here on the meta device), one autocast per model forward, the
layer-by-layer swap, restore onto the parameters' device, float32 timesteps, the presets."""

from __future__ import annotations

import copy
import subprocess
import sys
import time
import weakref
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from torch import nn

from solrl.accelerator import TransformerEngineUnavailable, check_accelerator, te_formats, te_recipe_kwargs
from solrl.config import load_config
from solrl.errors import ConfigError
from solrl.quant import EmulatedLinear, FP8Config, NVFP4Config, quantize_, select_linears
from solrl.quant.linear import _swap, factor_dtype_for
from solrl.quant.numerics import _HAS_MM_OUT_DTYPE, block_mm

ROOT = Path(__file__).resolve().parent.parent

# --- Transformer Engine recipes ---------------------------------------------------------------------
# The constructor fields of TE's recipes, read from transformer_engine/common/recipe/__init__.py of
# NVIDIA/TransformerEngine at the tags v2.8 (the `gpu` extra's floor, pyproject.toml) and v2.18 (the
# newest release read; the fields of v2.9 … v2.14 are v2.8's, v2.15 adds backward_override, v2.16
# row_scaled_activation, v2.17 the nvfp4_4over6 family).
TE_FIELDS = {
    ("nvfp4", "2.8"): {
        "disable_rht",
        "disable_stochastic_rounding",
        "disable_2d_quantization",
        "fp4_format",
        "fp8_format",
        "fp8_dpa",
        "fp8_mha",
    },
    ("nvfp4", "2.18"): {
        "disable_rht",
        "disable_stochastic_rounding",
        "disable_2d_quantization",
        "row_scaled_activation",
        "nvfp4_4over6",
        "nvfp4_4over6_e4m3_use_256",
        "nvfp4_4over6_err_mode",
        "fp4_format",
        "fp8_format",
        "fp8_dpa",
        "fp8_mha",
        "backward_override",
    },
    ("fp8", "2.8"): {
        "use_power_2_scales",
        "fp8_format",
        "fp8_gemm_fprop",
        "fp8_gemm_dgrad",
        "fp8_gemm_wgrad",
        "fp8_dpa",
        "fp8_mha",
    },
    ("fp8", "2.18"): {
        "use_power_2_scales",
        "fp8_format",
        "fp8_gemm_fprop",
        "fp8_gemm_dgrad",
        "fp8_gemm_wgrad",
        "fp8_dpa",
        "fp8_mha",
        "backward_override",
    },
}


@pytest.mark.parametrize("fmt,version", sorted(TE_FIELDS))
def test_recipe_kwargs_are_te_fields_and_match_the_emulation(fmt, version):
    fields = TE_FIELDS[(fmt, version)]
    kw = te_recipe_kwargs(fmt, fields)
    assert set(kw) <= fields, set(kw) - fields  # TE's recipe would reject anything else
    assert kw["fp8_dpa"] is False and kw["fp8_mha"] is False  # attention stays bf16, as in the emulation
    if fmt == "nvfp4":
        # 1x16 blocks for weights too, no Hadamard transform, no stochastic rounding, E2M1 + E4M3 scales
        assert (
            kw["disable_2d_quantization"] is True
            and kw["disable_rht"] is True
            and kw["disable_stochastic_rounding"] is True
        )
        assert (kw["fp4_format"], kw["fp8_format"]) == ("E2M1", "E4M3")
        if version == "2.18":  # newer flags whose environment-set defaults could change the numerics: pinned off
            assert kw["row_scaled_activation"] is False and kw["nvfp4_4over6"] == "none"
        else:
            assert "row_scaled_activation" not in kw and "nvfp4_4over6" not in kw
    else:  # per-tensor current scaling, amax / 448, not rounded to a power of two
        assert kw == {"fp8_format": "E4M3", "use_power_2_scales": False, "fp8_dpa": False, "fp8_mha": False}
    with pytest.raises(ValueError, match="no Transformer Engine recipe"):
        te_recipe_kwargs("int4")


def test_recipe_objects_built_by_the_installed_transformer_engine():
    """Where TE is installed: the recipe objects the code builds carry the emulation's quantiser flags."""
    recipe_module = pytest.importorskip("transformer_engine.common.recipe")
    from solrl.accelerator import build_te_recipe

    nv = build_te_recipe("nvfp4", recipe_module)
    assert type(nv).__name__ == "NVFP4BlockScaling"
    for q in (nv.fp4_quant_fwd_inp, nv.fp4_quant_fwd_weight):
        assert not q.random_hadamard_transform and not q.stochastic_rounding and not q.fp4_2d_quantization
    f8 = build_te_recipe("fp8", recipe_module)
    assert (
        type(f8).__name__ == "Float8CurrentScaling"
        and f8.use_power_2_scales is False
        and f8.fp8_format == recipe_module.Format.E4M3
    )


# --- checked before anything loads --------------------------------------------------------------------
def test_run_without_transformer_engine_refuses_in_a_second_before_loading_anything(tmp_path):
    code = (
        "import atexit, sys; atexit.register(lambda: print('torch imported:', 'torch' in sys.modules, file=sys.stderr)); "
        f"from flows.cli import app; app(['run', 'configs/flux.yaml', '--run-root', {str(tmp_path)!r}])"
    )
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    elapsed = time.perf_counter() - t0
    assert p.returncode == 2, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert lines[-1] == "torch imported: False" and len(lines) == 2 and "Traceback" not in p.stderr, p.stderr
    error = lines[0]
    assert error.startswith("error: explore.backend: transformer_engine needs NVIDIA Transformer Engine >= 2.8")
    assert "set explore.backend: emulated" in error and "backend: fp8" not in error and "'fp8'" not in error
    assert not any(tmp_path.iterdir())  # no run folder
    assert elapsed < 10, elapsed  # ~1 s on an idle machine; generous for shared CI cores
    # what it suggests is a valid config that this machine accepts
    fixed = load_config("flux").with_overrides(**{"explore.backend": "emulated"})
    assert check_accelerator(fixed) is None


def test_which_configs_need_transformer_engine_and_what_they_are_told():
    flux = load_config("flux")
    assert te_formats(flux) == {"nvfp4": "explore.precision"}
    hopper = flux.with_overrides(**{"explore.precision": "fp8"})
    assert te_formats(hopper) == {"fp8": "explore.precision"}
    guarded = flux.with_overrides(
        **{"fidelity.audit_prompts": 1, "fidelity.guard": {"enabled": True, "fallback_precision": "fp8"}}
    )
    assert te_formats(guarded) == {"nvfp4": "explore.precision", "fp8": "fidelity.guard.fallback_precision"}
    for cfg in (
        flux.with_overrides(**{"explore.backend": "emulated"}),
        flux.with_overrides(**{"run.mode": "diffusionnft"}),
        flux.with_overrides(**{"run.mode": "naive_scaling", "explore.precision": "high"}),
    ):
        assert te_formats(cfg) == {} and check_accelerator(cfg) is None
    with pytest.raises(TransformerEngineUnavailable, match="an Ada, Hopper or Blackwell GPU") as e:
        check_accelerator(hopper)
    assert isinstance(e.value, ConfigError) and isinstance(e.value, RuntimeError) and "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="explore.lowrank"):
        check_accelerator(flux.with_overrides(**{"explore.lowrank": 8}))


def test_transformer_engine_unavailable_mid_run_is_one_sentence_with_exit_code_2():
    """Should a run reach the explore copy without the preflight (a library caller), the error is
    still one sentence that the CLI maps to exit 2."""
    from test_quant import _tiny_flux

    from tasks.errors import explain

    for config in (NVFP4Config(backend="transformer_engine"), FP8Config(backend="transformer_engine")):
        with pytest.raises(TransformerEngineUnavailable) as e:
            quantize_(_tiny_flux(), config)
        code, sentence = explain(e.value)
        assert (
            code == 2
            and "\n" not in sentence
            and "explore.backend: emulated" in sentence
            and "backend: fp8" not in sentence
        )


# --- quantisation configs and the emulated layer's accelerator layout ----------------------------------------
def test_one_config_class_per_scheme(shapes_policy_factory):
    from solrl.compute import explore_quant
    from solrl.plan import ExploreSpec

    policy = shapes_policy_factory()
    cfg = policy.cfg
    nv = explore_quant(policy, cfg, ExploreSpec("nvfp4", 6, 8))
    f8 = explore_quant(policy, cfg, ExploreSpec("fp8", 6, 8))
    assert type(nv) is NVFP4Config and type(f8) is FP8Config and nv.backend == f8.backend == "emulated"
    assert explore_quant(policy, cfg, ExploreSpec("high", 6, 8)) is None
    te = cfg.with_overrides(**{"explore.backend": "transformer_engine"})
    assert explore_quant(policy, te, ExploreSpec("fp8", 6, 8)) == FP8Config(
        skip=nv.skip, min_dim=nv.min_dim, backend="transformer_engine"
    )
    assert select_linears(policy.peft, nv) == select_linears(policy.peft, f8)  # one filter
    with pytest.raises(ValueError, match="FP8Config"):
        NVFP4Config(backend="fp8")
    with pytest.raises(ValueError, match="unknown quantisation backend"):
        FP8Config(backend="int4")


@pytest.mark.parametrize("fmt,lowrank", [("nvfp4", 0), ("nvfp4", 4), ("fp8", 0)])
def test_bf16_factors_give_the_same_bits_and_hold_no_float32_weight(fmt, lowrank):
    g = torch.Generator().manual_seed(0)
    lin = nn.Linear(64, 48)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(48, 64, generator=g) / 8)
    cpu = EmulatedLinear(lin, fmt, lowrank=lowrank)  # the CPU layout: float32 factor (+ packed codes)
    acc = EmulatedLinear(lin, fmt, lowrank=lowrank, factor_dtype=torch.bfloat16)  # the accelerator layout
    assert cpu.weight_qs.dtype == torch.float32 and acc.weight_qs.dtype == torch.bfloat16
    assert torch.equal(acc.weight_qs.float(), cpu.weight_qs)  # the quantised values are exact in bf16
    big_float32 = [
        n for n, b in acc.named_buffers() if b.dtype == torch.float32 and b.numel() >= lin.weight.numel() // 16
    ]
    assert big_float32 == [] and not hasattr(acc, "qdata")  # 2 bytes per weight, nothing else of that size
    for x in (torch.randn(3, 5, 64, generator=g), torch.randn(7, 64, generator=g).bfloat16()):
        assert torch.equal(acc(x), cpu(x))


def test_factor_layout_follows_the_device_and_the_gemm_is_bf16_with_float32_output_off_the_cpu():
    assert factor_dtype_for(torch.device("cpu")) == torch.float32
    assert factor_dtype_for(torch.device("cuda")) == factor_dtype_for(torch.device("meta")) == torch.bfloat16
    # The accelerator path, shapes and dtypes only, on the meta device: bf16 operands go to
    # torch.mm(out_dtype=float32) (a bf16 tensor-core GEMM with float32 accumulation on CUDA).
    a = torch.empty(2, 5, 64, dtype=torch.bfloat16, device="meta")
    w = torch.empty(48, 64, dtype=torch.bfloat16, device="meta")
    y = block_mm(a, w)
    assert y.dtype == torch.float32 and y.shape == (2, 5, 48) and _HAS_MM_OUT_DTYPE[0]
    layer = EmulatedLinear(nn.Linear(64, 48), factor_dtype=torch.bfloat16).to("meta")
    out = layer(torch.empty(2, 5, 64, dtype=torch.bfloat16, device="meta"))
    assert out.dtype == torch.bfloat16 and out.shape == (2, 5, 48)


# --- one autocast per model forward; the swap ---------------------------------------------------------------
def test_one_context_around_each_model_forward_not_per_layer():
    from test_quant import _tiny_flux

    from solrl.quant.te import autocast_forward

    torch.manual_seed(0)
    model = _tiny_flux()
    report = quantize_(model, NVFP4Config())
    assert len(report.modules) > 10  # many quantised layers
    entered = []

    @contextmanager
    def context():
        entered.append(1)
        yield

    kw = dict(
        hidden_states=torch.randn(1, 16, 4),
        encoder_hidden_states=torch.randn(1, 8, 24),
        pooled_projections=torch.randn(1, 24),
        timestep=torch.tensor([0.5]),
        img_ids=torch.zeros(16, 3),
        txt_ids=torch.zeros(8, 3),
        return_dict=False,
    )
    plain = model(**kw)[0]
    assert (
        autocast_forward(model, context) is model
        and type(model).__name__ == "FluxTransformer2DModel"
        and model.config.in_channels == 4
    )
    assert torch.equal(model(**kw)[0], plain) and entered == [1]  # one model forward, one context
    twin = copy.deepcopy(model)  # a copy is wrapped too, bound to itself
    twin(**kw)
    assert entered == [1, 1] and twin.forward.__self__ is twin


def test_swap_builds_and_swaps_one_layer_at_a_time():
    from test_quant import _tiny_flux

    model = _tiny_flux()
    names = select_linears(model, NVFP4Config())
    originals = [weakref.ref(model.get_submodule(n)) for n in names]
    calls = []

    def factory(lin):
        k = len(calls)
        # every earlier layer is already in the model and its original is gone: at most one layer exists twice
        assert all(isinstance(model.get_submodule(n), EmulatedLinear) for n in names[:k])
        assert all(r() is None for r in originals[:k])
        calls.append(k)
        return EmulatedLinear(lin)

    built = _swap(model, names, factory, atomic=False)
    assert len(built) == len(calls) == len(names) and all(
        isinstance(model.get_submodule(n), EmulatedLinear) for n in names
    )


# --- GPU-only defects, seen on the meta device and in bf16 -------------------------------------------------------
def test_restore_puts_adapters_ema_and_moments_on_the_parameters_device(shapes_policy_factory):
    """safetensors loads onto the CPU: restored state must land where the parameters live (on a
    GPU the first update after a resume lerps the EMA into a CUDA tensor). Here they live on meta."""
    from solrl.checkpoint import restore, state_files
    from solrl.compute import TrainState

    policy = shapes_policy_factory()
    state = TrainState.fresh(policy, policy.cfg)
    for p in policy.trainable_parameters():  # one real AdamW step: moments exist
        p.grad = torch.full_like(p, 0.01)
    state.optimizer.step()
    files = state_files(policy, state)

    target = shapes_policy_factory()
    torch.__future__.set_swap_module_params_on_conversion(True)  # keep the Parameter objects the policy holds
    try:
        target.peft.to("meta")
    finally:
        torch.__future__.set_swap_module_params_on_conversion(False)
    assert {p.device.type for p in target.trainable_parameters()} == {"meta"}
    fresh = TrainState.fresh(target, target.cfg)
    restore(target, fresh, files)
    assert {v.device.type for v in fresh.ema.values()} == {"meta"}
    assert {p.device.type for a in ("default", "old") for p in target._pairs[a].values()} == {"meta"}
    moments = [v for s in fresh.optimizer.state.values() for k, v in s.items() if k != "step"]
    assert moments and {v.device.type for v in moments} == {"meta"}
    # torch keeps AdamW's step count on the CPU unless the optimizer is capturable or fused: as a fresh one would
    assert {s["step"].device.type for s in fresh.optimizer.state.values()} == {"cpu"} and fresh.step == state.step


@pytest.fixture(scope="module")
def bf16_pipelines(tmp_path_factory):
    from tiny_pipelines import BUILDERS

    root = tmp_path_factory.mktemp("pipelines")
    return {f: BUILDERS[f](root / f) for f in ("flux", "sd3", "sana")}


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("family,want", [("sd3", torch.float32), ("sana", torch.float32), ("flux", torch.bfloat16)])
def test_timestep_reaching_the_transformer_has_diffusers_dtype(family, want, bf16_pipelines, tmp_path):
    """SD3 and SANA: float32, as their diffusers pipelines pass it (in bf16 1000σ rounds to a multiple
    of 4 above 512). FLUX: the latents' dtype, as FluxPipeline passes it."""
    from solrl.config import RunConfig
    from solrl.models import load_policy
    from solrl.shapes.prompts import train_prompts

    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(train_prompts()[:12]) + "\n")
    cfg = RunConfig.model_validate(
        {
            "model": {
                "family": family,
                "weights": str(bf16_pipelines[family]),
                "resolution": 32,
                "max_sequence_length": 16,
                "lora_rank": 4,
                "lora_alpha": 8,
                "dtype": "bfloat16",
                "device": "cpu",
            },
            "prompts": {"file": str(prompts)},
            "reward": {"weights": {"shapes": 1.0}, "report": []},
        }
    )
    policy = load_policy(cfg)
    seen = []
    hook = policy.pipe.transformer.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append(kwargs["timestep"]), with_kwargs=True
    )
    try:
        policy.sample(policy.peft, ["a red circle on the left"], [1], 2)
    finally:
        hook.remove()
    assert seen and {t.dtype for t in seen} == {want}
    if want == torch.float32 and family == "sd3":
        assert float(seen[0][0]) == 1000.0 * float(policy.sigmas(2)[0])  # not rounded to bf16


def test_gpu_presets_compile_their_samplers_and_use_the_official_t5_length(shapes_policy_factory):
    for preset, t5 in (("flux", 128), ("sd35", 128), ("sana", 300)):
        cfg = load_config(preset)
        assert cfg.model.compile_samplers is True and cfg.model.max_sequence_length == t5
    for preset in ("shapes", "shapes-long"):
        assert load_config(preset).model.compile_samplers is False
    from solrl.config import RunConfig

    policy = shapes_policy_factory(
        RunConfig().with_overrides(**{"model.dtype": "float32", "model.compile_samplers": True})
    )
    model, _ = policy.sampler_copy(None)
    assert (
        model._compiled_call_impl is not None and type(model).__name__ == "FluxTransformer2DModel"
    )  # compiled in place, on first call
    plain, _ = shapes_policy_factory().sampler_copy(None)
    assert plain._compiled_call_impl is None


def test_te_version_strings_compare_by_release():
    from solrl.accelerator import TE_MIN_VERSION, _release

    assert (
        _release("2.8.0+cu12") >= TE_MIN_VERSION
        and _release("2.10.0.dev0") >= TE_MIN_VERSION
        and _release("3") >= TE_MIN_VERSION
    )
    assert (
        _release("2.7.1")[:2] < TE_MIN_VERSION
        and _release("1.13") < TE_MIN_VERSION
        and _release("nightly") < TE_MIN_VERSION
    )
