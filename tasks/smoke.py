"""`sol-rl smoke CONFIG`: what to run first on a new GPU (or CPU) — the config's model, backend and
rewards on one prompt × 24 seeds, one update, through the run store; a SIGKILL in the middle of
regenerate and the resume; `verify`; and per stage the peak accelerator memory
(`torch.cuda.max_memory_allocated`, reset before each stage) beside the memory plan's prediction.

    first process (a child)   plan, baseline, explore, select, regenerate -> SIGKILLed at the
                              regenerate stage's first write (its samples computed, nothing committed)
    this process              resumes: removes what the child left, recomputes regenerate, then
                              audit, update, eval; then verifies every commit

The child is killed by the store's fault injection (storage/faults.py, `write@/regenerate/:1:kill`,
installed in the child; the same wrapper the reliability tests use), so the kill lands at the same point on every machine. Each
stage's peak is measured in the process that completed it: explore and select in the child;
regenerate, update and eval in the resumed process, which holds only what a resume loads (the
regenerate copy, not the explore copy beside it).

The prediction comes from `solrl.memplan.plan(cfg).peak_by_stage` when that module is present
(imported lazily; "—" otherwise), for the smoke's own config (one prompt, 24 seeds).

With Transformer Engine, this process checks the GPU's compute capability before starting the
child, which creates its CUDA context (a few hundred MB of device memory, not counted in the
child's `max_memory_allocated`) while the child runs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from solrl.config import RunConfig, load_config

SEEDS = 24
KILL_AT = "write@/regenerate/:1:kill"  # storage/faults.py: SIGKILL at the first write under regenerate/


def smoke_config(cfg: RunConfig) -> RunConfig:
    """The config's model, backend, rewards and solver on one prompt × 24 seeds, one iteration
    with one optimizer step, evaluated on one training and one held-out prompt (one seed each)."""
    k = min(cfg.select.k, SEEDS)
    over = {
        "run.iterations": 1,
        "prompts.per_iteration": 1,
        "prompts.pool": None,
        "explore.n": SEEDS,
        "explore.batch": min(cfg.explore.batch, SEEDS),
        "select.k": k,
        "rollout.batch": min(cfg.rollout.batch, SEEDS),
        "nft.steps_per_iteration": 1,
        "eval.every": 1,
        "eval.train_prompts": 1,
        "eval.held_out_prompts": 1,
        "eval.seeds_per_prompt": 1,
        "fidelity.audit_prompts": min(cfg.fidelity.audit_prompts, 1),
    }
    return cfg.with_overrides(**over)


# --- per-stage measurement (in whichever process runs the stages) ---------------------------------
def _cuda():
    import torch

    return torch.cuda if torch.cuda.is_available() else None


def measure(stage: str, fn: Callable[[], object], record: Callable[[dict], None]) -> None:
    """Run one stage; record its seconds and, on CUDA, its peak allocated bytes (the peak counter
    reset just before it)."""
    cuda = _cuda()
    if cuda is not None:
        cuda.synchronize()
        cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    fn()
    peak = None
    if cuda is not None:
        cuda.synchronize()
        peak = int(cuda.max_memory_allocated())
    record({"stage": stage, "seconds": time.perf_counter() - t0, "peak_bytes": peak, "pid": os.getpid()})


def run_measured(run, iteration: int, record: Callable[[dict], None]) -> None:
    """The iteration's plan as tasks.stages.run_steps runs it, each stage measured; stages already
    committed (a resume) are skipped and not recorded."""
    from .stages import is_done, plan_of, run_stage

    def step(name: str, iteration_of_stage: int | None) -> None:
        if is_done(run, run.stage(iteration_of_stage, name)):
            return
        measure(name, lambda: run_stage(run, iteration_of_stage, name), record)

    step("plan", iteration)
    if iteration == 0 and run.cfg.eval.every:
        step("baseline", None)
    for name in plan_of(run, iteration).stages[1:]:
        step(name, iteration)


def _appender(path: Path) -> Callable[[dict], None]:
    def record(row: dict) -> None:
        with open(path, "a") as f:  # one line per stage, flushed: the process may be killed next
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())

    return record


def _child(config_yaml: str, uri: str, records: str, kill_at: str) -> None:
    """The first process: open the run, hold its lease, run the stages until the kill."""
    from solrl.progress import log_to_stderr
    from storage import faults

    from .run import open_run

    faults.install(kill_at)  # SIGKILL at that write (storage/faults.py), logged to tell it from others
    log_to_stderr()
    run = open_run(uri, load_config(config_yaml))
    run.acquire()
    try:
        run_measured(run, 0, _appender(Path(records)))
    finally:
        run.release()


# --- the memory plan's prediction (another module; optional) ---------------------------------------
def predicted_peaks(cfg: RunConfig) -> tuple[dict[str, int] | None, str]:
    """(stage -> predicted peak bytes, None when unavailable; why not)."""
    import importlib

    try:
        memplan = importlib.import_module("solrl.memplan")  # lazily: the planner is optional here
    except ModuleNotFoundError as e:
        if e.name != "solrl.memplan":  # the module is there but something it imports is not: a bug
            raise
        return None, "no memory plan in this build (solrl.memplan)"
    try:
        plan = memplan.plan(cfg)
    except Exception as e:  # noqa: BLE001 - advisory: the smoke measures either way, and says why
        return None, f"the memory plan failed: {type(e).__name__}: {' '.join(str(e).split())[:200]}"
    return {str(k): int(v) for k, v in plan.peak_by_stage.items()}, ""


def _prediction(peaks: dict[str, int] | None, stage: str) -> int | None:
    if not peaks:
        return None
    keys = (
        [stage, "baseline/eval", "eval", "baseline"] if stage in ("baseline", "eval") else [stage]
    )  # the plan may pool the two
    return next((peaks[k] for k in keys if k in peaks), None)


# --- the command ---------------------------------------------------------------------------------
@dataclass
class SmokeResult:
    run_uri: str
    device: str
    backend: str | None  # what check_accelerator said would run (None: no Transformer Engine)
    rows: list[dict] = field(default_factory=list)  # stage, process, seconds, peak_bytes, predicted_bytes
    killed: bool = False  # the first process ended by SIGKILL mid-regenerate
    resumed_regenerate: bool = False  # the resume recomputed regenerate
    verified: int = 0  # committed stages verify checked
    problems: list[str] = field(default_factory=list)
    plan_note: str = ""

    @property
    def ok(self) -> bool:
        return self.killed and self.resumed_regenerate and not self.problems


def _device_line() -> str:
    cuda = _cuda()
    if cuda is None:
        return "CPU (no CUDA device: peak memory is not measured)"
    major, minor = cuda.get_device_capability()
    total = cuda.get_device_properties(0).total_memory
    return f"{cuda.get_device_name()} (sm_{major}{minor}, {total / 1e9:.1f} GB)"


def smoke(config: str, run_root: str, run_id: str, log: Callable[[str], None] = lambda s: None) -> SmokeResult:
    """Run the smoke test of `config` as the run `run_root`/`run_id` (see the module docstring)."""
    from solrl.accelerator import check_accelerator
    from storage.store import join

    cfg = smoke_config(load_config(config))
    backend = check_accelerator(cfg)  # one sentence, before anything loads
    from solrl.models import check_model

    from .run import open_run
    from .status import verify

    check_model(cfg)
    uri = join(run_root, run_id)
    open_run(uri, cfg)  # create it here: a bad store or config fails in this process, in one sentence
    result = SmokeResult(uri, "", backend)
    with tempfile.TemporaryDirectory(prefix="solrl-smoke-") as tmp:
        config_yaml, records = Path(tmp) / "smoke.yaml", Path(tmp) / "stages.jsonl"
        import yaml

        config_yaml.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
        log(f"first process: 1 prompt × {SEEDS} seeds until a SIGKILL at regenerate's first write")
        faults_log = (
            Path(tmp) / "faults.log"
        )  # the hook logs the write it kills at: a SIGKILL from elsewhere (the OOM killer) is told apart
        child = subprocess.run(
            [
                sys.executable,
                "-m",
                "tasks.smoke",
                "--child",
                str(config_yaml),
                uri,
                str(records),
                f"{KILL_AT}:{faults_log}",
            ]
        )
        at = faults_log.read_text().splitlines()[-1] if faults_log.exists() and faults_log.read_text().strip() else ""
        result.killed = child.returncode == -signal.SIGKILL and "/regenerate/" in at
        if not result.killed:
            why = (
                "a SIGKILL before regenerate's first write (out of host memory?)"
                if child.returncode == -signal.SIGKILL
                else f"exit code {child.returncode}"
            )
            result.problems.append(
                f"the first process ended with {why} instead of the SIGKILL at regenerate's first write"
            )
        first = [dict(r, process="first") for r in _read(records)]
        log("resuming in this process")
        resumed: list[dict] = []
        run = open_run(uri, cfg)
        run.acquire()  # the killed holder (same host, dead pid) is taken over
        try:
            run_measured(run, 0, resumed.append)
        finally:
            run.release()
    result.device = _device_line()  # after the first process: this one allocates nothing on the GPU meanwhile
    peaks, result.plan_note = predicted_peaks(cfg)
    result.resumed_regenerate = any(r["stage"] == "regenerate" for r in resumed)
    if result.killed and not result.resumed_regenerate:
        result.problems.append("the resume did not recompute regenerate")
    for r in first + [dict(r, process="resumed") for r in resumed]:
        result.rows.append({**r, "predicted_bytes": _prediction(peaks, r["stage"])})
    result.verified, problems = verify(open_run(uri))
    result.problems += problems
    return result


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def format_rows(result: SmokeResult) -> list[tuple[str, ...]]:
    """(stage, process, seconds, max allocated GB, predicted GB, measured / predicted) per stage."""
    gb = lambda b: "—" if b is None else f"{b / 1e9:.2f}"  # noqa: E731
    out = []
    for r in result.rows:
        ratio = (
            "—"
            if r["peak_bytes"] is None or not r["predicted_bytes"]
            else f"{r['peak_bytes'] / r['predicted_bytes']:.2f}"
        )
        out.append(
            (r["stage"], r["process"], f"{r['seconds']:.1f}", gb(r["peak_bytes"]), gb(r["predicted_bytes"]), ratio)
        )
    return out


if __name__ == "__main__":
    if len(sys.argv) != 6 or sys.argv[1] != "--child":
        sys.exit(
            "usage: python -m tasks.smoke --child CONFIG_YAML RUN_URI RECORDS_JSONL FAULT_SPEC (started by `sol-rl smoke`)"
        )
    _child(*sys.argv[2:])
