import os
import warnings
from contextlib import contextmanager

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from solrl.quant import (
    EmulatedLinear,
    NVFP4Config,
    fake_quantize_fp8,
    fake_quantize_nvfp4,
    nvfp4_pack,
    nvfp4_unpack,
    quantize_,
    select_linears,
)
from solrl.quant.numerics import _fake_nvfp4, block_mm, fp8_factors, nvfp4_factors, nvfp4_unpack_factors


def _cases():
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(16):
        m, k = [(4, 16), (8, 64), (32, 128), (3, 48)][i % 4]
        x = torch.randn(m, k, generator=g) * (10.0 ** ((i % 7) - 3))
        out.append(x)
    out.append(-torch.rand(8, 32, generator=g))  # all negative
    x = torch.randn(8, 64, generator=g)
    x[3, 5] = 1e4  # outlier
    out.append(x)
    out.append(torch.full((4, 32), 0.37))  # all-equal blocks
    x = torch.randn(4, 32, generator=g)
    x[:, :16] = 0.0  # zero blocks next to non-zero ones
    out.append(x)
    out.append(torch.randn(2, 16, generator=g).bfloat16().float())
    out.append(torch.tensor([[0.0] * 15 + [6.0 * 448]]))
    out.append(
        torch.randn(20, 128, generator=torch.Generator().manual_seed(2))
    )  # holds a near-tie (x/(s·S) = 2.5000002) that a tolerant tie test gets wrong
    return out


def _torchao_reference(x):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torchao.prototype.mx_formats.nvfp4_tensor import NVFP4Tensor, per_tensor_amax_to_scale
    t = NVFP4Tensor.to_nvfp4(x.contiguous(), per_tensor_scale=per_tensor_amax_to_scale(x.abs().amax()))
    return t.qdata, t.scale, t.dequantize(torch.float32)


E2M1 = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6])


def _spec_parts(x: np.ndarray):
    """docs/algorithm.md, "NVFP4 numerics", written out in numpy (float32 arithmetic, E4M3 via torch's cast):
    E2M1 values q [M, K/16, 16], E4M3 block scales s [M, K/16], per-tensor scale S."""
    x = x.astype(np.float32)
    S = np.float32(np.abs(x).max()) / np.float32(448 * 6)
    xb = x.reshape(x.shape[0], -1, 16)
    block = np.abs(xb).max(-1) / np.float32(6)
    tiny = np.float32(torch.finfo(torch.float8_e4m3fn).tiny)
    s = torch.from_numpy(np.clip(block / S, tiny, 448).astype(np.float32)).to(torch.float8_e4m3fn).float().numpy()
    scaled = np.clip(xb * ((np.float32(1) / S) / s)[..., None], -6, 6)
    # round to nearest E2M1 value, ties to the even code
    mag = np.abs(scaled)
    idx = np.abs(mag[..., None] - E2M1).argmin(-1)
    d = np.abs(mag[..., None] - E2M1)
    # exact ties only (float64 distances to the grid are exact); np.isclose here called 2.5000002
    # a tie and sent it to 4, a bug the _cases() never hit
    tie = np.sort(d, -1)[..., 0] == np.sort(d, -1)[..., 1]
    idx = np.where(tie & (idx % 2 == 1), idx + 1, idx)
    q = np.sign(scaled) * E2M1[np.minimum(idx, 7)]
    return q.astype(np.float32), s, S


def _spec_reference(x: np.ndarray) -> np.ndarray:
    q, s, S = _spec_parts(x)
    return (q * (S * s)[..., None]).reshape(x.shape).astype(np.float32)


def _spec_factors(x: np.ndarray):
    """The block-product factors by the spec: (q·s in float32, of x's shape; S)."""
    q, s, S = _spec_parts(x)
    return (q * s[..., None]).reshape(x.shape).astype(np.float32), np.float32(S)


@pytest.mark.parametrize("i", range(len(_cases())))
def test_bit_identical_to_torchao(i):
    x = _cases()[i]
    assert len(_cases()) >= 20
    q_ref, s_ref, deq_ref = _torchao_reference(x)
    q, s, S = nvfp4_pack(x)
    assert torch.equal(q, q_ref)
    assert torch.equal(s.view(torch.uint8), s_ref.view(torch.uint8))
    assert torch.equal(nvfp4_unpack(q, s, S, x.shape), deq_ref)
    assert torch.equal(_fake_nvfp4(x), deq_ref)  # the unpacked fast path
    assert torch.equal(fake_quantize_nvfp4(x, compiled=True), deq_ref)  # its compiled form
    assert np.array_equal(_spec_reference(x.numpy()), deq_ref.numpy())  # the spec says the same


def test_zeros_quantize_to_zeros_not_nan():
    z = torch.zeros(4, 32)
    assert torch.equal(fake_quantize_nvfp4(z), z)
    q, s, S = nvfp4_pack(z)
    assert torch.equal(nvfp4_unpack(q, s, S, z.shape), z)
    assert torch.equal(fake_quantize_fp8(z), z)


def test_activation_shape_and_error():
    x = torch.randn(2, 5, 64)
    y = fake_quantize_nvfp4(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    rel = (y - x).norm() / x.norm()
    assert 0.02 < rel < 0.2  # 4-bit: visible but bounded error
    with pytest.raises(ValueError, match="multiple of 16"):
        fake_quantize_nvfp4(torch.randn(3, 10))


def test_fp8_per_tensor():
    x = torch.randn(64, 64) * 3
    y = fake_quantize_fp8(x)
    assert (y - x).abs().max() <= x.abs().max() / 448 * 16  # within one E4M3 step at the top binade
    assert y.abs().max() == x.abs().max()


@contextmanager
def _onednn_bf16_fpmath():
    """Plain torch: float32 matmuls may take bf16 inputs in oneDNN (exact for bf16 numbers)."""
    old = torch.backends.mkldnn.matmul.fp32_precision
    torch.backends.mkldnn.matmul.fp32_precision = "bf16"
    try:
        yield
    finally:
        torch.backends.mkldnn.matmul.fp32_precision = old


def _block_product_reference(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """y = (S_a·S_w)·(A′ @ W′ᵀ) + b from the numpy spec factors; the float32 GEMM is torch's
    F.linear (fp32 accumulation order is the GEMM library's: a bit-exact reference has to use
    the same one), the scalings in numpy float32."""
    a, s_a = _spec_factors(x.reshape(-1, x.shape[-1]).numpy())
    wq, s_w = _spec_factors(w.numpy())
    with _onednn_bf16_fpmath():
        acc = F.linear(torch.from_numpy(a), torch.from_numpy(wq)).numpy()
    y = acc * (np.float32(s_a) * np.float32(s_w))
    if b is not None:
        y = y + b.numpy()
    return torch.from_numpy(y).reshape(*x.shape[:-1], w.shape[0])


def test_emulated_linear_is_w4a4_block_product_with_fp32_bias():
    """Was: q(x) == fake(x) @ fake(w).T + b. The layer is now the block product ("NVFP4 numerics":
    products in float32, bias in high precision), checked bit for bit against the spec."""
    torch.manual_seed(0)
    lin = nn.Linear(32, 8)
    q = EmulatedLinear(lin)
    x = torch.randn(3, 32)
    assert torch.equal(q(x), _block_product_reference(x, lin.weight.detach(), lin.bias.detach()))
    expected = (
        fake_quantize_nvfp4(x) @ fake_quantize_nvfp4(lin.weight.detach()).T + lin.bias.detach()
    )  # the former layer
    torch.testing.assert_close(q(x), expected, rtol=0, atol=1e-5)
    assert q.packed_bytes == 32 * 8 // 2 + 32 * 8 // 16 + 4


# --- block products (exact bf16 factors, float32 accumulation) ---------------------------------
def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32) if t.dtype == torch.float32 else t.contiguous().view(torch.int16)


@pytest.mark.parametrize("i", range(len(_cases())))
def test_block_factors_are_exact_bf16_numbers(i):
    x = _cases()[i]
    a_ref, s_ref = _spec_factors(x.numpy())
    a16, s = nvfp4_factors(x, torch.bfloat16, compiled=False)
    a32, s32 = nvfp4_factors(x, torch.float32, compiled=False)
    assert a16.dtype == torch.bfloat16 and a32.dtype == torch.float32
    assert np.array_equal(a16.float().numpy(), a_ref)  # bf16 held q·s exactly
    assert torch.equal(a32, a16.float()) and s == s32 == torch.tensor(s_ref)
    # and the weight path: factors from the torchao-packed codes and scales
    q, sc, S = nvfp4_pack(x)
    assert torch.equal(nvfp4_unpack_factors(q, sc, x.shape, torch.bfloat16).float(), a32) and S == s


def test_fp8_factors_are_exact_and_give_fake_quantize_fp8():
    g = torch.Generator().manual_seed(3)
    for x in [torch.randn(8, 40, generator=g) * 1e-3, torch.randn(2, 3, 64, generator=g) * 50, torch.zeros(4, 16)]:
        a16, s = fp8_factors(x, torch.bfloat16, compiled=False)
        a32, _ = fp8_factors(x, torch.float32, compiled=False)
        assert torch.equal(a16.float(), a32)
        assert torch.equal(a32 * s, fake_quantize_fp8(x))  # the same single rounding


def test_round_e2m1_is_torchao_at_ties_and_their_neighbours():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torchao.prototype.mx_formats.kernels import f4_unpacked_to_f32, f32_to_f4_unpacked
    from solrl.quant.numerics import round_e2m1

    pts = torch.tensor(
        [0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0, 2.0**-126, 2.0**-149]
    )
    near, lo, hi = [pts], pts, pts
    for _ in range(8):  # up to 8 ulps either side of every tie and grid point
        lo, hi = torch.nextafter(lo, torch.tensor(-1.0)), torch.nextafter(hi, torch.tensor(7.0))
        near += [lo, hi]
    g = torch.Generator().manual_seed(0)
    v = torch.cat(
        near
        + [
            torch.rand(200_000, generator=g) * 6,
            torch.rand(20_000, generator=g) * 2.0 ** torch.randint(-40, 3, (20_000,), generator=g).float(),
        ]
    )
    v = torch.cat([v, -v]).clamp(-6, 6)
    assert torch.equal(_bits(round_e2m1(v)), _bits(f4_unpacked_to_f32(f32_to_f4_unpacked(v))))  # signed zeros too


def test_block_mm_is_float32_accumulation_with_float32_output():
    g = torch.Generator().manual_seed(1)
    a = nvfp4_factors(torch.randn(300, 256, generator=g), torch.bfloat16, compiled=False)[0]
    w = nvfp4_factors(torch.randn(96, 256, generator=g) * 1e-3, torch.bfloat16, compiled=False)[0]
    before = torch.backends.mkldnn.matmul.fp32_precision
    y = block_mm(a, w)
    assert torch.backends.mkldnn.matmul.fp32_precision == before  # the flag is scoped
    assert (
        y.dtype == torch.float32 and torch.equal(y, block_mm(a, w)) and torch.equal(y, block_mm(a.float(), w.float()))
    )
    exact = a.double() @ w.double().T
    mag = a.double().abs() @ w.double().abs().T
    assert ((y.double() - exact).abs() <= 256 * 2.0**-24 * mag).all()  # γ_K: float32 accumulation of exact products
    assert (y.bfloat16().float() != y).float().mean() > 0.9  # not a bf16-rounded output


def _emulation_cases():
    g = torch.Generator().manual_seed(7)
    out = []
    for shape, n, scale in [((3, 5, 64), 48, 1.0), ((40, 256), 32, 1e-3), ((2, 64, 192), 96, 30.0)]:
        x = torch.randn(*shape, generator=g) * scale
        lin = nn.Linear(shape[-1], n)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(n, shape[-1], generator=g) / shape[-1] ** 0.5)
            lin.weight[0, 3] = 5.0  # an outlier weight
        x.view(-1)[7] = 40 * scale  # and an outlier activation
        out.append((x, lin))
    return out


@pytest.mark.parametrize("case", range(3))
def test_block_product_matches_float32_emulation_within_accumulation_error(case):
    """The former layer: x̂ = q·(s·S) rounded in float32 (twice per operand), float32 GEMM of x̂·ŵ.
    Now: exact products of the factors, float32 GEMM, scaled by fl(S_a·S_w). Both are within
    γ_K·Σ|x̂||ŵ| of the same real number, so they differ by at most (2K + 10)·u·(|x̂|@|ŵ|ᵀ + |b|),
    u = 2^-24 (K + 5 roundings' worth on each side, plus the bias addition)."""
    x, lin = _emulation_cases()[case]
    k = x.shape[-1]
    layer = EmulatedLinear(lin)
    x_hat, w_hat = fake_quantize_nvfp4(x, compiled=False), fake_quantize_nvfp4(lin.weight.detach(), compiled=False)
    old = F.linear(x_hat, w_hat) + lin.bias.detach()
    new = layer(x)
    bound = (2 * k + 10) * 2.0**-24 * (x_hat.double().abs() @ w_hat.double().abs().T + lin.bias.detach().double().abs())
    assert ((new.double() - old.double()).abs() <= bound).all()
    assert torch.equal(new, _block_product_reference(x, lin.weight.detach(), lin.bias.detach()))


def test_compiled_factors_equal_eager_bit_for_bit():
    g = torch.Generator().manual_seed(5)
    xs = _cases()[:6] + [
        torch.randn(2, 7, 48, generator=g),
        torch.randn(64, 32, generator=g).t(),
        torch.randn(4, 64, generator=g).bfloat16(),
        torch.zeros(3, 32),
    ]
    for x in xs:
        for dtype in (torch.bfloat16, torch.float32):
            ae, se = nvfp4_factors(x, dtype, compiled=False)
            ac, sc = nvfp4_factors(x, dtype, compiled=True)
            assert torch.equal(_bits(ae), _bits(ac)) and torch.equal(se, sc)
        fe, fse = fp8_factors(x, torch.float32, compiled=False)
        fc, fsc = fp8_factors(x, torch.float32, compiled=True)
        assert torch.equal(_bits(fe), _bits(fc)) and torch.equal(fse, fsc)
        assert torch.equal(_bits(fake_quantize_nvfp4(x, compiled=False)), _bits(fake_quantize_nvfp4(x, compiled=True)))


def test_layer_compiled_equals_eager(monkeypatch):
    x, lin = _emulation_cases()[0]
    for fmt in ("nvfp4", "fp8"):
        layer = EmulatedLinear(lin, fmt)
        monkeypatch.setenv("SOLRL_NO_COMPILE", "1")
        eager = layer(x)
        monkeypatch.setenv("SOLRL_NO_COMPILE", "0")
        assert torch.equal(_bits(eager), _bits(layer(x)))


def test_zero_input_and_zero_weight_give_exact_zeros():
    lin = nn.Linear(32, 16, bias=False)
    for fmt in ("nvfp4", "fp8"):
        layer = EmulatedLinear(lin, fmt)
        for x in (torch.zeros(5, 32), torch.zeros(2, 3, 32)):
            y = layer(x)
            assert torch.equal(y, torch.zeros(*x.shape[:-1], 16)) and not y.isnan().any()
        with torch.no_grad():
            zero_w = nn.Linear(32, 16)
            zero_w.weight.zero_()
        y = EmulatedLinear(zero_w, fmt)(torch.randn(4, 32))
        assert torch.equal(y, zero_w.bias.detach().expand(4, 16))  # 0·anything + b, exactly
    a, s = nvfp4_factors(torch.zeros(2, 16))
    assert torch.equal(a.float(), torch.zeros(2, 16)) and s == 0


def test_batched_and_flat_inputs_agree():
    x, lin = _emulation_cases()[2]  # [B, T, K]
    layer = EmulatedLinear(lin)
    y = layer(x)
    assert y.shape == (*x.shape[:-1], lin.out_features)
    assert torch.equal(y, layer(x.reshape(-1, x.shape[-1])).reshape(y.shape))


def test_fp8_layer_is_the_fp8_block_product():
    x, lin = _emulation_cases()[1]
    layer = EmulatedLinear(lin, "fp8")
    a, s_a = fp8_factors(x, torch.float32, compiled=False)
    wq, s_w = fp8_factors(lin.weight.detach(), torch.float32, compiled=False)
    with _onednn_bf16_fpmath():
        acc = F.linear(a, wq)
    assert torch.equal(layer(x), acc * (s_a * s_w) + lin.bias.detach())
    x_hat, w_hat = fake_quantize_fp8(x), fake_quantize_fp8(lin.weight.detach())
    old = F.linear(x_hat, w_hat) + lin.bias.detach()
    bound = (
        (2 * x.shape[-1] + 10)
        * 2.0**-24
        * (x_hat.double().abs() @ w_hat.double().abs().T + lin.bias.detach().double().abs())
    )
    assert ((layer(x).double() - old.double()).abs() <= bound).all()
    assert layer.packed_bytes == lin.weight.numel() + 4


def _tiny_flux():
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=4,
        out_channels=4,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=24,
        pooled_projection_dim=24,
        guidance_embeds=False,
        axes_dims_rope=(4, 6, 6),
    )


def _tiny_sd3():
    from diffusers import SD3Transformer2DModel

    return SD3Transformer2DModel(
        sample_size=8,
        patch_size=2,
        in_channels=4,
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=24,
        caption_projection_dim=32,
        pooled_projection_dim=24,
        out_channels=4,
        pos_embed_max_size=16,
    )


DOUBLE = [
    "norm1.linear",
    "norm1_context.linear",
    "attn.to_q",
    "attn.to_k",
    "attn.to_v",
    "attn.to_out.0",
    "attn.add_q_proj",
    "attn.add_k_proj",
    "attn.add_v_proj",
    "attn.to_add_out",
    "ff.net.0.proj",
    "ff.net.2",
    "ff_context.net.0.proj",
    "ff_context.net.2",
]


def test_filter_on_tiny_flux():
    model = _tiny_flux()
    cfg = NVFP4Config(skip=("x_embedder", "context_embedder", "time_text_embed", "norm_out"), min_dim=0)
    got = select_linears(model, cfg)
    single = ["norm.linear", "proj_mlp", "proj_out", "attn.to_q", "attn.to_k", "attn.to_v"]
    expected = (
        [f"transformer_blocks.0.{n}" for n in DOUBLE]
        + [f"single_transformer_blocks.0.{n}" for n in single]
        + ["proj_out"]
    )
    assert sorted(got) == sorted(expected)
    # min_dim drops layers whose larger side is <= min_dim (the 32x32 projections here)
    big = select_linears(model, NVFP4Config(skip=cfg.skip, min_dim=32))
    assert "transformer_blocks.0.attn.to_q" not in big and "transformer_blocks.0.ff.net.0.proj" in big


def test_filter_on_tiny_sd3_and_in_features_rule():
    model = _tiny_sd3()
    cfg = NVFP4Config(
        skip=("pos_embed", "context_embedder", "time_text_embed", "norm_out", "norm1", "ff_context"), min_dim=0
    )
    got = set(select_linears(model, cfg))
    attn = [
        "attn.to_q",
        "attn.to_k",
        "attn.to_v",
        "attn.to_out.0",
        "attn.add_q_proj",
        "attn.add_k_proj",
        "attn.add_v_proj",
    ]
    expected = {f"transformer_blocks.{b}.{n}" for b in (0, 1) for n in attn + ["ff.net.0.proj", "ff.net.2"]}
    expected |= {"transformer_blocks.0.attn.to_add_out", "proj_out"}
    assert got == expected
    # no skip at all: the 24-wide embedders fail in_features % 16 and stay out
    everything = select_linears(model, NVFP4Config())
    assert "context_embedder" not in everything and "time_text_embed.text_embedder.linear_1" not in everything


def test_quantize_report_counts_4_5_bits_per_weight():
    model = _tiny_flux()
    cfg = NVFP4Config(skip=("x_embedder", "context_embedder", "time_text_embed", "norm_out"))
    names = select_linears(model, cfg)
    report = quantize_(model, cfg)
    assert report.modules == names
    assert all(isinstance(model.get_submodule(n), EmulatedLinear) for n in names)
    bytes_counted = sum(
        m.qdata.numel() + m.block_scale.numel() + 4 for m in model.modules() if isinstance(m, EmulatedLinear)
    )
    assert report.packed_bytes == bytes_counted
    assert report.bits_per_weight == pytest.approx(4.5, abs=0.05)
    assert "bits/weight" in report.summary()


def test_transformer_engine_absent_is_one_sentence_and_leaves_model_untouched():
    model = _tiny_flux()
    before = {n: type(m) for n, m in model.named_modules()}
    with pytest.raises(RuntimeError, match="transformer_engine") as e:
        quantize_(model, NVFP4Config(backend="transformer_engine"))
    assert e.value.args[0].count(". ") == 0  # one sentence
    assert {n: type(m) for n, m in model.named_modules()} == before


def test_swap_is_atomic_when_a_factory_fails():
    from solrl.quant.linear import _swap

    model = _tiny_flux()
    names = select_linears(model, NVFP4Config())
    calls = []

    def factory(lin):
        calls.append(lin)
        if len(calls) == 3:
            raise RuntimeError("boom")
        return EmulatedLinear(lin)

    with pytest.raises(RuntimeError):
        _swap(model, names, factory)
    assert not any(isinstance(m, EmulatedLinear) for m in model.modules())


def test_unknown_backend():
    with pytest.raises(ValueError, match="unknown quantisation backend"):
        NVFP4Config(backend="int4")


def test_pointwise_convolutions_quantise_like_the_same_linear():
    """diffusers' SANA FFN is 1x1 convolutions: they are selected and run as the equivalent Linear."""
    from solrl.quant.linear import PointwiseConv, as_linear

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(32, 64, 1), torch.nn.Conv2d(64, 64, 3, padding=1, groups=64), torch.nn.Conv2d(64, 32, 1)
    )
    cfg = NVFP4Config()
    assert select_linears(model, cfg) == ["0", "2"]  # the depthwise 3x3 is not a Linear
    x = torch.randn(2, 32, 4, 4)
    lin = as_linear(model[0])
    torch.testing.assert_close(lin(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2), model[0](x), rtol=1e-5, atol=1e-5)
    ref = EmulatedLinear(as_linear(model[0]))
    report = quantize_(model, cfg)
    assert report.modules == ["0", "2"] and isinstance(model[0], PointwiseConv) and report.weights == 32 * 64 + 64 * 32
    assert torch.equal(model[0](x), ref(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2))


def test_a_process_held_to_avx2_compiles_into_its_own_cache():
    """How the AVX2 host kind is measured on a larger CPU (ATEN_CPU_CAPABILITY=avx2): its compiled
    quantiser must not share inductor's on-disk cache with normal processes (torch 2.13 does not
    key the cache on it; mixing gave NaNs and heap corruption), and gives the eager bits."""
    import subprocess
    import sys

    code = (
        "import os, torch\n"
        "from solrl.quant.numerics import nvfp4_factors\n"
        "x = torch.randn(7, 48, generator=torch.Generator().manual_seed(0)) * 3\n"
        "a, s = nvfp4_factors(x, torch.float32, compiled=True)\n"
        "b, t = nvfp4_factors(x, torch.float32, compiled=False)\n"
        "assert torch.equal(a, b) and torch.equal(s, t)\n"
        "print(os.environ['TORCHINDUCTOR_CACHE_DIR'])\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("TORCHINDUCTOR_CACHE_DIR", "SOLRL_NO_COMPILE")}
    env.update(ATEN_CPU_CAPABILITY="avx2", PYTHONWARNINGS="error::UserWarning:solrl.quant.numerics")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    cache = out.stdout.split()[-1]
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    assert cache == os.path.abspath(default_cache_dir()) + "-avx2"
