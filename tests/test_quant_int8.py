"""explore.precision int8: W8A8 on torch's integer GEMM kernels (not an emulation)."""

import os
import subprocess
import sys

import pytest
import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from solrl.compute import explore_quant
from solrl.config import RunConfig
from solrl.plan import ExploreSpec
from solrl.quant import Int8Config, Int8Linear, int8_engine, quantize_
from solrl.quant.int8 import quantize_weight_int8

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _linear(out=96, inp=192, seed=0) -> nn.Linear:
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(inp, out)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(out, inp, generator=g) / inp**0.5)
        lin.bias.copy_(torch.randn(out, generator=g))
    return lin


def _reference(x: torch.Tensor, lin: nn.Linear, reduce_range: bool) -> torch.Tensor:
    """The W8A8 arithmetic in float64: x as uint8 with one asymmetric scale for the whole tensor
    (range including 0; 7 bits with reduce_range), W per output channel, integer products."""
    codes, scale = quantize_weight_int8(lin.weight)
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    qmax = 127 if reduce_range else 255
    s = (hi - lo) / qmax
    zp = min(max(round(-lo / s), 0), qmax)
    xq = torch.clamp(torch.round(x.double() / s) + zp, 0, qmax)
    acc = (xq - zp) @ codes.double().T  # exact integers
    return acc * (s * scale.double()) + lin.bias.double()


def test_weight_codes_are_per_channel_symmetric_int8():
    w = _linear().weight.detach()
    w[3] = 0  # an all-zero row: scale 1, codes 0
    codes, scale = quantize_weight_int8(w)
    assert codes.dtype == torch.int8 and scale.shape == (w.shape[0],)
    assert int(codes.abs().max()) == 127 and torch.equal(codes[3], torch.zeros_like(codes[3])) and scale[3] == 1
    assert torch.allclose(codes.float() * scale[:, None], w, atol=float(scale.max()) / 2 + 1e-7)


@pytest.mark.parametrize("engine", sorted({int8_engine(), "fbgemm"} & set(torch.backends.quantized.supported_engines)))
def test_layer_is_the_w8a8_integer_product(engine):
    lin = _linear()
    layer = Int8Linear(lin, engine)
    x = torch.randn(5, 64, 192, generator=torch.Generator().manual_seed(1)) * 2 + 0.3
    y = layer(x)
    ref = _reference(x.reshape(-1, 192), lin, layer.reduce_range).reshape(5, 64, 96)
    # the kernel rounds the input once more in float32 (x / s); a few values may land on the other
    # side of a rounding tie: one code step of one input times a weight, at most
    step = (float(x.max() - min(float(x.min()), 0)) / (127 if layer.reduce_range else 255)) * float(
        lin.weight.detach().abs().max()
    )
    assert (y.double() - ref).abs().max() < 2 * step
    assert (y.double() - ref).abs().mean() < step / 20
    # and it is a real approximation of the float layer
    rel = (y - lin(x)).norm() / lin(x).norm()
    assert rel < (0.03 if layer.reduce_range else 0.015)
    assert y.dtype == torch.float32 and layer(x.bfloat16()).dtype == torch.bfloat16
    assert torch.equal(layer(x), y)  # deterministic


def test_report_counts_int8_codes_and_channel_scales():
    model = nn.Sequential(_linear(96, 192), nn.GELU(), _linear(192, 96))
    report = quantize_(model, Int8Config())
    assert report.backend == f"int8 ({int8_engine()})" and len(report.modules) == 2
    assert report.packed_bytes == 2 * 96 * 192 + 4 * (96 + 192)
    assert report.bits_per_weight == pytest.approx(
        8 + 32 * (96 + 192) / (2 * 96 * 192)
    )  # 8 bits + a float32 scale per row
    assert all(isinstance(m, Int8Linear) for m in (model[0], model[2]))


def test_the_explore_copy_runs_integer_gemms_and_no_float_linear_for_quantised_layers(shapes_policy_factory):
    """The profiler's op names: one quantized::linear_dynamic (a u8×s8 GEMM with int32 sums) per
    quantised layer and forward, and the float Linear ops only for the layers left in high
    precision."""
    cfg = RunConfig().with_overrides(**{"model.dtype": "float32", "explore.precision": "int8"})
    policy = shapes_policy_factory(cfg)
    quant = explore_quant(policy, cfg, ExploreSpec("int8", 1, 4))
    assert isinstance(quant, Int8Config) and quant.fmt == "int8"
    int8_model, report = policy.sampler_copy(quant)
    float_model, _ = policy.sampler_copy(None)
    n_quant = len(report.modules)
    assert n_quant == 48
    prompts, seeds = list(policy.train_prompts()[:2]) * 2, [0, 1, 2, 3]

    def counts(model):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            policy.sample(model, prompts, seeds, steps=1)
        return {e.key: e.count for e in prof.key_averages()}

    ci, cf = counts(int8_model), counts(float_model)
    assert ci["quantized::linear_dynamic"] == n_quant  # one forward (one step)
    assert cf.get("quantized::linear_dynamic", 0) == 0
    assert ci["aten::linear"] == cf["aten::linear"] - n_quant
    # the float GEMMs left are those of the unquantised Linears (and attention's bmm): every
    # mm/addmm of the float model beyond them belonged to a quantised layer
    float_gemms = lambda c: c.get("aten::addmm", 0) + c.get("aten::mm", 0)  # noqa: E731
    assert float_gemms(ci) == float_gemms(cf) - n_quant


def test_config_accepts_int8_and_refuses_lowrank_with_it():
    RunConfig().with_overrides(**{"explore.precision": "int8"})
    with pytest.raises(ValueError, match="lowrank"):
        RunConfig().with_overrides(**{"explore.precision": "int8", "explore.lowrank": 8})


def test_avx2_capability_picks_fbgemm():
    """Held to AVX2 (as on an AVX2-only host), the engine is fbgemm: oneDNN's int8 is no faster
    than float32 there."""
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    out = subprocess.run(
        [sys.executable, "-c", "from solrl.quant import int8_engine; print(int8_engine())"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.split()[-1] == "fbgemm"


def test_int8_on_a_gpu_model_is_refused_before_any_compute(monkeypatch):
    from solrl.errors import ConfigError
    from solrl.models.base import Policy

    class NoPrompts(Policy):  # resolve() only: the device check comes before the prompt sets
        @classmethod
        def prompt_sets(cls, cfg):
            raise AssertionError("the device check should have refused first")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU machine, as torch reports it
    with pytest.raises(ConfigError, match="int8 runs on the CPU"):
        NoPrompts.resolve(RunConfig().with_overrides(**{"explore.precision": "int8"}))
    with pytest.raises(ConfigError, match="int8 runs on the CPU"):
        NoPrompts.resolve(
            RunConfig().with_overrides(
                **{
                    "fidelity.audit_prompts": 1,
                    "fidelity.guard.enabled": True,
                    "fidelity.guard.fallback_precision": "int8",
                }
            )
        )
