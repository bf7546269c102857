"""Shared helpers of the pipeline tests: a tiny config and the CLI as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
SOL_RL = [sys.executable, "-m", "flows.cli"]

TINY = {
    "run": {"seed": 3, "iterations": 3},
    "prompts": {"per_iteration": 2},
    "explore": {"n": 8, "steps": 3},
    "select": {"k": 4},
    "rollout": {"steps": 5},
    "nft": {"micro_batch": 8},
    "eval": {"every": 2, "held_out_prompts": 2, "train_prompts": 2, "seeds_per_prompt": 1, "steps": 4},
}


def write_config(path: Path, **sections) -> Path:
    data = {k: dict(v) for k, v in TINY.items()}
    for k, v in sections.items():
        data.setdefault(k, {}).update(v)
    path.write_text(yaml.safe_dump(data))
    return path


def cli(*args, env=None, check=True, timeout=600, **kw) -> subprocess.CompletedProcess:
    e = dict(os.environ, **(env or {}))
    p = subprocess.run(
        [*SOL_RL, *map(str, args)], cwd=REPO, env=e, capture_output=True, text=True, timeout=timeout, **kw
    )
    if check and p.returncode != 0:
        raise AssertionError(
            f"sol-rl {' '.join(map(str, args))} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
        )
    return p


def adapters(run_dir: Path, iteration: int) -> dict[str, bytes]:
    d = run_dir / f"iter={iteration:05d}" / "update" / "state"
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*.safetensors"))}


def uncommitted(run_dir: Path) -> list[str]:
    """Data files not listed in their stage's _COMMITTED.json."""
    import json

    out = []
    for stage_dir in run_dir.glob("iter=*/*"):
        commit = stage_dir / "_COMMITTED.json"
        listed = set(json.loads(commit.read_text())["files"]) if commit.exists() else set()
        for f in stage_dir.rglob("*"):
            if f.is_file() and f.name != "_COMMITTED.json" and str(f.relative_to(stage_dir)) not in listed:
                out.append(str(f))
    return out


def row_counts(run_dir: Path) -> dict[str, int]:
    import json

    out = {}
    for commit in sorted(run_dir.glob("iter=*/*/_COMMITTED.json")):
        rec = json.loads(commit.read_text())
        out[f"{commit.parent.parent.name}/{commit.parent.name}"] = sum(f.get("rows", 0) for f in rec["files"].values())
    return out


def fingerprint(uri) -> dict[str, str]:
    """Content ids of every committed stage of the run at `uri` (tasks.status.fingerprint)."""
    from tasks.run import open_run
    from tasks.status import fingerprint as of_run

    return of_run(open_run(str(uri)))


HOOKS = REPO / "tests" / "hooks"


def hooks_env(
    faults: str | None = None, pause_s: float | None = None, match: str | None = None, base: dict | None = None
) -> dict:
    """Environment for a subprocess that installs the storage test hooks at start-up
    (tests/hooks/sitecustomize.py): a fault spec (storage/faults.py) and/or a pause after data files."""
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(HOOKS), str(REPO), env.get("PYTHONPATH", "")) if p)
    if faults:
        env["SOLRL_TEST_FAULTS"] = faults
    if pause_s:
        env["SOLRL_TEST_PAUSE_AFTER_WRITE_S"] = str(pause_s)
    if match:
        env["SOLRL_TEST_PAUSE_AFTER_WRITE_MATCH"] = match
    return env
