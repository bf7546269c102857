"""The step functions of the stage table (tasks/stages.py): read a stage's inputs from the run
store, call its compute function (solrl/compute.py), write its files. Plain functions (no
Prefect, no commit): the lifecycle in tasks/stages.py begins and commits around them, the
Prefect tasks in `tasks.prefect_tasks` map the shard functions over the Dask workers.

A stage is recomputed from the committed inputs only, never from state a failed attempt left in
memory (tasks/cache.py); a shard's part file written by an earlier attempt of the same stage run
is kept (parts are written atomically).
"""

from __future__ import annotations

import dataclasses
import logging
import time

import pyarrow as pa
import torch

from solrl import compute
from solrl.checkpoint import state_files
from solrl.fidelity import audit_metrics
from solrl.nft import timesteps_per_sample
from solrl.plan import next_guard, plan_iteration
from solrl.progress import progress_bar
from solrl.registry import family_class
from storage import schemas
from storage.queries import read_stage
from storage.selection import select_seeds
from storage.store import StageHandle

from .cache import CACHE
from .run import Run, plan_of, worker

log = logging.getLogger("solrl")


def part(shard: int) -> str:
    return f"part-{shard:05d}.parquet"


# --- shard counts: one shard per prompt explored, kept (regenerate) or audited; per sampling batch
# of the evaluation rows (eval, baseline) -----------------------------------------------------------
def planned_prompts(run: Run, iteration: int) -> int:
    return len(plan_of(run, iteration).prompts)


def audited_prompts(run: Run, iteration: int) -> int:
    return len(plan_of(run, iteration).prompts[: run.cfg.fidelity.audit_prompts])


def selected_prompts(run: Run, iteration: int) -> int:
    return len(_selected_prompt_ids(run, iteration))


def eval_shards(run: Run, iteration: int | None) -> int:
    return -(-len(eval_sets(run)) * run.cfg.eval.seeds_per_prompt // run.cfg.rollout.batch)


# --- plan ---------------------------------------------------------------------------------------
def write_plan(run: Run, iteration: int, h: StageHandle, rules) -> None:
    """plan.json: the iteration's prompts, explore settings, stages (`rules`: the stage table's
    (stage, when) pairs) and the fidelity guard's decision."""
    cfg, guard = run.cfg, None
    if cfg.fidelity.guard.enabled:
        prev = plan_of(run, iteration - 1).guard if iteration > 0 else None
        audited = None
        if iteration > 0 and run.stage(iteration - 1, "audit").record is not None:
            audited = audit_metrics(
                read_stage(run.store, iteration - 1, "audit").to_pydict(), cfg.select.k, primary=True
            )[cfg.fidelity.guard.metric]
        guard = next_guard(cfg, prev, audited)
        if guard.decision:
            log.warning("iteration %d: fidelity guard: %s", iteration, guard.decision)
    train, _ = family_class(cfg.model.family).prompt_sets(cfg)  # no model load: the plan needs only prompts
    plan = plan_iteration(cfg, iteration, train, run.resolved.pool, guard, rules)
    h.write_bytes("plan.json", plan.to_json())


# --- explore ------------------------------------------------------------------------------------
def explore_shard(run: Run, iteration: int, shard: int) -> str:
    """Explore one prompt (the shard-th of the iteration's plan) and write its part file."""
    release_eval_copy(run)
    h = run.stage(iteration, "explore")
    if h.exists(part(shard)):  # written (atomically) by an earlier attempt of this same stage run
        return h.file(part(shard))
    plan = plan_of(run, iteration)
    policy, _ = CACHE.at(run, iteration)
    model, _ = CACHE.sampler(run, iteration, plan.explore)
    with progress_bar(f"iter {iteration} explore prompt {shard + 1}/{len(plan.prompts)}", plan.explore.n) as advance:
        ex = compute.explore(policy, run.cfg, plan.explore, iteration, [plan.prompts[shard]], model, advance)
    cols = dict(ex.columns, worker=[worker()] * len(ex.columns["seed"]))
    if ex.x0 is not None:
        cols["x0"] = [compute.tensor_bytes(x) for x in ex.x0]
        cols["x0_shape"] = [list(ex.x0.shape[1:])] * len(cols["seed"])
    h.write_table(part(shard), schemas.to_table(cols, schemas.explore_schema(run.reward_names), run.run_id, iteration))
    return h.file(part(shard))


# --- select -------------------------------------------------------------------------------------
def write_selection(run: Run, iteration: int, h: StageHandle, started: float) -> dict:
    """selected.parquet: the kept seeds (DuckDB over the explore rows); the commit records the stats."""
    plan = plan_of(run, iteration)
    explore = (
        read_stage(run.store, iteration, "explore", "prompt_id, prompt, seed, reward").to_pydict()
        if plan.runs("explore")
        else None
    )
    selected, stats = compute.select(run.cfg, plan, explore, select_seeds)
    if stats["non_finite"]:
        log.warning(
            "iteration %d: %d candidates with a non-finite proxy reward were excluded from selection",
            iteration,
            stats["non_finite"],
        )
    h.write_table("selected.parquet", schemas.to_table(selected, schemas.selected_schema(), run.run_id, iteration))
    return {"selection": stats}


def _selected_prompt_ids(run: Run, iteration: int) -> list[int]:
    return list(dict.fromkeys(read_stage(run.store, iteration, "select", "prompt_id").column("prompt_id").to_pylist()))


# --- regenerate ---------------------------------------------------------------------------------
def regenerate_shard(run: Run, iteration: int, shard: int) -> str:
    """The kept seeds of one prompt (the shard-th prompt of the selection): regenerated in high
    precision, or, in modes that train on explore samples, those samples."""
    release_eval_copy(run)
    h = run.stage(iteration, "regenerate")
    if h.exists(part(shard)):
        return h.file(part(shard))
    sel = read_stage(run.store, iteration, "select").to_pydict()
    pid = list(dict.fromkeys(sel["prompt_id"]))[shard]
    rows = [i for i, p in enumerate(sel["prompt_id"]) if p == pid]
    selected = {k: [sel[k][i] for i in rows] for k in compute.SAMPLE_KEYS}
    policy, _ = CACHE.at(run, iteration)
    if run.cfg.mode.trains_on == "regenerated":
        model, _ = CACHE.sampler(run, iteration, None)
        with progress_bar(f"iter {iteration} regenerate prompt {shard + 1}", len(rows)) as advance:
            samples = compute.regenerate(policy, run.cfg, selected, model, advance)
    else:  # only this prompt's explore rows (they carry every candidate's x0 in these modes)
        explore = read_stage(run.store, iteration, "explore", prompt_id=pid).to_pydict()
        x0 = torch.stack([compute.tensor_from_bytes(b) for b in explore["x0"]])
        samples = compute.samples_from_explore(policy, run.cfg, explore, x0, selected)
    cols = dict(samples.columns, worker=[worker()] * len(rows))
    h.write_table(
        part(shard), schemas.to_table(cols, schemas.regenerate_schema(run.reward_names), run.run_id, iteration)
    )
    return h.file(part(shard))


# --- update -------------------------------------------------------------------------------------
def _stage_seconds(run: Run, iteration: int) -> dict[str, float]:
    out = {}
    for name in ("explore", "select", "regenerate", "audit"):
        rec = run.stage(iteration, name).record
        if rec:
            out[f"seconds_{name}"] = rec["finished_at"] - rec["started_at"]
    return out


def write_update(run: Run, iteration: int, h: StageHandle, started: float) -> dict | None:
    """metrics.parquet and the adapters, EMA and optimizer state after this iteration's update; on
    several ranks (`cluster.update_ranks`) data parallel over Dask workers (tasks/ddp.py)."""
    from .ddp import distributed_update, update_ranks

    if update_ranks(run) > 1:
        return distributed_update(run, iteration, started, _stage_seconds(run, iteration))
    t = read_stage(run.store, iteration, "regenerate", "prompt_id, prompt, seed, reward, x0").to_pydict()
    samples = compute.Samples(
        t["prompt_id"],
        t["prompt"],
        torch.stack([compute.tensor_from_bytes(b) for b in t["x0"]]),
        torch.tensor(t["reward"], dtype=torch.float64),
    )
    n_times = timesteps_per_sample(run.cfg.rollout.steps, run.cfg.nft.timestep_fraction)
    # dirty until committed (update_committed): a retry restores (policy, state) from the store
    with CACHE.mutating(run, iteration) as (policy, state):
        with progress_bar(f"iter {iteration} update", samples.x0.shape[0] * n_times) as advance:
            rows = compute.update(policy, state, run.cfg, iteration, samples, advance)
        if not all(r["applied"] for r in rows):
            log.warning("iteration %d: non-finite loss or gradient, optimizer step(s) skipped", iteration)
        seconds = {**_stage_seconds(run, iteration), "seconds_update": time.time() - started}
        for name, data in state_files(policy, state).items():
            h.write_bytes(f"state/{name}", data)
        table = pa.Table.from_pylist(
            [
                {"run_id": run.run_id, "iteration": iteration, **{k: float(v) for k, v in {**r, **seconds}.items()}}
                for r in rows
            ]
        )
        h.write_table("metrics.parquet", table)
    return None


def update_committed(run: Run, iteration: int) -> None:
    """After the update's commit: this process's policy holds the committed adapters (when it
    computed them; the ranks of a multi-rank update hold their own)."""
    from .ddp import update_ranks

    if update_ranks(run) <= 1:
        CACHE.committed(run, iteration)


# --- evaluate -----------------------------------------------------------------------------------
# Shards on the Dask workers like explore's: shard s is the s-th sampling batch of the evaluation
# rows (set, prompt, seed; `rollout.batch` rows, whole prompts when `eval.seeds_per_prompt`
# divides it), so a shard computes bit for bit what the unsharded evaluation computed (one
# prompt per shard would change the batches, and the bf16 rewards by up to 3e-3).
def eval_sets(run: Run) -> list[tuple[str, int, str]]:
    """(set, prompt id, prompt) of every evaluation prompt, in shard order (no model loaded)."""
    family = family_class(run.cfg.model.family)
    train, held = family.prompt_sets(run.cfg)
    return [
        (name, pid, text)
        for name, prompts in compute.eval_prompt_sets(family, run.cfg, train, held, run.resolved.pool).items()
        for pid, text in prompts
    ]


_EVAL_MODEL: dict = {}  # the last evaluation copy of this process: (policy id, adapter key) -> model


def release_eval_copy(run: Run) -> None:
    """On a GPU, a worker's evaluation copy (a whole transformer) goes when its sampling stages
    need the memory; on a CPU it is kept for the next eval of the same adapters."""
    if _EVAL_MODEL and CACHE.policy(run).device.type == "cuda":
        with CACHE._lock:
            _EVAL_MODEL.clear()


def _eval_shard(run: Run, iteration: int | None, name: str, shard: int) -> str:
    h = run.stage(iteration, name)
    if h.exists(part(shard)):  # written (atomically) by an earlier attempt of this same stage run
        return h.file(part(shard))
    batch, n = run.cfg.rollout.batch, len(eval_sets(run)) * run.cfg.eval.seeds_per_prompt
    if name == "baseline":  # the base model: the LoRA init (B = 0)
        policy, key, ema_of = CACHE.policy(run), f"init:{run.hash}", lambda: CACHE.init_ema(run)
    else:  # the EMA after this iteration's update
        policy, key, ema_of = (
            CACHE.policy(run),
            CACHE.adapter_key(run, iteration + 1),
            lambda: CACHE.at(run, iteration + 1)[1].ema,
        )
    with CACHE._lock:  # (the copy is built once per adapters, by one thread)
        if (id(policy), key) not in _EVAL_MODEL:
            _EVAL_MODEL.clear()  # one copy at a time: on a GPU it is a whole transformer
            if policy.device.type == "cuda":
                CACHE._samplers = {}  # and so are the sampler copies (rebuilt from the next adapters anyway)
            _EVAL_MODEL[(id(policy), key)] = compute.eval_model(policy, ema_of())
        model = _EVAL_MODEL[(id(policy), key)]
    cols = compute.evaluate(policy, None, run.cfg, rows=range(shard * batch, min(n, (shard + 1) * batch)), model=model)
    cols["worker"] = [worker()] * len(cols["seed"])
    h.write_table(
        part(shard),
        schemas.to_table(
            cols, schemas.eval_schema(run.reward_names), run.run_id, -1 if iteration is None else iteration
        ),
    )
    return h.file(part(shard))


def eval_shard(run: Run, iteration: int, shard: int) -> str:
    return _eval_shard(run, iteration, "eval", shard)


def baseline_shard(run: Run, iteration: None, shard: int) -> str:
    return _eval_shard(run, None, "baseline", shard)


# --- audit --------------------------------------------------------------------------------------
def audit_shard(run: Run, iteration: int, shard: int) -> str:
    """Every explored seed of the shard-th audited prompt in high precision (the audited prompts
    are the first `fidelity.audit_prompts` of the plan)."""
    h = run.stage(iteration, "audit")
    if h.exists(part(shard)):
        return h.file(part(shard))
    plan = plan_of(run, iteration)
    pid, _ = plan.prompts[shard]
    explore = read_stage(
        run.store, iteration, "explore", "prompt_id, prompt, candidate, seed, reward", prompt_id=pid
    ).to_pydict()
    regen = read_stage(run.store, iteration, "regenerate", "seed, reward", prompt_id=pid).to_pydict()
    policy, _ = CACHE.at(run, iteration)
    model, _ = CACHE.sampler(run, iteration, None)
    primary = (
        CACHE.sampler(run, iteration, plan.primary)[0]
        if plan.primary is not None and plan.primary != plan.explore
        else None
    )
    one = dataclasses.replace(plan, prompts=(plan.prompts[shard],))
    with progress_bar(f"iter {iteration} audit prompt {shard + 1}", plan.explore.n - run.cfg.select.k) as advance:
        cols = compute.audit(
            policy, run.cfg, one, explore, dict(zip(regen["seed"], regen["reward"])), model, primary, advance
        )
    cols["worker"] = [worker()] * len(cols["seed"])
    h.write_table(part(shard), schemas.to_table(cols, schemas.audit_schema([]), run.run_id, iteration))
    return h.file(part(shard))


def audit_record(run: Run, iteration: int) -> dict:
    """What the audit's commit records beside its files: the fidelity metrics over every shard."""
    h = run.stage(iteration, "audit")
    cols = pa.concat_tables(
        [run.store.read_table(h.file(part(s))) for s in range(audited_prompts(run, iteration))]
    ).to_pydict()
    return {"fidelity": audit_metrics(cols, run.cfg.select.k)}
