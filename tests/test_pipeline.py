"""The pipeline end to end: the `sol-rl` flow in ephemeral Prefect, resume after SIGKILL in each
stage, a corrupted commit, config mismatch, and the inspect/verify/status commands."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from pipeline_helpers import REPO, SOL_RL, adapters, cli, fingerprint, hooks_env, row_counts, uncommitted, write_config

pytestmark = pytest.mark.timeout(1500)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    """(a) three iterations, uninterrupted, through the Prefect flow."""
    root = tmp_path_factory.mktemp("runs")
    cfg = write_config(root / "tiny.yaml")
    p = cli("run", cfg, "--run-id", "base", "--run-root", root)
    assert "iteration 2" in p.stdout
    return root, cfg


def test_uninterrupted_run(baseline):
    root, _ = baseline
    run = root / "base"
    meta = json.loads((run / "run.json").read_text())
    assert meta["config"]["explore"]["n"] == 8 and len(meta["config_hash"]) == 64
    counts = row_counts(run)
    for i in range(3):
        assert counts[f"iter={i:05d}/explore"] == 2 * 8
        assert counts[f"iter={i:05d}/select"] == 2 * 4
        assert counts[f"iter={i:05d}/regenerate"] == 2 * 4
        assert counts[f"iter={i:05d}/update"] == 1
    assert "iter=00000/eval" in counts and "iter=00002/eval" in counts and "iter=00001/eval" not in counts
    baseline_rows = sum(
        f["rows"] for f in json.loads((run / "baseline" / "_COMMITTED.json").read_text())["files"].values()
    )
    assert (
        baseline_rows == counts["iter=00000/eval"] == (2 + 2) * 1
    )  # 2 train + 2 held-out prompts x 1 seed, the same pairs
    assert meta["resolved"]["dtype"] in ("bfloat16", "float32")
    assert uncommitted(run) == []
    assert len(adapters(run, 2)) == 4  # policy, old, ema, optimizer
    out = cli("verify", "base", "--run-root", root).stdout
    assert "OK" in out
    status = cli("status", "base", "--run-root", root).stdout
    assert status.count("ok") >= 3 * 5 + 2
    assert "explore engine: precision nvfp4, backend emulated, output float32" in status  # run.json's record
    ranking = cli("inspect", "base", "-i", "1", "--run-root", root).stdout
    assert "top" in ranking and "bottom" in ranking and "proxy rank" in ranking


def _kill_when(args, watch: Path, env: dict) -> None:
    """Start `sol-rl run`, SIGKILL its whole process group once `watch` exists."""
    proc = subprocess.Popen(
        [*SOL_RL, *map(str, args)],
        cwd=REPO,
        env=dict(os.environ, **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.time() + 600
    try:
        while not watch.exists():
            if proc.poll() is not None:
                raise AssertionError(f"run ended before {watch} appeared:\n{proc.stdout.read().decode()[-3000:]}")
            if time.time() > deadline:
                raise AssertionError(f"{watch} never appeared")
            time.sleep(0.05)  # polling the file system for the stage's first data file
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.mark.parametrize(
    "stage,first_file",
    [
        ("update", "state/policy/adapter_model.safetensors"),
    ],
)
def test_sigkill_then_resume_is_bit_identical(baseline, tmp_path, stage, first_file):
    """(b) the whole process group (the CLI, the flow, Prefect's server) killed during a stage of
    iteration 1, resumed with `sol-rl run` on the same id. (SIGKILL at every kind of write
    point, in-process: tests/test_reliability.py.)"""
    root, cfg = baseline
    watch = tmp_path / "crash" / "iter=00001" / stage / first_file
    # the pause holds the stage between its first data file and its commit, so the kill lands there
    _kill_when(
        ["run", cfg, "--run-id", "crash", "--run-root", tmp_path],
        watch,
        hooks_env(pause_s=2, match=f"iter=00001/{stage}/"),
    )
    stage_dir = tmp_path / "crash" / "iter=00001" / stage
    assert watch.exists() and not (stage_dir / "_COMMITTED.json").exists()
    assert cli("verify", "crash", "--run-root", tmp_path, check=False).returncode == 1  # the partial stage is reported
    cli("run", cfg, "--run-id", "crash", "--run-root", tmp_path)
    assert adapters(tmp_path / "crash", 2) == adapters(root / "base", 2)
    assert fingerprint(tmp_path / "crash") == fingerprint(root / "base")
    assert uncommitted(tmp_path / "crash") == []


def test_corrupted_commit_is_reported_and_recomputed(baseline, tmp_path):
    """(c) a committed file changed on disk: verify fails, the next resume recomputes it."""
    root, cfg = baseline
    run = tmp_path / "base"
    shutil.copytree(root / "base", run)
    target = run / "iter=00001" / "regenerate" / "part-00000.parquet"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    p = cli("verify", "base", "--run-root", tmp_path, check=False)
    assert p.returncode == 1 and "iter=00001/regenerate/part-00000.parquet: sha256 mismatch" in p.stdout
    cli("run", cfg, "--run-id", "base", "--run-root", tmp_path, "--no-prefect")
    assert "OK" in cli("verify", "base", "--run-root", tmp_path).stdout
    assert adapters(run, 2) == adapters(root / "base", 2)


def test_resume_with_other_config_is_refused(baseline, tmp_path):
    root, _ = baseline
    other = write_config(tmp_path / "other.yaml", explore={"n": 12}, nft={"lr": 0.001})
    p = cli("run", other, "--run-id", "base", "--run-root", root, check=False)
    assert p.returncode == 2
    msg = p.stderr.strip()
    assert "differing keys: explore.n, nft.lr" in msg and msg.count("\n") <= 2


def test_a_storage_error_in_update_is_retried_by_prefect_without_training_twice(baseline, tmp_path):
    """The adversarial report, end to end: the update's commit fails once with an I/O error;
    Prefect retries the task in the same process; the run completes with the adapters of an
    uninterrupted run (not a second optimizer step on top of the first)."""
    root, cfg = baseline
    p = cli(
        "run",
        cfg,
        "--run-id",
        "retry",
        "--run-root",
        tmp_path,
        env=hooks_env(faults="write@iter=00001/update/_COMMITTED:1:eio"),
    )
    assert "iteration 2" in p.stdout
    assert adapters(tmp_path / "retry", 2) == adapters(root / "base", 2)
    assert fingerprint(tmp_path / "retry") == fingerprint(root / "base")


def test_a_second_process_on_the_same_run_is_refused(baseline, tmp_path):
    root, cfg = baseline
    env = hooks_env(pause_s=2)
    first = subprocess.Popen(
        [*SOL_RL, "run", str(cfg), "--run-id", "busy", "--run-root", str(tmp_path), "--no-prefect"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 300
        while not (tmp_path / "busy" / "iter=00000" / "plan" / "plan.json").exists():
            assert first.poll() is None and time.time() < deadline
            time.sleep(0.05)  # polling the file system: the first run holds its lease once it plans
        p = cli("run", cfg, "--run-id", "busy", "--run-root", tmp_path, "--no-prefect", check=False)
        assert p.returncode == 2, p.stdout + p.stderr
        msg = " ".join(p.stderr.split())
        assert msg.startswith("error:") and f"pid {first.pid}" in msg and "Traceback" not in p.stderr
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()


@pytest.mark.parametrize("sig,target", [(signal.SIGINT, "group"), (signal.SIGTERM, "main")])
def test_a_signal_stops_the_run_cleanly_within_seconds(baseline, tmp_path, sig, target):
    """Ctrl-C (SIGINT to the process group) or a supervisor's SIGTERM to the main process only:
    the run stops at its next safe point within seconds, prints one line saying where and how to
    resume, commits nothing half-done, leaves no process (Prefect's server included), and the
    resume ends byte-identical to the uninterrupted run."""
    root, cfg = baseline
    home = tmp_path / "prefect-home"
    env = hooks_env(pause_s=1.5, match="iter=00001/explore/", base=dict(os.environ, PREFECT_HOME=str(home)))
    proc = subprocess.Popen(
        [*SOL_RL, "run", str(cfg), "--run-id", "stop", "--run-root", str(tmp_path)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    watch = tmp_path / "stop" / "iter=00001" / "explore" / "part-00000.parquet"
    deadline = time.time() + 600
    while not watch.exists():
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)  # polling the file system for a point inside iteration 1's explore
    t = time.time()
    os.killpg(proc.pid, sig) if target == "group" else os.kill(proc.pid, sig)
    out, err = proc.communicate(timeout=120)
    took = time.time() - t
    assert proc.returncode == 128 + sig and took < 15, (proc.returncode, took, err[-2000:])
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln[:2].isdigit()]  # progress lines start with a time
    assert (
        len(lines) == 1
        and lines[0].startswith(f"stopped by {sig.name} at the explore of iteration 1")
        and "resume with" in lines[0]
    ), err[-2000:]
    assert "Traceback" not in err + out
    deadline = time.time() + 10  # the server dies with its parent (PDEATHSIG): give the kernel a moment
    while _processes_with(f"PREFECT_HOME={home}") and time.time() < deadline:
        time.sleep(0.1)  # polling the process table until the server has exited
    assert not _processes_with(f"PREFECT_HOME={home}"), "a process of this run (its Prefect server) was left behind"
    assert not (
        tmp_path / "stop" / "iter=00001" / "explore" / "_COMMITTED.json"
    ).exists()  # the stage in flight: not committed
    cli("run", cfg, "--run-id", "stop", "--run-root", tmp_path)
    assert fingerprint(tmp_path / "stop") == fingerprint(root / "base")


def _processes_with(env_entry: str) -> list[int]:
    """Pids of live processes whose environment holds `env_entry` (e.g. this test's PREFECT_HOME)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if env_entry.encode() in (d / "environ").read_bytes().split(b"\0"):
                    out.append(int(d.name))
            except OSError:
                pass
    return out
