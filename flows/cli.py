"""The `sol-rl` command.

Every failure a user can cause or meet is one sentence (tasks/errors.py) with exit code 2
(bad input) or 1 (environment); `--debug` shows the traceback. Ctrl-C / SIGTERM stop a run at
the next safe point (within a solver step or a training micro-batch), commit nothing half-done
and say how to resume.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Sol-RL: FP4 explore, BF16 train. Runs, inspects and verifies RL post-training runs of flow models.",
)
console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, soft_wrap=True)
STATE = {"debug": False}


@app.callback()
def main(
    debug: bool = typer.Option(
        False, "--debug", help="show full tracebacks instead of one-sentence errors (also SOLRL_DEBUG=1)"
    ),
):
    """Sol-RL: FP4 explore, BF16 train."""
    from solrl.settings import settings

    STATE["debug"] = debug or settings().debug


def _fail(message: str, code: int = 2) -> None:
    from rich.markup import escape

    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False)  # a message may hold [brackets]
    raise typer.Exit(code)


@contextmanager
def _errors(resume: str = ""):
    """Known failures as one sentence and exit code 2/1; bugs keep their traceback."""
    try:
        yield
    except typer.Exit:
        raise
    except Exception as e:  # noqa: BLE001 - classified below, re-raised when unknown
        from tasks.errors import explain

        known = explain(e, resume)
        if known is None or STATE["debug"]:
            raise
        _fail(known[1], known[0])


def _open(run_id: str, run_root: str | None):
    from storage.store import join
    from tasks.run import open_run
    from tasks.run import run_root as root_of_runs

    # A run id under --run-root, or the run's own location (an absolute path or an s3:// URL).
    uri = run_id if ("://" in run_id or Path(run_id).is_absolute()) else join(root_of_runs(run_root), run_id)
    with _errors():
        return open_run(uri)


@app.command()
def run(
    config: str = typer.Argument(..., help="YAML config path, or a preset name: shapes, shapes-long, flux, sd35, sana"),
    run_id: str = typer.Option(
        None,
        "--run-id",
        help="run id; an existing one is resumed (same config required). Default: <config>-<timestamp>",
    ),
    iterations: int = typer.Option(
        None, "--iterations", "-n", min=1, help="iterations to run (default: run.iterations of the config)"
    ),
    run_root: str = typer.Option(
        None,
        "--run-root",
        help="where runs live: a local folder or s3://bucket/prefix (default: $SOLRL_RUN_ROOT, then storage.run_root, then ./runs)",
    ),
    no_prefect: bool = typer.Option(
        False, "--no-prefect", help="run the same steps without Prefect (no orchestration, no artifacts)"
    ),
    take_over: bool = typer.Option(
        False, "--take-over", help="take over the run's lease when its holder looks gone (stale heartbeat)"
    ),
    cluster: str = typer.Option(
        None,
        "--cluster",
        help="run explore/regenerate shards on an existing Dask scheduler (tcp://host:8786); sets cluster.address",
    ),
    gpu_memory: str = typer.Option(
        None,
        "--gpu-memory",
        help="check the memory plan against this much GPU memory (e.g. 80GB) instead of the visible GPU's",
    ),
    no_memory_check: bool = typer.Option(
        False,
        "--no-memory-check",
        help="start even when the memory plan exceeds the GPU (also model.memory_check: false)",
    ),
):
    """Run (or resume) a Sol-RL run as the Prefect flow `sol-rl` in ephemeral mode."""
    from tasks.run import default_run_id, start_run

    rid = run_id or default_run_id(config)
    resume = (
        f"sol-rl run {config} --run-id {rid}"
        + (f" --run-root {run_root}" if run_root else "")
        + (f" --cluster {cluster}" if cluster else "")
    )
    with _errors(resume):
        # the accelerator and the memory plan checked before any weight loads; a resumed run's config validated
        run_ = start_run(
            config, rid, run_root, cluster=cluster, gpu_memory=gpu_memory, memory_check=not no_memory_check
        )
    cfg = run_.cfg
    root = run_.uri.rsplit("/", 1)[0]
    resume = f"sol-rl run {config} --run-id {rid} --run-root {root}" + (f" --cluster {cluster}" if cluster else "")
    from solrl import interrupt

    n = iterations or cfg.run.iterations
    console.print(
        f"[bold]sol-rl[/] run [cyan]{rid}[/] ({cfg.run.mode}, {n} iteration(s)) -> {run_.store.url(run_.store.root)}"
    )
    if cfg.mode.explores:
        from solrl.quant.int8 import describe_explore

        console.print(describe_explore(cfg.explore.precision, cfg.explore.backend, run_.resolved.device.split(":")[0]))
    from solrl.progress import log_to_stderr

    log_to_stderr()
    from flows import stops
    from tasks.summary import format_summary

    stops.install()  # SIGINT/SIGTERM: stop at the next safe point (flows/stops.py)
    stopped = None

    def show(summary: dict) -> None:  # as each iteration ends; rich flushes after every print
        console.print(format_summary(summary))

    try:
        with _errors(resume):
            if no_prefect:
                from tasks.stages import run_iterations

                run_iterations(run_, n, take_over, show)
            else:
                with stops.ephemeral_prefect():
                    from flows.sol_rl import on_iteration_end, sol_rl

                    with on_iteration_end(show):
                        sol_rl(run_uri=run_.uri, iterations=n, take_over=take_over)
    except interrupt.StopRequested as e:
        stopped = e
    if stopped is not None:
        err.print(stops.where_stopped(run_, n, stopped, resume), highlight=False)
        stops.fast_exit(stops.exit_code())
    console.print(
        f"artifacts: {run_.store.url(run_.store.root)}   (inspect with: sol-rl status {rid} --run-root {root})"
    )


@app.command()
def plan(
    config: str = typer.Argument(..., help="YAML config path, or a preset name: flux, sd35, sana"),
    gpu_memory: str = typer.Option(
        None, "--gpu-memory", help="also check against this much GPU memory, e.g. 80GB, 141GB, 81559MiB"
    ),
):
    """The memory plan of a GPU config, before any weight exists here: the family built at real
    size on the meta device, one update micro-batch measured; per stage, the GB of each component
    on the GPU at the stage's peak phase, the peak, and which GPUs it fits (docs/gpus.md)."""
    from solrl.config import load_config

    with _errors():
        cfg = load_config(config)
        from solrl import memplan

        memory = memplan.parse_size(gpu_memory) if gpu_memory else None
        p = memplan.plan(cfg, memory)
    console.print(
        f"memory plan of {config}: {p.family} {p.resolution} px, {p.dtype}, micro_batch {cfg.nft.micro_batch}, "
        f"gradient_checkpointing {cfg.nft.gradient_checkpointing}, lora_bf16 {cfg.nft.lora_bf16}, low_memory {cfg.model.low_memory} (GB = 10^9 bytes)",
        highlight=False,
        markup=False,
    )
    console.print(memplan.format_plan(p), highlight=False, markup=False)


@app.command()
def status(
    run_id: str,
    run_root: str = typer.Option(None, "--run-root", help="where runs live (default ./runs)"),
    gpus: int = typer.Option(
        None, "--gpus", help="show the GPU assignment for a node with this many GPUs (default: the GPUs visible here)"
    ),
):
    """Iterations x stages: commit state, stage times and the worker that committed each; the
    GPU assignment of the run's cluster settings (which process owns which GPU)."""
    from tasks.stages import ITERATION_STAGES
    from tasks.status import status as run_status

    r = _open(run_id, run_root)
    rows = run_status(r)
    t = Table(title=f"{run_id} ({r.cfg.run.mode})")
    t.add_column("iteration", justify="right")
    stages = [s for s in ITERATION_STAGES if any(row[s][0] != "-" for row in rows)]
    for stage in stages:
        t.add_column(stage)
    t.add_column("eval gain (± SE)")
    for row in rows:
        cells = []
        for stage in stages:
            state, secs, _ = row[stage]
            colour = {"ok": "green", "partial": "yellow", "stale": "red", "damaged": "red"}.get(state, "dim")
            cells.append(f"[{colour}]{state}[/]" + (f" {secs:.1f}s" if secs is not None else ""))
        t.add_row(str(row["iteration"]), *cells, row["headline"])
    console.print(t)
    engine = r.store.read_json(r.store.path("run.json")).get("explore_engine")
    if engine:  # what `auto` and the CPU turned the explore into where the run was made (not hashed)
        keys = ["precision", *sorted(k for k in engine if k != "precision")]
        console.print("explore engine: " + ", ".join(f"{k} {engine[k]}" for k in keys), highlight=False)
    for stage in stages:  # which processes (this one, or Dask workers) computed each stage
        workers = sorted({w for row in rows for w in row[stage][2] if w})
        if workers:
            console.print(f"{stage}: computed by {', '.join(workers)}", highlight=False)
    from solrl.errors import ConfigError
    from solrl.gpus import for_config, format_gpu_assignment, visible_gpus

    try:
        console.print(
            format_gpu_assignment(for_config(r.cfg, visible_gpus() if gpus is None else gpus)), highlight=False
        )
    except ConfigError as e:
        console.print(f"GPU assignment: {e}", highlight=False)


@app.command()
def inspect(
    run_id: str,
    iteration: int = typer.Option(..., "--iteration", "-i", help="iteration to show"),
    prompt: int = typer.Option(None, "--prompt", "-p", help="only this prompt_id"),
    run_root: str = typer.Option(None, "--run-root"),
    limit: int = typer.Option(200, help="rows to print at most"),
    images: Path = typer.Option(
        None,
        "--images",
        help="also write, per prompt, a PNG of every explored preview in proxy-rank order (selected marked) beside the regenerations, into this folder",
    ),
):
    """The seed ranking of an iteration (DuckDB over the committed Parquet): seed, proxy rank,
    proxy reward, regenerated reward, side."""
    from storage.queries import seed_ranking

    r = _open(run_id, run_root)
    with _errors():
        table = seed_ranking(r.store, iteration, prompt).to_pylist()
    if not table:
        _fail(
            f"iteration {iteration} of {run_id} has no rows for prompt {prompt}: prompt "
            f"ids of this iteration are listed by `sol-rl inspect {run_id} -i {iteration}`"
        )
    shown = table[:limit]
    for pid in dict.fromkeys(row["prompt_id"] for row in shown):
        rows = [row for row in shown if row["prompt_id"] == pid]
        t = Table(title=f"iteration {iteration}, prompt {pid}: {rows[0]['prompt']!r}", title_justify="left")
        for c, justify in (
            ("proxy rank", "right"),
            ("seed", "right"),
            ("proxy reward", "right"),
            ("regenerated", "right"),
            ("side", "left"),
        ):
            t.add_column(c, justify=justify, no_wrap=True)
        for row in rows:
            regen = "" if row["regenerated_reward"] is None else f"{row['regenerated_reward']:.4f}"
            t.add_row(str(row["proxy_rank"]), str(row["seed"]), f"{row['proxy_reward']:.4f}", regen, row["side"] or "")
        console.print(t)
    if len(table) > limit:
        console.print(f"... {len(table) - limit} more rows (use --limit or --prompt)")
    if images is not None:
        from storage.report import fig_previews, save

        images.mkdir(parents=True, exist_ok=True)
        for pid in dict.fromkeys(row["prompt_id"] for row in table):
            path = images / f"iter{iteration:05d}-prompt{pid}.png"
            save(fig_previews(r.store, iteration, pid), path)
            console.print(f"wrote {path}")


@app.command()
def verify(run_id: str, run_root: str = typer.Option(None, "--run-root")):
    """Re-hash every committed file, check no commit is stale, re-run the selection SQL and
    compare, check that the regenerated seeds are the selected seeds. Exit 1 on any mismatch."""
    from tasks.status import verify as run_verify

    r = _open(run_id, run_root)
    with _errors():
        checked, problems = run_verify(r)
    for p in problems:
        console.print(f"[red]MISMATCH[/] {p}", highlight=False)
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
    """Figures of a run (rewards and paired gains, fidelity, stage times, losses, image grids) as
    PNG plus an index.html, from committed artifacts only; no notebook server needed."""
    from storage.report import write_report

    r = _open(run_id, run_root)
    with _errors():
        pngs = write_report(r.store, out)
    console.print(f"wrote {len(pngs)} figures and {out / 'index.html'}")


@app.command("export-lora")
def export_lora(
    run_id: str,
    out: Path = typer.Option(..., "--out", "-o", help="folder for pytorch_lora_weights.safetensors"),
    ema: bool = typer.Option(
        False, "--ema", help="export the EMA adapter (what evaluation uses) instead of the trained one"
    ),
    iteration: int = typer.Option(None, "--iteration", "-i", help="the committed update to export (default: the last)"),
    run_root: str = typer.Option(None, "--run-root"),
):
    """Write a run's LoRA adapter in the diffusers format: load it with
    `pipeline.load_lora_weights(OUT)` into the family's pipeline (shapes exports for FLUX)."""
    from tasks.export import export_lora as export

    r = _open(run_id, run_root)
    with _errors():
        path, pipeline, i = export(r, out, ema, iteration)
    console.print(
        f"wrote the {'EMA' if ema else 'trained'} adapter of iteration {i} to {path} (load with {pipeline}.load_lora_weights)"
    )


@app.command()
def smoke(
    config: str = typer.Argument(..., help="YAML config path, or a preset name: flux, sd35, sana, shapes"),
    run_root: str = typer.Option(
        None,
        "--run-root",
        help="where the smoke run goes (default: $SOLRL_RUN_ROOT, then storage.run_root, then ./runs)",
    ),
    run_id: str = typer.Option(None, "--run-id", help="default: smoke-<config>-<timestamp>"),
    json_out: Path = typer.Option(
        None, "--json", help="also write the result (per stage: seconds, peak and predicted bytes) to this JSON file"
    ),
):
    """What to run first on a new GPU: the config's model, backend and rewards on one prompt x 24
    seeds and one update, a SIGKILL in the middle of regenerate and the resume, `verify`, and per
    stage torch.cuda.max_memory_allocated beside the memory plan's predicted peak. Exit 0 when
    the kill, the resume and verify all behaved; 1 otherwise."""
    from solrl.config import load_config

    with _errors():
        cfg = load_config(config)
        from solrl.accelerator import check_accelerator

        check_accelerator(cfg)  # before anything loads, as `run` does
    from tasks.run import default_run_id
    from tasks.run import run_root as root_of_runs

    root = root_of_runs(run_root, cfg)
    rid = run_id or f"smoke-{default_run_id(config)}"
    from solrl.progress import log_to_stderr
    from tasks.smoke import format_rows
    from tasks.smoke import smoke as run_smoke

    log_to_stderr()
    with _errors(f"sol-rl smoke {config} --run-root {root}"):
        result = run_smoke(config, root, rid, log=lambda s: err.print(s, highlight=False))
    console.print(
        f"[bold]sol-rl smoke[/] {config}: 1 prompt x 24 seeds, one update -> {result.run_uri}", highlight=False
    )
    console.print(f"device: {result.device}" + (f"; {result.backend}" if result.backend else ""), highlight=False)
    t = Table(
        title="per stage: peak accelerator memory (torch.cuda.max_memory_allocated, reset per stage) and the memory plan"
    )
    for c, justify in (
        ("stage", "left"),
        ("process", "left"),
        ("seconds", "right"),
        ("max allocated GB", "right"),
        ("plan GB", "right"),
        ("measured / plan", "right"),
    ):
        t.add_column(c, justify=justify)
    for row in format_rows(result):
        t.add_row(*row)
    console.print(t)
    if result.plan_note:
        console.print(f"plan: {result.plan_note}", highlight=False)
    console.print(
        f"SIGKILL mid-regenerate: {'yes' if result.killed else 'NO'}; resume recomputed regenerate: {'yes' if result.resumed_regenerate else 'NO'}",
        highlight=False,
    )
    for p in result.problems:
        console.print(f"[red]PROBLEM[/] {p}", highlight=False)
    console.print(
        ("[green]OK[/]" if result.ok else "[red]FAILED[/]") + f" verify checked {result.verified} committed stage(s)"
    )
    if json_out is not None:
        import dataclasses
        import json

        json_out.write_text(json.dumps({**dataclasses.asdict(result), "ok": result.ok}, indent=2) + "\n")
    if not result.ok:
        raise typer.Exit(1)


@app.command("pretrain-shapes")
def pretrain_shapes(
    hidden: int = typer.Option(192, help="transformer width (num_attention_heads x 32); the shipped model is 192"),
    steps: int = typer.Option(3000, help="optimizer steps (batch 64)"),
    seed: int = typer.Option(0, help="seed of initialisation and data"),
    out: Path = typer.Option(None, help="output folder (default: the package's shipped weights folder)"),
    compile: bool = typer.Option(
        True, help="torch.compile the training step (~1.4x faster on CPU after a ~1 min compile)"
    ),
    stats: bool = typer.Option(
        True,
        help="afterwards, measure every training prompt's base reward (prompt_stats.json: what a training pool's headroom rule reads)",
    ),
):
    """Rebuild the embedded shapes model from a seed (the shipped weights are its output)."""
    from solrl.models.shapes import write_prompt_stats
    from solrl.shapes import model as M
    from solrl.shapes.pretrain import pretrain

    target = out or M.WEIGHTS_DIR
    console.print(f"pretraining hidden={hidden} for {steps} steps -> {target}")
    meta = pretrain(
        M.ShapesModelConfig(hidden=hidden), steps, target, seed=seed, compile=compile, log=lambda s: console.print(s)
    )
    console.print(f"done in {meta['train_seconds']:.0f}s: {target / 'shapes.safetensors'}")
    if stats:
        path = write_prompt_stats(target, log=lambda s: console.print(s))
        console.print(f"per-prompt base rewards: {path}")


if __name__ == "__main__":  # pragma: no cover
    app()
