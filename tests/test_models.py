import torch

from solrl.quant import EmulatedLinear, NVFP4Config, select_linears


def _inputs(policy, n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *policy.latent_shape, generator=g)
    t = torch.rand(n, generator=g)
    cond = policy.encode(
        ["a red circle on the left", "a blue square above a yellow triangle", "a green triangle on the top"][:n]
    )
    return x, t, cond


def _perturb(policy, adapter, scale=0.05, seed=1):
    g = torch.Generator().manual_seed(seed)
    state = {k: v + scale * torch.randn(v.shape, generator=g) for k, v in policy.adapter_state(adapter).items()}
    policy.load_adapter(adapter, state)


def test_lora_adapters_targets_and_reference(shapes_policy_factory):
    policy = shapes_policy_factory()
    names = [n for n, _ in policy.peft.named_modules() if n.endswith(("to_q", "to_k", "to_v", "to_out.0"))]
    assert names and all(hasattr(policy.peft.get_submodule(n), "lora_A") for n in names)
    # fresh adapters: B = 0, so all three forwards agree and "old" starts as a copy of "default"
    x, t, c = _inputs(policy)
    v_def = policy.velocity(x, t, c, "default")
    assert torch.equal(v_def, policy.velocity(x, t, c, None))
    assert all(torch.equal(policy.adapter_state("default")[k], v) for k, v in policy.adapter_state("old").items())
    _perturb(policy, "default")
    v_theta = policy.velocity(x, t, c, "default")
    assert not torch.allclose(v_theta, policy.velocity(x, t, c, None))  # reference = adapters off
    assert torch.equal(policy.velocity(x, t, c, "old"), policy.velocity(x, t, c, None))  # old untouched
    # only the trainable adapter carries gradients, whichever adapter ran last
    policy.velocity(x, t, c, "old")
    v_theta.sum().backward()
    assert all(p.grad is not None for p in policy.trainable_parameters())
    assert not any(p.requires_grad for n, p in policy.peft.named_parameters() if ".old." in n)


def test_merged_copy_equals_old_adapter(shapes_policy_factory):
    policy = shapes_policy_factory()
    _perturb(policy, "old", scale=0.1)
    x, t, c = _inputs(policy)
    with torch.no_grad():
        want = policy.velocity(x, t, c, "old")
    merged, report = policy.sampler_copy(None)
    got = policy.transformer_velocity(merged, x, t, c)
    assert report.modules == []
    assert torch.allclose(got, want, atol=2e-5, rtol=1e-4), (got - want).abs().max()
    assert not any(p.requires_grad for p in merged.parameters())
    # the copy is detached: training the policy afterwards does not change it
    _perturb(policy, "old", scale=0.5, seed=3)
    assert torch.equal(policy.transformer_velocity(merged, x, t, c), got)


def test_explore_copy_is_quantised_per_family_filter(shapes_policy_factory):
    policy = shapes_policy_factory()
    cfg = NVFP4Config(skip=policy.quant_skip, min_dim=policy.quant_min_dim)
    model, report = policy.sampler_copy(cfg)
    quantised = [n for n, m in model.named_modules() if isinstance(m, EmulatedLinear)]
    assert quantised == report.modules and quantised
    assert not any(s in n for n in quantised for s in policy.quant_skip)
    # every attention and MLP projection of the double blocks is quantised
    for part in (
        "attn.to_q",
        "attn.to_k",
        "attn.to_v",
        "attn.to_out.0",
        "attn.add_q_proj",
        "ff.net.0.proj",
        "ff_context.net.2",
        "norm1.linear",
    ):
        assert f"transformer_blocks.0.{part}" in quantised
    # and the single-block output projection is skipped because 'proj_out' is a substring rule
    assert "single_transformer_blocks.0.proj_out" not in quantised
    assert "single_transformer_blocks.0.proj_mlp" in quantised
    assert report.bits_per_weight == __import__("pytest").approx(4.5, abs=0.01)
    x, t, c = _inputs(policy)
    hp, _ = policy.sampler_copy(None)
    v4 = policy.transformer_velocity(model, x, t, c)
    v32 = policy.transformer_velocity(hp, x, t, c)
    rel = float((v4 - v32).norm() / v32.norm())
    assert 0 < rel < 0.5
    # the unquantised base has every Linear the filter would select
    assert select_linears(hp, cfg) == quantised


def test_shapes_weights_load_with_safetensors_only(tmp_path):
    import json

    from solrl.shapes import model as M

    cfg, transformer, text_encoder = M.load()
    meta = json.loads((M.WEIGHTS_DIR / "config.json").read_text())
    assert meta["model"]["hidden"] == cfg.hidden
    assert (M.WEIGHTS_DIR / "shapes.safetensors").stat().st_size <= 20 * 1024 * 1024
    import pytest

    with pytest.raises(FileNotFoundError, match="pretrain-shapes"):
        M.load(tmp_path)


def test_pretraining_is_reproducible_from_its_seed(tmp_path):
    from safetensors.torch import load_file

    from solrl.shapes import model as M
    from solrl.shapes.pretrain import pretrain

    cfg = M.ShapesModelConfig(hidden=64, num_layers=1, num_single_layers=1)
    for name in ("a", "b"):
        meta = pretrain(cfg, 3, tmp_path / name, batch=8, compile=False, log=lambda s: None)
    a, b = load_file(str(tmp_path / "a" / "shapes.safetensors")), load_file(str(tmp_path / "b" / "shapes.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert meta["history"][-1]["step"] == 2 and meta["stored_dtype"] == "bfloat16"
    loaded_cfg, _, _ = M.load(tmp_path / "a")
    assert loaded_cfg == cfg
