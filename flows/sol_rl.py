"""The Prefect flow `sol-rl`: a run = one `sol-rl-iteration` subflow per iteration.

    prefect deployment run sol-rl/shapes        (through a server and a process work pool)
    sol-rl run configs/shapes.yaml              (ephemeral Prefect, no server)

Tasks pass URIs, never tensors: every stage reads its inputs from the run store and commits
its outputs, so a crashed run resumes at the first stage without a valid commit. An iteration
runs the stages of its committed plan (solrl/plan.py) — the same plan `sol-rl run --no-prefect`
executes without Prefect.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.task_runners import ThreadPoolTaskRunner

from flows import stops
from flows.cluster import api_for_workers, dask_cluster, task_runner
from tasks import prefect_tasks
from tasks.run import open_run, plan_of, start_run
from tasks.summary import format_se, format_summary, iteration_summary


def _artifacts(run, iteration: int) -> dict:
    summary = iteration_summary(run, iteration)
    rows = summary["rows"]
    table = [
        {
            "prompt_id": rows["prompt_id"][i],
            "seed": str(rows["seed"][i]),
            "side": rows["side"][i],
            "proxy_rank": rows["proxy_rank"][i],
            "proxy_reward": rows["proxy_reward"][i],
            "regenerated_reward": round(rows["reward"][i], 4),
        }
        for i in range(len(rows["seed"]))
    ]
    key = f"{run.run_id.lower().replace('_', '-')}-iter-{iteration}"
    key = "".join(c if c.isalnum() or c == "-" else "-" for c in key)
    create_table_artifact(
        table,
        key=f"{key}-selection",
        description=f"Selected seeds of iteration {iteration}: proxy vs regenerated reward",
    )
    md = [
        f"## {run.run_id}: iteration {iteration}",
        "",
        f"* train reward (kept samples): **{summary['train_reward']:.4f}**, loss {summary['loss']:.4f}, optimizer step {summary['optimizer_step']}",
    ]
    for name, g in summary.get("eval", {}).items():
        strict = f"; strict accuracy {g['strict_base']:.3f} → {g['strict']:.3f}" if g.get("strict") is not None else ""
        md.append(
            f"* eval `{name}`: paired gain over the baseline **{g['gain']:+.4f} ± {format_se(g['se'])}** (SE, n = {g['n']} prompt×seed pairs){strict}"
        )
    if "audit" in summary:
        a = summary["audit"]
        md.append(
            f"* proxy fidelity (audit, all seeds of {a['prompts']:.0f} prompt(s)): Spearman {a['spearman']:.3f}, Kendall {a['kendall']:.3f}, "
            f"top-hit {a['top_hit']:.2f}, bottom-hit {a['bottom_hit']:.2f}, mean true rank "
            f"{a['mean_true_rank_top']:.1f} / {a['mean_true_rank_bottom']:.1f}, regret {a['regret']:.4f}"
        )
    elif "fidelity" in summary:
        f = summary["fidelity"]
        md.append(
            f"* proxy fidelity on the kept set: Spearman {f['kept_spearman']:.3f}, Kendall "
            f"{f['kept_kendall']:.3f}, top seeds above the median {f['top_above_median']:.2f}"
        )
    if "guard" in summary:
        g = summary["guard"]
        md.append(
            "* fidelity guard: "
            f"{'fallback, exploring ' + g['explore'] if g['fallback'] else 'configured explore'}{' — ' + g['decision'] if g['decision'] else ''}"
        )
    md += ["", "| stage | seconds |", "|---|---|"] + [f"| {k} | {v:.1f} |" for k, v in summary["seconds"].items()]
    create_markdown_artifact("\n".join(md), key=f"{key}-summary", description=f"Iteration {iteration} summary")
    return summary


# Called in this process with each iteration's summary as soon as the iteration ends (the CLI prints
# its line then, whatever stdout is: a terminal, a file, a pipe). A flow run started by a
# deployment's worker has none: its summaries are in the run's logs and artifacts.
_iteration_listeners: list[Callable[[dict], None]] = []


@contextmanager
def on_iteration_end(listener: Callable[[dict], None]):
    """Call `listener(summary)` after every iteration of a `sol_rl` flow run in this process."""
    _iteration_listeners.append(listener)
    try:
        yield
    finally:
        _iteration_listeners.remove(listener)


def _notify_iteration_end(summary: dict) -> None:
    # A function of its own: the flow's body is pickled by value when its runs go to Dask workers,
    # and must not carry the listeners (the CLI's console, with its locks) along.
    for listener in _iteration_listeners:
        listener(summary)


@flow(name="sol-rl-iteration", log_prints=True)
def sol_rl_iteration(run_uri: str, iteration: int, lease: str | None = None) -> dict:
    stops.reclaim_sigterm()
    run = open_run(run_uri)
    prefect_tasks.run_stage(run_uri, iteration, "plan", lease)
    if iteration == 0 and run.cfg.eval.every:
        prefect_tasks.run_stage(run_uri, None, "baseline", lease)
    for name in plan_of(run, iteration).stages[1:]:
        prefect_tasks.run_stage(run_uri, iteration, name, lease)
    summary = {k: v for k, v in _artifacts(run, iteration).items() if k != "rows"}
    get_run_logger().info(format_summary(summary))
    _notify_iteration_end(summary)
    return summary


@flow(name="sol-rl", log_prints=True, task_runner=ThreadPoolTaskRunner(max_workers=1))
def sol_rl(
    config: str = "configs/shapes.yaml",
    run_id: str | None = None,
    iterations: int | None = None,
    run_root: str | None = None,
    overrides: dict | None = None,
    take_over: bool = False,
    cluster: str | None = None,
    run_uri: str | None = None,
) -> list[dict]:
    """Run (or resume) a Sol-RL run: `iterations` iterations of plan -> explore -> select ->
    regenerate -> (audit ->) update (-> evaluate), artifacts under `run_root/run_id`.

    config: YAML path (relative to the checkout) or preset name; run_id: an existing id resumes
    it (default: <config>-<timestamp>); overrides: dotted keys, e.g. {"explore.n": 16};
    take_over: take over the lease of a run whose holder looks gone; cluster: an existing Dask
    scheduler (tcp://host:8786) for the explore/regenerate shards; run_uri: a run already started
    (by `sol-rl run`, which checked it before starting Prefect) instead of config/run_id/run_root."""
    stops.reclaim_sigterm()
    # start_run refuses a config that would compute something else than the run's committed stages
    run = open_run(run_uri) if run_uri else start_run(config, run_id, run_root, overrides, cluster)
    cfg, run_id = run.cfg, run.run_id
    n = iterations or cfg.run.iterations
    lease = run.acquire(take_over)
    try:
        get_run_logger().info(
            "run %s at %s: %d iteration(s), mode %s", run_id, run.store.url(run.store.root), n, cfg.run.mode
        )
        with dask_cluster(cfg.cluster, cfg.storage) as address, api_for_workers(address):
            runner = task_runner(address)
            return [sol_rl_iteration.with_options(task_runner=runner)(run.uri, i, lease.owner) for i in range(n)]
    finally:
        run.release()


if __name__ == "__main__":
    sol_rl()
