"""The emulated NVFP4 layer's bf16 output (`explore.emulation_output`), what `auto` resolves to on
each CPU kind, and the explore engine a run records in run.json."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_reliability import micro

from solrl.config import RunConfig
from solrl.cpu import cpu_has_bf16_matmul
from solrl.quant import EmulatedLinear, NVFP4Config, emulation_output, int8_engine, nvfp4_factors, quantize_
from solrl.quant.numerics import bf16_epilogue
from tasks.run import open_run

REPO = Path(__file__).resolve().parent.parent
EPS = torch.finfo(torch.bfloat16).eps  # 2^-7: one rounding to bf16 errs by at most EPS/2 relative
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _layers(k=192, n=768, bias=True, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    lin = torch.nn.Linear(k, n, bias=bias)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(n, k, generator=g) * 0.05)
        if bias:
            lin.bias.copy_(torch.randn(n, generator=g))
    lin = lin.to(dtype)
    nobias = torch.nn.Linear(k, n, bias=False).to(dtype)
    with torch.no_grad():
        nobias.weight.copy_(lin.weight)
    return EmulatedLinear(lin), EmulatedLinear(lin, output="bfloat16"), EmulatedLinear(nobias)


@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16])
def test_bf16_output_is_within_two_roundings_of_the_exact_block_product(x_dtype):
    exact, bf16out, product = _layers()
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(300, 192, generator=g) * 2).to(x_dtype)
    y, yb, sp = exact(x).float(), bf16out(x), product(x).float()  # sp = (S_a·S_w)·(A′W′ᵀ), no bias
    assert yb.dtype == x_dtype and bf16out.weight_qs.dtype == torch.bfloat16
    # the bf16 GEMM rounds S·A′W′ᵀ's sum once, the epilogue rounds (·S + b) once more; the float32
    # layer rounds only when it hands back a bf16 input's dtype
    n_exact_roundings = 1 if x_dtype == torch.bfloat16 else 0
    bound = EPS / 2 * sp.abs() + EPS / 2 * (1 + n_exact_roundings) * y.abs() * (1 + EPS) + 1e-6 * (sp.abs() + y.abs())
    err = (yb.float() - y).abs()
    assert bool((err <= bound).all()), f"max excess {float((err - bound).max())}"
    assert float(err.max()) > 0  # it is a different computation (the test can fail)
    assert float(err.max()) <= EPS * float(y.abs().max())  # within one bf16 ulp of the largest output


def test_float32_output_is_the_default_and_unchanged():
    exact, _, _ = _layers()
    lin = torch.nn.Linear(192, 768)
    with torch.no_grad():
        lin.weight.copy_(exact.weight_qs * exact.tensor_scale)  # any weights: compare two builds of one layer
    a, b = EmulatedLinear(lin), EmulatedLinear(lin, output="float32")
    x = torch.randn(64, 192, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a(x), b(x)) and a.output == "float32" and a.weight_qs.dtype == torch.float32
    assert NVFP4Config().output == "float32"
    with pytest.raises(ValueError, match="float32 or bfloat16"):
        EmulatedLinear(lin, output="fp16")
    with pytest.raises(ValueError, match="unknown emulation output"):
        NVFP4Config(output="fp16")


def test_compiled_bf16_kernels_give_the_eager_bits():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(257, 192, generator=g) * 3
    a_eager, s_eager = nvfp4_factors(x, torch.bfloat16, compiled=False)
    a_comp, s_comp = nvfp4_factors(x, torch.bfloat16, compiled=True)
    assert a_comp.dtype == torch.bfloat16 and torch.equal(a_eager, a_comp) and torch.equal(s_eager, s_comp)
    y = torch.randn(257, 768, generator=g).bfloat16()
    bias, scale = torch.randn(768, generator=g), torch.tensor(0.0123)
    assert torch.equal(bf16_epilogue(y, scale, bias, compiled=False), bf16_epilogue(y, scale, bias, compiled=True))


def test_auto_resolves_by_dtype_and_device():
    assert emulation_output("float32", "bfloat16", "cpu") == "float32"
    assert emulation_output("bfloat16", "float32", "cpu") == "bfloat16"
    assert emulation_output("auto", "float32", "cpu") == "float32"
    assert emulation_output("auto", "bfloat16", "cuda") == "bfloat16"
    want = "bfloat16" if cpu_has_bf16_matmul() else "float32"
    assert emulation_output("auto", "bfloat16", "cpu") == want
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.Linear(64, 32)).bfloat16()
    report = quantize_(model, NVFP4Config(output="auto"))
    assert all(m.output == want for m in model)
    assert report.backend == "nvfp4 emulated" + (" (bfloat16 output)" if want == "bfloat16" else "")


AUTO_PROBE = (
    "from solrl.config import RunConfig\n"
    "from solrl.models import resolve\n"
    "from solrl.quant import emulation_output\n"
    "r = resolve(RunConfig())\n"
    "print(r.dtype, emulation_output('auto', r.dtype, r.device), emulation_output('auto', 'bfloat16', 'cpu'))\n"
)


def test_auto_is_float32_on_the_avx2_kind():
    """Held to AVX2 (how the AVX2 kind is measured on a larger CPU) `model.dtype: auto` resolves
    float32 and `emulation_output: auto` float32, even for a bf16 model (no bf16 kernels there)."""
    env = dict(os.environ, ATEN_CPU_CAPABILITY="avx2", ONEDNN_MAX_CPU_ISA="AVX2", PYTHONPATH=str(REPO))
    out = subprocess.run(
        [sys.executable, "-c", AUTO_PROBE], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["float32", "float32", "float32"]


def _meta(uri: str) -> dict:
    return json.loads((Path(uri) / "run.json").read_text())


def test_run_json_names_the_explore_engine_and_the_default_keeps_the_hash(tmp_path):
    cfg = micro()
    assert cfg.explore.emulation_output == "float32"
    assert "emulation_output" not in cfg.hashed()["explore"]  # runs made before the key keep their hash
    run = open_run(str(tmp_path / "nvfp4"), cfg)
    meta = _meta(run.uri)
    assert meta["explore_engine"] == {"precision": "nvfp4", "backend": "emulated", "output": "float32"}
    assert meta["config_hash"] == run.hash == cfg.hash(run.resolved)
    assert set(meta["resolved"]) == set(run.resolved.model_dump())  # the record is beside `resolved`, not in it

    auto = cfg.with_overrides(**{"explore.emulation_output": "auto"})
    assert auto.hashed()["explore"]["emulation_output"] == "auto" and auto.hash(run.resolved) != run.hash
    run_auto = open_run(str(tmp_path / "auto"), auto)
    want = emulation_output("auto", run_auto.resolved.dtype, run_auto.resolved.device)
    assert _meta(run_auto.uri)["explore_engine"]["output"] == want

    int8 = micro(**{"explore.precision": "int8"})
    assert _meta(open_run(str(tmp_path / "int8"), int8).uri)["explore_engine"] == {
        "precision": "int8",
        "engine": int8_engine(),
    }
    naive = micro(**{"run.mode": "naive_scaling", "explore.precision": "high"})
    run_naive = open_run(str(tmp_path / "naive"), naive)
    assert _meta(run_naive.uri)["explore_engine"] == {"precision": "high", "dtype": run_naive.resolved.dtype}
    # reopening read-only still works (the record is not validated as config)
    assert open_run(run.uri).hash == run.hash


def test_the_explore_copy_takes_the_configured_output(shapes_policy_factory):
    from solrl.compute import explore_quant
    from solrl.plan import primary_explore

    cfg = RunConfig().with_overrides(**{"model.dtype": "bfloat16", "explore.emulation_output": "bfloat16"})
    policy = shapes_policy_factory(cfg)
    copy, report = policy.sampler_copy(explore_quant(policy, cfg, primary_explore(cfg)))
    layers = [m for m in copy.modules() if isinstance(m, EmulatedLinear)]
    assert layers and all(m.output == "bfloat16" for m in layers) and "(bfloat16 output)" in report.backend
    x0 = policy.sample(copy, ["a red circle"] * 2, [0, 1], 2, cfg.rollout.solver)
    assert x0.shape[0] == 2 and bool(torch.isfinite(x0).all())
    with pytest.raises(ValueError):
        RunConfig().with_overrides(**{"explore.emulation_output": "fp16"})
