"""What a run looks like from its committed artifacts: the status table, `verify`, where a
resume would start, the run's fingerprint. Everything here reads the stage table (tasks/stages.py)."""

from __future__ import annotations

from storage.queries import read_stage, reselect

from .run import Run, plan_of
from .stages import ITERATION_STAGES, STAGES, inputs, is_done
from .summary import format_se, iteration_summary


def status(run: Run) -> list[dict]:
    """Every iteration × stage: (state, seconds, the processes that computed it), state being
    "ok", "stale", "partial", "damaged" or "-"; and, once evaluated, a one-line `headline`."""
    rows = []
    for i in run.store.iterations():
        row = {"iteration": i, "headline": ""}
        for name in ITERATION_STAGES:
            h = run.stage(i, name)
            rec, damaged = h.read_record()
            if rec:
                row[name] = (
                    "ok" if is_done(run, h, deep=False) else "stale",
                    rec["finished_at"] - rec["started_at"],
                    rec.get("workers") or [rec.get("worker", "")],
                )
            elif damaged:
                row[name] = ("damaged", None, [])
            elif h.data_files():
                row[name] = ("partial", None, [])
            else:
                row[name] = ("-", None, [])
        if row["update"][0] == "ok" and row["eval"][0] == "ok":
            s = iteration_summary(run, i)
            row["headline"] = "; ".join(
                f"{k} {g['gain']:+.4f}±{format_se(g['se'])}" for k, g in s.get("eval", {}).items()
            )
            if "audit" in s:
                row["headline"] += f"; audit ρ {s['audit']['spearman']:.2f}"
        rows.append(row)
    return rows


def verify(run: Run) -> tuple[int, list[str]]:
    """Re-hash every committed file; check every commit consumed the inputs committed now (no
    stale stage), that the stored selection equals the selection SQL over the stored explore
    rows, and that the regenerated seeds are exactly the selected ones. (checked, problems)."""
    problems: list[str] = []
    checked = 0
    handles = [run.stage(None, n) for n, s in STAGES.items() if s.scope == "run"]
    handles += [run.stage(i, n) for i in run.store.iterations() for n in ITERATION_STAGES]
    for h in handles:
        rec, damaged = h.read_record()
        if rec is None:
            if damaged:
                problems.append(damaged)
            elif h.data_files():
                problems.append(f"{h.label}: uncommitted files (a crashed stage; the next resume removes them)")
            continue
        checked += 1
        found = h.problems()
        problems += found
        if not found and rec.get("inputs") != inputs(run, h.iteration, h.name):
            problems.append(
                f"{h.label}: consumed inputs that are no longer the committed ones (stale; the next resume recomputes it)"
            )
        if not found and rec["config_hash"] != run.hash:
            problems.append(f"{h.label}: committed with another config hash")
    for i in run.store.iterations():

        def ok(name: str, i: int = i) -> bool:
            return run.stage(i, name).record is not None and not run.stage(i, name).problems()

        if run.cfg.mode.selection == "extremes" and ok("select") and ok("explore"):
            stored = read_stage(run.store, i, "select", "prompt_id, seed, side, proxy_rank, proxy_reward").to_pylist()
            again, _ = reselect(
                run.store, i, run.cfg.select.k, run.cfg.select.on_short_prompt
            )  # the reference (window) SQL
            if stored != again.select(["prompt_id", "seed", "side", "proxy_rank", "proxy_reward"]).to_pylist():
                problems.append(
                    f"iter={i:05d}/select: the stored selection differs from the selection SQL over the stored explore rows"
                )
        if ok("regenerate") and ok("select"):
            key = lambda d: (d["prompt_id"], d["seed"])  # noqa: E731
            sel = sorted(read_stage(run.store, i, "select", "prompt_id, seed").to_pylist(), key=key)
            reg = sorted(read_stage(run.store, i, "regenerate", "prompt_id, seed").to_pylist(), key=key)
            if sel != reg:
                problems.append(f"iter={i:05d}/regenerate: regenerated seeds are not exactly the selected seeds")
    return checked, problems


def next_stage(run: Run, iterations: int) -> tuple[int | None, str] | None:
    """The first stage a resume would compute: (iteration, stage), or None when all is done
    (file sizes checked, not their hashes: this answers in a moment on a large run)."""
    if run.cfg.eval.every and not is_done(run, run.stage(None, "baseline"), deep=False):
        return None, "baseline"
    for i in range(iterations):
        if not is_done(run, run.stage(i, "plan"), deep=False):
            return i, "plan"
        for name in plan_of(run, i).stages[1:]:
            if not is_done(run, run.stage(i, name), deep=False):
                return i, name
    return None


def fingerprint(run: Run) -> dict[str, str]:
    """The content id of every committed stage (volatile columns and the run id left out): two
    runs with equal fingerprints hold byte-identical rows, images, x0 and adapters."""
    out = {}
    for name, spec in STAGES.items():
        if spec.scope == "run":
            cid = run.stage(None, name).content_id()
            if cid:
                out[name] = cid
    for i in run.store.iterations():
        for name in ITERATION_STAGES:
            cid = run.stage(i, name).content_id()
            if cid:
                out[f"{i}/{name}"] = cid
    return out
