"""The SVDQuant-style low-rank branch: W = L₁L₂ (bf16, rank r) + NVFP4(W − L₁L₂)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_quant import _onednn_bf16_fpmath, _spec_factors, _tiny_flux
from torch import nn

from solrl.quant import EmulatedLinear, NVFP4Config, quantize_
from solrl.quant.lowrank import lowrank_split

SKIP = ("x_embedder", "context_embedder", "time_text_embed", "norm_out")


def _weight(kind: str, out: int = 96, inp: int = 256, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out, inp, generator=g) / inp**0.5
    if kind == "outlier_channels":  # a few input channels 30x larger (the SVDQuant picture)
        w[:, :4] *= 30
    elif kind == "scattered_outliers":
        idx = torch.randint(0, w.numel(), (24,), generator=g)
        w.view(-1)[idx] *= 50
    return w


def _linear(w: torch.Tensor, bias: bool = True, seed: int = 1) -> nn.Linear:
    lin = nn.Linear(w.shape[1], w.shape[0], bias=bias)
    with torch.no_grad():
        lin.weight.copy_(w)
        if bias:
            lin.bias.copy_(torch.randn(w.shape[0], generator=torch.Generator().manual_seed(seed)))
    return lin


def _effective_weight(layer: EmulatedLinear) -> torch.Tensor:
    """What the layer multiplies by, in float64: S_w·W′ (+ L₁L₂)."""
    w = layer.weight_qs.double() * layer.tensor_scale.double()
    if layer.rank:
        w = w + layer.lowrank_up.double() @ layer.lowrank_down.double()
    return w


def test_lowrank_layer_is_bit_exact_to_the_formula():
    """y = S_a·S_w·(A′ @ R′ᵀ) + (x @ L₂ᵀ) @ L₁ᵀ + b, written out: the residual R = W − L₁L₂ in
    numpy float64 (from the stored bf16 factors), its and the activation's NVFP4 factors by the
    numpy spec; the GEMMs are plain torch F.linear (the 4-bit one with oneDNN bf16 fpmath)."""
    w = _weight("outlier_channels", 96, 128)
    lin = _linear(w)
    layer = EmulatedLinear(lin, lowrank=8)
    l1, l2 = layer.lowrank_up, layer.lowrank_down
    assert layer.rank == 8 and l1.shape == (96, 8) and l2.shape == (8, 128) and l1.dtype == l2.dtype == torch.bfloat16
    res = (w.double().numpy() - l1.double().numpy() @ l2.double().numpy()).astype(np.float32)
    rq, s_w = _spec_factors(res)
    x = torch.randn(2, 10, 128, generator=torch.Generator().manual_seed(2))
    x2 = x.reshape(-1, 128)
    a, s_a = _spec_factors(x2.numpy())
    with _onednn_bf16_fpmath():
        acc = F.linear(torch.from_numpy(a), torch.from_numpy(rq)).numpy()
    y = acc * (np.float32(s_a) * np.float32(s_w))
    y = y + F.linear(F.linear(x2, l2.float()), l1.float()).numpy()
    y = y + lin.bias.detach().numpy()
    assert torch.equal(layer(x), torch.from_numpy(y).reshape(2, 10, 96))


def test_lowrank_factors_are_the_truncated_svd():
    w = _weight("random", 96, 128)
    l1, l2, res = lowrank_split(w, 12)
    u, s, vh = np.linalg.svd(w.double().numpy(), full_matrices=False)  # an independent SVD
    best = (u[:, :12] * s[:12]) @ vh[:12]
    prod = l1.double().numpy() @ l2.double().numpy()
    assert np.linalg.norm(prod - best) <= 2.0**-7 * np.linalg.norm(best)  # bf16 factors
    tail = np.sqrt((s[12:] ** 2).sum())  # Eckart–Young: the best rank-12 error
    assert np.linalg.norm(w.double().numpy() - prod) == pytest.approx(tail, rel=1e-2)
    assert torch.equal(res, (w.double() - l1.double() @ l2.double()).float())


def test_svd_is_reproducible_whatever_the_thread_count():
    w = _weight("outlier_channels", 192, 256)
    old = torch.get_num_threads()
    try:
        runs = []
        for threads in (1, 2, 1):
            torch.set_num_threads(threads)
            runs.append(lowrank_split(w, 16))
    finally:
        torch.set_num_threads(old)
    for other in runs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(runs[0], other))


def test_rank_zero_is_the_plain_layer_bit_for_bit():
    lin = _linear(_weight("outlier_channels"))
    plain, r0 = EmulatedLinear(lin), EmulatedLinear(lin, lowrank=0)
    assert r0.rank == 0 and not hasattr(r0, "lowrank_up")
    sd0, sd1 = plain.state_dict(), r0.state_dict()
    assert sd0.keys() == sd1.keys() and all(
        torch.equal(sd0[k].reshape(-1).view(torch.uint8), sd1[k].reshape(-1).view(torch.uint8)) for k in sd0
    )
    x = torch.randn(3, 7, 256, generator=torch.Generator().manual_seed(4))
    assert torch.equal(plain(x).view(torch.int32), r0(x).view(torch.int32))
    assert r0.packed_bytes == plain.packed_bytes
    m0, m1 = _tiny_flux(), _tiny_flux()
    m1.load_state_dict(m0.state_dict())
    rep0, rep1 = quantize_(m0, NVFP4Config(skip=SKIP)), quantize_(m1, NVFP4Config(skip=SKIP, lowrank=0))
    assert rep0 == rep1


@pytest.mark.parametrize("kind", ["random", "outlier_channels", "scattered_outliers"])
def test_weight_error_does_not_grow_with_rank(kind):
    w = _weight(kind, 96, 256)
    errs = []
    for r in (0, 1, 2, 4, 8, 16, 32, 64):
        layer = EmulatedLinear(_linear(w, bias=False), lowrank=r)
        errs.append(float((_effective_weight(layer) - w.double()).norm() / w.double().norm()))
    assert all(b <= a for a, b in zip(errs, errs[1:])), errs
    assert errs[-1] < 0.8 * errs[0]
    if kind == "outlier_channels":  # rank 4 holds the 4 outlier channels: the residual is tame
        assert errs[3] < 0.6 * errs[0]


def test_lowrank_makes_the_w4a4_output_more_faithful_on_outlier_channels():
    w = _weight("outlier_channels", 96, 256)
    lin = _linear(w)
    x = torch.randn(64, 256, generator=torch.Generator().manual_seed(5))
    ref = lin(x).detach()
    err = {r: float((EmulatedLinear(lin, lowrank=r)(x) - ref).norm() / ref.norm()) for r in (0, 8)}
    assert err[8] < err[0]


def test_report_counts_lowrank_bytes_at_bf16():
    model = _tiny_flux()
    report = quantize_(model, NVFP4Config(skip=SKIP, lowrank=4))
    layers = [m for m in model.modules() if isinstance(m, EmulatedLinear)]
    assert len(layers) == len(report.modules) and all(
        m.rank == min(4, m.in_features, m.out_features) == 4 for m in layers
    )
    codes = sum(m.qdata.numel() + m.block_scale.numel() + 4 for m in layers)
    lowrank = sum(2 * 4 * (m.in_features + m.out_features) for m in layers)  # bf16 L₁ and L₂
    assert report.packed_bytes == codes + lowrank
    assert report.bits_per_weight == pytest.approx(8 * (codes + lowrank) / report.weights)
    assert report.bits_per_weight > 4.5


def test_rank_is_capped_by_the_layer():
    layer = EmulatedLinear(_linear(_weight("random", 16, 32)), lowrank=64)
    assert layer.rank == 16 and layer.lowrank_up.shape == (16, 16)
    assert layer.packed_bytes == 16 * 32 // 2 + 16 * 32 // 16 + 4 + 2 * 16 * (16 + 32)
    assert "lowrank=16" in repr(layer)


@pytest.mark.parametrize(
    "kw",
    [
        {"lowrank": -1},
        {"lowrank": 2.0},
        {"lowrank": True},
        {"lowrank": 4, "backend": "fp8"},
        {"lowrank": 4, "backend": "transformer_engine"},
        {"lowrank": 4, "backend": "none"},
    ],
)
def test_config_validates_lowrank(kw):
    with pytest.raises(ValueError, match="lowrank"):
        NVFP4Config(**kw)
