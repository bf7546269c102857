"""One iteration as a plan: which stages run, on which prompts, with which explore settings.

    plan -> explore -> select -> regenerate -> audit -> update -> eval

`plan_iteration` is the only place that turns a config (its mode, the iteration's prompt draw,
the fidelity guard's decision) into the stages of iteration i, applying each stage's `when`
rule from the stage table (tasks/stages.py). The steps without Prefect (`tasks.stages.run_steps`)
and the Prefect flow both execute the plan it returns. The plan is committed with the iteration
(iter=i/plan/plan.json), so a resumed run replays exactly the same decisions.

The fidelity guard (docs/algorithm.md, "The audit and the fidelity guard"): the audit measures how well the primary
low-precision proxy ranks seeds; when the mean of its last `window` audits falls below
`threshold`, the following iterations explore with the fallback (another precision and/or more
steps), and back when the primary proxy's audits rise above `recover`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace

from .config import RunConfig
from .seeds import draw_prompts


@dataclass(frozen=True)
class ExploreSpec:
    """How stage 1 samples: N candidates per prompt at this precision and step count."""

    precision: str  # nvfp4 | fp8 | high
    steps: int
    n: int
    lowrank: int = 0
    keep_x0: bool = False  # the update trains on these samples (naive modes): store each x0
    thumbnails: bool = True

    @property
    def low_precision(self) -> bool:
        return self.precision != "high"


@dataclass(frozen=True)
class GuardState:
    """The fidelity guard after the audits seen so far (committed in every plan)."""

    window: tuple[float, ...] = ()  # the primary proxy's last audited metric values
    fallback: bool = False  # this iteration explores with the fallback
    decision: str = ""  # what happened at this iteration, in words ("" = nothing changed)


@dataclass(frozen=True)
class IterationPlan:
    iteration: int
    mode: str
    prompts: tuple[tuple[int, str], ...]  # (prompt id = index in the training set, text)
    explore: ExploreSpec | None
    primary: ExploreSpec | None  # the configured explore (what the audit measures for the guard)
    stages: tuple[str, ...]
    guard: GuardState | None = None

    def runs(self, stage: str) -> bool:
        return stage in self.stages

    def to_json(self) -> bytes:
        return (json.dumps(asdict(self), indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> IterationPlan:
        d = json.loads(data)

        def spec(x):
            return ExploreSpec(**x) if x else None

        guard = GuardState(**{**d["guard"], "window": tuple(d["guard"]["window"])}) if d.get("guard") else None
        return cls(
            d["iteration"],
            d["mode"],
            tuple(tuple(p) for p in d["prompts"]),
            spec(d["explore"]),
            spec(d["primary"]),
            tuple(d["stages"]),
            guard,
        )


def iteration_prompts(
    cfg: RunConfig, iteration: int, train: tuple[str, ...], pool: tuple[str, ...] | None
) -> tuple[tuple[int, str], ...]:
    """The prompts of iteration i ("Prompts and the training pool"): `per_iteration` of the pool (or of all training
    prompts), keyed by (run seed, iteration). Ids are indices in the training set."""
    candidates = pool or train
    where = {p: i for i, p in enumerate(train)}
    picked = draw_prompts(cfg.run.seed, iteration, candidates, cfg.prompts.per_iteration)
    return tuple((where[candidates[i]], candidates[i]) for i in picked)


def primary_explore(cfg: RunConfig) -> ExploreSpec | None:
    m = cfg.mode
    if not m.explores:
        return None
    steps = cfg.rollout.steps if m.explore_steps == "rollout" else cfg.explore.steps
    return ExploreSpec(
        cfg.explore.precision,
        steps,
        cfg.explore.n,
        cfg.explore.lowrank,
        m.keeps_explore_samples,
        cfg.explore.thumbnails,
    )


def audits(cfg: RunConfig, iteration: int) -> bool:
    """Whether iteration i regenerates all explored seeds of its first prompts ("The audit and the fidelity guard")."""
    return bool(cfg.fidelity.audit_prompts) and cfg.mode.has_proxy and iteration % cfg.fidelity.every == 0


def evaluates(cfg: RunConfig, iteration: int) -> bool:
    return bool(cfg.eval.every) and iteration % cfg.eval.every == 0


def next_guard(cfg: RunConfig, previous: GuardState | None, audited: float | None) -> GuardState:
    """The guard for the next iteration, from its state and the newest audit of the primary proxy."""
    g = cfg.fidelity.guard
    state = previous or GuardState()
    window = state.window if audited is None else (*state.window, audited)[-g.window :]
    mean = sum(window) / len(window) if len(window) == g.window else None
    recover = g.threshold if g.recover is None else g.recover
    if mean is not None and not state.fallback and mean < g.threshold:
        return GuardState(
            window, True, f"fallback: mean {g.metric} of the last {g.window} audits {mean:.3f} < {g.threshold}"
        )
    if mean is not None and state.fallback and mean >= recover:
        return GuardState(window, False, f"back to the configured explore: mean {g.metric} {mean:.3f} >= {recover}")
    return GuardState(window, state.fallback, "")


def plan_iteration(
    cfg: RunConfig,
    iteration: int,
    train: tuple[str, ...],
    pool: tuple[str, ...] | None = None,
    guard: GuardState | None = None,
    rules: Sequence[tuple[str, Callable[[RunConfig, int], bool]]] = (),
) -> IterationPlan:
    """The stages of iteration i and what they work on. `guard` is this iteration's guard state
    (from `next_guard`); None when the guard is off. `rules`: (stage, when) in execution order,
    the stage table's (tasks/stages.py `plan_rules`)."""
    m = cfg.mode
    primary = primary_explore(cfg)
    explore = primary
    if guard is not None and guard.fallback and primary is not None:
        g = cfg.fidelity.guard
        explore = replace(
            primary,
            precision=g.fallback_precision or primary.precision,
            steps=g.fallback_steps or primary.steps,
            lowrank=0 if g.fallback_precision not in (None, "nvfp4") else primary.lowrank,
        )
    stages = [name for name, when in rules if when(cfg, iteration)]
    return IterationPlan(
        iteration, m.name, iteration_prompts(cfg, iteration, train, pool), explore, primary, tuple(stages), guard
    )
