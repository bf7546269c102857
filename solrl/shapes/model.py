"""The embedded tiny model: a diffusers `FluxTransformer2DModel` in pixel space plus a small
learned text encoder. Pixels are packed into 4x4 patches (32x32x3 -> 64 tokens of 48 channels),
exactly like FLUX packs 2x2 latent patches, so the same transformer class, LoRA targets and
NVFP4 module filter apply to it as to FLUX.1.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import MissingInput
from .prompts import MAX_TOKENS, VOCAB, tokenize

PATCH = 4
RES = 32
CHANNELS = 3
TOKENS_PER_SIDE = RES // PATCH
WEIGHTS_DIR = Path(__file__).parent / "weights"


@dataclass(frozen=True)
class ShapesModelConfig:
    hidden: int = 128  # = num_attention_heads * attention_head_dim
    head_dim: int = 32
    num_layers: int = 2  # double-stream blocks
    num_single_layers: int = 4
    text_dim: int = 64  # joint_attention_dim and pooled_projection_dim
    text_heads: int = 4

    @property
    def heads(self) -> int:
        return self.hidden // self.head_dim

    def transformer_kwargs(self) -> dict:
        rope = (self.head_dim // 4, 3 * self.head_dim // 8, 3 * self.head_dim // 8)
        return dict(
            patch_size=1,
            in_channels=PATCH * PATCH * CHANNELS,
            out_channels=PATCH * PATCH * CHANNELS,
            num_layers=self.num_layers,
            num_single_layers=self.num_single_layers,
            attention_head_dim=self.head_dim,
            num_attention_heads=self.heads,
            joint_attention_dim=self.text_dim,
            pooled_projection_dim=self.text_dim,
            guidance_embeds=False,
            axes_dims_rope=rope,
        )


class TextEncoder(nn.Module):
    """Word embedding + learned positions + one pre-LN transformer layer.
    Returns (encoder_hidden_states [B, T, D], pooled_projections [B, D])."""

    def __init__(self, dim: int = 64, heads: int = 4):
        super().__init__()
        self.embed = nn.Embedding(len(VOCAB), dim)
        self.pos = nn.Parameter(torch.zeros(MAX_TOKENS, dim))
        self.layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.0, batch_first=True, norm_first=True)
        self.norm = nn.LayerNorm(dim)

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pad = ids == 0
        h = self.embed(ids) + self.pos[: ids.shape[1]]
        h = self.norm(self.layer(h, src_key_padding_mask=pad))
        keep = (~pad).unsqueeze(-1).to(h.dtype)
        pooled = (h * keep).sum(1) / keep.sum(1).clamp_min(1.0)
        return h, pooled


def build_transformer(cfg: ShapesModelConfig):
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel(**cfg.transformer_kwargs())


def pack(images: torch.Tensor) -> torch.Tensor:
    """[B, 3, 32, 32] -> [B, 64, 48] (row-major 4x4 patches, channel-last within a patch)."""
    b = images.shape[0]
    x = images.view(b, CHANNELS, TOKENS_PER_SIDE, PATCH, TOKENS_PER_SIDE, PATCH)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(b, TOKENS_PER_SIDE**2, CHANNELS * PATCH * PATCH)


def unpack(tokens: torch.Tensor) -> torch.Tensor:
    b = tokens.shape[0]
    x = tokens.view(b, TOKENS_PER_SIDE, TOKENS_PER_SIDE, CHANNELS, PATCH, PATCH)
    return x.permute(0, 3, 1, 4, 2, 5).reshape(b, CHANNELS, RES, RES)


def image_ids() -> torch.Tensor:
    r = torch.arange(TOKENS_PER_SIDE, dtype=torch.float32)
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    return torch.stack([torch.zeros_like(yy), yy, xx], -1).view(-1, 3)


def text_ids() -> torch.Tensor:
    return torch.zeros(MAX_TOKENS, 3)


def encode(text_encoder: TextEncoder, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.tensor(tokenize(prompts), dtype=torch.long)
    return text_encoder(ids)


def velocity(
    transformer, x_tokens: torch.Tensor, t: torch.Tensor, enc: torch.Tensor, pooled: torch.Tensor
) -> torch.Tensor:
    """v = eps - x0 for x_t given as packed tokens; `t` in [0, 1] per sample (FLUX multiplies
    the timestep by 1000 internally, so the adapter passes t itself)."""
    return transformer(
        hidden_states=x_tokens,
        encoder_hidden_states=enc,
        pooled_projections=pooled,
        timestep=t,
        img_ids=image_ids(),
        txt_ids=text_ids(),
        return_dict=False,
    )[0]


def dit_init_(transformer) -> None:
    """DiT-style init: zero the adaLN modulations and the output head so the network starts
    as an identity-ish map and trains stably from scratch."""
    for name, mod in transformer.named_modules():
        if isinstance(mod, nn.Linear) and (
            name.endswith("norm.linear")
            or name.endswith("norm1.linear")
            or name.endswith("norm1_context.linear")
            or name in ("norm_out.linear", "proj_out")
        ):
            nn.init.zeros_(mod.weight)
            if mod.bias is not None:
                nn.init.zeros_(mod.bias)


def save(
    directory: Path,
    cfg: ShapesModelConfig,
    transformer,
    text_encoder,
    meta: dict | None = None,
    dtype: torch.dtype = torch.bfloat16,
) -> None:
    """Write shapes.safetensors (weights stored in `dtype`, bf16 by default: half the size;
    `load` computes in float32 from them) and config.json."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    state = {f"transformer.{k}": v.detach().to(dtype).contiguous() for k, v in transformer.state_dict().items()}
    state.update({f"text_encoder.{k}": v.detach().to(dtype).contiguous() for k, v in text_encoder.state_dict().items()})
    save_file(state, str(directory / "shapes.safetensors"), metadata={"config": json.dumps(asdict(cfg))})
    (directory / "config.json").write_text(json.dumps({"model": asdict(cfg), **(meta or {})}, indent=2) + "\n")


def load(directory: Path | str | None = None, dtype: torch.dtype = torch.float32):
    """Load (cfg, transformer, text_encoder) from a safetensors file (safetensors only)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    directory = Path(directory) if directory else WEIGHTS_DIR
    path = directory / "shapes.safetensors"
    if not path.exists():
        raise MissingInput(
            f"the shapes model weights are missing: looked for {path}; rebuild them with "
            "`sol-rl pretrain-shapes` or reinstall the package"
        )
    with safe_open(str(path), framework="pt") as f:
        cfg = ShapesModelConfig(**json.loads(f.metadata()["config"]))
    state = load_file(str(path))
    transformer = build_transformer(cfg)
    text_encoder = TextEncoder(cfg.text_dim, cfg.text_heads)
    transformer.load_state_dict({k[len("transformer.") :]: v for k, v in state.items() if k.startswith("transformer.")})
    text_encoder.load_state_dict(
        {k[len("text_encoder.") :]: v for k, v in state.items() if k.startswith("text_encoder.")}
    )
    if dtype != torch.float32:
        transformer.to(dtype)
        text_encoder.to(dtype)
    transformer.eval().requires_grad_(False)
    text_encoder.eval().requires_grad_(False)
    return cfg, transformer, text_encoder
