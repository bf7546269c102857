"""The Prefect flow `sol-rl`: a run = one `sol-rl-iteration` subflow per iteration.

    prefect deployment run sol-rl/shapes        (through a server and a process work pool)
    sol-rl run configs/shapes.yaml              (ephemeral Prefect, no server)

Tasks pass URIs, never tensors: every stage reads its inputs from the run store and commits
its outputs, so a crashed run resumes at the first stage without a valid commit. An iteration
runs the stages of its committed plan (solrl/plan.py) — the same plan `sol-rl run --no-prefect`
executes without Prefect.
"""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.task_runners import ThreadPoolTaskRunner

# The deployment's working directory is the checkout; make its packages importable there too.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flows import stops  # noqa: E402
from flows.cluster import api_for_workers, dask_cluster, task_runner  # noqa: E402
from solrl.config import load_config  # noqa: E402
from solrl.models import check_model  # noqa: E402
from solrl.settings import settings  # noqa: E402
from storage.store import join  # noqa: E402
from tasks import prefect_tasks as T  # noqa: E402
from tasks import steps  # noqa: E402
from tasks.run import open_run  # noqa: E402
from tasks.status import format_summary, iteration_summary  # noqa: E402


def _artifacts(run, iteration: int) -> dict:
    summary = iteration_summary(run, iteration)
    rows = summary["rows"]
    table = [
        {"prompt_id": rows["prompt_id"][i], "seed": str(rows["seed"][i]), "side": rows["side"][i], "proxy_rank": rows["proxy_rank"][i], "proxy_reward": rows["proxy_reward"][i], "regenerated_reward": round(rows["reward"][i], 4)}
        for i in range(len(rows["seed"]))
    ]
    key = f"{run.run_id.lower().replace('_', '-')}-iter-{iteration}"
    key = "".join(c if c.isalnum() or c == "-" else "-" for c in key)
    create_table_artifact(table, key=f"{key}-selection", description=f"Selected seeds of iteration {iteration}: proxy vs regenerated reward")
    md = [f"## {run.run_id}: iteration {iteration}", "", f"* train reward (kept samples): **{summary['train_reward']:.4f}**, loss {summary['loss']:.4f}, optimizer step {summary['optimizer_step']}"]
    for name, g in summary.get("eval", {}).items():
        strict = f"; strict accuracy {g['strict_base']:.3f} → {g['strict']:.3f}" if g.get("strict") is not None else ""
        md.append(f"* eval `{name}`: paired gain over the baseline **{g['gain']:+.4f} ± {g['se']:.4f}** (SE, n = {g['n']} prompt×seed pairs){strict}")
    if "audit" in summary:
        a = summary["audit"]
        md.append(f"* proxy fidelity (audit, all seeds of {a['prompts']:.0f} prompt(s)): Spearman {a['spearman']:.3f}, Kendall {a['kendall']:.3f}, "
                  f"top-hit {a['top_hit']:.2f}, bottom-hit {a['bottom_hit']:.2f}, mean true rank {a['mean_true_rank_top']:.1f} / {a['mean_true_rank_bottom']:.1f}, regret {a['regret']:.4f}")
    elif "fidelity" in summary:
        f = summary["fidelity"]
        md.append(f"* proxy fidelity on the kept set: Spearman {f['kept_spearman']:.3f}, Kendall {f['kept_kendall']:.3f}, top seeds above the median {f['top_above_median']:.2f}")
    if "guard" in summary:
        g = summary["guard"]
        md.append(f"* fidelity guard: {'fallback, exploring ' + g['explore'] if g['fallback'] else 'configured explore'}{' — ' + g['decision'] if g['decision'] else ''}")
    md += ["", "| stage | seconds |", "|---|---|"] + [f"| {k} | {v:.1f} |" for k, v in summary["seconds"].items()]
    create_markdown_artifact("\n".join(md), key=f"{key}-summary", description=f"Iteration {iteration} summary")
    return summary


@flow(name="sol-rl-iteration", log_prints=True)
def sol_rl_iteration(run_uri: str, iteration: int, lease: str | None = None) -> dict:
    stops.reclaim_sigterm()
    run = open_run(run_uri)
    T.run_stage(run_uri, iteration, "plan", lease)
    if iteration == 0 and run.cfg.eval.every:
        T.run_stage(run_uri, None, "baseline", lease)
    for name in steps.plan_of(run, iteration).stages[1:]:
        T.run_stage(run_uri, iteration, name, lease)
    summary = _artifacts(run, iteration)
    get_run_logger().info(format_summary(summary))
    return {k: v for k, v in summary.items() if k != "rows"}


@flow(name="sol-rl", log_prints=True, task_runner=ThreadPoolTaskRunner(max_workers=1))
def sol_rl(config: str = "configs/shapes.yaml", run_id: str | None = None, iterations: int | None = None, run_root: str | None = None,
           overrides: dict | None = None, take_over: bool = False, cluster: str | None = None) -> list[dict]:
    """Run (or resume) a Sol-RL run: `iterations` iterations of plan -> explore -> select ->
    regenerate -> (audit ->) update (-> evaluate), artifacts under `run_root/run_id`.

    config: YAML path (relative to the checkout) or preset name; run_id: an existing id resumes
    it (default: <config>-<timestamp>); overrides: dotted keys, e.g. {"explore.n": 16};
    take_over: take over the lease of a run whose holder looks gone; cluster: an existing Dask
    scheduler (tcp://host:8786) for the explore/regenerate shards."""
    stops.reclaim_sigterm()
    cfg = load_config(config)
    run_id = run_id or f"{Path(config).stem}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    if cluster:
        overrides = {**(overrides or {}), "cluster.address": cluster, "cluster.workers": 0}
    if overrides:
        cfg = cfg.with_overrides(**overrides)
    check_model(cfg)  # missing weights or prompt files: one sentence, before any run folder
    root = run_root or settings().run_root or cfg.storage.run_root
    run = open_run(join(root, run_id), cfg)  # refuses a config that would compute something else
    n = iterations or cfg.run.iterations
    lease = run.acquire(take_over)
    try:
        get_run_logger().info("run %s at %s: %d iteration(s), mode %s", run_id, run.store.url(run.store.root), n, cfg.run.mode)
        with dask_cluster(cfg.cluster) as address, api_for_workers(address):
            runner = task_runner(address)
            return [sol_rl_iteration.with_options(task_runner=runner)(run.uri, i, lease.owner) for i in range(n)]
    finally:
        run.release()


if __name__ == "__main__":
    sol_rl()
