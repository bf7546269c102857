"""How well the low-precision proxy ranks seeds like the high-precision truth (docs/algorithm.md, "Fidelity metrics")."""

from __future__ import annotations

import numpy as np
from scipy import stats


def _ranks_desc(x: np.ndarray, seeds: np.ndarray | None) -> np.ndarray:
    """1-based rank by value descending, ties by seed ascending (as the selection does)."""
    seeds = np.arange(len(x)) if seeds is None else np.asarray(seeds)
    order = np.lexsort((seeds, -np.asarray(x, dtype=float)))
    r = np.empty(len(x), dtype=np.int64)
    r[order] = np.arange(1, len(x) + 1)
    return r


def ranking_metrics(proxy, truth, k: int = 24, seeds=None) -> dict[str, float]:
    """For one prompt's N seeds with a proxy and a true reward each.

    spearman, kendall (tau-b); top_hit / bottom_hit: fraction of the proxy's top-K/2
    (bottom-K/2) that are in the true top-K/2 (bottom-K/2); mean_true_rank_top / _bottom:
    mean true rank (1 = best) of the proxy-selected top-K/2 / bottom-K/2.
    Perfect proxy: (K/2 + 1)/2 and N - (K/2 - 1)/2; a random one (N + 1)/2 for both."""
    proxy = np.asarray(proxy, dtype=float)
    truth = np.asarray(truth, dtype=float)
    n, half = len(proxy), k // 2
    if n != len(truth) or n < k:
        raise ValueError(f"need equal-length proxy/truth with at least K={k} seeds, got {len(proxy)} and {len(truth)}")
    pr, tr = _ranks_desc(proxy, seeds), _ranks_desc(truth, seeds)
    top_p, bot_p = pr <= half, pr > n - half
    top_t, bot_t = tr <= half, tr > n - half
    rho = stats.spearmanr(proxy, truth).statistic
    tau = stats.kendalltau(proxy, truth, variant="b").statistic
    return {
        "n": n,
        "spearman": float(rho),
        "kendall": float(tau),
        "top_hit": float((top_p & top_t).sum() / half),
        "bottom_hit": float((bot_p & bot_t).sum() / half),
        "mean_true_rank_top": float(tr[top_p].mean()),
        "mean_true_rank_bottom": float(tr[bot_p].mean()),
    }


def mean_metrics(per_prompt: list[dict[str, float]]) -> dict[str, float]:
    keys = [k for k in per_prompt[0] if k != "n"]
    return {k: float(np.nanmean([m[k] for m in per_prompt])) for k in keys}


def kept_set_metrics(proxy, truth, side) -> dict[str, float]:
    """Over the kept (selected) seeds only: Spearman, Kendall and the fraction of 'top' seeds
    whose regenerated reward is above the median of the kept set (biased by selection, but
    free: no extra regeneration needed)."""
    proxy, truth, side = np.asarray(proxy, float), np.asarray(truth, float), np.asarray(side)
    med = np.median(truth)
    top = side == "top"
    return {
        "kept_spearman": float(stats.spearmanr(proxy, truth).statistic),
        "kept_kendall": float(stats.kendalltau(proxy, truth, variant="b").statistic),
        "top_above_median": float((truth[top] > med).mean()) if top.any() else float("nan"),
    }


def audit_metrics(rows: dict[str, list], k: int, primary: bool = False) -> dict[str, float]:
    """Mean over audited prompts of `ranking_metrics` plus the regret (true reward of the best
    seed minus the best true reward among the proxy's top-K/2), from audit rows (the audit
    stage's columns). `primary`: measure the configured explore (rows of proxy "primary" when
    the guard ran a fallback, else "explore"), which is what the fidelity guard watches."""
    proxies = set(rows["proxy"])
    which = "primary" if primary and "primary" in proxies else "explore"
    per_prompt = []
    for pid in dict.fromkeys(rows["prompt_id"]):
        idx = [i for i, (p, x) in enumerate(zip(rows["prompt_id"], rows["proxy"])) if p == pid and x == which]
        proxy = [rows["proxy_reward"][i] for i in idx]
        truth = [rows["reward"][i] for i in idx]
        seeds = [rows["seed"][i] for i in idx]
        m = ranking_metrics(proxy, truth, k, seeds)
        top = _ranks_desc(np.asarray(proxy), np.asarray(seeds)) <= k // 2
        m["regret"] = float(max(truth) - np.asarray(truth)[top].max())
        per_prompt.append(m)
    out = mean_metrics(per_prompt)
    out["prompts"] = float(len(per_prompt))
    return out
