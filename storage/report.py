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
from matplotlib.ticker import MaxNLocator  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
from PIL import Image  # noqa: E402

from .queries import read_stage, seed_ranking  # noqa: E402
from .store import RunStore  # noqa: E402

STAGES = ("explore", "select", "regenerate", "update", "eval")


def committed_iterations(store: RunStore, stage: str = "update") -> list[int]:
    return [i for i in store.iterations() if store.commit_record(i, stage) is not None]


def metrics_table(store: RunStore) -> pa.Table:
    """One row per iteration: every update metric (loss terms, rewards, stage seconds)."""
    tables = [read_stage(store, i, "update") for i in committed_iterations(store)]
    if not tables:
        raise FileNotFoundError(f"{store.uri} has no committed iteration yet")
    return pa.concat_tables(tables, promote_options="default")


def eval_table(store: RunStore) -> pa.Table | None:
    its = committed_iterations(store, "eval")
    return pa.concat_tables([read_stage(store, i, "eval") for i in its]) if its else None


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
            ax.scatter([r["proxy_reward"] for r in s], [r["regenerated_reward"] for r in s], c=colour, label=f"selected {side}", s=28, edgecolor="k", linewidth=0.3)
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
    t = read_stage(store, iteration, "regenerate", "prompt_id, prompt, seed, side, proxy_rank, reward, image").to_pylist()
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
            ax.set_title(f"{r['side']} #{r['proxy_rank']}\nR={r['reward']:.2f}", fontsize=7, color="tab:green" if r["side"] != "bottom" else "tab:red")
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
    m = metrics_table(store).to_pydict()
    it = m["iteration"]
    wall = np.cumsum([sum(m.get(f"seconds_{s}", [0] * len(it))[k] or 0 for s in ("explore", "select", "regenerate", "update")) for k in range(len(it))])
    ev = eval_table(store)
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for ax, x, label in ((a, it, "iteration"), (b, wall / 60.0, "wall time of explore+select+regenerate+update (min)")):
        ax.plot(x, m["reward_mean"], "o-", label="train: regenerated reward of the kept seeds")
        if ev is not None:
            e = ev.group_by("iteration").aggregate([("reward", "mean")]).sort_by("iteration").to_pydict()
            xs = [x[it.index(i)] for i in e["iteration"] if i in it]
            ax.plot(xs, e["reward_mean"][: len(xs)], "s--", label="eval: held-out prompts, EMA adapter")
        ax.set_xlabel(label)
        if ax is a:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("reward (weighted sum of configured rewards)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Reward")
    fig.tight_layout()
    return fig


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
    f = fidelity_by_iteration(store)
    fig, ax = plt.subplots(figsize=(6, 3.8))
    ax.plot(f["iteration"], f["kept_spearman"], "o-", label="Spearman ρ")
    ax.plot(f["iteration"], f["kept_kendall"], "s-", label="Kendall τ")
    ax.set_ylim(-1, 1)
    _iteration_axis(ax, "rank correlation, proxy vs regenerated (kept seeds)", "Proxy fidelity per iteration")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def fig_stage_times(store: RunStore):
    m = metrics_table(store).to_pydict()
    it = np.array(m["iteration"])
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    bottom = np.zeros(len(it))
    for stage in ("explore", "select", "regenerate", "update"):
        vals = np.array([v or 0.0 for v in m.get(f"seconds_{stage}", [0.0] * len(it))])
        ax.bar(it, vals, bottom=bottom, label=stage)
        bottom += vals
    _iteration_axis(ax, "wall time (s)", "Stage times per iteration")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def fig_losses(store: RunStore):
    m = metrics_table(store).to_pydict()
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
    rows = ev.to_pylist()
    its = sorted({r["iteration"] for r in rows})
    prompts = list(dict.fromkeys(r["prompt"] for r in rows))[:max_prompts]
    fig, axes = plt.subplots(len(prompts), len(its), figsize=(1.4 * len(its) + 2.2, 1.5 * len(prompts) + 0.5), squeeze=False)
    for r_i, p in enumerate(prompts):
        for c_i, it in enumerate(its):
            ax = axes[r_i][c_i]
            cand = [r for r in rows if r["prompt"] == p and r["iteration"] == it]
            if cand:
                ax.imshow(_png(cand[0]["image"]), interpolation="nearest")
                ax.set_title(f"it {it}: R={cand[0]['reward']:.2f}", fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r_i][0].set_ylabel(p.replace(" a ", "\na ", 1), fontsize=7, rotation=0, ha="right", va="center")
    fig.suptitle("Held-out prompts across iterations (EMA adapter, first seed)", fontsize=10)
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
        fig = fn(store)
        path = out / f"{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made.append((name.replace("_", " "), path))
    for i in committed_iterations(store, "regenerate"):
        for name, fn in (("proxy_vs_regenerated", fig_proxy_vs_regenerated), ("selected", fig_selected_grid)):
            try:
                fig = fn(store, i)
            except FileNotFoundError:  # diffusionnft mode has no explore rows to rank
                continue
            path = out / f"iter{i:05d}_{name}.png"
            fig.savefig(path, dpi=110)
            plt.close(fig)
            made.append((f"iteration {i}: {name.replace('_', ' ')}", path))
    body = "\n".join(f'<h2>{html.escape(title)}</h2>\n<img src="{p.name}" alt="{html.escape(title)}">' for title, p in made)
    (out / "index.html").write_text(
        f"<!doctype html>\n<html><head><meta charset='utf-8'><title>sol-rl report: {html.escape(store.uri)}</title>"
        "<style>body{font-family:sans-serif;max-width:1400px;margin:auto} img{max-width:100%}</style></head>\n"
        f"<body><h1>sol-rl report</h1><p>run: <code>{html.escape(store.uri)}</code></p>\n{body}\n</body></html>\n"
    )
    return [p for _, p in made]
