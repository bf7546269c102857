"""A committed iteration in a few numbers: the line `sol-rl run` prints as each iteration ends,
the status table's headline, the flow's artifacts, the benchmarks' curves."""

from __future__ import annotations

from solrl.fidelity import kept_set_metrics
from storage.queries import paired_gains, read_stage

from .run import Run, plan_of


def iteration_summary(run: Run, iteration: int) -> dict:
    """Headline numbers of a committed iteration (the per-iteration line, artifacts, status)."""
    metrics = read_stage(run.store, iteration, "update").to_pylist()
    last = metrics[-1]
    regen = read_stage(
        run.store, iteration, "regenerate", "prompt_id, prompt, seed, side, proxy_rank, proxy_reward, reward"
    ).to_pydict()
    out = {
        "iteration": iteration,
        "train_reward": last["reward_mean"],
        "loss": sum(m["loss"] for m in metrics) / len(metrics),
        "optimizer_step": int(last["optimizer_step"]),
        "rows": regen,
        "seconds": {k[len("seconds_") :]: v for k, v in last.items() if k.startswith("seconds_") and v == v},
    }
    if run.cfg.mode.has_proxy:
        out["fidelity"] = kept_set_metrics(regen["proxy_reward"], regen["reward"], regen["side"])
    audit = run.stage(iteration, "audit").record
    if audit:
        out["audit"] = audit.get("fidelity", {})
        out["seconds"]["audit"] = audit["finished_at"] - audit["started_at"]
    plan = plan_of(run, iteration)
    if plan.guard is not None:
        out["guard"] = {
            "fallback": plan.guard.fallback,
            "decision": plan.guard.decision,
            "explore": f"{plan.explore.precision}/{plan.explore.steps} steps",
        }
    ev = run.stage(iteration, "eval").record
    if ev:
        out["eval"] = paired_gains(
            run.store, iteration, "reward_shapes_strict" if "shapes_strict" in run.reward_names else None
        )
        out["seconds"]["eval"] = ev["finished_at"] - ev["started_at"]
    return out


def format_se(se: float | None) -> str:
    """A standard error for a summary line: "n/a" when one pair gives none."""
    return "n/a" if se is None else f"{se:.4f}"


def format_summary(s: dict) -> str:
    """The one line per iteration the CLI prints."""
    parts = [f"iteration {s['iteration']}", f"train reward {s['train_reward']:.4f}"]
    for name, g in s.get("eval", {}).items():
        txt = f"{name} {g['gain']:+.4f} ± {format_se(g['se'])} (n {g['n']})"
        if g.get("strict") is not None:
            txt += f", strict {g['strict_base']:.2f}→{g['strict']:.2f}"
        parts.append(txt)
    if "audit" in s:
        a = s["audit"]
        parts.append(f"audit ρ {a['spearman']:.2f} top-hit {a['top_hit']:.2f}")
    elif "fidelity" in s:
        parts.append(f"kept-set ρ {s['fidelity']['kept_spearman']:.2f}")
    if s.get("guard", {}).get("fallback"):
        parts.append(f"guard: exploring {s['guard']['explore']}")
    parts.append("stages " + ", ".join(f"{k} {v:.1f}s" for k, v in s["seconds"].items()))
    return " | ".join(parts)
