"""The four modes ranked with paired statistics: sol_rl vs naive_scaling vs diffusionnft vs naive_quant, and the pool size N.

Every run is the learning preset (default configs/shapes-long.yaml) under --runs-root/<variant>-seed<s>,
through the artifact store (benchmarks/learning.py runs them: resumable, lock-step). All runs render
the same evaluation (prompt, seed) pairs, whatever their mode or training seed, and each has the
same baseline (the base model on those pairs), so:

* per run and evaluated iteration: the paired gain over the baseline ± its SE over the n pairs;
* per mode: the mean gain over training seeds ± the SE over seeds;
* mode differences (sol_rl − naive_scaling, sol_rl − diffusionnft, naive_quant − sol_rl): per
  training seed, the difference of the two runs' gains on the same pairs (= the paired difference
  of their eval rewards), then mean ± SE over seeds; the half-range of the final levels is given
  only as context;
* cost per iteration: denoiser evaluations (explore N·steps per prompt, NVFP4 at --fp4-cost; rollout
  K·steps; audit; training K·times·5) and CPU seconds (stage times from the commit records);
  time-to-parity on both clocks at 25/50/75/100 % of naive_scaling's final gain, only when
  naive_scaling's curve has moved more than 5 SE above its baseline (levels within 5 SE flagged:
  crossed by noise as much as by learning; crossings are interpolated between evaluations);
* pool size: sol_rl at N = 24, 48, 96 (K = 24) on --pool-seeds;
* the winner's curse, from the audit rows (every explored seed of the first prompt regenerated in
  high precision, each iteration): for the selected top and bottom seeds, how far the proxy rank
  was from the true rank, as N grows.

    python benchmarks/convergence.py --seeds 0 1 2 --out benchmarks/results/convergence            # runs, then analysis
    python benchmarks/convergence.py --seeds 0 1 2 --only sol_rl diffusionnft --out ...               # a share of the runs (one process per core)
    python benchmarks/convergence.py --replot --out benchmarks/results/convergence                    # analysis of what is committed
    python benchmarks/convergence.py --quick --out /tmp/conv                                          # smoke (~1 min)
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import bench_common as C
import learning as L
import numpy as np

MODES = {
    "sol_rl": {"run.mode": "sol_rl"},
    "naive_scaling": {"run.mode": "naive_scaling", "explore.precision": "high"},
    "diffusionnft": {"run.mode": "diffusionnft"},
    "naive_quant": {"run.mode": "naive_quant"},
    "sol_rl_int8": {"run.mode": "sol_rl", "explore.precision": "int8"},  # W8A8 on the CPU's integer kernels
}
DIFFS = (("sol_rl", "naive_scaling"), ("sol_rl", "diffusionnft"), ("naive_quant", "sol_rl"))
PROGRESS = (0.25, 0.5, 0.75, 1.0)
COLORS = {"sol_rl": "C0", "diffusionnft": "C1", "naive_scaling": "C2", "naive_quant": "C3", "sol_rl_int8": "C4"}


def variant_specs(args, n_default: int) -> list[str]:
    out = [f"{m}:" + ",".join(f"{k}={v}" for k, v in MODES[m].items()) for m in args.modes]
    out += [
        f"sol_rl_N{n}:run.mode=sol_rl,explore.n={n}" for n in args.pools if n != n_default
    ]  # N = the config's is the sol_rl run
    return out


def se_over(vals) -> float:
    return float(np.std(vals, ddof=1) / math.sqrt(len(vals))) if len(vals) > 1 else float("nan")


def by_variant(runs: dict) -> dict[str, dict[int, list]]:
    out: dict[str, dict[int, list]] = {}
    for r in runs.values():
        out.setdefault(r["variant"], {})[r["seed"]] = r["points"]
    return out


def mode_curves(runs: dict, eval_set: str) -> dict[str, dict]:
    """Per variant, at each evaluated iteration common to its seeds: mean gain, SE over seeds,
    the mean of the runs' own paired SEs, strict accuracy, and the cumulative clocks."""
    out = {}
    for v, seeds in by_variant(runs).items():
        evals = {s: [p for p in pts if eval_set in p] for s, pts in seeds.items()}
        k = min(len(e) for e in evals.values())
        rows = []
        for j in range(k):
            ps = [evals[s][j] for s in evals]
            it = ps[0]["iteration"]
            cum = lambda key: float(np.mean([sum(q[key] for q in seeds[s] if q["iteration"] <= it) for s in seeds]))  # noqa: E731
            gains = [p[eval_set]["gain"] for p in ps]
            rows.append(
                {
                    "iteration": it,
                    "gain": float(np.mean(gains)),
                    "se_seeds": se_over(gains),
                    "se_pairs": float(np.mean([p[eval_set]["se"] for p in ps])),
                    "strict": float(np.mean([p[eval_set]["strict"] for p in ps]))
                    if ps[0][eval_set].get("strict") is not None
                    else None,
                    "strict_base": ps[0][eval_set].get("strict_base"),
                    "cpu_seconds": cum("seconds"),
                    "denoiser": cum("denoiser"),
                    "seeds": len(ps),
                }
            )
        out[v] = rows
    return out


def differences(runs: dict, eval_set: str) -> dict[str, list]:
    """a − b per training seed (same pairs), then mean ± SE over seeds, at every common eval."""
    bv = by_variant(runs)
    out = {}
    for a, b in DIFFS:
        if a not in bv or b not in bv:
            continue
        seeds = sorted(set(bv[a]) & set(bv[b]))
        if not seeds:
            continue
        pa = {s: {p["iteration"]: p[eval_set]["gain"] for p in bv[a][s] if eval_set in p} for s in seeds}
        pb = {s: {p["iteration"]: p[eval_set]["gain"] for p in bv[b][s] if eval_set in p} for s in seeds}
        its = sorted(set.intersection(*(set(pa[s]) & set(pb[s]) for s in seeds)))
        rows = []
        for it in its:
            d = [pa[s][it] - pb[s][it] for s in seeds]
            rows.append(
                {"iteration": it, "mean": float(np.mean(d)), "se_seeds": se_over(d), "per_seed": d, "seeds": len(d)}
            )
        out[f"{a} - {b}"] = rows
    return out


def first_crossing(xs, ys, target):
    for i, y in enumerate(ys):
        if y >= target:
            if i == 0:
                return xs[0]
            x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
            return x0 + (x1 - x0) * (target - y0) / (y1 - y0) if y1 != y0 else x1
    return None


def parity(curves: dict) -> dict:
    """Time for each mode to reach p × naive_scaling's final gain, on both clocks, for the
    levels where naive_scaling is more than 5 SE above its baseline; speedup = t_ns / t_mode."""
    ns = curves.get("naive_scaling")
    if not ns:
        return {}
    final = ns[-1]
    out = {"final_gain": final["gain"], "final_se_pairs": final["se_pairs"], "levels": []}
    if final["gain"] <= 5 * final["se_pairs"]:
        out["skipped"] = "naive_scaling's curve has not moved 5 SE above its baseline"
        return out
    for p in PROGRESS:
        target = p * final["gain"]
        # a level within 5 SE of the baseline is crossed early by noise as much as by learning
        row = {"progress": p, "target": target, "within_5_se": target <= 5 * final["se_pairs"]}
        for clock in ("cpu_seconds", "denoiser"):
            t_ns = first_crossing([0.0] + [r[clock] for r in ns], [0.0] + [r["gain"] for r in ns], target)
            for mode, rows in curves.items():
                if mode.startswith("sol_rl_N"):
                    continue
                t = first_crossing([0.0] + [r[clock] for r in rows], [0.0] + [r["gain"] for r in rows], target)
                row[f"{mode}_{clock}"] = t
                if mode != "naive_scaling":
                    row[f"speedup_{mode}_{clock}"] = (t_ns / t) if (t_ns and t) else None
        out["levels"].append(row)
    return out


def seed_curve(points: list, eval_set: str, clock: str) -> tuple[list, list]:
    """One run's (cumulative clock, paired gain) at its evaluated iterations, from (0, 0)."""
    xs, ys = [0.0], [0.0]
    for p in points:
        if eval_set in p:
            xs.append(sum(q[clock] for q in points if q["iteration"] <= p["iteration"]))
            ys.append(p[eval_set]["gain"])
    return xs, ys


def parity_per_seed(runs: dict, eval_set: str = "train", fractions=(0.5, 0.75, 1.0)) -> dict:
    """Time to a fixed gain that both modes reach, per training seed, then mean ± SE over seeds.

    The level is a fraction of the smaller of the two modes' final mean gains (so both reach it on
    average); per seed, each run's first crossing on its own cumulative clock (interpolated between
    evaluations), the speed-up t_naive / t_mode, and its mean ± SE over the seeds where both cross."""
    bv = by_variant(runs)
    if "naive_scaling" not in bv:
        return {}
    out = {}
    for mode in bv:
        if mode == "naive_scaling" or mode.startswith("sol_rl_N"):
            continue
        seeds = sorted(set(bv[mode]) & set(bv["naive_scaling"]))
        finals = [
            np.mean([next((p[eval_set]["gain"] for p in reversed(bv[m][s]) if eval_set in p), 0.0) for s in seeds])
            for m in (mode, "naive_scaling")
        ]
        level0 = float(min(finals))
        rows = []
        for f in fractions:
            target = f * level0
            row = {"fraction": f, "target": target, "per_seed": {}}
            for clock in ("cpu_seconds", "denoiser"):
                key = "seconds" if clock == "cpu_seconds" else "denoiser"
                sp, tm, tn = [], [], []
                for s in seeds:
                    t_m = first_crossing(*seed_curve(bv[mode][s], eval_set, key), target) if target > 0 else None
                    t_n = (
                        first_crossing(*seed_curve(bv["naive_scaling"][s], eval_set, key), target)
                        if target > 0
                        else None
                    )
                    row["per_seed"].setdefault(s, {})[clock] = {
                        "mode": t_m,
                        "naive_scaling": t_n,
                        "speedup": (t_n / t_m) if (t_m and t_n) else None,
                    }
                    if t_m and t_n:
                        sp.append(t_n / t_m)
                        tm.append(t_m)
                        tn.append(t_n)
                row[clock] = {
                    "speedup_mean": float(np.mean(sp)) if sp else None,
                    "speedup_se": se_over(sp) if sp else None,
                    "seeds_both_cross": len(sp),
                    "seeds": len(seeds),
                    "speedup_min": float(min(sp)) if sp else None,
                    "speedup_max": float(max(sp)) if sp else None,
                    "ratio_of_mean_times": float(np.mean(tn) / np.mean(tm)) if sp else None,
                }
            rows.append(row)
        out[mode] = {"final_gains": {"mode": float(finals[0]), "naive_scaling": float(finals[1])}, "levels": rows}
    return out


def cost_per_iteration(runs: dict) -> dict[str, dict]:
    out = {}
    for v, seeds in by_variant(runs).items():
        pts = [p for ps in seeds.values() for p in ps]
        out[v] = {
            "denoiser": float(np.mean([p["denoiser"] for p in pts])),
            "cpu_seconds": float(np.median([p["seconds"] for p in pts])),
            "iterations": len(pts),
        }
    return out


def winners_curse(runs_root: str, names: list[str]) -> dict[str, dict]:
    """From the audit rows of every iteration: for the proxy-selected top/bottom seeds, the mean
    |proxy rank − true rank| / N, the share whose true rank is outside the selected set's side
    (a quantisation "winner"), and the true mean rank of the top side, per N."""
    from storage.queries import read_stage
    from tasks.run import open_run

    out: dict[str, dict] = {}
    for name in names:
        run = open_run(str(Path(runs_root) / name))
        k = run.cfg.select.k
        acc = out.setdefault(
            f"N{run.cfg.explore.n}",
            {"rank_error_top": [], "rank_error_bottom": [], "false_top": [], "false_bottom": [], "true_rank_top": []},
        )
        for i in run.store.iterations():
            if run.stage(i, "audit").record is None:
                continue
            rows = read_stage(run.store, i, "audit", "prompt_id, seed, proxy, proxy_rank, reward").to_pylist()
            rows = [r for r in rows if r["proxy"] == "explore"]
            for pid in {r["prompt_id"] for r in rows}:
                mine = sorted((r for r in rows if r["prompt_id"] == pid), key=lambda r: (-r["reward"], r["seed"]))
                n = len(mine)
                true_rank = {r["seed"]: j + 1 for j, r in enumerate(mine)}
                for side, sel in (
                    ("top", [r for r in mine if r["proxy_rank"] <= k // 2]),
                    ("bottom", [r for r in mine if r["proxy_rank"] > n - k // 2]),
                ):
                    acc[f"rank_error_{side}"] += [abs(r["proxy_rank"] - true_rank[r["seed"]]) / n for r in sel]
                    wrong = [
                        true_rank[r["seed"]] > k // 2 if side == "top" else true_rank[r["seed"]] <= n - k // 2
                        for r in sel
                    ]
                    acc[f"false_{side}"] += wrong
                    if side == "top":
                        acc["true_rank_top"] += [true_rank[r["seed"]] / n for r in sel]
    return {
        n: {k: (float(np.mean(v)), se_over([float(x) for x in v]), len(v)) for k, v in d.items() if v}
        for n, d in sorted(out.items(), key=lambda kv: int(kv[0][1:]))
    }


def fidelity_trend(runs: dict) -> dict[str, dict]:
    """The audit's unbiased proxy fidelity (every explored seed of one prompt, each iteration) as
    the policy trains: per iteration mean ± SE over training seeds; the per-seed least-squares
    slope per 10 iterations, then mean ± SE over seeds; and what the audit costs next to the
    iteration it measures (its share of CPU seconds and of denoiser evaluations)."""
    out = {}
    for v, seeds in by_variant(runs).items():
        audited = {s: [p for p in pts if p.get("audit")] for s, pts in seeds.items()}
        if not all(audited.values()):
            continue
        row: dict = {"seeds": len(audited), "per_iteration": [], "slope_per_10": {}}
        its = sorted(set.intersection(*({p["iteration"] for p in ps} for ps in audited.values())))
        for it in its:
            vals = {
                m: [next(p["audit"][m] for p in ps if p["iteration"] == it) for ps in audited.values()]
                for m in ("spearman", "top_hit")
            }
            row["per_iteration"].append(
                {"iteration": it, **{m: (float(np.mean(x)), se_over(x)) for m, x in vals.items()}}
            )
        for m in ("spearman", "top_hit"):
            slopes = [
                10.0 * float(np.polyfit([p["iteration"] for p in ps], [p["audit"][m] for p in ps], 1)[0])
                for ps in audited.values()
                if len(ps) > 2
            ]
            row["slope_per_10"][m] = (float(np.mean(slopes)), se_over(slopes), len(slopes)) if slopes else None
        pts = [p for ps in seeds.values() for p in ps]
        row["audit_share_cpu"] = float(
            sum(p.get("audit_seconds", 0.0) for p in pts) / sum(p["seconds"] + p.get("audit_seconds", 0.0) for p in pts)
        )
        row["audit_share_denoiser"] = float(
            sum(p.get("audit_denoiser", 0.0) for p in pts)
            / sum(p["denoiser"] + p.get("audit_denoiser", 0.0) for p in pts)
        )
        out[v] = row
    return out


def plot(res: dict, out: Path) -> list[Path]:
    plt = C.pyplot()
    pngs = []
    fig, axes = plt.subplots(2, 3, figsize=(17, 8.5))
    for row, eval_set in enumerate(("train", "held_out")):
        curves = res["curves"][eval_set]
        for ax, clock, label in zip(
            axes[row],
            ("iteration", "cpu_seconds", "denoiser"),
            (
                "iteration",
                "CPU minutes (stages, eval excluded)",
                f"denoiser evaluations (NVFP4 forward = {res['fp4_cost']})",
            ),
        ):
            for mode, rows in curves.items():
                if mode not in COLORS:
                    continue
                x = np.array([r[clock] for r in rows]) / (60.0 if clock == "cpu_seconds" else 1.0)
                y = np.array([r["gain"] for r in rows])
                e = np.array([r["se_seeds"] for r in rows])
                ax.plot(x, y, "o-", color=COLORS[mode], ms=3, label=f"{mode} ({rows[0]['seeds'] if rows else 0} seeds)")
                if np.isfinite(e).any():
                    ax.fill_between(x, y - e, y + e, color=COLORS[mode], alpha=0.18)
            ax.axhline(0, color="0.4", lw=0.7)
            ax.set_xlabel(label)
            ax.set_ylabel(f"{eval_set}: reward − base model (paired)")
            ax.grid(alpha=0.3)
        axes[row][0].legend(fontsize=8)
    fig.suptitle("The four modes: paired gain over the base model (mean over training seeds, band ± 1 SE over seeds)")
    pngs += C.save_figure(fig, out, "convergence_modes")
    pool = {k: v for k, v in res["curves"]["train"].items() if k.startswith("sol_rl_N") or k == "sol_rl"}
    if len(pool) > 1:
        fig, axes = plt.subplots(1, 2, figsize=(13, 4.4))
        for i, (name, rows) in enumerate(sorted(pool.items(), key=lambda kv: res["pool_n"][kv[0]])):
            axes[0].errorbar(
                [r["iteration"] for r in rows],
                [r["gain"] for r in rows],
                yerr=[r["se_seeds"] for r in rows],
                marker="o",
                capsize=2,
                color=plt.cm.viridis(i / max(1, len(pool) - 1)),
                label=f"N = {res['pool_n'][name]} ({rows[0]['seeds']} seeds)",
            )
        axes[0].set_xlabel("iteration")
        axes[0].set_ylabel("train pool: paired gain")
        axes[0].legend(fontsize=8)
        axes[0].grid(alpha=0.3)
        wc = res["winners_curse"]
        ns = [int(k[1:]) for k in wc]
        for key, mk in (
            ("rank_error_top", "o-"),
            ("rank_error_bottom", "s-"),
            ("false_top", "^--"),
            ("false_bottom", "v--"),
        ):
            if all(key in wc[f"N{n}"] for n in ns):
                axes[1].errorbar(
                    ns,
                    [wc[f"N{n}"][key][0] for n in ns],
                    yerr=[wc[f"N{n}"][key][1] for n in ns],
                    fmt=mk,
                    capsize=3,
                    label=key.replace("_", " "),
                )
        axes[1].set_xlabel("pool size N (K = 24 kept)")
        axes[1].set_ylabel("share (rank error as a fraction of N)")
        axes[1].set_title("winner's curse: selected seeds whose proxy rank misleads", fontsize=9)
        axes[1].legend(fontsize=8)
        axes[1].grid(alpha=0.3)
        pngs += C.save_figure(fig, out, "convergence_pool_size")
    ft = res.get("fidelity_trend") or {}
    if ft:
        fig, axes = plt.subplots(1, 2, figsize=(13, 4.4))
        for ax, metric in zip(axes, ("spearman", "top_hit")):
            for i, (v, row) in enumerate(ft.items()):
                pi = row["per_iteration"]
                x = np.array([r["iteration"] for r in pi])
                y = np.array([r[metric][0] for r in pi])
                e = np.array([r[metric][1] for r in pi])
                c = COLORS.get(v, plt.cm.viridis(0.2 + 0.3 * i))
                ax.plot(x, y, "o-", ms=3, color=c, label=f"{v} ({row['seeds']} seeds)")
                if np.isfinite(e).any():
                    ax.fill_between(x, y - e, y + e, color=c, alpha=0.15)
            ax.set_xlabel("iteration (the policy explored and audited at that iteration)")
            ax.set_ylabel({"spearman": "Spearman ρ, proxy vs high precision", "top_hit": "top-K/2 hit rate"}[metric])
            ax.set_ylim(0, 1.02)
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=8)
        fig.suptitle(
            "Proxy fidelity while training (audit: every explored seed of one prompt; band ± 1 SE over training seeds)"
        )
        pngs += C.save_figure(fig, out, "convergence_fidelity")
    return pngs


def fmt(m, s):
    return "–" if m is None else (f"{m:+.4f} ± {s:.4f}" if s == s else f"{m:+.4f}")


def summarise(res: dict) -> str:
    lines = [f"# The four modes on {res['config']} ({res['iterations']} iterations)\n"]
    for eval_set in ("train", "held_out"):
        lines.append(f"## Paired gain over the base model, `{eval_set}` set (mean ± SE over training seeds)\n")
        curves = res["curves"][eval_set]
        its = sorted({r["iteration"] for rows in curves.values() for r in rows})
        header = ["iteration"] + list(curves)
        rows = [
            [it]
            + [next((fmt(r["gain"], r["se_seeds"]) for r in curves[m] if r["iteration"] == it), "–") for m in curves]
            for it in its
        ]
        lines += [C.md_table(header, rows), ""]
        lines.append(f"### Mode differences, `{eval_set}` (per seed on the same pairs, then mean ± SE over seeds)\n")
        d = res["differences"][eval_set]
        rows = [
            [
                name,
                r["iteration"],
                fmt(r["mean"], r["se_seeds"]),
                r["seeds"],
                ", ".join(f"{x:+.3f}" for x in r["per_seed"]),
            ]
            for name, rs in d.items()
            for r in rs[-3:]
        ]
        lines += [C.md_table(["difference", "iteration", "mean ± SE", "seeds", "per seed"], rows), ""]
    lines.append(
        "## Every run at its last evaluation (paired gain ± SE over the n pairs; strict accuracy base → run)\n"
    )
    rows = []
    for name, r in res["runs"].items():
        ev = [p for p in r["points"] if "train" in p or "held_out" in p]
        if not ev:
            continue
        last = ev[-1]
        cells = [name, last["iteration"]]
        for s in ("train", "held_out"):
            g = last.get(s)
            cells += [
                f"{g['gain']:+.4f} ± {g['se']:.4f} ({g['n']})" if g else "–",
                f"{g['strict_base']:.3f} → {g['strict']:.3f}" if g and g.get("strict") is not None else "–",
            ]
        cells += [
            f"{np.mean([p['denoiser'] for p in r['points']]):.0f}",
            f"{np.median([p['seconds'] for p in r['points']]):.1f}",
        ]
        rows.append(cells)
    lines += [
        C.md_table(
            [
                "run",
                "iteration",
                "train gain",
                "train strict",
                "held-out gain",
                "held-out strict",
                "denoiser evals / it.",
                "CPU s / it. (median)",
            ],
            rows,
        ),
        "",
    ]
    lines.append("## Cost per iteration\n")
    rows = [[m, f"{c['denoiser']:.0f}", f"{c['cpu_seconds']:.1f}"] for m, c in res["cost"].items()]
    lines += [C.md_table(["variant", "denoiser evaluations", "CPU seconds (median)"], rows), ""]
    lines.append("## Time to parity with naive_scaling (speedup = naive_scaling's time / the mode's)\n")
    rows = []
    if res["parity"].get("skipped"):
        rows.append(["–", "–", res["parity"]["skipped"], ""])
    for lv in res["parity"].get("levels", []):
        for mode in [m for m in res["curves"]["train"] if m != "naive_scaling" and not m.startswith("sol_rl_N")]:
            a, b = lv.get(f"speedup_{mode}_denoiser"), lv.get(f"speedup_{mode}_cpu_seconds")
            rows.append(
                [
                    f"{lv['progress']:.0%}" + (" (within 5 SE)" if lv["within_5_se"] else ""),
                    f"{lv['target']:+.4f}",
                    mode,
                    f"{a:.2f}× / {b:.2f}×" if a and b else "never (within the run)",
                ]
            )
    lines += [C.md_table(["progress", "target gain", "mode", "speedup: denoiser / CPU clock"], rows), ""]
    if res.get("parity_per_seed"):
        lines.append(
            "## Time to a fixed gain both modes reach, per training seed (speed-up = naive_scaling's CPU time / the mode's; mean ± SE over seeds)\n"
        )
        rows = []
        for mode, d in res["parity_per_seed"].items():
            for lv in d["levels"]:
                c = lv["cpu_seconds"]
                per = ", ".join(
                    f"{s}: " + (f"{v['cpu_seconds']['speedup']:.2f}×" if v["cpu_seconds"]["speedup"] else "–")
                    for s, v in lv["per_seed"].items()
                )
                rows.append(
                    [
                        mode,
                        f"{lv['fraction']:.0%} of {min(d['final_gains'].values()):+.4f} = {lv['target']:+.4f}",
                        f"{c['speedup_mean']:.2f} ± {c['speedup_se']:.2f}"
                        if c["speedup_mean"] and c["speedup_se"] == c["speedup_se"]
                        else ("–" if not c["speedup_mean"] else f"{c['speedup_mean']:.2f}"),
                        f"{c['seeds_both_cross']}/{c['seeds']}",
                        per,
                        f"{c['ratio_of_mean_times']:.2f}×" if c["ratio_of_mean_times"] else "–",
                    ]
                )
        lines += [
            C.md_table(
                [
                    "mode",
                    "level (of the smaller final mean gain)",
                    "CPU-clock speed-up, mean ± SE",
                    "seeds where both cross",
                    "per seed",
                    "ratio of mean times",
                ],
                rows,
            ),
            "",
        ]
    if res.get("winners_curse"):
        lines.append("## Winner's curse (audited prompt, every iteration; mean ± SE, n)\n")
        rows = [
            [n]
            + [
                f"{v[0]:.3f} ± {v[1]:.3f} ({v[2]})" if k in d else "–"
                for k, v in (
                    (k, d.get(k))
                    for k in ("rank_error_top", "false_top", "true_rank_top", "rank_error_bottom", "false_bottom")
                )
            ]
            for n, d in res["winners_curse"].items()
        ]
        lines += [
            C.md_table(
                [
                    "N",
                    "|proxy − true rank|/N, top",
                    "top seeds not in the true top-K/2",
                    "true rank/N of the top",
                    "|proxy − true rank|/N, bottom",
                    "bottom seeds not in the true bottom",
                ],
                rows,
            ),
            "",
        ]
    if res.get("fidelity_trend"):
        lines.append("## Proxy fidelity while training (audit rows; mean ± SE over training seeds)\n")
        rows = []
        for v, row in res["fidelity_trend"].items():
            pi = row["per_iteration"]
            first, last = pi[:5], pi[-5:]
            cell = lambda rs, m: f"{np.mean([r[m][0] for r in rs]):.3f}"  # noqa: E731
            sl = lambda m: (
                "–"
                if not row["slope_per_10"][m]
                else f"{row['slope_per_10'][m][0]:+.3f} ± {row['slope_per_10'][m][1]:.3f}"
            )  # noqa: E731
            rows.append(
                [
                    v,
                    row["seeds"],
                    f"{first[0]['iteration']}–{first[-1]['iteration']}: {cell(first, 'spearman')} / {cell(first, 'top_hit')}",
                    f"{last[0]['iteration']}–{last[-1]['iteration']}: {cell(last, 'spearman')} / {cell(last, 'top_hit')}",
                    sl("spearman"),
                    sl("top_hit"),
                    f"{row['audit_share_cpu']:.1%} / {row['audit_share_denoiser']:.1%}",
                ]
            )
        lines += [
            C.md_table(
                [
                    "variant",
                    "seeds",
                    "first 5 audits: ρ / top-hit",
                    "last 5 audits: ρ / top-hit",
                    "slope of ρ per 10 it.",
                    "slope of top-hit per 10 it.",
                    "audit's share of the iteration: CPU / denoiser",
                ],
                rows,
            ),
            "",
        ]
    return "\n".join(lines)


def analyse(args, runs: dict) -> dict:
    res = {
        "quick": args.quick,
        "machine": C.machine(),
        "config": args.config,
        "iterations": args.iterations,
        "fp4_cost": args.fp4_cost,
        "seeds": args.seeds,
        "runs": {k: {"variant": r["variant"], "seed": r["seed"], "points": r["points"]} for k, r in runs.items()},
    }
    res["curves"] = {s: mode_curves(runs, s) for s in ("train", "held_out")}
    res["differences"] = {s: differences(runs, s) for s in ("train", "held_out")}
    res["parity"] = parity(res["curves"]["train"])
    res["parity_per_seed"] = parity_per_seed(runs)
    res["cost"] = cost_per_iteration(runs)
    res["pool_n"] = {r["variant"]: r["run"].cfg.explore.n for r in runs.values()}
    audited = [k for k, r in runs.items() if r["variant"].startswith("sol_rl")]
    res["winners_curse"] = winners_curse(args.runs_root, audited) if audited else {}
    res["fidelity_trend"] = fidelity_trend(runs)
    return res


def main(argv=None):
    ap = C.parser(__doc__, "convergence", "2 iterations of a tiny config, 2 modes, one seed")
    ap.add_argument("--config", default="shapes-long", help="a preset name or a YAML path")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--modes", nargs="+", default=[m for m in MODES if m != "sol_rl_int8"], choices=list(MODES))
    ap.add_argument(
        "--pools",
        type=int,
        nargs="+",
        default=[24, 48, 96],
        help="sol_rl pool sizes N (the config's own N is the sol_rl run itself)",
    )
    ap.add_argument("--pool-seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--iterations", type=int, default=None, help="default: run.iterations of the config")
    ap.add_argument("--only", nargs="*", help="run only these variants (e.g. sol_rl naive_quant sol_rl_N24)")
    ap.add_argument("--runs-root", default=None, help="default: <out>/runs")
    ap.add_argument("--replot", action="store_true", help="analyse the committed runs under --runs-root, run nothing")
    ap.add_argument(
        "--fp4-cost",
        type=float,
        default=0.5,
        help="cost of an NVFP4 forward in denoiser evaluations (a Blackwell GPU: ~0.5)",
    )
    C.add_threads_arg(ap)
    args = ap.parse_args(argv)
    C.set_threads(args.threads)
    L.FP4_COST[0] = args.fp4_cost
    from solrl.config import load_config

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    args.runs_root = args.runs_root or str(out / "runs")
    base = load_config(args.config)
    if args.quick:
        base = base.with_overrides(
            **{
                "prompts.pool": 2,
                "prompts.per_iteration": 2,
                "explore.n": 8,
                "select.k": 4,
                "rollout.steps": 3,
                "explore.steps": 2,
                "eval.every": 1,
                "eval.steps": 2,
                "eval.seeds_per_prompt": 1,
                "eval.held_out_prompts": 2,
                "nft.micro_batch": 8,
            }
        )
        quick_modes = (
            args.modes if args.modes != [m for m in MODES if m != "sol_rl_int8"] else ["sol_rl", "diffusionnft"]
        )
        args.modes, args.pools, args.seeds, args.iterations = quick_modes, [4, 8], args.seeds[:1], 2
        args.pool_seeds = args.seeds
    args.iterations = args.iterations or base.run.iterations
    args.variant = variant_specs(args, base.explore.n)
    seeds_for = lambda v: args.pool_seeds if v.startswith("sol_rl_N") else args.seeds  # noqa: E731
    t0 = time.time()
    runs = {}
    for spec in args.variant:
        name = spec.split(":", 1)[0]
        if args.only and name not in args.only:
            continue
        one = type(
            "A",
            (),
            {"variant": [spec], "seeds": seeds_for(name), "iterations": args.iterations, "runs_root": args.runs_root},
        )
        runs.update(L.open_runs(one, base, None))
    if args.replot:  # what is committed, nothing computed
        from tasks.stages import is_done

        for r in runs.values():
            # at most --iterations (a study stopped mid-round: analyse the rounds every run completed)
            done = [
                i
                for i in r["run"].store.iterations()
                if i < args.iterations and is_done(r["run"], r["run"].stage(i, "update"))
            ]
            r["points"] = [L.run_point(r["run"], i) for i in done]
    else:
        L.advance(
            runs,
            args.iterations,
            lambda i: C.write_json(
                out,
                f"convergence-progress-{'-'.join(args.only or ['all'])}",
                {"round": i, "runs": {k: r["points"] for k, r in runs.items()}},
            ),
        )
    res = analyse(args, runs)
    res["wall_seconds"] = time.time() - t0
    return C.finish(out, "convergence", res, summarise(res), plot(res, out))


if __name__ == "__main__":
    main()
