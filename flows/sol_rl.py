"""The Prefect flow `sol-rl`: a run = one `sol-rl-iteration` subflow per iteration.

    prefect deployment run sol-rl/shapes        (through a server and a process work pool)
    sol-rl run configs/shapes.yaml              (ephemeral Prefect, no server)

Tasks pass URIs, never tensors: every stage reads its inputs from the run store and commits
its outputs, so a crashed run resumes at the first stage without a valid commit.
"""

from __future__ import annotations

import os
import sys
from datetime import datetime
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.task_runners import ThreadPoolTaskRunner

# The deployment's working directory is the checkout; make its packages importable there too.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from solrl.config import load_config  # noqa: E402
from solrl.models import check_model  # noqa: E402
from storage.store import join  # noqa: E402
from tasks import prefect_tasks as T  # noqa: E402
from tasks import steps  # noqa: E402


def _artifacts(run: steps.Run, iteration: int) -> dict:
    summary = steps.iteration_summary(run, iteration)
    rows = summary["rows"]
    table = [
        {"prompt_id": rows["prompt_id"][i], "seed": str(rows["seed"][i]), "side": rows["side"][i], "proxy_rank": rows["proxy_rank"][i], "proxy_reward": rows["proxy_reward"][i], "regenerated_reward": round(rows["reward"][i], 4)}
        for i in range(len(rows["seed"]))
    ]
    key = f"{run.run_id.lower().replace('_', '-')}-iter-{iteration}"
    key = "".join(c if c.isalnum() or c == "-" else "-" for c in key)
    create_table_artifact(table, key=f"{key}-selection", description=f"Selected seeds of iteration {iteration}: proxy vs regenerated reward")
    fid = summary.get("fidelity", {})
    secs = summary["seconds"]
    md = [f"## {run.run_id}: iteration {iteration}", "", f"* train reward (regenerated, kept set): **{summary['train_reward']:.4f}**"]
    if "eval_reward" in summary:
        md.append(f"* eval reward (held-out prompts, EMA): **{summary['eval_reward']:.4f}**")
    md.append(f"* loss: {summary['loss']:.4f}")
    if fid:
        md.append(f"* proxy fidelity on the kept set: Spearman {fid['kept_spearman']:.3f}, Kendall {fid['kept_kendall']:.3f}, top seeds above the median {fid['top_above_median']:.2f}")
    md += ["", "| stage | seconds |", "|---|---|"] + [f"| {k} | {v:.1f} |" for k, v in secs.items()]
    create_markdown_artifact("\n".join(md), key=f"{key}-summary", description=f"Iteration {iteration} summary")
    return summary


# One worker thread: shards of a stage share the process's model cache, so they run in turn
# here; a DaskTaskRunner spreads them over processes/GPUs instead.
@flow(name="sol-rl-iteration", log_prints=True, task_runner=ThreadPoolTaskRunner(max_workers=1))
def sol_rl_iteration(run_uri: str, iteration: int) -> dict:
    run = steps.open_run(run_uri)
    if run.cfg.run.mode != "diffusionnft":
        T.sharded(run_uri, iteration, "explore")
    T.select(run_uri, iteration)
    T.sharded(run_uri, iteration, "regenerate")
    T.update(run_uri, iteration)
    T.evaluate(run_uri, iteration)
    summary = _artifacts(run, iteration)
    get_run_logger().info(
        "iteration %d: train reward %.4f%s, loss %.4f", iteration, summary["train_reward"],
        f", eval reward {summary['eval_reward']:.4f}" if "eval_reward" in summary else "", summary["loss"],
    )
    return {k: v for k, v in summary.items() if k != "rows"}


@flow(name="sol-rl", log_prints=True, task_runner=ThreadPoolTaskRunner(max_workers=1))
def sol_rl(config: str = "configs/shapes.yaml", run_id: str | None = None, iterations: int | None = None, run_root: str | None = None, overrides: dict | None = None) -> list[dict]:
    """Run (or resume) a Sol-RL run: `iterations` iterations of explore -> select ->
    regenerate -> update (-> evaluate), artifacts under `run_root/run_id`.

    config: YAML path (relative to the checkout) or preset name; run_id: an existing id resumes
    it (default: <config>-<timestamp>); overrides: dotted keys, e.g. {"explore.n": 16}."""
    cfg = load_config(config)
    run_id = run_id or f"{Path(config).stem}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    if overrides:
        cfg = cfg.with_overrides(**overrides)
    check_model(cfg)  # missing weights or prompt files: one sentence, before any run folder
    root = run_root or os.environ.get("SOLRL_RUN_ROOT") or cfg.storage.run_root
    run_uri = join(root, run_id)
    run = steps.open_run(run_uri, cfg)  # refuses a different config for an existing run id
    n = iterations or cfg.run.iterations
    logger = get_run_logger()
    logger.info("run %s at %s: %d iteration(s), mode %s", run_id, run.store.url(run.store.root), n, cfg.run.mode)
    return [sol_rl_iteration(run_uri, i) for i in range(n)]


if __name__ == "__main__":
    sol_rl()
