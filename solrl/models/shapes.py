"""The `shapes` family: the embedded tiny FluxTransformer2DModel in pixel space (32x32 RGB,
4x4 patches packed into 64 tokens of 48 channels), on the CPU.

Prompts: the shapes grammar's training split (or `prompts.file`, prompts of the grammar), and
its compositional held-out split (or `prompts.eval_file`). The `held_out` evaluation set takes
one prompt per held-out pairing; a training pool prefers two-object prompts whose base reward
is below the median (measured once per shipped model: weights/prompt_stats.json).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..config import Resolved, RunConfig
from ..errors import MissingInput
from ..shapes import model as M
from ..shapes.prompts import eval_prompts, pairing, parse, train_prompts
from .base import Policy, read_prompt_file

STATS_FILE = "prompt_stats.json"


def _grammar(prompts: tuple[str, ...], what: str) -> tuple[str, ...]:
    for p in prompts:
        try:
            parse(p)
        except ValueError as e:
            raise MissingInput(f"{what} holds a prompt outside the shapes grammar ({e})") from None
    return prompts


class ShapesPolicy(Policy):
    family = "shapes"
    pipeline_class = "FluxPipeline"  # same transformer class as FLUX.1: its LoRA exports the same way
    latent_shape = (M.TOKENS_PER_SIDE**2, M.CHANNELS * M.PATCH * M.PATCH)
    lora_targets = ("to_q", "to_k", "to_v", "to_out.0")
    quant_skip = ("x_embedder", "context_embedder", "time_text_embed", "norm_out", "proj_out")
    quant_min_dim = 0
    sigma_kind = "linear"

    @classmethod
    def weights_dir(cls, cfg: RunConfig) -> Path:
        return Path(cfg.model.weights) if cfg.model.weights else M.WEIGHTS_DIR

    @classmethod
    def check(cls, cfg: RunConfig) -> None:
        path = cls.weights_dir(cfg) / "shapes.safetensors"
        if not path.exists():
            raise MissingInput(
                f"the shapes model weights are missing: looked for {path}; rebuild them with `sol-rl pretrain-shapes` or reinstall the package"
            )
        cls.prompt_sets(cfg)

    @classmethod
    def prompt_sets(cls, cfg: RunConfig) -> tuple[tuple[str, ...], tuple[str, ...]]:
        train = (
            _grammar(read_prompt_file(cfg.prompts.file), f"prompts.file {cfg.prompts.file}")
            if cfg.prompts.file
            else train_prompts()
        )
        held = (
            _grammar(
                read_prompt_file(cfg.prompts.eval_file, "prompts.eval_file"),
                f"prompts.eval_file {cfg.prompts.eval_file}",
            )
            if cfg.prompts.eval_file
            else eval_prompts()
        )
        return train, held

    @classmethod
    def held_out_eval_prompts(cls, cfg: RunConfig, held: tuple[str, ...]) -> tuple[str, ...]:
        """One prompt per held-out pairing (every held-out pair of objects and held-out colour–
        shape combination is represented), the first of each in the fixed order."""
        first: dict[str, str] = {}
        for p in held:
            first.setdefault(pairing(parse(p)), p)
        chosen = tuple(first.values())
        return chosen[: cfg.eval.held_out_prompts] if cfg.eval.held_out_prompts else chosen

    @classmethod
    def pool_candidates(cls, cfg: RunConfig, train: tuple[str, ...]) -> tuple[str, ...]:
        """Two-object prompts with headroom: base reward below the median of the two-object
        training prompts (all two-object prompts when the model ships no prompt_stats.json)."""
        two = tuple(p for p in train if parse(p).n_objects == 2)
        stats_path = cls.weights_dir(cfg) / STATS_FILE
        if not stats_path.exists():
            return two
        base = json.loads(stats_path.read_text())["mean_reward"]
        known = [p for p in two if p in base]
        if not known:
            return two
        median = float(torch.tensor([base[p] for p in known]).median())
        return tuple(p for p in known if base[p] < median)

    def __init__(self, cfg: RunConfig, resolved: Resolved):
        self.setup(cfg, resolved)
        self.model_config, transformer, self.text_encoder = M.load(self.weights_dir(cfg))
        transformer.to(self.device, self.dtype)  # the shipped weights are bf16: exact in either dtype
        self.attach_lora(transformer, cfg.model.lora_rank, cfg.model.lora_alpha, cfg.run.seed)

    @torch.no_grad()
    def encode(self, prompts: list[str]):
        return M.encode(self.text_encoder, list(prompts))

    def transformer_velocity(self, transformer, x, t, cond):
        enc, pooled = cond
        d = self.dtype
        return M.velocity(transformer, x.to(d), t.to(d), enc.to(d), pooled.to(d)).float()

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        return M.unpack(x0.float()).clamp(-1, 1)


def write_prompt_stats(weights_dir: Path, seeds: int = 8, steps: int = 10, log=print) -> Path:
    """Every training prompt's mean base reward (float32, `steps` Euler steps, `seeds` seeds),
    written next to the weights as prompt_stats.json: what a training pool's headroom rule reads
    (ShapesPolicy). The seeds are keyed apart from the evaluation seeds, so choosing
    prompts by these rewards does not bias the paired evaluation (no regression to the mean on
    the very samples the baseline is measured on)."""
    import hashlib
    import json
    import time

    from ..rewards import get_reward
    from ..seeds import stream_seed
    from . import load_policy  # the package's constructor (solrl/models/__init__.py)

    cfg = RunConfig.model_validate({"model": {"weights": str(weights_dir), "dtype": "float32", "device": "cpu"}})
    policy = load_policy(cfg)
    model, _ = policy.sampler_copy(None)
    reward = get_reward("shapes")
    prompts = policy.train_prompts()
    out = {}
    t0 = time.time()
    for lo in range(0, len(prompts), 12):
        chunk = prompts[lo : lo + 12]
        texts = [p for p in chunk for _ in range(seeds)]
        seed_list = [
            stream_seed(
                0, j, int.from_bytes(hashlib.blake2b(p.encode(), digest_size=7).digest(), "little"), name="prompt-stats"
            )
            for p in chunk
            for j in range(seeds)
        ]
        x0 = policy.sample(model, texts, seed_list, steps)
        r = reward(policy.decode(x0), texts).view(len(chunk), seeds).mean(1)
        out.update({p: round(float(v), 6) for p, v in zip(chunk, r)})
        if lo % 120 == 0:
            log(f"prompt stats {lo + len(chunk)}/{len(prompts)}  {time.time() - t0:6.1f}s")
    path = Path(weights_dir) / "prompt_stats.json"
    path.write_text(
        json.dumps({"seeds": seeds, "steps": steps, "dtype": "float32", "mean_reward": out}, indent=1, sort_keys=True)
        + "\n"
    )
    return path
