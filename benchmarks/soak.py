"""Soak test of the commit protocol: hundreds of random storage faults and SIGKILLs over long runs.

Each run (a micro config of the shapes model, several iterations, baseline, audits, evals) is
driven to completion through a sequence of attempts; every attempt gets one random fault at a
random write point ahead of it — ENOSPC, EIO, a connection error (the run stops with an error), or
SIGKILL of the process (the attempt runs in a forked child) — until an attempt finishes. The
completed run is then compared with an uninterrupted one: content ids of every stage (rows,
images, x0, adapters; volatile columns excluded), `verify`, and no uncommitted file readable.

    python benchmarks/soak.py --runs 20 --out benchmarks/results/soak      # ~300 faults; ~15 min
    python benchmarks/soak.py --quick --out /tmp/soak                      # smoke (~1 min)
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections import Counter
from pathlib import Path

import bench_common as C

EFFECTS = ("enospc", "eio", "connection", "kill")


def micro_config(iterations: int):
    from solrl.config import RunConfig

    return RunConfig.model_validate(
        {
            "run": {"seed": 11, "iterations": iterations},
            "model": {"dtype": "float32"},
            "prompts": {"per_iteration": 2},
            "explore": {"n": 4, "steps": 1, "batch": 4},
            "select": {"k": 2},
            "rollout": {"steps": 2, "batch": 4},
            "nft": {"micro_batch": 4, "timestep_fraction": 0.5, "lr": 0.01},
            "eval": {"every": 2, "steps": 1, "held_out_prompts": 1, "train_prompts": 1, "seeds_per_prompt": 1},
            "fidelity": {"audit_prompts": 1},
        }
    )


def attempt(uri: str, cfg, iterations: int) -> None:
    from tasks.run import open_run
    from tasks.stages import run_steps

    run = open_run(uri, cfg)
    run.acquire()
    try:
        for i in range(iterations):
            run_steps(run, i)
    finally:
        run.release()


def fingerprint(uri: str) -> dict:
    from tasks.run import open_run
    from tasks.status import fingerprint as of_run

    return of_run(open_run(uri))


def count_writes(uri: str, cfg, iterations: int, log: Path) -> int:
    from storage import faults

    faults.install(f"write:0:count:{log}")
    try:
        attempt(uri, cfg, iterations)
    finally:
        faults.uninstall()
    return sum(1 for ln in log.read_text().splitlines() if ln.startswith("write "))


def one_faulty_attempt(uri: str, cfg, iterations: int, effect: str, n: int) -> str:
    """Run one attempt with the n-th write of this attempt failing by `effect`; what happened."""
    from storage import faults

    spec = f"write:{n}:{effect}"
    if effect == "kill":
        pid = os.fork()
        if pid == 0:
            faults.install(spec)
            try:
                attempt(uri, cfg, iterations)
                code = 0
            except BaseException:  # noqa: BLE001 - a fault the child did not expect
                code = 3
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL:
            return "killed"
        return "completed" if os.WEXITSTATUS(status) == 0 else "child error"
    faults.install(spec)
    try:
        attempt(uri, cfg, iterations)
        return "completed"
    except Exception as e:  # noqa: BLE001 - what the CLI would print: one sentence (exit 1), or a bug
        from tasks.errors import explain

        known = explain(e)
        return (
            "failed with one sentence"
            if known and known[0] == 1 and "\n" not in known[1]
            else f"unexplained {type(e).__name__}"
        )
    finally:
        faults.uninstall()


def main(argv=None):
    ap = C.parser(__doc__, "soak", "2 runs of 2 iterations")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--iterations", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0, help="of the fault draws")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads: must stay 1 (forked children must not wait on an OpenMP pool)",
    )
    args = ap.parse_args(argv)
    if args.threads != 1:
        ap.error("--threads must be 1: the SIGKILL faults fork the process")
    import torch

    torch.set_num_threads(1)
    if args.quick:
        args.runs, args.iterations = 2, 2
    out = Path(args.out)
    work = out / "runs"
    work.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    cfg = micro_config(args.iterations)
    t0 = time.time()
    total = count_writes(str(work / "reference"), cfg, args.iterations, work / "reference.ops")
    reference = fingerprint(str(work / "reference"))
    faults_by_kind, outcomes, runs = Counter(), Counter(), []
    from tasks.run import open_run
    from tasks.status import verify

    for r in range(args.runs):
        uri = str(work / f"soak{r:03d}")
        attempts = 0
        while True:
            effect = rng.choice(EFFECTS)
            n = rng.randint(
                1, 40
            )  # a write point soon (an update writes ~20 times: a stage restarts whole, so some attempts must pass it)
            what = one_faulty_attempt(uri, cfg, args.iterations, effect, n)
            attempts += 1
            outcomes[what] += 1
            if what == "completed":
                break
            faults_by_kind[effect] += 1
        same = fingerprint(uri) == reference
        problems = verify(open_run(uri))[1]
        stray = [str(p) for p in Path(uri).rglob(".tmp-*")]
        runs.append(
            {
                "run": r,
                "faults": attempts - 1,
                "byte_identical": same,
                "verify_problems": problems,
                "leftover_temporaries": stray,
            }
        )
        print(
            f"run {r}: {attempts - 1} faults, byte-identical {same}, verify {'OK' if not problems else problems}",
            flush=True,
        )
    res = {
        "quick": args.quick,
        "machine": C.machine(),
        "iterations": args.iterations,
        "write_points_per_run": total,
        "faults_injected": dict(faults_by_kind),
        "attempt_outcomes": dict(outcomes),
        "runs": runs,
        "runs_completed": len(runs),
        "runs_byte_identical": sum(r["byte_identical"] for r in runs),
        "runs_with_verify_problems": sum(bool(r["verify_problems"]) for r in runs),
        "wall_seconds": time.time() - t0,
    }
    rows = [[k, v] for k, v in sorted(faults_by_kind.items())] + [
        ["total faults", sum(faults_by_kind.values())],
        ["runs completed", len(runs)],
        ["runs byte-identical to the uninterrupted run", res["runs_byte_identical"]],
        ["runs with verify problems", res["runs_with_verify_problems"]],
    ]
    text = (
        f"# Soak: random faults over {args.runs} runs of {args.iterations} iterations ({total} write points each)\n\n"
        + C.md_table(["", "count"], rows)
    )
    return C.finish(out, "soak", res, text, [])


if __name__ == "__main__":
    main()
