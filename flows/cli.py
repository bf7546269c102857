"""The `sol-rl` command."""

from __future__ import annotations

import logging
import os
import sys
from datetime import datetime
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Sol-RL: FP4 explore, BF16 train. Runs, inspects and verifies RL post-training runs of flow models.")
console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def _fail(message: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


def _root(run_root: str | None) -> str:
    return run_root or os.environ.get("SOLRL_RUN_ROOT") or "runs"


def _open(run_id: str, run_root: str | None):
    from storage.store import join
    from tasks.steps import open_run

    # A run id under --run-root, or the run's own location (an absolute path or an s3:// URL).
    uri = run_id if ("://" in run_id or Path(run_id).is_absolute()) else join(_root(run_root), run_id)
    try:
        return open_run(uri)
    except FileNotFoundError as e:
        _fail(str(e))


def _quiet_prefect() -> None:
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


@app.command()
def run(
    config: str = typer.Argument(..., help="YAML config path, or a preset name: shapes, flux, sd35, sana"),
    run_id: str = typer.Option(None, "--run-id", help="run id; an existing one is resumed (same config required). Default: <config>-<timestamp>"),
    iterations: int = typer.Option(None, "--iterations", "-n", min=1, help="iterations to run (default: run.iterations of the config)"),
    run_root: str = typer.Option(None, "--run-root", help="where runs live: a local folder or s3://bucket/prefix (default: $SOLRL_RUN_ROOT, then storage.run_root, then ./runs)"),
    no_prefect: bool = typer.Option(False, "--no-prefect", help="run the same steps without Prefect (no orchestration, no artifacts)"),
):
    """Run (or resume) a Sol-RL run as the Prefect flow `sol-rl` in ephemeral mode."""
    from solrl.config import ConfigError, load_config
    from storage.store import join
    from tasks.steps import ConfigMismatch, StoreError, open_run

    try:
        cfg = load_config(config)
    except ConfigError as e:
        _fail(str(e))
    root = run_root or os.environ.get("SOLRL_RUN_ROOT") or cfg.storage.run_root
    rid = run_id or f"{Path(config).stem}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    try:
        from solrl.models import check_model
        from solrl.rewards import RewardUnavailable

        check_model(cfg)
        run_ = open_run(join(root, rid), cfg)  # validates a resumed run's config before any compute
    except (ConfigMismatch, FileNotFoundError, StoreError, RewardUnavailable) as e:
        _fail(str(e))
    n = iterations or cfg.run.iterations
    console.print(f"[bold]sol-rl[/] run [cyan]{rid}[/] ({cfg.run.mode}, {n} iteration(s)) -> {run_.store.url(run_.store.root)}")
    _log_to_stderr()
    if no_prefect:
        from tasks.steps import run_steps

        summaries = []
        for i in range(n):
            s = run_steps(run_, i)
            summaries.append(s)
            _print_iteration(s)
    else:
        _quiet_prefect()
        from flows.sol_rl import sol_rl

        summaries = sol_rl(config=str(config), run_id=rid, iterations=n, run_root=root)
        for s in summaries:
            _print_iteration(s)
    console.print(f"artifacts: {run_.store.url(run_.store.root)}   (inspect with: sol-rl status {rid} --run-root {root})")


def _log_to_stderr() -> None:
    """Our own progress lines on stderr (Prefect's and httpx's chatter stays at WARNING)."""
    logger = logging.getLogger("solrl")
    if not logger.handlers:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        logger.addHandler(h)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # Prefect's root handler would print every line a second time
    logging.getLogger("httpx").setLevel(logging.WARNING)


def _print_iteration(s: dict) -> None:
    parts = [f"iteration {s['iteration']}", f"train reward {s['train_reward']:.4f}"]
    if "eval_reward" in s:
        parts.append(f"eval reward {s['eval_reward']:.4f}")
    if "fidelity" in s:
        parts.append(f"kept-set Spearman {s['fidelity']['kept_spearman']:.3f}")
    parts.append("stages " + ", ".join(f"{k} {v:.1f}s" for k, v in s["seconds"].items()))
    console.print(" | ".join(parts))


@app.command()
def status(run_id: str, run_root: str = typer.Option(None, "--run-root", help="where runs live (default ./runs)")):
    """Iterations x stages: commit state and stage times."""
    from tasks.steps import status as run_status

    r = _open(run_id, run_root)
    t = Table(title=f"{run_id} ({r.cfg.run.mode})")
    t.add_column("iteration", justify="right")
    for stage in ("explore", "select", "regenerate", "update", "eval"):
        t.add_column(stage)
    for row in run_status(r):
        cells = []
        for stage in ("explore", "select", "regenerate", "update", "eval"):
            state, secs = row[stage]
            colour = {"ok": "green", "partial": "yellow", "stale": "red"}.get(state, "dim")
            cells.append(f"[{colour}]{state}[/]" + (f" {secs:.1f}s" if secs is not None else ""))
        t.add_row(str(row["iteration"]), *cells)
    console.print(t)


@app.command()
def inspect(
    run_id: str,
    iteration: int = typer.Option(..., "--iteration", "-i", help="iteration to show"),
    prompt: int = typer.Option(None, "--prompt", "-p", help="only this prompt_id"),
    run_root: str = typer.Option(None, "--run-root"),
    limit: int = typer.Option(200, help="rows to print at most"),
):
    """The seed ranking of an iteration (DuckDB over the committed Parquet): seed, proxy rank,
    proxy reward, regenerated reward, side."""
    from storage.queries import seed_ranking

    r = _open(run_id, run_root)
    try:
        table = seed_ranking(r.store, iteration, prompt).to_pylist()
    except FileNotFoundError as e:
        _fail(str(e))
    if not table:
        _fail(f"iteration {iteration} of {run_id} has no rows for prompt {prompt}: prompt ids of this iteration are listed by `sol-rl inspect {run_id} -i {iteration}`")
    shown = table[:limit]
    for pid in dict.fromkeys(row["prompt_id"] for row in shown):
        rows = [row for row in shown if row["prompt_id"] == pid]
        t = Table(title=f"iteration {iteration}, prompt {pid}: {rows[0]['prompt']!r}", title_justify="left")
        for c, justify in (("proxy rank", "right"), ("seed", "right"), ("proxy reward", "right"), ("regenerated", "right"), ("side", "left")):
            t.add_column(c, justify=justify, no_wrap=True)
        for row in rows:
            regen = "" if row["regenerated_reward"] is None else f"{row['regenerated_reward']:.4f}"
            t.add_row(str(row["proxy_rank"]), str(row["seed"]), f"{row['proxy_reward']:.4f}", regen, row["side"] or "")
        console.print(t)
    if len(table) > limit:
        console.print(f"... {len(table) - limit} more rows (use --limit or --prompt)")


@app.command()
def verify(run_id: str, run_root: str = typer.Option(None, "--run-root")):
    """Re-hash every committed file, re-run the selection SQL and compare, check that the
    regenerated seeds are the selected seeds. Exit 1 on any mismatch."""
    from storage.queries import read_stage, reselect

    r = _open(run_id, run_root)
    problems: list[str] = []
    checked = 0
    for i in r.store.iterations():
        for stage in ("explore", "select", "regenerate", "update", "eval"):
            if r.store.commit_record(i, stage) is None:
                if r.store.data_files(i, stage):
                    problems.append(f"iter={i:05d}/{stage}: uncommitted files (a crashed stage; the next resume removes them)")
                continue
            checked += 1
            problems += r.store.verify(i, stage)
        if r.cfg.run.mode != "diffusionnft" and r.store.commit_record(i, "select") and r.store.commit_record(i, "explore") and not r.store.verify(i, "explore"):
            stored = read_stage(r.store, i, "select", "prompt_id, seed, side, proxy_rank, proxy_reward").to_pylist()
            again, _ = reselect(r.store, i, r.cfg.select.k, r.cfg.select.on_short_prompt)
            again = again.select(["prompt_id", "seed", "side", "proxy_rank", "proxy_reward"]).to_pylist()
            if stored != again:
                problems.append(f"iter={i:05d}/select: the stored selection differs from the selection SQL over the stored explore rows")
        if r.store.commit_record(i, "regenerate") and r.store.commit_record(i, "select") and not r.store.verify(i, "regenerate"):
            sel = sorted(read_stage(r.store, i, "select", "prompt_id, seed").to_pylist(), key=lambda d: (d["prompt_id"], d["seed"]))
            reg = sorted(read_stage(r.store, i, "regenerate", "prompt_id, seed").to_pylist(), key=lambda d: (d["prompt_id"], d["seed"]))
            if sel != reg:
                problems.append(f"iter={i:05d}/regenerate: regenerated seeds are not exactly the selected seeds")
    for p in problems:
        console.print(f"[red]MISMATCH[/] {p}")
    if problems:
        console.print(f"{len(problems)} problem(s) in {checked} committed stage(s) of {run_id}")
        raise typer.Exit(1)
    console.print(f"[green]OK[/] {checked} committed stage(s) of {run_id} verified")


@app.command()
def report(
    run_id: str,
    out: Path = typer.Option(..., "--out", "-o", help="folder for the PNG figures and index.html"),
    run_root: str = typer.Option(None, "--run-root"),
):
    """Figures of a run (rewards, fidelity, stage times, losses, image grids) as PNG plus an
    index.html, from committed artifacts only; no notebook server needed."""
    from storage.report import write_report

    r = _open(run_id, run_root)
    try:
        pngs = write_report(r.store, out)
    except FileNotFoundError as e:
        _fail(str(e))
    console.print(f"wrote {len(pngs)} figures and {out / 'index.html'}")


@app.command("export-lora")
def export_lora(
    run_id: str,
    out: Path = typer.Option(..., "--out", "-o", help="folder for pytorch_lora_weights.safetensors"),
    ema: bool = typer.Option(False, "--ema", help="export the EMA adapter (what evaluation uses) instead of the trained one"),
    iteration: int = typer.Option(None, "--iteration", "-i", help="the committed update to export (default: the last)"),
    run_root: str = typer.Option(None, "--run-root"),
):
    """Write a run's LoRA adapter in the diffusers format: load it with
    `pipeline.load_lora_weights(OUT)` into the family's pipeline (shapes exports for FLUX)."""
    import json as _json

    from safetensors.torch import load

    from solrl.models.diffusers_base import export_diffusers_lora
    from storage.store import join

    r = _open(run_id, run_root)
    done = [i for i in r.store.iterations() if r.store.commit_record(i, "update")]
    if not done:
        _fail(f"run {run_id} has no committed update yet: run at least one iteration first")
    i = done[-1] if iteration is None else iteration
    if i not in done:
        _fail(f"iteration {i} of run {run_id} has no committed update: choose one of {done}")
    d = join(r.store.stage_dir(i, "update"), "state", "ema" if ema else "policy")
    tensors = load(r.store.read_bytes(join(d, "adapter_model.safetensors")))
    lora = _json.loads(r.store.read_bytes(join(d, "adapter_config.json")))
    pipeline = {"shapes": "FluxPipeline", "flux": "FluxPipeline", "sd3": "StableDiffusion3Pipeline", "sana": "SanaPipeline"}[r.cfg.model.family]
    path = export_diffusers_lora(pipeline, tensors, out, lora["r"], lora["lora_alpha"], sorted(lora["target_modules"]))
    console.print(f"wrote the {'EMA' if ema else 'trained'} adapter of iteration {i} to {path} (load with {pipeline}.load_lora_weights)")


@app.command("pretrain-shapes")
def pretrain_shapes(
    hidden: int = typer.Option(192, help="transformer width (num_attention_heads x 32); the shipped model is 192"),
    steps: int = typer.Option(3000, help="optimizer steps (batch 64)"),
    seed: int = typer.Option(0, help="seed of initialisation and data"),
    out: Path = typer.Option(None, help="output folder (default: the package's shipped weights folder)"),
    compile: bool = typer.Option(True, help="torch.compile the training step (~1.4x faster on CPU after a ~1 min compile)"),
):
    """Rebuild the embedded shapes model from a seed (the shipped weights are its output)."""
    from solrl.shapes import model as M
    from solrl.shapes.pretrain import pretrain

    target = out or M.WEIGHTS_DIR
    console.print(f"pretraining hidden={hidden} for {steps} steps -> {target}")
    meta = pretrain(M.ShapesModelConfig(hidden=hidden), steps, target, seed=seed, compile=compile, log=lambda s: console.print(s))
    console.print(f"done in {meta['train_seconds']:.0f}s: {target / 'shapes.safetensors'}")


if __name__ == "__main__":  # pragma: no cover
    app()
