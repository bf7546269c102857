"""The four modes of the paper as data: how each one chooses its training samples.

| mode | explore (stage 1) | selection | training samples |
|---|---|---|---|
| sol_rl | N seeds, low precision, explore.steps | K/2 top + K/2 bottom by proxy reward | the selected seeds in high precision, rollout.steps |
| diffusionnft | none | the first K seeds | those K seeds sampled in high precision |
| naive_scaling | N seeds, high precision, rollout.steps | K/2 top + K/2 bottom | the explored samples themselves |
| naive_quant | N seeds, low precision, rollout.steps | K/2 top + K/2 bottom | the explored (quantised) samples themselves |

Everything that depends on the mode reads these fields (solrl/plan.py turns them into the
stages of an iteration); nothing tests `run.mode` by its name. Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Mode:
    name: str
    explores: bool  # stage 1 runs: N candidates per prompt scored by a reward
    explore_precision: Literal["low", "high"] | None  # what explore.precision must be (None: no explore)
    explore_steps: Literal["explore", "rollout"]  # a cheap preview (explore.steps) or full samples (rollout.steps)
    selection: Literal["extremes", "first_k"]  # K/2 best + K/2 worst explored seeds, or the first K seeds
    trains_on: Literal["regenerated", "explored"]  # selected seeds re-sampled in high precision, or the explore samples

    @property
    def keeps_explore_samples(self) -> bool:
        """Explore rows carry each candidate's x0 when the update trains on them."""
        return self.trains_on == "explored"

    @property
    def has_proxy(self) -> bool:
        """A low-precision proxy ranks seeds that high precision then regenerates (fidelity is measurable)."""
        return self.explores and self.explore_precision == "low" and self.trains_on == "regenerated"


MODES: dict[str, Mode] = {
    m.name: m
    for m in (
        Mode(
            "sol_rl",
            explores=True,
            explore_precision="low",
            explore_steps="explore",
            selection="extremes",
            trains_on="regenerated",
        ),
        Mode(
            "diffusionnft",
            explores=False,
            explore_precision=None,
            explore_steps="explore",
            selection="first_k",
            trains_on="regenerated",
        ),
        Mode(
            "naive_scaling",
            explores=True,
            explore_precision="high",
            explore_steps="rollout",
            selection="extremes",
            trains_on="explored",
        ),
        Mode(
            "naive_quant",
            explores=True,
            explore_precision="low",
            explore_steps="rollout",
            selection="extremes",
            trains_on="explored",
        ),
    )
}
