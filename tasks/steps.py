"""Stage steps with storage: read inputs from the run store, call the solrl stage function,
write Parquet/safetensors, commit. Plain functions (no Prefect): the Prefect tasks in
`tasks.prefect_tasks` wrap them, and tests call them directly.

Every step is idempotent: if its commit exists, verifies, was made with this config and
consumed the inputs that are committed now, it returns at once; otherwise it deletes whatever
is in its folder and recomputes.
"""

from __future__ import annotations

import logging
import os
import platform
import socket
import time
from dataclasses import dataclass
from datetime import datetime, timezone

import torch

from solrl import __version__
from solrl import stages as S
from solrl.checkpoint import restore, state_files
from solrl.config import RunConfig, diff_keys
from solrl.models import load_policy, policy_kwargs
from solrl.progress import progress_bar
from storage import schemas
from storage.queries import read_stage
from storage.selection import select_seeds
from storage.store import RunStore, StoreError, iter_dir, join

log = logging.getLogger("solrl")
WORKER = f"{socket.gethostname()}:{os.getpid()}"


class ConfigMismatch(ValueError):
    pass


__all__ = ["ConfigMismatch", "StoreError", "open_run", "run_steps", "status"]


# --- the run ---------------------------------------------------------------------------------------
@dataclass
class Run:
    store: RunStore
    cfg: RunConfig
    run_id: str

    @property
    def hash(self) -> str:
        return self.cfg.hash()

    @property
    def reward_names(self) -> list[str]:
        return list(dict.fromkeys([*self.cfg.reward.weights, *self.cfg.reward.report]))


def open_run(run_uri: str, cfg: RunConfig | None = None) -> Run:
    """Create a run (writing run.json) or open an existing one. With `cfg` given for an
    existing run, its hash must match the stored one: otherwise one sentence names the keys."""
    if cfg is not None:  # S3 settings of the config reach every store this process opens
        if cfg.storage.s3_endpoint:
            os.environ["SOLRL_S3_ENDPOINT"] = cfg.storage.s3_endpoint
        if cfg.storage.s3_region:
            os.environ["AWS_REGION"] = cfg.storage.s3_region
    store = RunStore(run_uri)
    run_id = run_uri.rstrip("/").rsplit("/", 1)[-1]
    meta_path = store.path("run.json")
    if store.exists(meta_path):
        meta = store.read_json(meta_path)
        stored = RunConfig.model_validate(meta["config"])
        if cfg is not None and cfg.hash() != meta["config_hash"]:
            keys = diff_keys(stored, cfg)
            raise ConfigMismatch(
                f"run {run_id} at {run_uri} was made with a different config (differing keys: {', '.join(keys)}): "
                "resume with the original config, or start a new run id"
            )
        return Run(store, stored, run_id)
    if cfg is None:
        raise FileNotFoundError(f"no run at {run_uri} (no run.json): start it with `sol-rl run CONFIG --run-id {run_id}`")
    store.check_writable()
    store.write_json(meta_path, {
        "run_id": run_id,
        "config": cfg.model_dump(mode="json"),
        "config_hash": cfg.hash(),
        "code_version": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "created_at": datetime.now(timezone.utc).isoformat(),
    })
    return Run(store, cfg, run_id)


# --- the policy of a process, at the start of an iteration -------------------------------------------
_cache: dict = {}


def _base_policy(cfg: RunConfig):
    key = ("policy", cfg.run.seed, cfg.model.model_dump_json(), cfg.prompts.file, cfg.prompts.eval_file)
    if _cache.get("policy_key") != key:
        policy = load_policy(cfg.model.family, **policy_kwargs(cfg))
        _cache.clear()
        _cache.update(policy_key=key, policy=policy, init=policy.adapter_state("default"))
    return _cache["policy"]


def policy_at(run: Run, iteration: int):
    """(policy, train state) as they are at the start of `iteration`: fresh LoRA for 0, else
    the committed update of iteration - 1. Cached per process: shards don't reload."""
    policy = _base_policy(run.cfg)
    key = (run.store.uri, run.hash, iteration)
    if _cache.get("state_key") == key:
        return policy, _cache["state"]
    state = S.TrainState.fresh(policy, run.cfg)
    if iteration == 0:
        policy.load_adapter("default", _cache["init"])
        policy.load_adapter("old", _cache["init"])
        state.ema = {k: v.clone() for k, v in _cache["init"].items()}
    else:
        if not run.store.is_committed(iteration - 1, "update", run.hash):
            raise RuntimeError(f"iteration {iteration} needs the committed update of iteration {iteration - 1}, which is missing: resume the run from there")
        d = run.store.stage_dir(iteration - 1, "update")
        rec = run.store.commit_record(iteration - 1, "update")
        files = {name[len("state/") :]: run.store.read_bytes(join(d, name)) for name in rec["files"] if name.startswith("state/")}
        restore(policy, state, files)
    _cache.update(state_key=key, state=state)
    _cache.pop("models", None)
    return policy, state


def _sampler(run: Run, iteration: int, kind: str):
    """The explore (quantised) or regenerate (high precision) copy for an iteration, cached."""
    policy, _ = policy_at(run, iteration)
    models = _cache.setdefault("models", {})
    if kind not in models:
        quant = S.explore_quant(policy, run.cfg) if kind == "explore" else None
        model, report = policy.sampler_copy(quant)
        if kind == "explore":
            log.info("explore copy: %s", report.summary())
        models[kind] = model
    return models[kind]


# --- inputs and validity -----------------------------------------------------------------------------
def stage_inputs(run: Run, iteration: int, stage: str) -> dict[str, str | None]:
    deps = {
        "explore": [(iteration - 1, "update")],
        "select": [(iteration, "explore")] if run.cfg.run.mode != "diffusionnft" else [],
        "regenerate": [(iteration, "select"), (iteration - 1, "update")],
        "update": [(iteration, "regenerate"), (iteration - 1, "update")],
        "eval": [(iteration, "update")],
    }[stage]
    return {f"{iter_dir(i)}/{s}": run.store.commit_id(i, s) for i, s in deps if i >= 0}


def is_done(run: Run, iteration: int, stage: str) -> bool:
    rec = run.store.commit_record(iteration, stage)
    if rec is None or rec["config_hash"] != run.hash or rec.get("inputs") != stage_inputs(run, iteration, stage):
        return False
    return not run.store.verify(iteration, stage)


def _begin(run: Run, iteration: int, stage: str) -> float:
    removed = run.store.clear_stage(iteration, stage)
    if removed:
        log.warning("%s/%s: removed %d uncommitted or invalid file(s) before re-running", iter_dir(iteration), stage, len(removed))
    return time.time()


def _url(run: Run, iteration: int, stage: str) -> str:
    return run.store.url(run.store.stage_dir(iteration, stage))


# --- steps ----------------------------------------------------------------------------------------------
def begin_stage(run: Run, iteration: int, stage: str) -> float | None:
    """None if the stage is already done; else clear its folder and return the start time."""
    if is_done(run, iteration, stage):
        return None
    return _begin(run, iteration, stage)


def shard_count(run: Run, iteration: int, stage: str) -> int:
    if stage == "explore":
        return run.cfg.prompts.per_iteration
    return len(set(read_stage(run.store, iteration, "select", "prompt_id").column("prompt_id").to_pylist()))


def commit_sharded(run: Run, iteration: int, stage: str, started_at: float) -> str:
    """Commit a sharded stage once every shard's part file is there."""
    shards = range(shard_count(run, iteration, stage))
    missing = [s for s in shards if not run.store.exists(_part(run, iteration, stage, s))]
    if missing:
        raise RuntimeError(f"{stage} of iteration {iteration} is missing shard(s) {missing}; not committing")
    run.store.commit(iteration, stage, run.hash, stage_inputs(run, iteration, stage), started_at=started_at)
    return _url(run, iteration, stage)


def _sharded_step(run: Run, iteration: int, stage: str) -> str:
    t0 = begin_stage(run, iteration, stage)
    if t0 is None:
        return _url(run, iteration, stage)
    fn = explore_shard if stage == "explore" else regenerate_shard
    for shard in range(shard_count(run, iteration, stage)):
        fn(run, iteration, shard)
    return commit_sharded(run, iteration, stage, t0)


def explore_step(run: Run, iteration: int) -> str:
    """All prompt shards of an iteration's explore (one part file per prompt), then commit."""
    return _sharded_step(run, iteration, "explore")


def _part(run: Run, iteration: int, stage: str, shard: int) -> str:
    return join(run.store.stage_dir(iteration, stage), f"part-{shard:05d}.parquet")


def explore_shard(run: Run, iteration: int, shard: int) -> str:
    """Explore one prompt (the shard-th of the iteration) and write its part file."""
    policy, _ = policy_at(run, iteration)
    prompts = S.iteration_prompts(policy, run.cfg, iteration)
    path = _part(run, iteration, "explore", shard)
    if run.store.exists(path):  # written by an earlier attempt of this same commit-less stage run
        return path
    model = _sampler(run, iteration, "explore")
    n = run.cfg.explore.n
    with progress_bar(f"iter {iteration} explore prompt {shard + 1}/{len(prompts)}", n) as advance:
        ex = S.explore(policy, run.cfg, iteration, [prompts[shard]], advance, model=model)
    cols = dict(ex.columns)
    cols["worker"] = [WORKER] * n
    if ex.x0 is not None:
        cols["x0"] = [S.tensor_bytes(x) for x in ex.x0]
        cols["x0_shape"] = [list(ex.x0.shape[1:])] * n
    table = schemas.to_table(cols, schemas.explore_schema(run.reward_names), run.run_id, iteration)
    run.store.write_table(path, table)
    return path


def select_step(run: Run, iteration: int) -> str:
    if is_done(run, iteration, "select"):
        return _url(run, iteration, "select")
    t0 = _begin(run, iteration, "select")
    stats = {"non_finite": 0, "skipped_prompts": []}
    if run.cfg.run.mode == "diffusionnft":
        policy = _base_policy(run.cfg)
        selected = S.all_seeds_selection(run.cfg, iteration, S.iteration_prompts(policy, run.cfg, iteration))
    else:
        explore = read_stage(run.store, iteration, "explore", "prompt_id, prompt, seed, reward")
        table, stats = select_seeds(explore, run.cfg.select.k, run.cfg.select.on_short_prompt)
        selected = table.to_pydict()
        if stats["non_finite"]:
            log.warning("iteration %d: %d candidates with a non-finite proxy reward were excluded from selection", iteration, stats["non_finite"])
    table = schemas.to_table(selected, schemas.selected_schema(), run.run_id, iteration)
    run.store.write_table(join(run.store.stage_dir(iteration, "select"), "selected.parquet"), table)
    run.store.commit(iteration, "select", run.hash, stage_inputs(run, iteration, "select"), extra={"selection": stats}, started_at=t0)
    return _url(run, iteration, "select")


def regenerate_step(run: Run, iteration: int) -> str:
    """Selected seeds in high precision (sol_rl, diffusionnft) or the explore samples of the
    selected seeds (naive_scaling, naive_quant), one part file per prompt, then commit."""
    return _sharded_step(run, iteration, "regenerate")


def regenerate_shard(run: Run, iteration: int, shard: int) -> str:
    """Regenerate the selected seeds of one prompt (the shard-th prompt of the selection)."""
    path = _part(run, iteration, "regenerate", shard)
    if run.store.exists(path):
        return path
    sel = read_stage(run.store, iteration, "select").to_pydict()
    pid = list(dict.fromkeys(sel["prompt_id"]))[shard]
    rows = [i for i, p in enumerate(sel["prompt_id"]) if p == pid]
    selected = {k: [sel[k][i] for i in rows] for k in ("prompt_id", "prompt", "seed", "side", "proxy_rank", "proxy_reward")}
    policy, _ = policy_at(run, iteration)
    n = len(selected["seed"])
    if run.cfg.run.mode in ("sol_rl", "diffusionnft"):
        model = _sampler(run, iteration, "regenerate")
        with progress_bar(f"iter {iteration} regenerate prompt {shard + 1}", n) as advance:
            samples = S.regenerate(policy, run.cfg, selected, advance, model=model)
        cols = samples.columns
    else:
        # only this prompt's explore rows (they carry every candidate's x0 in these modes)
        explore = read_stage(run.store, iteration, "explore", prompt_id=pid).to_pydict()
        index = {s: i for i, s in enumerate(explore["seed"])}
        picked = [index[s] for s in selected["seed"]]
        cols = {k: list(v) for k, v in selected.items()}
        for k in ["precision", "steps", "reward", "x0", "x0_shape", "duration_ms"] + [f"reward_{r}" for r in run.reward_names]:
            cols[k] = [explore[k][i] for i in picked]
        x0 = torch.stack([S.tensor_from_bytes(b) for b in cols["x0"]])
        cols["image"] = [S.png_bytes(im) for im in policy.decode(x0)]
    cols["worker"] = [WORKER] * n
    table = schemas.to_table(cols, schemas.regenerate_schema(run.reward_names), run.run_id, iteration)
    run.store.write_table(path, table)
    return path


def _samples(run: Run, iteration: int) -> S.Samples:
    t = read_stage(run.store, iteration, "regenerate", "prompt_id, prompt, seed, reward, x0").to_pydict()
    x0 = torch.stack([S.tensor_from_bytes(b) for b in t["x0"]])
    return S.Samples(t["prompt_id"], t["prompt"], x0, torch.tensor(t["reward"], dtype=torch.float64))


def _stage_seconds(run: Run, iteration: int) -> dict[str, float]:
    out = {}
    for stage in ("explore", "select", "regenerate"):
        rec = run.store.commit_record(iteration, stage)
        if rec:
            out[f"seconds_{stage}"] = rec["finished_at"] - rec["started_at"]
    return out


def update_step(run: Run, iteration: int) -> str:
    if is_done(run, iteration, "update"):
        return _url(run, iteration, "update")
    t0 = _begin(run, iteration, "update")
    policy, state = policy_at(run, iteration)
    samples = _samples(run, iteration)
    n_times = max(1, int(run.cfg.rollout.steps * run.cfg.nft.timestep_fraction))
    with progress_bar(f"iter {iteration} update", samples.x0.shape[0] * n_times) as advance:
        metrics = S.update(policy, state, run.cfg, iteration, samples, advance)
    if not metrics["applied"]:
        log.warning("iteration %d: non-finite loss or gradient, optimizer step skipped", iteration)
    metrics.update(_stage_seconds(run, iteration))
    metrics["seconds_update"] = time.time() - t0
    d = run.store.stage_dir(iteration, "update")
    for name, data in state_files(policy, state).items():
        run.store.write_bytes(join(d, "state", name), data)
    import pyarrow as pa

    row = {"run_id": [run.run_id], "iteration": [iteration], **{k: [float(v)] for k, v in metrics.items()}}
    run.store.write_table(join(d, "metrics.parquet"), pa.table(row))
    run.store.commit(iteration, "update", run.hash, stage_inputs(run, iteration, "update"), started_at=t0)
    # the in-memory policy now is the committed state at the start of iteration + 1
    _cache.update(state_key=(run.store.uri, run.hash, iteration + 1))
    _cache.pop("models", None)
    return _url(run, iteration, "update")


def eval_step(run: Run, iteration: int) -> str | None:
    if not run.cfg.eval.every or iteration % run.cfg.eval.every:
        return None
    if is_done(run, iteration, "eval"):
        return _url(run, iteration, "eval")
    t0 = _begin(run, iteration, "eval")
    policy, state = policy_at(run, iteration + 1)  # after this iteration's update: its EMA
    cols = S.evaluate(policy, state, run.cfg)
    table = schemas.to_table(cols, schemas.eval_schema(run.reward_names), run.run_id, iteration)
    run.store.write_table(join(run.store.stage_dir(iteration, "eval"), "part-00000.parquet"), table)
    run.store.commit(iteration, "eval", run.hash, stage_inputs(run, iteration, "eval"), started_at=t0)
    return _url(run, iteration, "eval")


def iteration_summary(run: Run, iteration: int) -> dict:
    """Per-prompt selection table and headline numbers of a committed iteration (artifacts, CLI)."""
    from solrl.fidelity import kept_set_metrics

    regen = read_stage(run.store, iteration, "regenerate", "prompt_id, prompt, seed, side, proxy_rank, proxy_reward, reward").to_pydict()
    metrics = read_stage(run.store, iteration, "update").to_pylist()[0]
    out = {"iteration": iteration, "train_reward": metrics["reward_mean"], "loss": metrics["loss"], "rows": regen}
    if run.cfg.run.mode == "sol_rl":
        out["fidelity"] = kept_set_metrics(regen["proxy_reward"], regen["reward"], regen["side"])
    if run.store.commit_record(iteration, "eval"):
        ev = read_stage(run.store, iteration, "eval", "reward").column("reward").to_pylist()
        out["eval_reward"] = sum(ev) / len(ev)
    out["seconds"] = {k[len("seconds_") :]: v for k, v in metrics.items() if k.startswith("seconds_")}
    return out


def run_steps(run: Run, iteration: int) -> dict:
    """One iteration without Prefect (what the flow does, in order)."""
    if run.cfg.run.mode != "diffusionnft":
        explore_step(run, iteration)
    select_step(run, iteration)
    regenerate_step(run, iteration)
    update_step(run, iteration)
    eval_step(run, iteration)
    return iteration_summary(run, iteration)


def status(run: Run) -> list[dict]:
    """Every iteration x stage: committed?, seconds."""
    rows = []
    for i in run.store.iterations():
        row = {"iteration": i}
        for stage in ("explore", "select", "regenerate", "update", "eval"):
            rec = run.store.commit_record(i, stage)
            if rec:
                row[stage] = ("ok" if is_done(run, i, stage) else "stale", rec["finished_at"] - rec["started_at"])
            elif run.store.data_files(i, stage):
                row[stage] = ("partial", None)
            else:
                row[stage] = ("-", None)
        rows.append(row)
    return rows
