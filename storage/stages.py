"""The stage table: every stage of a run declared once.

`status`, `verify`, resume, the report and the flow all read it; adding a stage is one entry
here plus its step function in tasks/steps.py. Which stages an iteration runs depends on the
mode and the config: that is the iteration plan (solrl/plan.py), committed by the `plan` stage.

A stage's inputs are (stage, iteration offset) pairs: offset 0 is the same iteration, -1 the
previous one. An input is only consumed when it exists in the run (a stage the plan skipped,
such as explore in diffusionnft mode, is not an input there). A stage is done iff its commit
verifies, was made with the run's config hash, and recorded exactly the content ids its inputs
have now.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pyarrow as pa

from . import schemas


@dataclass(frozen=True)
class Stage:
    name: str
    inputs: tuple[tuple[str, int], ...] = ()
    sharded: bool = False  # one part file per prompt, written by parallel shard tasks (on the Dask workers)
    schema: Callable[[list[str]], pa.Schema] | None = None  # of its Parquet rows (reward names -> schema)
    volatile: tuple[str, ...] = ()  # columns that differ between identical recomputations (kept out of content ids)
    scope: str = "iteration"  # or "run": once per run (the baseline evaluation)
    doc: str = ""


STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        Stage(
            "baseline",
            scope="run",
            sharded=True,
            schema=schemas.eval_schema,
            volatile=("worker",),
            doc="the base model (before any update) on the evaluation sets: what every eval is paired against",
        ),
        Stage(
            "plan",
            inputs=(("plan", -1), ("audit", -1)),
            doc="the iteration's prompts, explore settings and fidelity-guard decision (plan.json)",
        ),
        Stage(
            "explore",
            inputs=(("plan", 0), ("update", -1)),
            sharded=True,
            schema=schemas.explore_schema,
            volatile=("duration_ms", "worker"),
            doc="N candidates per prompt in low precision: seeds, proxy rewards, previews",
        ),
        Stage(
            "select",
            inputs=(("plan", 0), ("explore", 0)),
            schema=lambda _: schemas.selected_schema(),
            doc="K/2 top + K/2 bottom seeds per prompt (DuckDB), or the first K",
        ),
        Stage(
            "regenerate",
            inputs=(("select", 0), ("explore", 0), ("update", -1)),
            sharded=True,
            schema=schemas.regenerate_schema,
            volatile=("duration_ms", "worker"),
            doc="the kept seeds in high precision (or the explored samples): reward, image, x0",
        ),
        Stage(
            "audit",
            inputs=(("plan", 0), ("explore", 0), ("select", 0), ("update", -1)),
            sharded=True,
            schema=schemas.audit_schema,
            volatile=("duration_ms", "worker"),
            doc="every explored seed of the first prompts in high precision: unbiased proxy fidelity",
        ),
        Stage(
            "update",
            inputs=(("regenerate", 0), ("update", -1)),
            volatile=("seconds_explore", "seconds_select", "seconds_regenerate", "seconds_audit", "seconds_update"),
            doc="DiffusionNFT steps: metrics.parquet and the adapters, EMA and optimizer state",
        ),
        Stage(
            "eval",
            inputs=(("update", 0),),
            sharded=True,
            schema=schemas.eval_schema,
            volatile=("worker",),
            doc="the EMA adapter on the evaluation sets (fixed prompts and seeds)",
        ),
    )
}
ITERATION_STAGES = tuple(n for n, s in STAGES.items() if s.scope == "iteration")
