"""CLIP-family rewards: `clipscore`, `pickscore` and `hpsv2`.

Each is a cosine similarity between the image and prompt embeddings of a CLIP model, scaled as
the official Sol-RL / DiffusionNFT code scales it:

- ``clipscore``: ``openai/clip-vit-large-patch14`` (transformers), score = exp(logit_scale) * cos / 100
  (the CLIP logit / 100);
- ``pickscore``: ``yuvalkirstain/PickScore_v1`` (a CLIP ViT-H/14, transformers) with the tokenizer and
  image settings of ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``, score = exp(logit_scale) * cos / 26;
- ``hpsv2``: open_clip ``ViT-H-14`` with the HPS v2.1 checkpoint (``HPS_v2.1_compressed.pt`` of
  ``xswu/HPSv2``), score = cos (no logit scale).

Images are turned into model inputs in torch (see `_common.prepare_images`): [-1, 1] -> [0, 1],
bicubic antialiased resize of the shorter side, centre crop, the model's mean/std. pickscore and
hpsv2 first round pixels to 8-bit levels, as the official code does by going through PIL.

Where the weights are looked for, in order (the first hit wins; nothing is downloaded when
``HF_HUB_OFFLINE=1``, otherwise a miss falls back to a download into the Hugging Face cache):

- clipscore: ``SOLRL_CLIPSCORE_PATH`` (a local transformers CLIP folder with tokenizer and
  ``preprocessor_config.json``, or another hub repo id), then the HF cache of
  ``openai/clip-vit-large-patch14``;
- pickscore: ``SOLRL_PICKSCORE_PATH`` (folder or repo id) then the HF cache of
  ``yuvalkirstain/PickScore_v1``; the tokenizer from ``SOLRL_PICKSCORE_PROCESSOR_PATH``, else the
  model folder if it has one, else the HF cache of ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``;
- hpsv2: ``SOLRL_HPSV2_PATH`` (the ``.pt`` file or a folder holding ``HPS_v2.1_compressed.pt``), then
  ``$HPS_ROOT`` or ``~/.cache/hpsv2`` (the hpsv2 package's folder), then ``./reward_ckpts`` (the
  official code's folder), then the HF cache of ``xswu/HPSv2``. Needs ``open_clip``
  (``open-clip-torch``); its ViT-H-14 tokenizer ships with that package.

Models are built once per process (`solrl.rewards.get_reward` caches them) on
``SOLRL_REWARD_DEVICE`` (default cuda if available, else cpu), in float32, and score
``SOLRL_REWARD_BATCH`` images per forward pass (default 16).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..settings import settings
from ._common import (
    CLIP_MEAN,
    CLIP_STD,
    check_prompts,
    env_path,
    hf_cache_dir,
    hf_offline,
    hf_snapshot,
    load_checkpoint,
    looks_like_repo_id,
    missing_weights,
    prepare_images,
    require,
    reward_batch,
    reward_device,
    reward_dtype,
)

# score = exp(logit_scale) * cos / divisor, or the bare cosine for divisor None.
SCALE_DIVISOR: dict[str, float | None] = {"clipscore": 100.0, "pickscore": 26.0, "cosine": None}

CLIPSCORE_REPO = "openai/clip-vit-large-patch14"
PICKSCORE_REPO = "yuvalkirstain/PickScore_v1"
PICKSCORE_PROCESSOR_REPO = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
HPSV2_REPO = "xswu/HPSv2"
HPSV2_FILE = "HPS_v2.1_compressed.pt"
HPSV2_ARCH = "ViT-H-14"

MODEL_FILES = (
    ("config.json",),
    ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json"),
)
TOKENIZER_FILES = (("tokenizer.json", "vocab.json"),)

# Modules each reward imports (third-party boundary; tests point these at absent names).
REQUIRES: dict[str, tuple[str, ...]] = {
    "clipscore": ("transformers",),
    "pickscore": ("transformers",),
    "hpsv2": ("open_clip",),
}


class ClipScorer:
    """Batched CLIP-similarity reward over an already-built model and tokenizer.

    `model` is a transformers ``CLIPModel`` (``get_image_features``/``get_text_features``) or an
    open_clip model (``encode_image``/``encode_text``); both carry ``logit_scale``. `tokenizer` is a
    transformers tokenizer (called with padding/truncation to `max_length`) or an open_clip tokenizer
    (called on the list of prompts, returns token ids). `scale` is a key of `SCALE_DIVISOR`.
    Calling it maps (images [B, 3, H, W] in [-1, 1], prompts) to float64 [B] on the cpu.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        *,
        image_size: int | Sequence[int],
        mean: Sequence[float] = CLIP_MEAN,
        std: Sequence[float] = CLIP_STD,
        scale: str = "clipscore",
        batch: int | None = None,
        max_length: int | None = None,
        quantize: bool = False,
        resize: int | None = None,
    ):
        if scale not in SCALE_DIVISOR:
            raise ValueError(f"unknown scale {scale!r}: choose one of {list(SCALE_DIVISOR)}")
        if hasattr(model, "get_image_features") and hasattr(model, "get_text_features"):
            self.api = "transformers"
        elif hasattr(model, "encode_image") and hasattr(model, "encode_text"):
            self.api = "open_clip"
        else:
            raise TypeError("model must be a transformers CLIPModel or an open_clip CLIP model")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.image_size = image_size
        self.mean, self.std = tuple(mean), tuple(std)
        self.scale = scale
        self.batch = batch or reward_batch()
        if max_length is None and self.api == "transformers":
            max_length = int(model.config.text_config.max_position_embeddings)
        self.max_length = max_length
        self.quantize = quantize
        self.resize = resize

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def pixels(self, images: torch.Tensor) -> torch.Tensor:
        """The model input for `images` ([-1, 1]): resized, cropped and normalized, on the model's device."""
        return prepare_images(
            images, self.image_size, self.mean, self.std, quantize=self.quantize, resize=self.resize, device=self.device
        ).to(next(self.model.parameters()).dtype)

    @staticmethod
    def _pooled(out: Any) -> torch.Tensor:
        # transformers < 5 returns the projected tensor, >= 5 an output whose pooler_output is it.
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    @torch.no_grad()
    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """Unit-norm float64 image embeddings [B, D] (one forward pass, no batching)."""
        pixels = self.pixels(images)
        if self.api == "transformers":
            feats = self._pooled(self.model.get_image_features(pixel_values=pixels))
        else:
            feats = self.model.encode_image(pixels)
        return F.normalize(feats.double(), dim=-1)

    @torch.no_grad()
    def text_features(self, prompts: Sequence[str]) -> torch.Tensor:
        """Unit-norm float64 text embeddings [B, D] (one forward pass, no batching)."""
        if self.api == "transformers":
            tok = self.tokenizer(
                list(prompts), padding="max_length", truncation=True, max_length=self.max_length, return_tensors="pt"
            )
            feats = self._pooled(
                self.model.get_text_features(
                    input_ids=tok["input_ids"].to(self.device), attention_mask=tok["attention_mask"].to(self.device)
                )
            )
        else:
            feats = self.model.encode_text(self.tokenizer(list(prompts)).to(self.device))
        return F.normalize(feats.double(), dim=-1)

    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale.detach().double().exp()

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        prompts = check_prompts(images, prompts)
        divisor = SCALE_DIVISOR[self.scale]
        out = []
        for lo in range(0, images.shape[0], self.batch):
            hi = lo + self.batch
            cos = (self.image_features(images[lo:hi]) * self.text_features(prompts[lo:hi])).sum(-1)
            out.append(cos if divisor is None else self.logit_scale() * cos / divisor)
        if not out:
            return torch.zeros(0, dtype=torch.float64)
        return torch.cat(out).cpu()


# --- locating weights ---------------------------------------------------------------------------------
def _has(folder: Path, need: Sequence[Sequence[str]]) -> bool:
    return all(any((folder / f).is_file() for f in group) for group in need)


def _describe(need: Sequence[Sequence[str]]) -> str:
    return " and ".join(" or ".join(g) for g in need)


def locate_hf(
    reward: str, var: str, default_repo: str, need: Sequence[Sequence[str]], hint: str
) -> tuple[Path | str, list[str]]:
    """A local folder (env var, then HF cache) or, when downloads are allowed, the repo id to fetch.

    Raises `RewardUnavailable` naming every place searched when nothing is found offline, or when
    the env var points at something that is neither a usable folder nor a repo id.
    """
    searched: list[str] = []
    repo = default_repo
    value = env_path(var)
    if value is not None:
        p = Path(value).expanduser()
        if p.is_dir():
            if _has(p, need):
                return p, searched
            raise missing_weights(reward, [f"{var}={value} (a folder without {_describe(need)})"], hint)
        if not looks_like_repo_id(value):
            raise missing_weights(reward, [f"{var}={value} (no such folder)"], hint)
        repo = value
        searched.append(f"{var}={value} (a repo id)")
    else:
        searched.append(f"{var} (unset)")
    snap = hf_snapshot(repo, need=need)
    if snap is not None:
        return snap, searched
    searched.append(f"the Hugging Face cache {hf_cache_dir()} for {repo} ({_describe(need)})")
    if hf_offline():
        raise missing_weights(reward, searched, hint)
    return repo, searched


def _image_settings(source: Path | str, vision_size: int) -> dict[str, Any]:
    """image_size (crop), resize (shorter side), mean and std of a processor's preprocessor_config.json
    (CLIP defaults at the model's size when absent)."""
    cfg: dict = {}
    try:
        if isinstance(source, Path):
            f = source / "preprocessor_config.json"
            if f.is_file():
                cfg = json.loads(f.read_text())
        else:
            from huggingface_hub import hf_hub_download

            cfg = json.loads(
                Path(hf_hub_download(source, "preprocessor_config.json", cache_dir=str(hf_cache_dir()))).read_text()
            )
    except Exception:
        cfg = {}

    def side(v: Any, keys: tuple[str, ...]) -> int | None:
        if isinstance(v, dict):
            v = next((v[k] for k in keys if v.get(k)), None)
        return int(v) if v else None

    crop = side(cfg.get("crop_size"), ("height", "shortest_edge")) if cfg.get("do_center_crop", True) else None
    resize = side(cfg.get("size"), ("shortest_edge", "height"))
    size = crop or resize or vision_size
    return {
        "image_size": size,
        "resize": resize if resize and resize != size else None,
        "mean": tuple(cfg.get("image_mean") or CLIP_MEAN),
        "std": tuple(cfg.get("image_std") or CLIP_STD),
    }


def _pretrained(cls: Any, source: Path | str, reward: str, searched: list[str], hint: str) -> Any:
    if isinstance(source, Path):
        return cls.from_pretrained(str(source), local_files_only=True)
    try:  # only reached when downloads are allowed and nothing was on disk
        return cls.from_pretrained(source, cache_dir=str(hf_cache_dir()))
    except Exception as e:
        raise missing_weights(reward, searched, hint, e) from e


# --- builders ------------------------------------------------------------------------------------------
def _hf_clip(
    reward: str, model_src: Path | str, tok_src: Path | str, searched: list[str], hint: str, scale: str, quantize: bool
) -> ClipScorer:
    from transformers import AutoTokenizer, CLIPModel

    model = (
        _pretrained(CLIPModel, model_src, reward, searched, hint)
        .to(reward_device(), reward_dtype(reward_device()))
        .eval()
    )
    tokenizer = _pretrained(AutoTokenizer, tok_src, reward, searched, hint)
    settings = _image_settings(tok_src, int(model.config.vision_config.image_size))
    return ClipScorer(model, tokenizer, scale=scale, quantize=quantize, **settings)


HINTS = {
    "clipscore": f"set SOLRL_CLIPSCORE_PATH to a local copy of {CLIPSCORE_REPO} or fill the Hugging Face cache",
    "pickscore": (
        f"set SOLRL_PICKSCORE_PATH to a local copy of {PICKSCORE_REPO} (and SOLRL_PICKSCORE_PROCESSOR_PATH to one of "
        f"{PICKSCORE_PROCESSOR_REPO}'s tokenizer) or fill the Hugging Face cache"
    ),
    "hpsv2": f"set SOLRL_HPSV2_PATH to {HPSV2_FILE} (from {HPSV2_REPO}) or fill the Hugging Face cache",
}


def locate_clipscore() -> tuple[Path | str, list[str]]:
    return locate_hf(
        "clipscore", "SOLRL_CLIPSCORE_PATH", CLIPSCORE_REPO, MODEL_FILES + TOKENIZER_FILES, HINTS["clipscore"]
    )


def locate_pickscore() -> tuple[Path | str, Path | str, list[str]]:
    """(model source, tokenizer/processor source, places searched)."""
    hint = HINTS["pickscore"]
    model_src, searched = locate_hf("pickscore", "SOLRL_PICKSCORE_PATH", PICKSCORE_REPO, MODEL_FILES, hint)
    if (
        env_path("SOLRL_PICKSCORE_PROCESSOR_PATH") is None
        and isinstance(model_src, Path)
        and _has(model_src, TOKENIZER_FILES)
    ):
        return model_src, model_src, searched
    tok_src, more = locate_hf(
        "pickscore", "SOLRL_PICKSCORE_PROCESSOR_PATH", PICKSCORE_PROCESSOR_REPO, TOKENIZER_FILES, hint
    )
    return model_src, tok_src, searched + more


def load_clipscore() -> ClipScorer:
    require("clipscore", REQUIRES["clipscore"])
    src, searched = locate_clipscore()
    return _hf_clip("clipscore", src, src, searched, HINTS["clipscore"], "clipscore", quantize=False)


def load_pickscore() -> ClipScorer:
    require("pickscore", REQUIRES["pickscore"])
    model_src, tok_src, searched = locate_pickscore()
    return _hf_clip("pickscore", model_src, tok_src, searched, HINTS["pickscore"], "pickscore", quantize=True)


def locate_hpsv2() -> tuple[Path | None, list[str]]:
    """The HPS v2.1 checkpoint on disk, or (None, places searched) when downloads are allowed."""
    hint = HINTS["hpsv2"]
    value = env_path("SOLRL_HPSV2_PATH")
    if value is not None:
        p = Path(value).expanduser()
        if p.is_dir():
            p = p / HPSV2_FILE
        if p.is_file():
            return p, []
        raise missing_weights("hpsv2", [f"SOLRL_HPSV2_PATH={value} (no {HPSV2_FILE} there)"], hint)
    searched = ["SOLRL_HPSV2_PATH (unset)"]
    hps_root = Path(settings().hps_root).expanduser()
    for folder in (hps_root, Path("reward_ckpts").resolve()):
        if (folder / HPSV2_FILE).is_file():
            return folder / HPSV2_FILE, searched
        searched.append(str(folder / HPSV2_FILE))
    snap = hf_snapshot(HPSV2_REPO, need=[(HPSV2_FILE,)])
    if snap is not None:
        return snap / HPSV2_FILE, searched
    searched.append(f"the Hugging Face cache {hf_cache_dir()} for {HPSV2_REPO}/{HPSV2_FILE}")
    if hf_offline():
        raise missing_weights("hpsv2", searched, hint)
    return None, searched


def load_hpsv2() -> ClipScorer:
    require("hpsv2", REQUIRES["hpsv2"])
    hint = HINTS["hpsv2"]
    path, searched = locate_hpsv2()
    if path is None:
        from huggingface_hub import hf_hub_download

        try:
            path = Path(hf_hub_download(HPSV2_REPO, HPSV2_FILE, cache_dir=str(hf_cache_dir())))
        except Exception as e:
            raise missing_weights("hpsv2", searched, hint, e) from e
    import open_clip

    model = open_clip.create_model(HPSV2_ARCH, pretrained=None)
    ckpt = load_checkpoint(path)
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else ckpt
    state = {k.removeprefix("module."): v for k, v in state.items()}
    missing, _unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("attn_mask")]
    if missing:
        raise RuntimeError(
            f"{path} does not fit open_clip {HPSV2_ARCH}: missing {missing[:8]}{' ...' if len(missing) > 8 else ''}"
        )
    model = model.to(reward_device(), reward_dtype(reward_device())).eval()
    size = getattr(model.visual, "image_size", 224)
    mean = getattr(model.visual, "image_mean", None) or CLIP_MEAN
    std = getattr(model.visual, "image_std", None) or CLIP_STD
    return ClipScorer(
        model, open_clip.get_tokenizer(HPSV2_ARCH), image_size=size, mean=mean, std=std, scale="cosine", quantize=True
    )


LOADERS = {"clipscore": load_clipscore, "pickscore": load_pickscore, "hpsv2": load_hpsv2}


def build(reward: str) -> ClipScorer:
    """The scorer of `reward` (the registry's entry point)."""
    return LOADERS[reward]()


def check(reward: str) -> None:
    """Cheap pre-flight: the packages import and the weights are on disk (or may be downloaded)."""
    require(reward, REQUIRES[reward])
    {"clipscore": locate_clipscore, "pickscore": locate_pickscore, "hpsv2": locate_hpsv2}[reward]()
