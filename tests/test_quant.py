import warnings

import numpy as np
import pytest
import torch
from torch import nn

from solrl.quant import EmulatedLinear, NVFP4Config, fake_quantize_fp8, fake_quantize_nvfp4, nvfp4_pack, nvfp4_unpack, quantize_, select_linears
from solrl.quant.numerics import _fake_nvfp4


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
    return out


def _torchao_reference(x):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torchao.prototype.mx_formats.nvfp4_tensor import NVFP4Tensor, per_tensor_amax_to_scale
    t = NVFP4Tensor.to_nvfp4(x.contiguous(), per_tensor_scale=per_tensor_amax_to_scale(x.abs().amax()))
    return t.qdata, t.scale, t.dequantize(torch.float32)


E2M1 = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6])


def _spec_reference(x: np.ndarray) -> np.ndarray:
    """ALGORITHM.md §4 written out in numpy (float32 arithmetic, E4M3 via torch's cast)."""
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
    tie = np.isclose(np.sort(d, -1)[..., 0], np.sort(d, -1)[..., 1])
    idx = np.where(tie & (idx % 2 == 1), idx + 1, idx)
    q = np.sign(scaled) * E2M1[np.minimum(idx, 7)]
    return (q * (S * s)[..., None]).reshape(x.shape).astype(np.float32)


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


def test_emulated_linear_is_w4a4_with_fp32_bias():
    torch.manual_seed(0)
    lin = nn.Linear(32, 8)
    q = EmulatedLinear(lin)
    x = torch.randn(3, 32)
    expected = fake_quantize_nvfp4(x) @ fake_quantize_nvfp4(lin.weight.detach()).T + lin.bias.detach()
    assert torch.equal(q(x), expected)
    assert q.packed_bytes == 32 * 8 // 2 + 32 * 8 // 16 + 4


def _tiny_flux():
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel(patch_size=1, in_channels=4, out_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2, joint_attention_dim=24, pooled_projection_dim=24, guidance_embeds=False, axes_dims_rope=(4, 6, 6))


def _tiny_sd3():
    from diffusers import SD3Transformer2DModel

    return SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=16, num_attention_heads=2, joint_attention_dim=24, caption_projection_dim=32, pooled_projection_dim=24, out_channels=4, pos_embed_max_size=16)


DOUBLE = ["norm1.linear", "norm1_context.linear", "attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out", "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2"]


def test_filter_on_tiny_flux():
    model = _tiny_flux()
    cfg = NVFP4Config(skip=("x_embedder", "context_embedder", "time_text_embed", "norm_out"), min_dim=0)
    got = select_linears(model, cfg)
    single = ["norm.linear", "proj_mlp", "proj_out", "attn.to_q", "attn.to_k", "attn.to_v"]
    expected = [f"transformer_blocks.0.{n}" for n in DOUBLE] + [f"single_transformer_blocks.0.{n}" for n in single] + ["proj_out"]
    assert sorted(got) == sorted(expected)
    # min_dim drops layers whose larger side is <= min_dim (the 32x32 projections here)
    big = select_linears(model, NVFP4Config(skip=cfg.skip, min_dim=32))
    assert "transformer_blocks.0.attn.to_q" not in big and "transformer_blocks.0.ff.net.0.proj" in big


def test_filter_on_tiny_sd3_and_in_features_rule():
    model = _tiny_sd3()
    cfg = NVFP4Config(skip=("pos_embed", "context_embedder", "time_text_embed", "norm_out", "norm1", "ff_context"), min_dim=0)
    got = set(select_linears(model, cfg))
    attn = ["attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"]
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
    bytes_counted = sum(m.qdata.numel() + m.block_scale.numel() + 4 for m in model.modules() if isinstance(m, EmulatedLinear))
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
    model = torch.nn.Sequential(torch.nn.Conv2d(32, 64, 1), torch.nn.Conv2d(64, 64, 3, padding=1, groups=64), torch.nn.Conv2d(64, 32, 1))
    cfg = NVFP4Config()
    assert select_linears(model, cfg) == ["0", "2"]  # the depthwise 3x3 is not a Linear
    x = torch.randn(2, 32, 4, 4)
    lin = as_linear(model[0])
    torch.testing.assert_close(lin(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2), model[0](x), rtol=1e-5, atol=1e-5)
    ref = EmulatedLinear(as_linear(model[0]))
    report = quantize_(model, cfg)
    assert report.modules == ["0", "2"] and isinstance(model[0], PointwiseConv) and report.weights == 32 * 64 + 64 * 32
    assert torch.equal(model[0](x), ref(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2))
