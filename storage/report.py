"""Figures of a run from its committed artifacts only (DuckDB over Parquet; local or s3://).

Used by the notebooks (notebooks/*.ipynb) and by `sol-rl report R --out DIR`, which writes the
same figures as PNG plus an index.html.
"""

from __future__ import annotations

import html
import io
from pathlib import Path

# No backend is forced: headless processes get Agg by default, notebooks keep their inline one.
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from PIL import Image  # noqa: E402

from solrl.errors import MissingInput  # noqa: E402

from .queries import paired_gains, read_stage, seed_ranking  # noqa: E402
from .store import RunStore  # noqa: E402


def committed_iterations(store: RunStore, stage: str = "update") -> list[int]:
    return [i for i in store.iterations() if store.stage(i, stage).record is not None]


def metrics_table(store: RunStore) -> pa.Table:
    """Every update metric row (one per optimizer step: loss terms, rewards, stage seconds)."""
    tables = [read_stage(store, i, "update") for i in committed_iterations(store)]
    if not tables:
        raise MissingInput(f"{store.uri} has no committed iteration yet")
    return pa.concat_tables(tables, promote_options="default")


def iteration_metrics(store: RunStore) -> dict[str, list]:
    """One row per iteration: loss terms averaged over its optimizer steps, the rest (rewards,
    optimizer step, stage seconds) from its last step."""
    rows = metrics_table(store).to_pylist()
    its = list(dict.fromkeys(r["iteration"] for r in rows))
    out: dict[str, list] = {}
    for i in its:
        mine = [r for r in rows if r["iteration"] == i]
        for k in mine[-1]:
            if k in ("run_id",):
                continue
            v = (sum(r[k] or 0.0 for r in mine) / len(mine)) if k in LOSS_TERMS else mine[-1][k]
            out.setdefault(k, []).append(v)
    return out


LOSS_TERMS = ("loss", "policy_loss", "kl", "loss_pos", "loss_neg", "w_pos", "w_neg", "grad_norm")


def eval_table(store: RunStore) -> pa.Table | None:
    its = committed_iterations(store, "eval")
    return pa.concat_tables([read_stage(store, i, "eval") for i in its], promote_options="default") if its else None


def gains_by_iteration(store: RunStore) -> dict[str, dict[str, list]]:
    """Per eval set: iteration, paired gain over the baseline and its SE, strict accuracy."""
    out: dict[str, dict[str, list]] = {}
    for i in committed_iterations(store, "eval"):
        for name, g in paired_gains(store, i).items():
            d = out.setdefault(name, {"iteration": [], "gain": [], "se": [], "n": [], "strict": [], "strict_base": []})
            for k in d:
                d[k].append(i if k == "iteration" else g.get(k))
    return out


def save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _png(b: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(b)).convert("RGB"))


# --- per iteration -------------------------------------------------------------------------------
def fig_proxy_vs_regenerated(store: RunStore, iteration: int):
    """Scatter of proxy (explore) reward vs regenerated reward of the kept seeds, one panel per prompt,
    with the proxy reward of every explored seed as a rug."""
    rows = seed_ranking(store, iteration).to_pylist()
    prompts = list(dict.fromkeys(r["prompt_id"] for r in rows))
    fig, axes = plt.subplots(1, len(prompts), figsize=(4.2 * len(prompts), 4.2), squeeze=False)
    for ax, pid in zip(axes[0], prompts):
        pr = [r for r in rows if r["prompt_id"] == pid]
        allp = [r["proxy_reward"] for r in pr]
        ax.plot(allp, [min(allp) - 0.02] * len(allp), "|", color="0.6", ms=10, label="all explored (proxy)")
        for side, colour in (("top", "tab:green"), ("bottom", "tab:red")):
            s = [r for r in pr if r["side"] == side and r["regenerated_reward"] is not None]
            ax.scatter(
                [r["proxy_reward"] for r in s],
                [r["regenerated_reward"] for r in s],
                c=colour,
                label=f"selected {side}",
                s=28,
                edgecolor="k",
                linewidth=0.3,
            )
        lo = min(allp + [r["regenerated_reward"] for r in pr if r["regenerated_reward"] is not None]) - 0.03
        hi = max(allp + [r["regenerated_reward"] for r in pr if r["regenerated_reward"] is not None]) + 0.03
        ax.plot([lo, hi], [lo, hi], ls=":", color="0.5", lw=1)
        ax.set_title(f"prompt {pid}: {pr[0]['prompt']}", fontsize=9, wrap=True)
        ax.set_xlabel("proxy reward (low precision, explore steps)")
        ax.set_ylabel("regenerated reward (high precision)")
        ax.legend(fontsize=7, loc="upper left")
    fig.suptitle(f"Iteration {iteration}: proxy vs regenerated reward of the selected seeds")
    fig.tight_layout()
    return fig


def fig_selected_grid(store: RunStore, iteration: int, per_side: int = 6):
    """Regenerated images of the best `per_side` top seeds and the worst bottom seeds, per prompt."""
    t = read_stage(
        store, iteration, "regenerate", "prompt_id, prompt, seed, side, proxy_rank, reward, image"
    ).to_pylist()
    prompts = list(dict.fromkeys(r["prompt_id"] for r in t))
    per_side = min(per_side, max(sum(r["prompt_id"] == p and r["side"] != "bottom" for r in t) for p in prompts))
    ncols = max(2 * per_side, 1)
    fig, axes = plt.subplots(len(prompts), ncols, figsize=(1.35 * ncols + 2.4, 1.6 * len(prompts) + 0.7), squeeze=False)
    for row, pid in zip(axes, prompts):
        pr = sorted([r for r in t if r["prompt_id"] == pid], key=lambda r: (r["proxy_rank"] is None, r["proxy_rank"]))
        tops = [r for r in pr if r["side"] in ("top", "all")][:per_side]
        bots = [r for r in pr if r["side"] == "bottom"][-per_side:]
        for ax, r in zip(row, tops + bots):
            ax.imshow(_png(r["image"]), interpolation="nearest")
            ax.set_title(
                f"{r['side']} #{r['proxy_rank']}\nR={r['reward']:.2f}",
                fontsize=7,
                color="tab:green" if r["side"] != "bottom" else "tab:red",
            )
        for k, ax in enumerate(row):
            ax.set_xticks([])
            ax.set_yticks([])
            if k >= len(tops) + len(bots):
                ax.axis("off")
        row[0].set_ylabel(pr[0]["prompt"].replace(" a ", "\na ", 1), fontsize=7, rotation=0, ha="right", va="center")
    fig.suptitle(f"Iteration {iteration}: selected seeds, regenerated (top by proxy rank | bottom)", fontsize=10)
    fig.tight_layout()
    return fig


# --- across iterations ------------------------------------------------------------------------------
def fig_rewards(store: RunStore):
    """Paired gain of each eval set over the baseline (± 1 SE) and the train reward, against
    iterations and against wall time."""
    m = iteration_metrics(store)
    it = m["iteration"]
    stages = [k for k in m if k.startswith("seconds_")]
    wall = (
        np.cumsum([sum((m[k][j] or 0.0) if m[k][j] == m[k][j] else 0.0 for k in stages) for j in range(len(it))]) / 60.0
    )
    gains = gains_by_iteration(store)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, x, label in ((axes[0], it, "iteration"), (axes[1], wall, "wall time of the iterations' stages (min)")):
        for name, g in gains.items():
            xs = [x[it.index(i)] for i in g["iteration"] if i in it]
            k = len(xs)
            ax.errorbar(
                xs,
                g["gain"][:k],
                yerr=g["se"][:k],
                marker="o",
                capsize=3,
                label=f"{name}: paired gain over the base model (± 1 SE)",
            )
        ax.axhline(0, color="0.5", lw=0.8)
        ax.set_xlabel(label)
        ax.set_ylabel("eval reward − baseline (same prompts and seeds)")
        ax.grid(alpha=0.3)
        if gains:
            ax.legend(fontsize=8)
    axes[0].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[2].plot(it, m["reward_mean"], "o-", label="train: reward of the kept samples")
    for name, g in gains.items():
        if any(v is not None for v in g["strict"]):
            axes[2].plot(g["iteration"], g["strict"], "s--", label=f"{name}: strict accuracy")
    _iteration_axis(axes[2], "reward / accuracy", "Train reward and strict accuracy")
    axes[2].grid(alpha=0.3)
    axes[2].legend(fontsize=8)
    fig.suptitle("Learning: paired evaluation gains")
    fig.tight_layout()
    return fig


def audits_by_iteration(store: RunStore) -> dict[str, list]:
    """The audit stage's fidelity metrics per audited iteration (and the guard's state)."""
    out: dict[str, list] = {}
    for i in committed_iterations(store, "audit"):
        rec = store.stage(i, "audit").record
        out.setdefault("iteration", []).append(i)
        for k, v in rec.get("fidelity", {}).items():
            out.setdefault(k, []).append(v)
    return out


def fidelity_by_iteration(store: RunStore) -> dict[str, list]:
    from scipy import stats

    out = {"iteration": [], "kept_spearman": [], "kept_kendall": []}
    for i in committed_iterations(store, "regenerate"):
        t = read_stage(store, i, "regenerate", "proxy_reward, reward").to_pydict()
        if any(v is None for v in t["proxy_reward"]):
            continue  # diffusionnft mode: no proxy
        out["iteration"].append(i)
        out["kept_spearman"].append(float(stats.spearmanr(t["proxy_reward"], t["reward"]).statistic))
        out["kept_kendall"].append(float(stats.kendalltau(t["proxy_reward"], t["reward"]).statistic))
    return out


def _iteration_axis(ax, ylabel: str, title: str) -> None:
    ax.set_xlabel("iteration")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(ylabel)
    ax.set_title(title)


def fig_fidelity(store: RunStore):
    """Proxy fidelity vs iteration: over the kept seeds (biased, free) and, where audited, over
    every explored seed (unbiased: Spearman, Kendall, top/bottom-K/2 hit rates)."""
    f = fidelity_by_iteration(store)
    a = audits_by_iteration(store)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(f["iteration"], f["kept_spearman"], "o:", color="0.5", label="kept seeds: Spearman ρ")
    if a:
        for k, st in (("spearman", "o-"), ("kendall", "s-"), ("top_hit", "^-"), ("bottom_hit", "v-")):
            ax.plot(a["iteration"], a[k], st, label=f"audit (all seeds): {k.replace('_', ' ')}")
    ax.set_ylim(-0.05, 1.05)
    _iteration_axis(ax, "rank agreement, proxy vs high precision", "Proxy fidelity per iteration")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def fig_stage_times(store: RunStore):
    m = iteration_metrics(store)
    it = np.array(m["iteration"])
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    bottom = np.zeros(len(it))
    for stage in ("explore", "select", "regenerate", "audit", "update"):
        if f"seconds_{stage}" not in m:
            continue
        vals = np.array([v if v == v and v is not None else 0.0 for v in m[f"seconds_{stage}"]])
        ax.bar(it, vals, bottom=bottom, label=stage)
        bottom += vals
    _iteration_axis(ax, "wall time (s)", "Stage times per iteration")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def fig_losses(store: RunStore):
    m = iteration_metrics(store)
    it = m["iteration"]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    styles = ({"marker": "o", "ls": "-"}, {"marker": "x", "ls": "--"})
    for ax, keys, title in (
        (axes[0], ("loss", "policy_loss"), "loss = 5·mean ℓ + kl_beta·KL, and its policy part"),
        (axes[1], ("loss_pos", "loss_neg"), "adaptive x0 losses L⁺ and L⁻"),
    ):
        for k, st in zip(keys, styles):
            ax.plot(it, m[k], label=k, **st)
        ax.set_title(title, fontsize=9)
    axes[2].plot(it, m["kl"], color="tab:blue", label="KL to reference (left)", **styles[0])
    axes[2].set_ylabel("mean (v_θ − v_ref)²", color="tab:blue")
    twin = axes[2].twinx()
    twin.plot(it, m["grad_norm"], color="tab:orange", label="grad norm (right)", **styles[1])
    twin.set_ylabel("gradient norm before clipping", color="tab:orange")
    axes[2].set_title("KL to the reference model and gradient norm", fontsize=9)
    for ax in axes:
        ax.set_xlabel("iteration")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    for ax in axes[:2]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def fig_eval_grid(store: RunStore, max_prompts: int = 6):
    """The fixed eval prompts (first seed) across evaluated iterations."""
    ev = eval_table(store)
    if ev is None:
        fig, ax = plt.subplots(figsize=(4, 1))
        ax.text(0.5, 0.5, "no evaluation committed", ha="center")
        ax.axis("off")
        return fig
    base = store.stage(None, "baseline")
    rows = ev.to_pylist() + (read_stage(store, None, "baseline").to_pylist() if base.record else [])
    rows = [
        r
        for r in rows
        if r["set"] == "held_out" and r["seed"] == min(x["seed"] for x in rows if x["prompt"] == r["prompt"])
    ]
    its = sorted({r["iteration"] for r in rows})
    prompts = list(dict.fromkeys(r["prompt"] for r in rows))[:max_prompts]
    fig, axes = plt.subplots(
        len(prompts), len(its), figsize=(1.4 * len(its) + 2.2, 1.5 * len(prompts) + 0.5), squeeze=False
    )
    for r_i, p in enumerate(prompts):
        for c_i, it in enumerate(its):
            ax = axes[r_i][c_i]
            cand = [r for r in rows if r["prompt"] == p and r["iteration"] == it]
            if cand:
                ax.imshow(_png(cand[0]["image"]), interpolation="nearest")
                ax.set_title(f"{'base' if it < 0 else f'it {it}'}: R={cand[0]['reward']:.2f}", fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r_i][0].set_ylabel(p.replace(" a ", "\na ", 1), fontsize=7, rotation=0, ha="right", va="center")
    fig.suptitle("Held-out prompts: the base model, then the EMA adapter across iterations (one seed)", fontsize=10)
    fig.tight_layout()
    return fig


def fig_previews(store: RunStore, iteration: int, prompt_id: int, per_row: int = 16):
    """Every explored candidate of one prompt as its low-precision preview, in proxy-rank order
    (selected seeds framed: green top, red bottom), and the kept seeds' high-precision
    regenerations in the last rows, in the same order."""
    rows = seed_ranking(store, iteration, prompt_id).to_pylist()
    ex = read_stage(store, iteration, "explore", "seed, thumbnail", prompt_id=prompt_id).to_pydict()
    thumb = dict(zip(ex["seed"], ex["thumbnail"]))
    if not any(thumb.values()):
        raise MissingInput(f"iteration {iteration} stored no explore previews (explore.thumbnails was off)")
    regen = read_stage(store, iteration, "regenerate", "seed, image", prompt_id=prompt_id).to_pydict()
    image = dict(zip(regen["seed"], regen["image"]))
    kept = [r for r in rows if r["side"]]
    per_row = min(per_row, len(rows))
    n_prev = -(-len(rows) // per_row)
    n_kept = -(-len(kept) // per_row)
    fig, axes = plt.subplots(
        n_prev + n_kept, per_row, figsize=(0.9 * per_row, 1.0 * (n_prev + n_kept) + 0.8), squeeze=False
    )
    for ax in axes.flat:
        ax.axis("off")
    for k, r in enumerate(rows):
        ax = axes[k // per_row][k % per_row]
        ax.imshow(_png(thumb[r["seed"]]), interpolation="nearest")
        ax.set_title(f"#{r['proxy_rank']} {r['proxy_reward']:.2f}", fontsize=6)
        if r["side"]:
            ax.axis("on")
            ax.set_xticks([])
            ax.set_yticks([])
            for sp in ax.spines.values():
                sp.set_color("tab:green" if r["side"] != "bottom" else "tab:red")
                sp.set_linewidth(2.5)
    for k, r in enumerate(kept):
        ax = axes[n_prev + k // per_row][k % per_row]
        if r["seed"] in image:
            ax.imshow(_png(image[r["seed"]]), interpolation="nearest")
            reg = "" if r["regenerated_reward"] is None else f" → {r['regenerated_reward']:.2f}"
            ax.set_title(
                f"#{r['proxy_rank']}{reg}", fontsize=6, color="tab:green" if r["side"] != "bottom" else "tab:red"
            )
    fig.suptitle(
        f"Iteration {iteration}, prompt {prompt_id}: {rows[0]['prompt']!r} — explore previews by proxy rank (framed: selected), "
        "then the selected seeds regenerated in high precision",
        fontsize=8,
    )
    fig.tight_layout()
    return fig


RUN_FIGURES = {
    "rewards": fig_rewards,
    "fidelity": fig_fidelity,
    "stage_times": fig_stage_times,
    "losses": fig_losses,
    "eval_grid": fig_eval_grid,
}


def write_report(store: RunStore, out: Path) -> list[Path]:
    """All figures as PNG plus index.html in `out`; returns the PNG paths."""
    out.mkdir(parents=True, exist_ok=True)
    made: list[tuple[str, Path]] = []
    for name, fn in RUN_FIGURES.items():
        made.append((name.replace("_", " "), save(fn(store), out / f"{name}.png")))
    for i in committed_iterations(store, "regenerate"):
        for name, fn in (("proxy_vs_regenerated", fig_proxy_vs_regenerated), ("selected", fig_selected_grid)):
            try:
                fig = fn(store, i)
            except FileNotFoundError:  # diffusionnft mode has no explore rows to rank
                continue
            made.append((f"iteration {i}: {name.replace('_', ' ')}", save(fig, out / f"iter{i:05d}_{name}.png")))
    body = "\n".join(
        f'<h2>{html.escape(title)}</h2>\n<img src="{p.name}" alt="{html.escape(title)}">' for title, p in made
    )
    (out / "index.html").write_text(
        f"<!doctype html>\n<html><head><meta charset='utf-8'><title>sol-rl report: {html.escape(store.uri)}</title>"
        "<style>body{font-family:sans-serif;max-width:1400px;margin:auto} img{max-width:100%}</style></head>\n"
        f"<body><h1>sol-rl report</h1><p>run: <code>{html.escape(store.uri)}</code></p>\n{body}\n</body></html>\n"
    )
    return [p for _, p in made]
