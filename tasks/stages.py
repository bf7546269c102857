"""The stage table and the stage lifecycle: every stage of a run declared once, here.

An entry says what a stage reads (its inputs), when an iteration runs it (`when`, which the
iteration plan applies: solrl/plan.py), and how it computes: `write` for a stage computed in one
piece, or `shard` + `shards` for a stage split into one part file per shard (per prompt, or per
sampling batch of the evaluation rows), which the flow maps over the Dask workers. The step
functions live in tasks/steps.py; what they compute in solrl/compute.py. Adding a stage is one
entry here, its step function and its compute function (and, on a GPU, its residency:
solrl/residency.py).

The lifecycle of every stage (docs/design.md, "Writes, commits, leases, faults"):

    begin   skip if done; else check the lease and remove what an earlier attempt left
    write   the step writes its files (a sharded stage: every shard its part file)
    commit  check every shard is there and the lease, then write `_COMMITTED.json` last

A stage is done iff its commit verifies, was made with the run's config hash, and recorded
exactly the content ids its inputs have now. An input is an (stage, iteration offset) pair:
offset 0 is the same iteration, -1 the previous one; an input the run never committed (a stage
the plan skipped, such as explore in diffusionnft mode) is not an input there.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from solrl.config import RunConfig
from solrl.plan import audits, evaluates
from storage.store import StageHandle

from . import steps
from .run import Run, plan_of, worker
from .summary import iteration_summary

log = logging.getLogger("solrl")


@dataclass(frozen=True)
class Stage:
    name: str
    inputs: tuple[tuple[str, int], ...] = ()
    # When an iteration runs it (the plan applies this: solrl/plan.py); None for the run-scoped baseline.
    when: Callable[[RunConfig, int], bool] | None = None
    # A stage computed in one piece: writes its files into the handle, returns what its commit
    # record adds (or None). Called with (run, iteration, handle, started).
    write: Callable[[Run, int | None, StageHandle, float], dict | None] | None = None
    # A sharded stage: `shards(run, iteration)` parts, each written by `shard(run, iteration, s)`
    # (in any process: the Dask workers); `record(run, iteration)` adds to the commit record.
    shard: Callable[[Run, int | None, int], str] | None = None
    shards: Callable[[Run, int | None], int] | None = None
    record: Callable[[Run, int], dict] | None = None
    after_commit: Callable[[Run, int], None] | None = None  # e.g. the update marks the policy cache current
    scope: str = "iteration"  # or "run": once per run (the baseline evaluation), iteration None
    doc: str = ""

    @property
    def sharded(self) -> bool:
        return self.shard is not None


def _always(cfg: RunConfig, iteration: int) -> bool:
    return True


def _explores(cfg: RunConfig, iteration: int) -> bool:
    return cfg.mode.explores


STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        Stage(
            "baseline",
            scope="run",
            shard=steps.baseline_shard,
            shards=steps.eval_shards,
            doc="the base model (before any update) on the evaluation sets: what every eval is paired against",
        ),
        Stage(
            "plan",
            inputs=(("plan", -1), ("audit", -1)),
            when=_always,
            write=lambda run, i, h, started: steps.write_plan(run, i, h, plan_rules()),
            doc="the iteration's prompts, explore settings and fidelity-guard decision (plan.json)",
        ),
        Stage(
            "explore",
            inputs=(("plan", 0), ("update", -1)),
            when=_explores,
            shard=steps.explore_shard,
            shards=steps.planned_prompts,
            doc="N candidates per prompt in low precision: seeds, proxy rewards, previews",
        ),
        Stage(
            "select",
            inputs=(("plan", 0), ("explore", 0)),
            when=_always,
            write=steps.write_selection,
            doc="K/2 top + K/2 bottom seeds per prompt (DuckDB), or the first K",
        ),
        Stage(
            "regenerate",
            inputs=(("select", 0), ("explore", 0), ("update", -1)),
            when=_always,
            shard=steps.regenerate_shard,
            shards=steps.selected_prompts,
            doc="the kept seeds in high precision (or the explored samples): reward, image, x0",
        ),
        Stage(
            "audit",
            inputs=(("plan", 0), ("explore", 0), ("select", 0), ("update", -1)),
            when=audits,
            shard=steps.audit_shard,
            shards=steps.audited_prompts,
            record=steps.audit_record,
            doc="every explored seed of the first prompts in high precision: unbiased proxy fidelity",
        ),
        Stage(
            "update",
            inputs=(("regenerate", 0), ("update", -1)),
            when=_always,
            write=steps.write_update,
            after_commit=steps.update_committed,
            doc="DiffusionNFT steps: metrics.parquet and the adapters, EMA and optimizer state",
        ),
        Stage(
            "eval",
            inputs=(("update", 0),),
            when=evaluates,
            shard=steps.eval_shard,
            shards=steps.eval_shards,
            doc="the EMA adapter on the evaluation sets (fixed prompts and seeds)",
        ),
    )
}
ITERATION_STAGES = tuple(n for n, s in STAGES.items() if s.scope == "iteration")


def plan_rules() -> tuple[tuple[str, Callable[[RunConfig, int], bool]], ...]:
    """(stage, when) in execution order: what `plan_iteration` turns into an iteration's stages."""
    return tuple((s.name, s.when) for s in STAGES.values() if s.when is not None)


# --- the lifecycle --------------------------------------------------------------------------------
def handle(run: Run, iteration: int | None, name: str) -> StageHandle:
    return run.stage(None if STAGES[name].scope == "run" else iteration, name)


def inputs(run: Run, iteration: int | None, name: str) -> dict[str, str]:
    """Content ids of the committed inputs of a stage."""
    out = {}
    for dep, offset in STAGES[name].inputs:
        i = iteration + offset
        if i < 0:
            continue
        h = run.stage(i, dep)
        cid = h.content_id()
        if cid is not None:
            out[h.label] = cid
    return out


def is_done(run: Run, h: StageHandle, inputs_now: dict[str, str] | None = None, deep: bool = True) -> bool:
    """Committed with this config, on the inputs committed now, and intact: every file re-hashed
    (deep, what a resume does: cost grows with the run), or only their sizes (status, where a
    stopped run will resume)."""
    rec, _ = h.read_record()
    if rec is None or rec["config_hash"] != run.hash:
        return False
    if rec.get("inputs") != (inputs(run, h.iteration, h.name) if inputs_now is None else inputs_now):
        return False
    return not h.problems(deep=deep)


def begin(run: Run, iteration: int | None, name: str) -> float | None:
    """None if the stage is done; else empty its folder and return the start time."""
    h = handle(run, iteration, name)
    if is_done(run, h):
        return None
    if run.lease is not None:
        run.lease.check()  # never clear a stage of a run another process took over
    removed = h.clear()
    if removed:
        log.warning("%s: removed %d uncommitted or invalid file(s) before re-running", h.label, len(removed))
    return time.time()


def shard_count(run: Run, iteration: int | None, name: str) -> int:
    return STAGES[name].shards(run, iteration)


def commit(run: Run, iteration: int | None, name: str, started: float, extra: dict | None = None) -> str:
    """Commit a stage once all its files are written (for a sharded stage: every shard's part)."""
    stage, h = STAGES[name], handle(run, iteration, name)
    if stage.sharded:
        missing = [s for s in range(shard_count(run, iteration, name)) if not h.exists(steps.part(s))]
        if missing:
            raise RuntimeError(f"{h.label} is missing shard(s) {missing}; not committing")
        if extra is None and stage.record is not None:
            extra = stage.record(run, iteration)
    if run.lease is not None:
        run.lease.check()  # taken over meanwhile: stop before overwriting anything
    h.commit(run.hash, inputs(run, iteration, name), extra={**(extra or {}), "worker": worker()}, started_at=started)
    if stage.after_commit is not None:
        stage.after_commit(run, iteration)
    return h.url


def run_stage(run: Run, iteration: int | None, name: str) -> str:
    """One stage in this process: skip if done, else begin, write (every shard in turn), commit."""
    stage = STAGES[name]
    started = begin(run, iteration, name)
    h = handle(run, iteration, name)
    if started is None:
        return h.url
    if stage.sharded:
        for s in range(shard_count(run, iteration, name)):
            stage.shard(run, iteration, s)
        return commit(run, iteration, name, started)
    extra = stage.write(run, iteration, h, started)
    return commit(run, iteration, name, started, extra)


# --- an iteration ---------------------------------------------------------------------------------
def run_steps(run: Run, iteration: int) -> dict:
    """One iteration without Prefect: its plan, in order (the flow runs the same plan)."""
    run_stage(run, iteration, "plan")
    if iteration == 0 and run.cfg.eval.every:
        run_stage(run, None, "baseline")
    for name in plan_of(run, iteration).stages[1:]:
        run_stage(run, iteration, name)
    return iteration_summary(run, iteration)


def run_iterations(run: Run, iterations: int, take_over: bool = False, on_iteration=None) -> list[dict]:
    """`sol-rl run --no-prefect`: every iteration in this process, holding the run's lease."""
    run.acquire(take_over)
    try:
        out = []
        for i in range(iterations):
            out.append(run_steps(run, i))
            if on_iteration:
                on_iteration(out[-1])
        return out
    finally:
        run.release()


__all__ = [
    "ITERATION_STAGES",
    "STAGES",
    "Stage",
    "begin",
    "commit",
    "handle",
    "inputs",
    "is_done",
    "plan_of",
    "plan_rules",
    "run_iterations",
    "run_stage",
    "run_steps",
    "shard_count",
]
