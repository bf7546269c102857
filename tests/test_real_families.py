"""FLUX, SD3 and SANA adapters on tiny random pipelines built from configs (no downloads).

The pipelines are saved with `save_pretrained` and loaded by the policy through the same
`from_pretrained(..., local_files_only=True)` call that loads real weights. What a tiny
pipeline cannot exercise (bf16 on a GPU, Transformer Engine kernels, real text encoders'
tokenizers, 512/1024 px memory) is covered by the module filter checks on the real
architectures (built on the meta device) and stated in the README.
"""

from __future__ import annotations

import json

import pytest
import torch
from tiny_pipelines import BUILDERS

from solrl.compute import explore_quant
from solrl.config import ConfigError, RunConfig, load_config
from solrl.models import check_model, load_policy
from solrl.plan import primary_explore
from solrl.quant import NVFP4Config, select_linears
from tasks.in_memory import discard, iteration_data, memory_run, trained
from tasks.stages import run_steps

FAMILIES = ("flux", "sd3", "sana")


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny matrices


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipelines")
    return {f: BUILDERS[f](root / f) for f in FAMILIES}


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory):
    from solrl.shapes.prompts import train_prompts

    p = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    p.write_text(
        "# shapes prompts, so the built-in reward can score the tiny models' images\n"
        + "\n".join(train_prompts()[:30])
        + "\n"
    )
    return p


def tiny_config(family, weights, prompt_file, **over) -> RunConfig:
    data = {
        "model": {
            "family": family,
            "weights": str(weights),
            "resolution": 32,
            "max_sequence_length": 16,
            "lora_rank": 4,
            "lora_alpha": 8,
            "dtype": "float32",
        },
        "prompts": {"per_iteration": 2, "file": str(prompt_file)},
        "explore": {"n": 8, "steps": 2, "batch": 8},
        "select": {"k": 4},
        "rollout": {"steps": 3, "batch": 4, "solver": "dpm2"},
        "eval": {"every": 1, "steps": 2, "held_out_prompts": 2, "train_prompts": 2, "seeds_per_prompt": 1},
        "nft": {"micro_batch": 4, "lr": 0.05},
        "reward": {"weights": {"shapes": 1.0}, "report": []},
    }
    for key, value in over.items():
        section, _, field = key.partition("__")
        data.setdefault(section, {})[field] = value
    return RunConfig.model_validate(data)


def _policy(cfg):
    return load_policy(cfg)


@pytest.mark.parametrize("family", FAMILIES)
def test_iterations_are_deterministic_and_finite(family, pipelines, prompt_file):
    cfg = tiny_config(family, pipelines[family], prompt_file)
    results = []
    for _ in range(2):  # two in-memory runs: the product's stage steps over fsspec's memory file system
        run = memory_run(cfg)
        for i in range(2):
            run_steps(run, i)
        its = [iteration_data(run, i) for i in range(2)]
        policy, state = trained(run, 2)
        results.append((its, policy.adapter_state("default"), {k: v.clone() for k, v in state.ema.items()}))
        discard(run)
    (a, theta_a, ema_a), (b, theta_b, ema_b) = results
    for ia, ib in zip(a, b):
        assert ia.explore["reward"] == ib.explore["reward"]
        assert ia.selected["seed"] == ib.selected["seed"]
        assert torch.equal(ia.x0, ib.x0)
        assert ia.metrics == ib.metrics
        assert ia.eval["reward"] == ib.eval["reward"]
    assert all(torch.equal(theta_a[k], theta_b[k]) for k in theta_a) and all(
        torch.equal(ema_a[k], ema_b[k]) for k in ema_a
    )
    first = a[0]
    assert len(first.explore["reward"]) == 2 * 8 and len(first.samples["prompt"]) == 2 * 4
    assert first.x0.shape == (8, *policy.latent_shape)
    for it in a:
        (m,) = it.metrics
        assert m["applied"] == 1.0
        assert all(torch.isfinite(torch.tensor(v)) for v in m.values())
    assert a[1].metrics[0]["grad_norm"] > 0
    assert any(
        not torch.equal(theta_a[k], policy.adapter_state("old")[k]) or theta_a[k].abs().sum() > 0 for k in theta_a
    )


@pytest.mark.parametrize("family,latent", [("flux", (16 * 16 // 4, 16)), ("sd3", (4, 16, 16)), ("sana", (4, 16, 16))])
def test_latents_decode_to_images(family, latent, pipelines, prompt_file):
    policy = _policy(tiny_config(family, pipelines[family], prompt_file))
    assert policy.latent_shape == latent  # tiny VAEs downsample 2x; FLUX packs 2x2 patches of 4 channels
    x0 = policy.sample(policy.peft, ["a red circle on the left"] * 3, [1, 2, 3], 2)
    assert x0.shape == (3, *latent) and x0.device.type == "cpu"
    images = policy.decode(x0)
    assert images.shape == (3, 3, 32, 32) and images.min() >= -1 and images.max() <= 1
    sig = policy.sigmas(6)
    assert sig[0] == 1.0 and sig[-1] == 0.0 and all(sig[i] > sig[i + 1] for i in range(6))


def test_family_sigma_grids(pipelines, prompt_file):
    from solrl.sampling import flux_mu, sigma_grid

    flux = _policy(tiny_config("flux", pipelines["flux"], prompt_file))
    assert list(flux.sigmas(6)) == list(sigma_grid("flux", 6, mu=flux_mu(64)))  # 64 image tokens
    sd3 = _policy(tiny_config("sd3", pipelines["sd3"], prompt_file))
    assert list(sd3.sigmas(6)) == list(sigma_grid("sd3", 6, shift=3.0))
    sana = _policy(tiny_config("sana", pipelines["sana"], prompt_file))
    assert list(sana.sigmas(4)) == [1.0, 0.75, 0.5, 0.25, 0.0]


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_export_loads_into_the_pipeline_as_the_merged_weights_predict(family, pipelines, prompt_file, tmp_path):
    import diffusers

    cfg = tiny_config(family, pipelines[family], prompt_file, eval__every=0)
    run = memory_run(cfg)
    for i in range(2):
        run_steps(run, i)
    policy, state = trained(run, 2)
    x = torch.randn(2, *policy.latent_shape, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0.7, 0.3])
    cond = policy.encode(["a red circle on the left", "a blue square on the top"])
    for name, adapter_state in (("theta", None), ("ema", state.ema)):
        out = policy.export_lora(tmp_path / name, state=adapter_state)
        pipe = getattr(diffusers, policy.pipeline_class).from_pretrained(pipelines[family], local_files_only=True)
        before = policy.transformer_velocity(pipe.transformer, x, t, cond)
        pipe.load_lora_weights(out)
        after = policy.transformer_velocity(pipe.transformer, x, t, cond)
        current = policy.adapter_state("default")
        if adapter_state is not None:
            policy.load_adapter("default", adapter_state)
        merged, _ = policy.sampler_copy(None, adapter="default")  # W0 + (alpha/r) B A
        policy.load_adapter("default", current)
        want = policy.transformer_velocity(merged, x, t, cond)
        assert (after - before).abs().max() > 1e-3, f"{name}: loading the LoRA changed nothing"
        torch.testing.assert_close(after, want, rtol=0, atol=2e-5)


# --- which layers NVFP4 quantises -------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_explore_copy_quantises_exactly_the_filtered_layers(family, pipelines, prompt_file):
    cfg = tiny_config(family, pipelines[family], prompt_file)
    policy = _policy(cfg)
    quant = explore_quant(policy, cfg, primary_explore(cfg))
    plain, _ = policy.sampler_copy(None)  # base + merged adapter, no peft wrappers: the names TE/emulation see
    expected = select_linears(plain, quant)
    model, report = policy.sampler_copy(quant)
    assert report.modules == expected and expected
    for name, module in model.named_modules():
        if name in expected:
            assert type(module).__name__ in ("EmulatedLinear", "PointwiseConv")
        elif isinstance(module, torch.nn.Linear):
            assert name not in expected
    assert not any(p in m for m in expected for p in policy.quant_skip)
    assert policy.quant_min_dim == {"flux": 0, "sd3": 32, "sana": 0}[family]  # tiny widths


# The real architectures on the meta device (no memory, no weights): what the presets quantise.
REAL = {
    "flux": (
        "FluxTransformer2DModel",
        dict(
            patch_size=1,
            in_channels=64,
            num_layers=19,
            num_single_layers=38,
            attention_head_dim=128,
            num_attention_heads=24,
            joint_attention_dim=4096,
            pooled_projection_dim=768,
            guidance_embeds=True,
            axes_dims_rope=(16, 56, 56),
        ),
    ),
    "sd3": (
        "SD3Transformer2DModel",
        dict(
            sample_size=128,
            patch_size=2,
            in_channels=16,
            num_layers=38,
            attention_head_dim=64,
            num_attention_heads=38,
            joint_attention_dim=4096,
            caption_projection_dim=2432,
            pooled_projection_dim=2048,
            out_channels=16,
            pos_embed_max_size=192,
            qk_norm="rms_norm",
        ),
    ),
    "sana": (
        "SanaTransformer2DModel",
        dict(
            in_channels=32,
            out_channels=32,
            num_attention_heads=70,
            attention_head_dim=32,
            num_layers=20,
            num_cross_attention_heads=20,
            cross_attention_head_dim=112,
            cross_attention_dim=2240,
            caption_channels=2304,
            mlp_ratio=2.5,
            sample_size=32,
            patch_size=1,
        ),
    ),
}


@pytest.mark.parametrize("family", FAMILIES)
def test_presets_quantise_the_layers_the_official_code_does(family):
    import diffusers

    from solrl.config import CONFIG_DIR

    preset = load_config(CONFIG_DIR / {"flux": "flux.yaml", "sd3": "sd35.yaml", "sana": "sana.yaml"}[family])
    cls, kw = REAL[family]
    with torch.device("meta"):
        model = getattr(diffusers, cls)(**kw)
    names = select_linears(model, NVFP4Config(skip=preset.explore.skip, min_dim=preset.explore.min_dim))
    leaf = sorted({n.split(".", 2)[-1] if n.split(".")[0].endswith("blocks") else n for n in names})
    if family == "flux":
        # every double/single block Linear (attention incl. the LoRA targets, FFNs, AdaLN) + proj_out
        assert len(names) == 19 * 14 + 38 * 6 + 1
        assert "proj_out" in names and not any(
            n.startswith(("x_embedder", "context_embedder", "time_text_embed", "norm_out")) for n in names
        )
    elif family == "sd3":
        assert leaf == ["ff.net.0.proj", "ff.net.2"] and len(names) == 2 * 38  # only the image-stream FFN
    else:
        # cross-attention K/V (the official kv_linear) and the FFN's two pointwise convolutions
        # (the official LinearFFN's Linear layers); the depthwise 3x3 stays bf16
        assert leaf == ["attn2.to_k", "attn2.to_v", "ff.conv_inverted", "ff.conv_point"] and len(names) == 4 * 20


# --- inputs the real families need -----------------------------------------------------------------
def test_prompt_files_are_checked_before_compute(tmp_path, pipelines):
    base = {"model": {"family": "flux", "weights": str(pipelines["flux"])}}
    with pytest.raises(FileNotFoundError, match="prompts.file is not set"):
        check_model(RunConfig.model_validate(base))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        check_model(RunConfig.model_validate({**base, "prompts": {"file": str(tmp_path / "nope.txt")}}))
    few = tmp_path / "few.txt"
    few.write_text("a cat\na dog\n")
    with pytest.raises(FileNotFoundError, match="at least 10"):
        check_model(RunConfig.model_validate({**base, "prompts": {"file": str(few)}}))
    check_model(RunConfig.model_validate({**base, "prompts": {"file": str(few), "eval_file": str(few)}}))


def test_missing_reward_checkpoints_are_reported_before_compute(tmp_path, monkeypatch, pipelines, prompt_file):
    from solrl.rewards import RewardUnavailable

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("SOLRL_PICKSCORE_PATH", raising=False)
    cfg = tiny_config("flux", pipelines["flux"], prompt_file, reward__weights={"pickscore": 1.0})
    with pytest.raises(RewardUnavailable, match="pickscore") as e:
        check_model(cfg)
    assert "\n" not in str(e.value)


def test_prompt_file_split_and_resolution_errors(tmp_path, pipelines, prompt_file):
    from solrl.models.diffusers_base import split_prompts

    lines = [ln for ln in prompt_file.read_text().splitlines() if ln and not ln.startswith("#")]
    train, held = split_prompts(str(prompt_file), None)
    assert held == tuple(lines[9::10]) and len(train) + len(held) == len(lines) and not set(held) & set(train)
    with pytest.raises(ValueError, match="multiple of 4"):
        _policy(tiny_config("flux", pipelines["flux"], prompt_file, model__resolution=30))


def test_missing_weights_name_the_place_searched(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for family, repo in (("flux", "FLUX.1-dev"), ("sd3", "stable-diffusion-3.5-large"), ("sana", "Sana_1600M")):
        with pytest.raises(FileNotFoundError, match=f"the {family} weights are missing: looked in .*{repo}") as e:
            check_model(RunConfig.model_validate({"model": {"family": family, "weights": str(tmp_path / "w")}}))
        assert str(tmp_path / "w") in str(e.value) and "\n" not in str(e.value)


def test_weights_are_found_in_the_hugging_face_cache(tmp_path, monkeypatch, pipelines, prompt_file):
    import shutil

    repo = tmp_path / "hf" / "hub" / "models--black-forest-labs--FLUX.1-dev"
    shutil.copytree(pipelines["flux"], repo / "snapshots" / "abc123")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")  # as a download leaves it: the branch points at the snapshot
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = tiny_config("flux", pipelines["flux"], prompt_file).with_overrides(**{"model.weights": None})
    check_model(cfg)
    policy = _policy(cfg)
    assert policy.latent_shape == (64, 16)


def test_transformer_engine_backend_says_what_is_missing_before_touching_layers(pipelines, prompt_file):
    from solrl.quant.te import TransformerEngineUnavailable

    cfg = tiny_config("flux", pipelines["flux"], prompt_file, explore__backend="transformer_engine")
    policy = _policy(cfg)
    with pytest.raises(TransformerEngineUnavailable, match="Transformer Engine|CUDA GPU|Blackwell") as e:
        policy.sampler_copy(explore_quant(policy, cfg, primary_explore(cfg)))
    assert "\n" not in str(e.value) and "emulated" in str(e.value)
    assert all(
        isinstance(m, torch.nn.Linear)
        for n, m in policy.peft.base_model.model.named_modules()
        if n.endswith("to_q.base_layer")
    )


def test_presets_load_and_name_their_families(tmp_path):
    import yaml

    for preset, family, solver in (("flux", "flux", "dpm2"), ("sd35", "sd3", "dpm2"), ("sana", "sana", "euler")):
        cfg = load_config(preset)
        assert cfg.model.family == family and cfg.rollout.solver == solver
        assert (cfg.prompts.per_iteration, cfg.explore.n, cfg.select.k, cfg.explore.steps, cfg.rollout.steps) == (
            48,
            96,
            24,
            6,
            10,
        )
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"model": {"family": "flux", "resolution": 8}}))
    with pytest.raises(ConfigError, match="model.resolution"):
        load_config(bad)


def test_export_cli_writes_diffusers_lora_from_a_run(tmp_path, pipelines, prompt_file):
    """A run of a real family through the stored pipeline (no Prefect), then `sol-rl export-lora`."""
    import yaml
    from pipeline_helpers import cli

    cfg_path = tmp_path / "tiny_flux.yaml"
    data = json.loads(tiny_config("flux", pipelines["flux"], prompt_file, eval__every=0).model_dump_json())
    cfg_path.write_text(yaml.safe_dump(data))
    cli("run", cfg_path, "--run-id", "r", "--iterations", "1", "--run-root", tmp_path, "--no-prefect")
    cli("export-lora", tmp_path / "r", "--out", tmp_path / "lora")
    cli("export-lora", tmp_path / "r", "--out", tmp_path / "lora_ema", "--ema")
    for d in ("lora", "lora_ema"):
        assert (tmp_path / d / "pytorch_lora_weights.safetensors").exists()
