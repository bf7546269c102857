"""ImageReward (THUDM, ``ImageReward-v1.0``): raw score, batched, in torch.

The model is BLIP: a ViT-L/16 image encoder, a BERT-base text encoder whose layers cross-attend to
the image tokens, and an MLP on the text [CLS] state; score = (MLP(cls) - mean) / std with the
model's own constants, i.e. exactly what ``ImageReward.load("ImageReward-v1.0").score(prompt, image)``
returns. The network is rebuilt here, with the module names of the checkpoint, because the
``image-reward`` package (1.5) cannot be imported with transformers >= 5 (it imports helpers that
transformers removed) and pins timm 0.6.13 / fairscale; the checkpoint ``ImageReward.pt`` is loaded
unchanged. Text goes through the ``bert-base-uncased`` tokenizer (padded to 35 tokens, as the
package does); images through the CLIP transform in torch (`_common.prepare_images`, 224 px,
8-bit levels as through PIL).

Where the files are looked for, in order:

- ``SOLRL_IMAGEREWARD_PATH``: ``ImageReward.pt`` or a folder holding it (and, optionally,
  ``med_config.json``); then ``~/.cache/ImageReward`` (the package's download folder); then the HF
  cache of ``THUDM/ImageReward``. Without ``HF_HUB_OFFLINE=1`` a miss falls back to a download;
- tokenizer: ``SOLRL_IMAGEREWARD_TOKENIZER`` (a folder), then the HF cache of
  ``google-bert/bert-base-uncased`` or ``bert-base-uncased``.

Built once per process on ``SOLRL_REWARD_DEVICE`` (default cuda if available, else cpu), float32,
``SOLRL_REWARD_BATCH`` images per forward pass.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._common import (
    CLIP_MEAN,
    CLIP_STD,
    check_prompts,
    env_path,
    hf_cache_dir,
    hf_offline,
    hf_snapshot,
    load_checkpoint,
    missing_weights,
    prepare_images,
    require,
    reward_batch,
    reward_device,
)

REPO = "THUDM/ImageReward"
CKPT = "ImageReward.pt"
MED_CONFIG = "med_config.json"
TOKENIZER_REPOS = ("google-bert/bert-base-uncased", "bert-base-uncased")
TOKENIZER_FILES = (("tokenizer.json", "vocab.txt"),)
REQUIRES = ("transformers",)
HINT = (
    f"set SOLRL_IMAGEREWARD_PATH to {CKPT} of {REPO} (and SOLRL_IMAGEREWARD_TOKENIZER to a bert-base-uncased "
    "tokenizer folder) or fill the Hugging Face cache"
)


@dataclass(frozen=True)
class ImageRewardConfig:
    """Sizes of ImageReward-v1.0 (BLIP ViT-L/16 + BERT-base with cross-attention); tests shrink them."""

    image_size: int = 224
    patch_size: int = 16
    vision_width: int = 1024
    vision_layers: int = 24
    vision_heads: int = 16
    vision_mlp_ratio: float = 4.0
    vision_eps: float = 1e-6
    vocab_size: int = 30524
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    layer_norm_eps: float = 1e-12
    mlp_widths: tuple[int, ...] = (1024, 128, 64, 16)
    max_length: int = 35
    score_mean: float = 0.16717362830052426
    score_std: float = 1.0333394966054072

    def with_med_config(self, med: dict) -> ImageRewardConfig:
        """Override the text-encoder sizes from a BLIP ``med_config.json``."""
        names = {f.name for f in fields(self)}
        return replace(self, **{k: med[k] for k in names if k in med and k not in ("image_size", "max_length")})


# --- image encoder (ViT) ------------------------------------------------------------------------------
class _PatchEmbed(nn.Module):
    def __init__(self, c: ImageRewardConfig):
        super().__init__()
        self.proj = nn.Conv2d(3, c.vision_width, kernel_size=c.patch_size, stride=c.patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class _ViTAttention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(b, n, d))


class _ViTMlp(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class _ViTBlock(nn.Module):
    def __init__(self, c: ImageRewardConfig):
        super().__init__()
        w = c.vision_width
        self.norm1 = nn.LayerNorm(w, eps=c.vision_eps)
        self.attn = _ViTAttention(w, c.vision_heads)
        self.norm2 = nn.LayerNorm(w, eps=c.vision_eps)
        self.mlp = _ViTMlp(w, int(w * c.vision_mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class _VisionEncoder(nn.Module):
    def __init__(self, c: ImageRewardConfig):
        super().__init__()
        n = (c.image_size // c.patch_size) ** 2
        self.patch_embed = _PatchEmbed(c)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.vision_width))
        self.pos_embed = nn.Parameter(torch.zeros(1, n + 1, c.vision_width))
        self.blocks = nn.ModuleList(_ViTBlock(c) for _ in range(c.vision_layers))
        self.norm = nn.LayerNorm(c.vision_width, eps=c.vision_eps)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(pixels)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + self.pos_embed[:, : x.shape[1]]
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)


# --- text encoder (BERT with cross-attention) -----------------------------------------------------------
class _Embeddings(nn.Module):
    def __init__(self, c: ImageRewardConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(c.vocab_size, c.hidden_size)
        self.position_embeddings = nn.Embedding(c.max_position_embeddings, c.hidden_size)
        self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(ids.shape[1], device=ids.device)
        return self.LayerNorm(self.word_embeddings(ids) + self.position_embeddings(pos)[None])


class _Heads(nn.Module):
    """Query/key/value projections (the checkpoint's `attention.self`)."""

    def __init__(self, c: ImageRewardConfig, kv_width: int):
        super().__init__()
        self.heads = c.num_attention_heads
        self.query = nn.Linear(c.hidden_size, c.hidden_size)
        self.key = nn.Linear(kv_width, c.hidden_size)
        self.value = nn.Linear(kv_width, c.hidden_size)

    def forward(self, x: torch.Tensor, ctx: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        b, n, d = x.shape
        h = self.heads

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, t.shape[1], h, d // h).transpose(1, 2)

        q, k, v = split(self.query(x)), split(self.key(ctx)), split(self.value(ctx))
        att = (q @ k.transpose(-1, -2)) / math.sqrt(d // h)
        if bias is not None:
            att = att + bias
        return (att.softmax(-1) @ v).transpose(1, 2).reshape(b, n, d)


class _Dense(nn.Module):
    """Linear, residual, LayerNorm (the checkpoint's `*.output`)."""

    def __init__(self, c: ImageRewardConfig, width_in: int):
        super().__init__()
        self.dense = nn.Linear(width_in, c.hidden_size)
        self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class _Attention(nn.Module):
    def __init__(self, c: ImageRewardConfig, kv_width: int):
        super().__init__()
        self.self = _Heads(c, kv_width)
        self.output = _Dense(c, c.hidden_size)

    def forward(self, x: torch.Tensor, ctx: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return self.output(self.self(x, ctx, bias), x)


class _Intermediate(nn.Module):
    def __init__(self, c: ImageRewardConfig):
        super().__init__()
        self.dense = nn.Linear(c.hidden_size, c.intermediate_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))


class _Layer(nn.Module):
    def __init__(self, c: ImageRewardConfig):
        super().__init__()
        self.attention = _Attention(c, c.hidden_size)
        self.crossattention = _Attention(c, c.vision_width)
        self.intermediate = _Intermediate(c)
        self.output = _Dense(c, c.intermediate_size)

    def forward(self, x: torch.Tensor, pad_bias: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        x = self.attention(x, x, pad_bias)
        x = self.crossattention(x, image, None)  # every image token is attended to
        return self.output(self.intermediate(x), x)


class _Encoder(nn.Module):
    def __init__(self, c: ImageRewardConfig):
        super().__init__()
        self.layer = nn.ModuleList(_Layer(c) for _ in range(c.num_hidden_layers))


class _TextEncoder(nn.Module):
    def __init__(self, c: ImageRewardConfig):
        super().__init__()
        self.embeddings = _Embeddings(c)
        self.encoder = _Encoder(c)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        # BERT's additive padding mask: 0 for tokens, -10000 for padding.
        pad_bias = (1.0 - mask[:, None, None, :].to(image.dtype)) * -10000.0
        x = self.embeddings(ids)
        for layer in self.encoder.layer:
            x = layer(x, pad_bias, image)
        return x


class _Blip(nn.Module):
    def __init__(self, c: ImageRewardConfig):
        super().__init__()
        self.visual_encoder = _VisionEncoder(c)
        self.text_encoder = _TextEncoder(c)


class ImageRewardModel(nn.Module):
    """The ImageReward network; `forward` -> raw score [B] (float32)."""

    def __init__(self, config: ImageRewardConfig = ImageRewardConfig()):
        super().__init__()
        self.config = config
        self.blip = _Blip(config)
        layers: list[nn.Module] = []
        width = config.hidden_size
        for i, w in enumerate(config.mlp_widths):
            layers.append(nn.Linear(width, w))
            if i < len(config.mlp_widths) - 1:
                layers.append(nn.Identity())  # dropout slot of the checkpoint's Sequential
            width = w
        layers.append(nn.Linear(width, 1))
        self.mlp = nn.Module()
        self.mlp.layers = nn.Sequential(*layers)

    def forward(self, pixels: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        image = self.blip.visual_encoder(pixels)
        text = self.blip.text_encoder(input_ids, attention_mask, image)
        raw = self.mlp.layers(text[:, 0].float()).squeeze(-1)
        return (raw - self.config.score_mean) / self.config.score_std


class ImageRewardScorer:
    """Batched ImageReward over a built model and a (BERT) transformers tokenizer; -> float64 [B] on cpu."""

    def __init__(self, model: ImageRewardModel, tokenizer: Any, *, batch: int | None = None, quantize: bool = True):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch = batch or reward_batch()
        self.quantize = quantize

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def pixels(self, images: torch.Tensor) -> torch.Tensor:
        return prepare_images(
            images, self.model.config.image_size, CLIP_MEAN, CLIP_STD, quantize=self.quantize, device=self.device
        )

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        prompts = check_prompts(images, prompts)
        out = []
        for lo in range(0, images.shape[0], self.batch):
            hi = lo + self.batch
            tok = self.tokenizer(
                prompts[lo:hi],
                padding="max_length",
                truncation=True,
                max_length=self.model.config.max_length,
                return_tensors="pt",
            )
            out.append(
                self.model(
                    self.pixels(images[lo:hi]), tok["input_ids"].to(self.device), tok["attention_mask"].to(self.device)
                ).double()
            )
        if not out:
            return torch.zeros(0, dtype=torch.float64)
        return torch.cat(out).cpu()


# --- loading ------------------------------------------------------------------------------------------------
def locate() -> tuple[Path | None, Path | str, list[str]]:
    """(checkpoint on disk, or None when it may be downloaded; tokenizer folder, or the repo id to
    download it from; places searched). Raises `RewardUnavailable` when offline and missing."""
    searched: list[str] = []
    ckpt: Path | None = None
    value = env_path("SOLRL_IMAGEREWARD_PATH")
    if value is not None:
        p = Path(value).expanduser()
        p = p / CKPT if p.is_dir() else p
        if not p.is_file():
            raise missing_weights("imagereward", [f"SOLRL_IMAGEREWARD_PATH={value} (no {CKPT} there)"], HINT)
        ckpt = p
    else:
        searched.append("SOLRL_IMAGEREWARD_PATH (unset)")
        pkg = Path("~/.cache/ImageReward").expanduser() / CKPT
        snap = hf_snapshot(REPO, need=[(CKPT,)])
        if pkg.is_file():
            ckpt = pkg
        elif snap is not None:
            ckpt = snap / CKPT
        else:
            searched += [str(pkg), f"the Hugging Face cache {hf_cache_dir()} for {REPO}/{CKPT}"]
            if hf_offline():
                raise missing_weights("imagereward", searched, HINT)

    tvalue = env_path("SOLRL_IMAGEREWARD_TOKENIZER")
    if tvalue is not None:
        tok = Path(tvalue).expanduser()
        if not (tok.is_dir() and any((tok / f).is_file() for f in TOKENIZER_FILES[0])):
            raise missing_weights(
                "imagereward", [f"SOLRL_IMAGEREWARD_TOKENIZER={tvalue} (no tokenizer.json or vocab.txt there)"], HINT
            )
        return ckpt, tok, searched
    searched.append("SOLRL_IMAGEREWARD_TOKENIZER (unset)")
    for repo in TOKENIZER_REPOS:
        snap = hf_snapshot(repo, need=TOKENIZER_FILES)
        if snap is not None:
            return ckpt, snap, searched
    searched.append(f"the Hugging Face cache {hf_cache_dir()} for {' or '.join(TOKENIZER_REPOS)}")
    if hf_offline():
        raise missing_weights("imagereward", searched, HINT)
    return ckpt, TOKENIZER_REPOS[0], searched


def check(name: str = "imagereward") -> None:
    require("imagereward", REQUIRES)
    locate()


def build(name: str = "imagereward") -> ImageRewardScorer:
    """The scorer (the registry's entry point)."""
    return load_imagereward()


def build_tokenizer(source: Path | str) -> Any:
    """The BLIP tokenizer: bert-base-uncased plus BLIP's two special tokens ([DEC] = bos, [ENC]).

    `source` is a local folder, or a repo id that is downloaded into the Hugging Face cache."""
    from transformers import AutoTokenizer

    if isinstance(source, Path):
        tok = AutoTokenizer.from_pretrained(str(source), local_files_only=True)
    else:
        tok = AutoTokenizer.from_pretrained(source, cache_dir=str(hf_cache_dir()))
    tok.add_special_tokens({"bos_token": "[DEC]"})
    tok.add_tokens(["[ENC]"], special_tokens=True)
    return tok


def load_state(
    model: ImageRewardModel, state: dict[str, torch.Tensor], source: str = "state dict", assign: bool = False
) -> None:
    """Load ImageReward weights; every tensor of the network must be there (extra keys are ignored).
    `assign` adopts the checkpoint's tensors (for a model built on the meta device)."""
    missing, _unexpected = model.load_state_dict(state, strict=False, assign=assign)
    if missing:
        raise RuntimeError(
            f"{source} does not fit the ImageReward network: missing {missing[:8]}{' ...' if len(missing) > 8 else ''}"
        )


def load_imagereward(config: ImageRewardConfig | None = None) -> ImageRewardScorer:
    """Locate, build and load ImageReward-v1.0 (`config` other than the default only in tests)."""
    require("imagereward", REQUIRES)
    ckpt, tok_src, searched = locate()
    try:  # only downloads when downloads are allowed and nothing was on disk
        if ckpt is None:
            from huggingface_hub import hf_hub_download

            ckpt = Path(hf_hub_download(REPO, CKPT, cache_dir=str(hf_cache_dir())))
        tokenizer = build_tokenizer(tok_src)
    except Exception as e:
        if isinstance(tok_src, Path) and ckpt is not None:
            raise
        raise missing_weights("imagereward", searched, HINT, e) from e
    config = config or ImageRewardConfig()
    med = ckpt.parent / MED_CONFIG
    if med.is_file():
        config = config.with_med_config(json.loads(med.read_text()))
    with torch.device("meta"):  # no random init of ~470M parameters: the checkpoint provides them all
        model = ImageRewardModel(config)
    state = load_checkpoint(ckpt)
    load_state(model, state.get("state_dict", state), str(ckpt), assign=True)
    return ImageRewardScorer(model.float().to(reward_device()).eval(), tokenizer)
