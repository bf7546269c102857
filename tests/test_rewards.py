"""Learned rewards: scaling, batching, preprocessing, loading and errors, on tiny random models.

Nothing here downloads: the CLIP-based tests build a tiny `CLIPModel` from a `CLIPConfig` and a
word-level tokenizer; ImageReward a tiny network of the same layout. Tests marked `rewards_real`
use the real checkpoints and are skipped (with the reason) when those are not on disk; to run
them, fill the Hugging Face cache or point SOLRL_CLIPSCORE_PATH, SOLRL_PICKSCORE_PATH (+
SOLRL_PICKSCORE_PROCESSOR_PATH), SOLRL_HPSV2_PATH, SOLRL_IMAGEREWARD_PATH (+
SOLRL_IMAGEREWARD_TOKENIZER) at local copies, then `pytest tests/test_rewards.py -m rewards_real`.
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from solrl import rewards
from solrl.rewards import RewardUnavailable, clip_based, imagereward
from solrl.rewards._common import CLIP_MEAN, CLIP_STD, EXTRA, prepare_images
from solrl.rewards.clip_based import ClipScorer
from solrl.rewards.imagereward import ImageRewardConfig, ImageRewardModel, ImageRewardScorer

LEARNED = ("imagereward", "pickscore", "clipscore", "hpsv2")

VOCAB = ["<pad>", "<unk>", "<bos>", "<eos>"] + (
    "a an the of on in to photo picture red blue green yellow purple circle square triangle left right above below cat dog".split()
)
PROMPTS = [
    "a red circle on the left",
    "a photo of a cat",
    "a blue square above a green triangle",
    "the dog",
    "a purple triangle below a yellow circle on the right of a cat",
]
ENV_VARS = (
    "SOLRL_CLIPSCORE_PATH",
    "SOLRL_PICKSCORE_PATH",
    "SOLRL_PICKSCORE_PROCESSOR_PATH",
    "SOLRL_HPSV2_PATH",
    "SOLRL_IMAGEREWARD_PATH",
    "SOLRL_IMAGEREWARD_TOKENIZER",
    "SOLRL_REWARD_BATCH",
    "SOLRL_REWARD_DEVICE",
    "HF_HUB_CACHE",
    "HUGGINGFACE_HUB_CACHE",
)


# --- tiny models -----------------------------------------------------------------------------------------
def tiny_tokenizer():
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(VOCAB)}, unk_token="<unk>"))
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", 2), ("<eos>", 3)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, pad_token="<pad>", unk_token="<unk>", bos_token="<bos>", eos_token="<eos>"
    )


def tiny_clip(seed: int = 0, logit_scale: float = 40.0):
    from transformers import CLIPConfig, CLIPModel

    cfg = CLIPConfig(
        text_config=dict(
            vocab_size=len(VOCAB),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=16,
            pad_token_id=0,
            bos_token_id=2,
            eos_token_id=3,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=32,
            patch_size=8,
        ),
        projection_dim=16,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(cfg).eval()
    with torch.no_grad():
        model.logit_scale.fill_(math.log(logit_scale))
    return model


@pytest.fixture(scope="module")
def clip():
    return tiny_clip()


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture
def images():
    g = torch.Generator().manual_seed(1)
    return torch.rand(len(PROMPTS), 3, 40, 56, generator=g) * 2 - 1


@pytest.fixture(scope="module", autouse=True)
def _one_thread_private_rng():
    """Tiny matmuls: threads only add contention (seconds on a busy 2-core machine). Module inits
    draw from the global RNG: give it back as it was."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    with torch.random.fork_rng(devices=[]):
        yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _clean(monkeypatch):
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    rewards.clear_cache()
    yield
    rewards.clear_cache()


def scorer(clip, tok, scale: str, batch: int = 16, **kw) -> ClipScorer:
    return ClipScorer(clip, tok, image_size=32, mean=CLIP_MEAN, std=CLIP_STD, scale=scale, batch=batch, **kw)


def pooled(out):
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def hand_cosine(clip, tok, images, prompts, quantize=False) -> torch.Tensor:
    """cos(img, txt) straight from get_image_features / get_text_features."""
    with torch.no_grad():
        img = pooled(clip.get_image_features(pixel_values=prepare_images(images, 32, quantize=quantize)))
        t = tok(prompts, padding="max_length", max_length=16, truncation=True, return_tensors="pt")
        txt = pooled(clip.get_text_features(input_ids=t["input_ids"], attention_mask=t["attention_mask"]))
    return F.cosine_similarity(img.double(), txt.double(), dim=-1)


# --- CLIP-based scoring --------------------------------------------------------------------------------------
@pytest.mark.parametrize("scale,divisor", [("clipscore", 100.0), ("pickscore", 26.0)])
def test_clip_logit_scaling_matches_hand_computation(clip, tok, images, scale, divisor):
    s = scorer(clip, tok, scale)(images, PROMPTS)
    assert s.shape == (len(PROMPTS),) and s.dtype == torch.float64 and s.device.type == "cpu"
    expected = clip.logit_scale.exp().double() * hand_cosine(clip, tok, images, PROMPTS) / divisor
    torch.testing.assert_close(s, expected.detach(), rtol=0, atol=1e-6)
    assert clip.logit_scale.exp().item() == pytest.approx(40.0)


def test_pickscore_and_clipscore_differ_only_by_divisor(clip, tok, images):
    a = scorer(clip, tok, "clipscore")(images, PROMPTS)
    b = scorer(clip, tok, "pickscore")(images, PROMPTS)
    torch.testing.assert_close(a * 100, b * 26, rtol=0, atol=1e-9)


def test_hpsv2_style_cosine(clip, tok, images):
    s = scorer(clip, tok, "cosine")(images, PROMPTS)
    assert s.dtype == torch.float64 and s.shape == (len(PROMPTS),)
    assert bool(((s >= -1) & (s <= 1)).all())
    torch.testing.assert_close(s, hand_cosine(clip, tok, images, PROMPTS), rtol=0, atol=1e-6)


@pytest.mark.parametrize("scale", ["clipscore", "pickscore", "cosine"])
def test_batching_does_not_change_scores(clip, tok, images, scale):
    one = scorer(clip, tok, scale, batch=1)(images, PROMPTS)
    four = scorer(clip, tok, scale, batch=4)(images, PROMPTS)
    torch.testing.assert_close(one, four, rtol=0, atol=1e-5)


def test_batch_size_from_env(clip, tok, monkeypatch):
    monkeypatch.setenv("SOLRL_REWARD_BATCH", "3")
    assert ClipScorer(clip, tok, image_size=32).batch == 3


class OpenClipLike(torch.nn.Module):
    """The open_clip model interface (encode_image / encode_text / logit_scale / visual.image_size)."""

    def __init__(self, hf):
        super().__init__()
        self.hf, self.logit_scale = hf, hf.logit_scale
        self.visual = torch.nn.Module()
        self.visual.image_size = (32, 32)

    def encode_image(self, pixels):
        return pooled(self.hf.get_image_features(pixel_values=pixels))

    def encode_text(self, ids):
        return pooled(self.hf.get_text_features(input_ids=ids, attention_mask=(ids != 0).long()))


def ids_tokenizer(tok):
    """open_clip-style tokenizer: list of prompts -> LongTensor of padded ids."""
    return lambda prompts: tok(prompts, padding="max_length", max_length=16, truncation=True, return_tensors="pt")[
        "input_ids"
    ]


def test_open_clip_style_model_goes_through_encode_api(clip, tok, images):
    oc = ClipScorer(OpenClipLike(clip), ids_tokenizer(tok), image_size=32, scale="cosine", batch=2)
    assert oc.api == "open_clip"
    torch.testing.assert_close(oc(images, PROMPTS), scorer(clip, tok, "cosine")(images, PROMPTS), rtol=0, atol=1e-6)


def test_hpsv2_loader_reads_the_checkpoint_into_open_clip(tmp_path, clip, tok, images, monkeypatch):
    """load_hpsv2 against a stand-in `open_clip` module (the third-party boundary): it builds the
    architecture, loads the HPS checkpoint (DDP `module.` prefixes stripped) and scores the cosine."""
    import types

    built = []

    def create_model(arch, pretrained=None):
        assert (arch, pretrained) == ("ViT-H-14", None)
        built.append(OpenClipLike(tiny_clip(seed=9)))  # other weights until the checkpoint is loaded
        return built[-1]

    fake = types.SimpleNamespace(create_model=create_model, get_tokenizer=lambda arch: ids_tokenizer(tok))
    monkeypatch.setitem(sys.modules, "open_clip", fake)
    ckpt = {"state_dict": {f"module.{k}": v for k, v in OpenClipLike(clip).state_dict().items()}}
    torch.save(ckpt, tmp_path / "HPS_v2.1_compressed.pt")
    monkeypatch.setenv("SOLRL_HPSV2_PATH", str(tmp_path))
    fn = rewards.get_reward("hpsv2")
    assert fn.scale == "cosine" and fn.quantize and fn.image_size == (32, 32) and len(built) == 1
    torch.testing.assert_close(
        fn(images, PROMPTS), hand_cosine(clip, tok, images, PROMPTS, quantize=True), rtol=0, atol=1e-6
    )
    rewards.clear_cache()
    torch.save({"state_dict": {}}, tmp_path / "HPS_v2.1_compressed.pt")
    with pytest.raises(RuntimeError, match="does not fit open_clip ViT-H-14"):
        rewards.get_reward("hpsv2")


def test_prompt_count_must_match(clip, tok, images):
    with pytest.raises(ValueError, match="5 images but 2 prompts"):
        scorer(clip, tok, "clipscore")(images, PROMPTS[:2])


# --- preprocessing ----------------------------------------------------------------------------------------------
def test_preprocessing_resizes_to_the_model_size_and_normalizes():
    x = torch.zeros(2, 3, 40, 64)
    x[:, 0], x[:, 1], x[:, 2] = 0.5, -0.25, 1.0  # a constant colour survives any resize
    out = prepare_images(x, 32, CLIP_MEAN, CLIP_STD)
    assert out.shape == (2, 3, 32, 32) and out.dtype == torch.float32
    rgb01 = torch.tensor([0.75, 0.375, 1.0])
    expected = (rgb01 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    torch.testing.assert_close(out.mean((0, 2, 3)), expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(out.std((0, 2, 3)), torch.zeros(3), rtol=0, atol=1e-5)


def test_preprocessing_centre_crops_the_longer_side():
    # Shorter side already at the size: no resampling, only the centre 32 columns of 64 are kept.
    col = torch.linspace(-1, 1, 64)
    x = col.view(1, 1, 1, 64).expand(1, 3, 32, 64).contiguous()
    out = prepare_images(x, 32, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    torch.testing.assert_close(out[0, 0, 0], (col[16:48] + 1) / 2)
    # Larger images are downsampled (shorter side to 32) then cropped: 64x128 -> 32x64 -> 32x32.
    assert prepare_images(torch.zeros(1, 3, 64, 128), 32).shape == (1, 3, 32, 32)
    assert prepare_images(torch.zeros(1, 3, 8, 8), 32).shape == (1, 3, 32, 32)


def test_preprocessing_resize_then_crop_and_processor_settings(tmp_path):
    g = torch.Generator().manual_seed(2)
    x = torch.rand(1, 3, 64, 64, generator=g) * 2 - 1
    out = prepare_images(x, 32, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), resize=48)
    ref = F.interpolate((x + 1) / 2, size=(48, 48), mode="bicubic", antialias=True).clamp(0, 1)[..., 8:40, 8:40]
    torch.testing.assert_close(out, ref)
    (tmp_path / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "size": {"shortest_edge": 256},
                "crop_size": {"height": 224, "width": 224},
                "image_mean": [0.5] * 3,
                "image_std": [0.25] * 3,
            }
        )
    )
    assert clip_based._image_settings(tmp_path, 999) == {
        "image_size": 224,
        "resize": 256,
        "mean": (0.5,) * 3,
        "std": (0.25,) * 3,
    }
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"size": 224, "crop_size": 224}))  # old-style ints
    assert clip_based._image_settings(tmp_path, 999) == {
        "image_size": 224,
        "resize": None,
        "mean": CLIP_MEAN,
        "std": CLIP_STD,
    }
    assert clip_based._image_settings(tmp_path / "absent", 336)["image_size"] == 336


def test_preprocessing_quantizes_to_8_bit_levels():
    x = torch.full((1, 3, 32, 32), 0.1234)
    out = prepare_images(x, 32, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), quantize=True)
    assert torch.allclose(out * 255, (out * 255).round(), atol=1e-4)
    assert abs(out[0, 0, 0, 0].item() - round(0.5617 * 255) / 255) < 1e-6


def test_preprocessing_rejects_non_rgb():
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        prepare_images(torch.zeros(2, 1, 32, 32), 32)


# --- ImageReward -----------------------------------------------------------------------------------------
TINY_IR = ImageRewardConfig(
    image_size=32,
    patch_size=8,
    vision_width=32,
    vision_layers=2,
    vision_heads=4,
    vocab_size=len(VOCAB) + 2,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=40,
    mlp_widths=(16, 8),
    max_length=12,
)


def tiny_imagereward(config: ImageRewardConfig = TINY_IR, seed: int = 0) -> ImageRewardModel:
    g = torch.Generator().manual_seed(seed)
    model = ImageRewardModel(config).eval()
    with torch.no_grad():
        for p in model.parameters():  # non-trivial values everywhere, including the zero-init tokens
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model


def test_imagereward_shape_dtype_and_batching(tok, images):
    model = tiny_imagereward()
    a = ImageRewardScorer(model, tok, batch=1)(images, PROMPTS)
    b = ImageRewardScorer(model, tok, batch=4)(images, PROMPTS)
    assert a.shape == (len(PROMPTS),) and a.dtype == torch.float64 and a.device.type == "cpu"
    assert torch.isfinite(a).all() and a.std() > 0
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_imagereward_is_the_normalized_mlp_of_the_cls_state(tok, images):
    from dataclasses import replace

    model = tiny_imagereward()
    s = ImageRewardScorer(model, tok)(images, PROMPTS)
    with torch.no_grad():
        t = tok(PROMPTS, padding="max_length", truncation=True, max_length=12, return_tensors="pt")
        pixels = prepare_images(images, 32, quantize=True)
        text = model.blip.text_encoder(t["input_ids"], t["attention_mask"], model.blip.visual_encoder(pixels))
        raw = model.mlp.layers(text[:, 0]).squeeze(-1).double()
    torch.testing.assert_close(s, (raw - TINY_IR.score_mean) / TINY_IR.score_std, rtol=0, atol=1e-5)
    # Padding is masked out: a longer pad leaves the scores alone (the prompts fit in 12 tokens but the last).
    longer = ImageRewardModel(replace(TINY_IR, max_length=20))
    longer.load_state_dict(model.state_dict())
    torch.testing.assert_close(ImageRewardScorer(longer, tok)(images[:4], PROMPTS[:4]), s[:4], rtol=0, atol=1e-5)


def test_imagereward_layout_matches_the_checkpoint():
    """Full-size network (on the meta device): the parameter names and shapes of ImageReward.pt."""
    with torch.device("meta"):
        model = ImageRewardModel()
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    expected = {
        "blip.visual_encoder.cls_token": (1, 1, 1024),
        "blip.visual_encoder.pos_embed": (1, 197, 1024),
        "blip.visual_encoder.patch_embed.proj.weight": (1024, 3, 16, 16),
        "blip.visual_encoder.blocks.23.attn.qkv.weight": (3072, 1024),
        "blip.visual_encoder.blocks.23.mlp.fc2.weight": (1024, 4096),
        "blip.visual_encoder.norm.weight": (1024,),
        "blip.text_encoder.embeddings.word_embeddings.weight": (30524, 768),
        "blip.text_encoder.embeddings.position_embeddings.weight": (512, 768),
        "blip.text_encoder.embeddings.LayerNorm.bias": (768,),
        "blip.text_encoder.encoder.layer.11.attention.self.query.weight": (768, 768),
        "blip.text_encoder.encoder.layer.11.attention.output.LayerNorm.weight": (768,),
        "blip.text_encoder.encoder.layer.11.crossattention.self.key.weight": (768, 1024),
        "blip.text_encoder.encoder.layer.11.crossattention.self.value.bias": (768,),
        "blip.text_encoder.encoder.layer.11.intermediate.dense.weight": (3072, 768),
        "blip.text_encoder.encoder.layer.11.output.dense.weight": (768, 3072),
        "mlp.layers.0.weight": (1024, 768),
        "mlp.layers.2.weight": (128, 1024),
        "mlp.layers.4.weight": (64, 128),
        "mlp.layers.6.weight": (16, 64),
        "mlp.layers.7.weight": (1, 16),
    }
    for k, shape in expected.items():
        assert shapes.get(k) == shape, k
    assert len(shapes) == 4 + 24 * 12 + 2 + 4 + 12 * 26 + 10


def test_imagereward_load_state_ignores_extras_and_rejects_gaps(tok, images):
    src = tiny_imagereward(seed=3)
    state = dict(src.state_dict())
    state["blip.text_encoder.embeddings.position_ids"] = torch.arange(40)[None]  # in the real checkpoint
    state["blip.vision_proj.weight"] = torch.zeros(4, 32)
    dst = ImageRewardModel(TINY_IR)
    imagereward.load_state(dst, state)
    torch.testing.assert_close(
        ImageRewardScorer(dst, tok)(images, PROMPTS), ImageRewardScorer(src, tok)(images, PROMPTS)
    )
    del state["mlp.layers.0.weight"]
    with pytest.raises(RuntimeError, match=r"missing \['mlp.layers.0.weight'\]"):
        imagereward.load_state(ImageRewardModel(TINY_IR), state)


def test_imagereward_loads_checkpoint_and_tokenizer_from_env_paths(tmp_path, tok, images, monkeypatch):
    src = tiny_imagereward(seed=5)
    (tmp_path / "ir").mkdir()
    torch.save(
        {**src.state_dict(), "blip.text_encoder.embeddings.position_ids": torch.arange(40)[None]},
        tmp_path / "ir" / "ImageReward.pt",
    )
    tok.save_pretrained(tmp_path / "bert")
    monkeypatch.setenv("SOLRL_IMAGEREWARD_PATH", str(tmp_path / "ir"))
    monkeypatch.setenv("SOLRL_IMAGEREWARD_TOKENIZER", str(tmp_path / "bert"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rewards.check("imagereward")
    fn = imagereward.load_imagereward(TINY_IR)
    # BLIP's two extra special tokens follow the base vocabulary, as in the package.
    assert fn.tokenizer.convert_tokens_to_ids(["[DEC]", "[ENC]"]) == [len(VOCAB), len(VOCAB) + 1]
    assert not any(p.is_meta for p in fn.model.parameters())
    torch.testing.assert_close(fn(images, PROMPTS), ImageRewardScorer(src, tok)(images, PROMPTS), rtol=0, atol=1e-6)


def test_imagereward_med_config_overrides_text_sizes():
    cfg = ImageRewardConfig().with_med_config(
        {"hidden_size": 512, "vocab_size": 100, "encoder_width": 768, "image_size": 999}
    )
    assert (cfg.hidden_size, cfg.vocab_size, cfg.vision_width, cfg.image_size) == (512, 100, 1024, 224)


# --- registry: columns, weighted sum, caching -------------------------------------------------------------
def test_score_all_keeps_each_reward_in_its_own_column_and_weighted_sum_combines_them(clip, tok, monkeypatch):
    from solrl.shapes.prompts import train_prompts
    from solrl.shapes.render import render

    calls = {"clipscore": 0, "pickscore": 0}

    def loader(name, scale):
        def build():
            calls[name] += 1
            return scorer(clip, tok, scale, batch=2)

        return build

    monkeypatch.setitem(clip_based.LOADERS, "clipscore", loader("clipscore", "clipscore"))
    monkeypatch.setitem(clip_based.LOADERS, "pickscore", loader("pickscore", "pickscore"))
    prompts = list(train_prompts()[:4])
    imgs = render(prompts)
    names = ["shapes", "clipscore", "pickscore"]
    cols = rewards.score_all(names, imgs, prompts)
    assert list(cols) == names
    for n in names:
        assert cols[n].shape == (4,) and cols[n].dtype == torch.float64 and cols[n].device.type == "cpu"
        torch.testing.assert_close(cols[n], rewards.get_reward(n)(imgs, prompts).double())
    torch.testing.assert_close(cols["clipscore"] * 100, cols["pickscore"] * 26, rtol=0, atol=1e-9)
    w = {"shapes": 1.0, "clipscore": 0.5, "pickscore": 2.0}
    total = rewards.weighted_sum(cols, w)
    torch.testing.assert_close(total, cols["shapes"] + 0.5 * cols["clipscore"] + 2.0 * cols["pickscore"])
    rewards.score_all(names, imgs, prompts)
    assert calls == {"clipscore": 1, "pickscore": 1}  # built once per process, then cached


def test_unknown_reward_and_registry_names():
    assert rewards.KNOWN == ("shapes", "shapes_strict", "clipscore", "pickscore", "hpsv2", "imagereward")
    with pytest.raises(ValueError, match="unknown reward"):
        rewards.get_reward("aesthetic")
    with pytest.raises(ValueError, match="unknown reward"):
        rewards.check("aesthetic")
    rewards.check("shapes")


# --- errors ----------------------------------------------------------------------------------------------
@pytest.fixture
def no_weights(tmp_path, monkeypatch):
    """Empty HF cache, empty home and cwd, downloads off."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HPS_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("name", LEARNED)
def test_missing_package_names_the_extra(name, monkeypatch):
    absent = ("solrl_absent_third_party_module",)
    if name == "imagereward":
        monkeypatch.setattr(imagereward, "REQUIRES", absent)
    else:
        monkeypatch.setitem(clip_based.REQUIRES, name, absent)
    for call in (rewards.get_reward, rewards.check):
        with pytest.raises(RewardUnavailable) as e:
            call(name)
        msg = str(e.value)
        assert (
            e.value.kind == "package" and EXTRA in msg and "solrl_absent_third_party_module" in msg and "\n" not in msg
        )


@pytest.mark.parametrize("name", LEARNED)
def test_missing_weights_names_the_paths_searched(name, no_weights, monkeypatch):
    monkeypatch.setitem(clip_based.REQUIRES, "hpsv2", ("torch",))  # open_clip may be absent here: only weights matter
    for call in (rewards.get_reward, rewards.check):
        with pytest.raises(RewardUnavailable) as e:
            call(name)
        msg = str(e.value)
        assert e.value.kind == "weights" and "\n" not in msg, msg
        assert str(no_weights / "hf" / "hub") in msg and "HF_HUB_OFFLINE=1" in msg, msg
        assert f"SOLRL_{name.upper()}_PATH (unset)" in msg, msg
    if name == "hpsv2":
        assert str(no_weights / "home" / ".cache" / "hpsv2" / "HPS_v2.1_compressed.pt") in msg
        assert str(no_weights / "reward_ckpts" / "HPS_v2.1_compressed.pt") in msg
    if name == "imagereward":
        assert str(no_weights / "home" / ".cache" / "ImageReward" / "ImageReward.pt") in msg


@pytest.mark.parametrize(
    "var", ["SOLRL_CLIPSCORE_PATH", "SOLRL_PICKSCORE_PATH", "SOLRL_HPSV2_PATH", "SOLRL_IMAGEREWARD_PATH"]
)
def test_env_path_without_weights_is_named(var, no_weights, monkeypatch):
    monkeypatch.setitem(clip_based.REQUIRES, "hpsv2", ("torch",))
    empty = no_weights / "empty"
    empty.mkdir()
    monkeypatch.setenv(var, str(empty))
    name = var.removeprefix("SOLRL_").removesuffix("_PATH").lower()
    with pytest.raises(RewardUnavailable, match=re.escape(f"{var}={empty}")):
        rewards.get_reward(name)


def test_missing_reward_fails_before_any_scoring(no_weights):
    # Malformed images would make `shapes` raise a different error if it ran first.
    with pytest.raises(RewardUnavailable):
        rewards.score_all(["shapes", "clipscore"], torch.zeros(2, 1, 4, 4), ["a", "b"])


# --- loading from disk (no downloads) -----------------------------------------------------------------
def _save_clip(folder: Path, clip, tok, with_tokenizer=True, crop=32):
    clip.save_pretrained(folder)
    if with_tokenizer:
        tok.save_pretrained(folder)
        (folder / "preprocessor_config.json").write_text(
            json.dumps(
                {
                    "crop_size": {"height": crop, "width": crop},
                    "size": {"shortest_edge": crop},
                    "image_mean": list(CLIP_MEAN),
                    "image_std": list(CLIP_STD),
                }
            )
        )


def test_clipscore_loads_from_env_folder(tmp_path, clip, tok, images, monkeypatch):
    _save_clip(tmp_path / "clip", clip, tok)
    monkeypatch.setenv("SOLRL_CLIPSCORE_PATH", str(tmp_path / "clip"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    fn = rewards.get_reward("clipscore")
    assert isinstance(fn, ClipScorer) and fn.image_size == 32 and fn.scale == "clipscore" and not fn.quantize
    assert rewards.get_reward("clipscore") is fn
    torch.testing.assert_close(fn(images, PROMPTS), scorer(clip, tok, "clipscore")(images, PROMPTS), rtol=0, atol=1e-6)


def test_pickscore_loads_model_and_processor_from_the_hf_cache(tmp_path, clip, tok, images, monkeypatch):
    hub = tmp_path / "hf" / "hub"
    for repo, with_tok in ((clip_based.PICKSCORE_REPO, False), (clip_based.PICKSCORE_PROCESSOR_REPO, True)):
        root = hub / f"models--{repo.replace('/', '--')}"
        snap = root / "snapshots" / "0123abcd"
        snap.mkdir(parents=True)
        (root / "refs").mkdir()
        (root / "refs" / "main").write_text("0123abcd")
        if with_tok:
            tok.save_pretrained(snap)
            (snap / "preprocessor_config.json").write_text(
                json.dumps({"crop_size": 32, "image_mean": list(CLIP_MEAN), "image_std": list(CLIP_STD)})
            )
        else:
            clip.save_pretrained(snap)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rewards.check("pickscore")
    fn = rewards.get_reward("pickscore")
    assert fn.scale == "pickscore" and fn.quantize and fn.image_size == 32
    expected = clip.logit_scale.exp().double() * hand_cosine(clip, tok, images, PROMPTS, quantize=True) / 26
    torch.testing.assert_close(fn(images, PROMPTS), expected.detach(), rtol=0, atol=1e-6)


# --- real weights (skipped when absent) -----------------------------------------------------------------
@pytest.mark.rewards_real
@pytest.mark.parametrize("name", LEARNED)
def test_real_weights(name, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # never download in tests
    try:
        rewards.check(name)
    except RewardUnavailable as e:
        pytest.skip(
            f"{e} -- to run: put the weights in the Hugging Face cache or set the SOLRL_*_PATH variable "
            f"(solrl/rewards/{'imagereward' if name == 'imagereward' else 'clip_based'}.py), then "
            "pytest tests/test_rewards.py -m rewards_real"
        )
    fn = rewards.get_reward(name)
    g = torch.Generator().manual_seed(0)
    red = torch.zeros(1, 3, 64, 64)
    red[:, 0] = 1.0
    imgs = torch.cat([red, torch.rand(1, 3, 64, 64, generator=g) * 2 - 1])
    prompts = ["a red square", "a photo of a cat"]
    s = fn(imgs, prompts)
    assert s.shape == (2,) and s.dtype == torch.float64 and torch.isfinite(s).all()
    lo, hi = {"clipscore": (0.0, 0.5), "pickscore": (0.0, 1.2), "hpsv2": (-1.0, 1.0), "imagereward": (-4.0, 4.0)}[name]
    assert bool(((s > lo) & (s < hi)).all()), s
    fn.batch = 1
    torch.testing.assert_close(fn(imgs, prompts), s, rtol=0, atol=1e-4)
