"""Data-parallel training of the update over N ranks (torch.distributed: gloo on a CPU, nccl on
GPUs); the launch is tasks/ddp.py's.

The 1-rank update (solrl/compute.py `update`) accumulates, per optimizer step, the gradients of
micro-batches c = 0, 1, ... of its part, each loss scaled by 1 / (micro-batches × times). On N
ranks the same micro-batches are formed from the same seeded split; rank r computes those with
c mod N = r, and before the optimizer step the gradients and the loss terms are summed over the
ranks (a SUM all-reduce: the scaling is already the 1-rank one, so nothing is divided by N).
Every rank then clips, steps AdamW, updates the EMA and decays the old policy on identical
gradients, so the replicas stay equal without broadcasting parameters; rank 0 writes them.
The result equals the 1-rank update up to the order of the float sums (the tolerance is stated
and measured in docs/scale-out-gpus.md).

This is what DDP with `no_sync()` over the accumulation and one synchronised backward would
compute; DDP itself is not used because the update calls the transformer through three adapters
(θ, old, none) rather than one `forward`, and because ranks may own different numbers of
micro-batches (DDP would need `join()`): an explicit all-reduce of the flattened LoRA gradients
once per optimizer step is the same communication, bucketed by dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# the loss terms nft.nft_loss reports, in a fixed order (a rank that owns no micro-batch has none)
TERMS = ("loss", "policy_loss", "kl", "loss_pos", "loss_neg", "w_pos", "w_neg")


@dataclass(frozen=True)
class Ranks:
    """This process's place in the update's process group (the default group when `group` is None)."""

    rank: int
    world: int
    group: object | None = None

    def __post_init__(self):
        if not 0 <= self.rank < self.world:
            raise ValueError(f"rank {self.rank} is outside a world of {self.world} ranks")

    def owns(self, micro_batch: int) -> bool:
        """Micro-batch c of an optimizer step belongs to rank c mod world (round robin)."""
        return micro_batch % self.world == self.rank

    def all_reduce(self, params: list[torch.nn.Parameter], sums: dict[str, float]) -> dict[str, float]:
        """Sum the accumulated gradients (in place, one flat buffer per dtype) and the loss terms
        over the ranks; returns the summed terms."""
        import torch.distributed as dist

        extra = set(sums) - set(TERMS)
        if extra:
            raise ValueError(f"loss terms {sorted(extra)} are not reduced across ranks: add them to solrl.ddp.TERMS")
        device = params[0].device
        for p in params:
            if p.grad is None:  # this rank computed nothing through p (or no micro-batch at all)
                p.grad = torch.zeros_like(p)
        for dtype in dict.fromkeys(p.grad.dtype for p in params):
            group = [p for p in params if p.grad.dtype == dtype]
            flat = torch.cat([p.grad.reshape(-1) for p in group])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=self.group)
            offset = 0
            for p in group:
                n = p.grad.numel()
                p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
                offset += n
        terms = torch.tensor([sums.get(k, 0.0) for k in TERMS], dtype=torch.float64, device=device)
        dist.all_reduce(terms, op=dist.ReduceOp.SUM, group=self.group)
        return dict(zip(TERMS, terms.tolist()))


def backend_for(device: torch.device) -> str:
    """nccl between GPUs, gloo between CPU processes."""
    return "nccl" if device.type == "cuda" else "gloo"
