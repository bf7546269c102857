"""The four-mode study from committed per-pair data: two-level bootstrap intervals, equivalence margins, time to fixed gains.

Two steps, so that every number can be checked from files in the repository:

* `export` reads the study's runs (read-only: `tasks.run.open_run(uri)` without a config) and writes
  compact Parquet beside them: `pairs.parquet` (every evaluation row and every baseline row: run,
  variant, mode, training seed, iteration [-1 = baseline], set, prompt, eval seed, reward, strict),
  `audit.parquet` (the fidelity audit: every explored seed of the audited prompt with its proxy rank
  and its high-precision reward), `timings.parquet` (per run, iteration and stage: wall seconds from
  the stage's commit record, the process that ran it, and the transformer forwards it did, split into
  high- and low-precision so the analysis can re-price the low-precision forward) and `runs.json`.
* `analyse` reads those files alone (never the runs) and writes study.json, study.md and the plots.

Statistics (docs/study.md has the reasoning):

* the paired gain of a run at an evaluated iteration = the mean over the evaluation pairs
  (prompt, eval seed) of run reward − baseline reward on the same pair;
* intervals: a two-level bootstrap, seeded and deterministic. Each replicate resamples the training
  seeds (runs) with replacement and, once for all runs (the pairs are shared by design), the prompts
  of the evaluation set with replacement and then the eval seeds within each drawn prompt. The 95 %
  percentile interval is reported with the number of training seeds and prompts behind it, beside
  the plain mean ± SE over training seeds (df = seeds − 1);
* mode differences are paired: per training seed, the difference of the two runs' rewards on the
  same pairs, resampled as above (the pool-size comparison 8 vs 32 prompts is not paired by
  training seed: each variant's seeds are resampled on their own, the held-out pairs are shared);
* equivalence: the smallest margin δ such that the 90 % interval of sol_rl − naive_scaling lies in
  [−δ, +δ] (two one-sided tests at α = 0.05);
* time to parity: fixed gain levels (fractions of the smallest final mean gain among the modes whose
  final gain is resolved above 0), crossed by each mode's mean curve (interpolated between
  evaluations). Clocks: completed iterations × a rate, the mean over training seeds of each run's
  median cost per iteration (so a stall moves no clock; every iteration does the same work by
  design), the cost being stage wall seconds (eval and audit excluded) or transformer forwards with
  the low-precision forward priced at c = 0.41, 0.5, 0.83, 1.0 high-precision forwards.

    python benchmarks/study.py export --runs-root /work/study/runs --out benchmarks/results/study
    python benchmarks/study.py analyse --data benchmarks/results/study          # the replot: Parquet -> study.json/.md/PNGs
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one BLAS thread: the study processes need the cores

import json
import re
import sys
import time
import zlib
from pathlib import Path

import bench_common as C
import numpy as np

MODES = ("sol_rl", "naive_scaling", "diffusionnft", "naive_quant")
DIFFS = (("sol_rl", "naive_scaling"), ("sol_rl", "diffusionnft"), ("naive_quant", "sol_rl"))
LEVEL_FRACTIONS = (0.25, 0.5, 0.75)
# the levels come from these modes' final gains: naive_quant (trained on low-precision samples) is
# the ablation expected to lag, and a level it barely reaches would sit in the noise; its times to
# the same levels are reported (or "never")
LEVEL_MODES = ("sol_rl", "naive_scaling", "diffusionnft")
# the low-precision forward's cost in high-precision forwards: 0.41 the paper's measured FP4 rollout
# ratio, 0.5, 0.83 benchmarks/results/cost's explore ÷ rollout (per sample: 6 explore steps vs 10, so
# per forward it is 0.83 × 10/6), 1.0 no saving, 1.38 this CPU's emulated NVFP4 per step (cost.md's fit)
LOW_COSTS = (0.41, 0.5, 0.83, 1.0, 1.38)
SPEEDUP_AXIS = 4.0  # the parity plot's speed-up axis ends here; wider intervals are drawn open
MEASURE_STAGES = ("eval", "audit", "baseline")  # measurement only: kept out of the cost clocks
COLORS = {"sol_rl": "C0", "diffusionnft": "C1", "naive_scaling": "C2", "naive_quant": "C3"}
# The study's whole design (four modes x 5 training seeds; pool size N 24 / 48 / 96 and a training
# pool of 32 prompts x 5 seeds), as variants of the preset: sol_rl itself is N 48 with the pool of
# 8, so the N comparisons pair with its seeds (the pool comparison is unpaired: other prompts).
DESIGN = {
    "sol_rl": ("run.mode=sol_rl", (0, 1, 2, 3, 4)),
    "naive_scaling": ("run.mode=naive_scaling,explore.precision=high", (0, 1, 2, 3, 4)),
    "diffusionnft": ("run.mode=diffusionnft", (0, 1, 2, 3, 4)),
    "naive_quant": ("run.mode=naive_quant", (0, 1, 2, 3, 4)),
    "sol_rl_N24": ("run.mode=sol_rl,explore.n=24", (0, 1, 2, 3, 4)),
    "sol_rl_N96": ("run.mode=sol_rl,explore.n=96", (0, 1, 2, 3, 4)),
    "sol_rl_pool32": ("run.mode=sol_rl,prompts.pool=32", (0, 1, 2, 3, 4)),
}
PRESET = "benchmarks/results/study/study.yaml"
RUN_NAME = re.compile(r"^(?P<variant>.+)-seed(?P<seed>\d+)$")


class BadInput(ValueError):
    """Input the script cannot use (one sentence: what, where, how to fix)."""


# --- export ------------------------------------------------------------------------------------------


def stage_forwards(cfg, plan, stage: str, eval_pairs: int = 0) -> tuple[float, float]:
    """(high-precision, low-precision) transformer forwards of one stage of one iteration.

    The same counts as benchmarks/learning.py's denoiser_cost / audit_cost, split by stage and by
    precision (the export checks the sums against those functions)."""
    from solrl.nft import timesteps_per_sample

    P, K = len(plan.prompts) if plan is not None else 0, cfg.select.k
    if stage == "explore" and plan.explore is not None:
        n = P * plan.explore.n * plan.explore.steps
        return (0.0, float(n)) if plan.explore.low_precision else (float(n), 0.0)
    if stage == "regenerate" and cfg.mode.trains_on == "regenerated":
        return float(P * K * cfg.rollout.steps), 0.0
    if stage == "update":
        # old + reference forwards without grad, the policy's forward and backward (~3)
        return float(P * K * timesteps_per_sample(cfg.rollout.steps, cfg.nft.timestep_fraction) * 5), 0.0
    if stage == "audit":
        return float(cfg.fidelity.audit_prompts * (plan.explore.n - K) * cfg.rollout.steps), 0.0
    if stage in ("eval", "baseline"):
        return float(eval_pairs * cfg.eval.steps), 0.0
    return 0.0, 0.0


def priced(learning, cfg, plan, c: float) -> float:
    """learning.denoiser_cost with the low-precision forward at c (its module-level price restored)."""
    saved = learning.FP4_COST[0]
    learning.FP4_COST[0] = c
    try:
        return learning.denoiser_cost(cfg, plan)
    finally:
        learning.FP4_COST[0] = saved


def _float_column(values):
    """float32 when that is lossless (the rewards are computed in float32), else float64."""
    import pyarrow as pa

    a = np.asarray(values, dtype=np.float64)
    ok = np.isnan(a) | (a.astype(np.float32).astype(np.float64) == a)
    return pa.array(a.astype(np.float32) if ok.all() else a)


def host_label(m: dict) -> str:
    """A short name for the machine kind a run ran on: CPU model and torch's kernel capability."""
    return f"{m.get('cpu_model') or 'unknown CPU'}, {m.get('aten_cpu_capability') or '?'}"


def export(runs_root: str, out: str, merge: bool = False, partial: bool = True, preset: str = PRESET) -> dict:
    """Read every run under runs_root (read-only) and write pairs/audit/timings Parquet + runs.json.

    merge: the study is run in pieces (whole runs, in several sessions or on several machines):
    the rows already in `out` are kept for every run this export does not bring, and replaced for
    the runs it does. partial: also export runs that have not completed their configured
    iterations (without it, a run still running is left out and its committed rows, if any, kept)."""
    import learning as L

    from storage.queries import read_stage
    from tasks.run import open_run, plan_of

    root = Path(runs_root)
    if not root.is_dir():
        raise BadInput(
            f"--runs-root {runs_root} is not a folder: give the folder that holds the <variant>-seed<s> runs"
        )
    names = sorted(d.name for d in root.iterdir() if (d / "run.json").is_file() and RUN_NAME.match(d.name))
    if not names:
        raise BadInput(f"no runs named <variant>-seed<s> with a run.json under {runs_root}: give the study's runs root")
    pairs, audit, timings, meta = [], [], [], {}
    host = C.machine()
    # which export brought a run: a process is a pid of one machine at one time, and pids recur
    exported_at = time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime())
    for name in names:
        run = open_run(str(root / name))
        cfg, m = run.cfg, RUN_NAME.match(name)
        variant, seed = m["variant"], int(m["seed"])
        if cfg.run.seed != seed:
            raise BadInput(f"run {name} has run.seed {cfg.run.seed}, not {seed}: its folder name must match its seed")
        strict = "reward_shapes_strict" if "shapes_strict" in run.reward_names else None
        cols = "set, prompt_id, seed, reward" + (f", {strict}" if strict else "")
        common = {"run": name, "variant": variant, "mode": cfg.mode.name, "training_seed": seed}

        def add_pairs(iteration, table):
            d = table.to_pydict()
            for j in range(table.num_rows):
                pairs.append(
                    {
                        **common,
                        "iteration": iteration,
                        "set": d["set"][j],
                        "prompt_id": d["prompt_id"][j],
                        "eval_seed": d["seed"][j],
                        "reward": d["reward"][j],
                        "strict": d[strict][j] if strict else None,
                    }
                )

        base_rec = run.stage(None, "baseline").record
        if base_rec is None:
            continue  # not started: nothing to pair against
        base = read_stage(run.store, None, "baseline", cols)
        add_pairs(-1, base)
        timings.append(
            {
                "run": name,
                "iteration": -1,
                "stage": "baseline",
                "seconds": base_rec["finished_at"] - base_rec["started_at"],
                "started_at": base_rec["started_at"],
                "worker": base_rec.get("worker"),
                "forwards_high": float(base.num_rows * cfg.eval.steps),
                "forwards_low": 0.0,
            }
        )
        done, evaluated = [], []
        for i in run.store.iterations():
            if run.stage(i, "update").record is None:
                continue  # an iteration still running (or never finished): only complete ones count
            plan = plan_of(run, i)
            done.append(i)
            ev_rec = run.stage(i, "eval").record
            ev = read_stage(run.store, i, "eval", cols) if ev_rec else None
            if ev is not None:
                add_pairs(i, ev)
                evaluated.append(i)
            high_sum = low_sum = 0.0
            for st in plan.stages:
                rec = run.stage(i, st).record
                if rec is None:
                    continue
                hi, lo = stage_forwards(cfg, plan, st, ev.num_rows if (st == "eval" and ev is not None) else 0)
                if st not in MEASURE_STAGES:
                    high_sum, low_sum = high_sum + hi, low_sum + lo
                timings.append(
                    {
                        "run": name,
                        "iteration": i,
                        "stage": st,
                        "seconds": rec["finished_at"] - rec["started_at"],
                        "started_at": rec["started_at"],
                        "worker": rec.get("worker"),
                        "forwards_high": hi,
                        "forwards_low": lo,
                    }
                )
            for c in (0.0, 1.0):  # the split must price exactly as learning.denoiser_cost does
                if abs(priced(L, cfg, plan, c) - (high_sum + c * low_sum)) > 1e-6:
                    raise RuntimeError(
                        f"{name} iteration {i}: the forwards split disagrees with learning.denoiser_cost"
                    )
            if run.stage(i, "audit").record is not None:
                rows = read_stage(
                    run.store,
                    i,
                    "audit",
                    "prompt_id, candidate, seed, proxy, proxy_precision, proxy_steps, proxy_reward, proxy_rank, selected, reward",
                ).to_pylist()
                audit += [{"run": name, "iteration": i, **r} for r in rows]
        if not partial and len(done) < cfg.run.iterations:
            pairs = [r for r in pairs if r["run"] != name]
            audit = [r for r in audit if r["run"] != name]
            timings = [r for r in timings if r["run"] != name]
            print(
                f"{name}: {len(done)} of {cfg.run.iterations} iterations complete, not exported (--partial exports it)"
            )
            continue
        meta[name] = {
            **{k: v for k, v in common.items() if k != "run"},
            "host": host_label(host),
            "exported_at": exported_at,
            "design": in_design(cfg, variant, seed, preset),
            "config_hash": run.hash,
            "explore_n": cfg.explore.n,
            "explore_precision": cfg.explore.precision,
            "explore_steps": cfg.explore.steps,
            "select_k": cfg.select.k,
            "prompts_pool": cfg.prompts.pool,
            "prompts_per_iteration": cfg.prompts.per_iteration,
            "rollout_steps": cfg.rollout.steps,
            "eval_every": cfg.eval.every,
            "iterations_configured": cfg.run.iterations,
            "iterations_complete": len(done),
            "evaluated": evaluated,
        }
    info = {"runs_root": str(runs_root), "host": host, "runs": meta}
    if merge and (Path(out) / "runs.json").is_file():
        kept = read_committed(out, exclude=set(meta), preset=preset)
        pairs, audit, timings = pairs + kept["pairs"], audit + kept["audit"], timings + kept["timings"]
        info["runs"] = {**kept["runs"], **meta}
        info["runs_root"] = sorted({*kept["runs_roots"], str(runs_root)})
    return write_tables(out, pairs, audit, timings, info)


PENDING = "pending"  # <data>/pending/<piece>/: pieces exported and committed before their analysis


def merge_pieces(pieces: list[str], out: str, preset: str = PRESET) -> dict:
    """Merge folders that `export` wrote (pieces exported where the runs were, on another day or
    machine, and committed before their analysis) into `out`: a piece's runs replace `out`'s rows
    of the same runs, the rest are kept, as `export --merge` does with a runs folder. Runs that are
    not the current design are dropped from both, never mixed in."""
    for folder in (*pieces, out):
        if not (Path(folder) / "runs.json").is_file():
            raise BadInput(f"{folder} holds no runs.json: give folders that `study.py export` wrote")
    if any(Path(p).resolve() == Path(out).resolve() for p in pieces):
        raise BadInput(f"{out} is both a piece and --out: give the piece folders and the study's data folder")
    got = [read_committed(p, exclude=set(), preset=preset) for p in pieces]
    brought = {r for g in got for r in g["runs"]}
    kept = read_committed(out, exclude=brought, preset=preset)
    pairs, audit, timings = kept["pairs"], kept["audit"], kept["timings"]
    runs, roots = dict(kept["runs"]), set(kept["runs_roots"])
    for g in got:  # a later piece wins over an earlier one for a run both hold
        later = set(g["runs"])
        drop = lambda rows: [r for r in rows if r["run"] not in later]  # noqa: E731
        pairs, audit, timings = drop(pairs) + g["pairs"], drop(audit) + g["audit"], drop(timings) + g["timings"]
        runs.update(g["runs"])
        roots.update(g["runs_roots"])
    host = json.loads((Path(pieces[-1]) / "runs.json").read_text()).get("host")
    return write_tables(out, pairs, audit, timings, {"runs_root": sorted(roots), "host": host, "runs": runs})


def in_design(cfg, variant: str, seed: int, preset: str) -> bool:
    """Whether a run's settings are exactly DESIGN's variant of the preset (pieces run in different
    sessions must be the same experiment; a preset changed since is another one)."""
    import learning as L

    from solrl.config import load_config

    if variant not in DESIGN:
        return False
    over = {k: L.parse_value(v) for k, v in (kv.split("=", 1) for kv in DESIGN[variant][0].split(","))}
    return cfg.hashed() == load_config(preset).with_overrides(**over, **{"run.seed": seed}).hashed()


def read_committed(folder: str, exclude: set[str], preset: str) -> dict:
    """The rows and run entries already exported to folder, less the runs in exclude and less the
    runs that are not the current design (an older preset's runs: they would mix two experiments)."""
    import pyarrow.parquet as pq

    f = Path(folder)
    info = json.loads((f / "runs.json").read_text())
    stale = sorted(k for k, v in info["runs"].items() if k not in exclude and not v.get("design"))
    if stale:
        print(f"dropped {len(stale)} committed runs that are not the current design of {preset}: {', '.join(stale)}")
    exclude = exclude | set(stale)
    keep = lambda rows: [r for r in rows if r["run"] not in exclude]  # noqa: E731
    runs = {k: v for k, v in info["runs"].items() if k not in exclude}
    for v in runs.values():  # exports before pieces recorded one host for the whole export
        v.setdefault("host", host_label(info.get("host") or {}))
    roots = info["runs_root"] if isinstance(info["runs_root"], list) else [info["runs_root"]]
    return {
        "pairs": keep(pq.read_table(f / "pairs.parquet").to_pylist()),
        "audit": keep(pq.read_table(f / "audit.parquet").to_pylist()),
        "timings": keep(pq.read_table(f / "timings.parquet").to_pylist()),
        "runs": runs,
        "runs_roots": roots,
    }


def write_tables(out: str, pairs: list[dict], audit: list[dict], timings: list[dict], info: dict) -> dict:
    """The committed form: rows sorted, dictionary-encoded strings, zstd Parquet; runs.json."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    pairs.sort(key=lambda r: (r["run"], r["iteration"], r["set"], r["prompt_id"], r["eval_seed"]))
    audit.sort(key=lambda r: (r["run"], r["iteration"], r["prompt_id"], r["proxy"], r["candidate"]))
    timings.sort(key=lambda r: (r["run"], r["iteration"], r["started_at"]))

    def table(rows, ints, strs, floats, bools=()):
        cols = {}
        for k in strs:
            cols[k] = pa.array([r[k] for r in rows], pa.string()).dictionary_encode()
        for k, t in ints.items():
            cols[k] = pa.array([r[k] for r in rows], t)
        for k in floats:
            cols[k] = _float_column([np.nan if r[k] is None else r[k] for r in rows])
        for k in bools:
            cols[k] = pa.array([r[k] for r in rows], pa.bool_())
        return pa.table(cols)

    files = {
        "pairs.parquet": table(
            pairs,
            {"training_seed": pa.int16(), "iteration": pa.int16(), "prompt_id": pa.int32(), "eval_seed": pa.int64()},
            ("run", "variant", "mode", "set"),
            ("reward", "strict"),
        ),
        "audit.parquet": table(
            audit,
            {
                "iteration": pa.int16(),
                "prompt_id": pa.int32(),
                "candidate": pa.int32(),
                "seed": pa.int64(),
                "proxy_steps": pa.int16(),
                "proxy_rank": pa.int32(),
            },
            ("run", "proxy", "proxy_precision"),
            ("proxy_reward", "reward"),
            ("selected",),
        ),
        "timings.parquet": table(
            timings,
            {"iteration": pa.int16()},
            ("run", "stage", "worker"),
            ("seconds", "started_at", "forwards_high", "forwards_low"),
        ),
    }
    for fname, t in files.items():
        # started_at needs float64 (epoch seconds): _float_column keeps it unless float32 is exact
        pq.write_table(t, out_dir / fname, compression="zstd", compression_level=9)
    (out_dir / "runs.json").write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")
    sizes = {f: (out_dir / f).stat().st_size for f in (*files, "runs.json")}
    print(
        f"exported {len(info['runs'])} runs: {len(pairs)} pair rows, {len(audit)} audit rows, {len(timings)} stage rows -> {out_dir} "
        + ", ".join(f"{f} {s / 1024:.0f} KiB" for f, s in sizes.items())
    )
    return {
        "runs": len(info["runs"]),
        "pairs": len(pairs),
        "audit": len(audit),
        "timings": len(timings),
        "sizes": sizes,
    }


# --- the bootstrap -------------------------------------------------------------------------------------


class Bootstrap:
    """Seeded resampling draws, one stream per key (so adding a comparison changes no other interval).

    Draws with the same key are shared: two variants with the same number of training seeds get the
    same seed indices in each replicate (paired by seed order), and every quantity on an evaluation
    set uses that set's one prompt/eval-seed draw."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed = n, seed
        self._cache: dict = {}

    def rng(self, key: str) -> np.random.Generator:
        return np.random.default_rng([self.seed, zlib.crc32(key.encode())])

    def runs(self, n_runs: int, key: str = "") -> np.ndarray:
        """B × n_runs indices of the training seeds drawn with replacement."""
        k = ("runs", n_runs, key)
        if k not in self._cache:
            self._cache[k] = self.rng(f"runs:{n_runs}:{key}").integers(0, n_runs, size=(self.n, n_runs))
        return self._cache[k]

    def pair_weights(self, design: str, seeds_per_prompt: np.ndarray, fixed_prompts: bool = False) -> np.ndarray:
        """B × pairs weights (each row sums to 1): prompts drawn with replacement, then eval seeds
        within each drawn prompt with replacement; pairs ordered prompt by prompt. fixed_prompts:
        every prompt once in every replicate (the inference is about these prompts), eval seeds
        still drawn within each."""
        k = ("pairs", design, tuple(seeds_per_prompt), fixed_prompts)
        if k not in self._cache:
            rng = self.rng(f"pairs{'-fixed' if fixed_prompts else ''}:{design}")
            n_p = len(seeds_per_prompt)
            offsets = np.concatenate([[0], np.cumsum(seeds_per_prompt)[:-1]])
            n_pairs = int(seeds_per_prompt.sum())
            if fixed_prompts:
                prompts = np.broadcast_to(np.arange(n_p), (self.n, n_p))
            else:
                prompts = rng.integers(0, n_p, size=(self.n, n_p))
            m = int(seeds_per_prompt.max())
            u = rng.random(size=(self.n, n_p, m))
            within = np.floor(u * seeds_per_prompt[prompts][..., None]).astype(np.int64)
            valid = np.arange(m)[None, None, :] < seeds_per_prompt[prompts][..., None]
            idx = (offsets[prompts][..., None] + within) + (np.arange(self.n) * n_pairs)[:, None, None]
            counts = np.bincount(idx[valid], minlength=self.n * n_pairs).reshape(self.n, n_pairs)
            self._cache[k] = counts / counts.sum(axis=1, keepdims=True)
        return self._cache[k]


def pair_means(g: np.ndarray, w: np.ndarray) -> np.ndarray:
    """g: runs × pairs (or iterations × runs × pairs); w: B × pairs -> B × runs (× ...) weighted means."""
    if g.ndim == 2:
        return np.einsum("bq,rq->br", w, g)
    return np.einsum("bq,trq->btr", w, g)


def resampled_mean(g: np.ndarray, run_idx: np.ndarray, w: np.ndarray) -> np.ndarray:
    """B replicates of the mean over drawn runs of each run's weighted pair mean. g: runs × pairs."""
    pm = pair_means(g, w)  # B × runs
    return np.take_along_axis(pm, run_idx, axis=1).mean(axis=1)


def quantiles(x: np.ndarray, q: list[float]) -> np.ndarray:
    """np.quantile, except that where replicates are infinite (a level never reached, a ratio over
    0) the quantile is a replicate's value, not an interpolation between inf and a number (nan)."""
    if np.isfinite(x).all():
        return np.quantile(x, q)
    return np.quantile(x, q, method="inverted_cdf")


def rnd(x, digits: int = 6):
    """Floats rounded for the JSON (a replot must reproduce it byte for byte)."""
    if x is None:
        return None
    if isinstance(x, (list, tuple)):
        return [rnd(v, digits) for v in x]
    x = float(x)
    if not np.isfinite(x):
        return None if np.isnan(x) else ("inf" if x > 0 else "-inf")
    return float(f"{x:.{digits}g}")


def summary(point: float, reps: np.ndarray, per_run: np.ndarray, n_prompts: int, n_pairs: int) -> dict:
    """Point estimate, bootstrap 95 % and 90 % percentile intervals, and the plain mean ± SE over seeds."""
    from scipy import stats

    n = len(per_run)
    se = float(np.std(per_run, ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
    t95 = float(stats.t.ppf(0.975, n - 1)) * se if n > 1 else float("nan")
    lo95, hi95, lo90, hi90 = np.quantile(reps, [0.025, 0.975, 0.05, 0.95])
    return {
        "mean": rnd(point),
        "ci95": rnd([lo95, hi95]),
        "ci90": rnd([lo90, hi90]),
        "seeds": n,
        "df": n - 1,
        "prompts": n_prompts,
        "pairs": n_pairs,
        "se_seeds": rnd(se),
        "t95_seeds": rnd([point - t95, point + t95]),
        "per_seed": rnd(list(per_run)),
        "resolved": bool(lo95 > 0 or hi95 < 0),
    }


# --- loading the committed data -------------------------------------------------------------------------


class Data:
    """The committed Parquet as arrays: per set, the pair order; per (run, iteration, set) the gains."""

    def __init__(self, folder: str):
        import pyarrow.parquet as pq

        d = Path(folder)
        missing = [f for f in ("pairs.parquet", "timings.parquet", "runs.json") if not (d / f).is_file()]
        if missing:
            raise BadInput(
                f"{folder} lacks {', '.join(missing)}: run `python benchmarks/study.py export --runs-root RUNS --out {folder}` first"
            )
        self.info = json.loads((d / "runs.json").read_text())
        self.meta = self.info["runs"]
        pairs = pq.read_table(d / "pairs.parquet").to_pandas()
        self.timings = pq.read_table(d / "timings.parquet").to_pandas()
        self.audit = pq.read_table(d / "audit.parquet").to_pandas() if (d / "audit.parquet").is_file() else None
        for c in ("run", "variant", "mode", "set"):
            pairs[c] = pairs[c].astype(str)
        for c in ("run", "stage", "worker"):
            self.timings[c] = self.timings[c].astype(str)
        if self.audit is not None:
            for c in ("run", "proxy"):
                self.audit[c] = self.audit[c].astype(str)
        pairs = pairs.sort_values(["run", "iteration", "set", "prompt_id", "eval_seed"], kind="stable")
        self.sets = sorted(pairs["set"].unique(), key=lambda x: (x != "train", x != "held_out", x))
        self.reward: dict = {}
        self.strict: dict = {}
        pair_list: dict = {}
        for (run, it, st), g in pairs.groupby(["run", "iteration", "set"], sort=True):
            pair_list[(run, int(it), st)] = list(zip(g["prompt_id"].tolist(), g["eval_seed"].tolist(), strict=True))
            self.reward[(run, int(it), st)] = g["reward"].to_numpy(np.float64)
            self.strict[(run, int(it), st)] = g["strict"].to_numpy(np.float64)
        base_runs = sorted({k[0] for k in self.reward if k[1] == -1})
        self.runs_of: dict[str, list[str]] = {}
        for run in base_runs:
            self.runs_of.setdefault(self.meta[run]["variant"], []).append(run)
        for v in self.runs_of:
            self.runs_of[v].sort(key=lambda r: self.meta[r]["training_seed"])
        self.variants = sorted(self.runs_of, key=lambda v: (MODES.index(v) if v in MODES else len(MODES), v))
        # the evaluation design of each variant and set: its (prompt, eval seed) pairs, the same for
        # every run of the variant and every iteration (a training pool of another size has another
        # `train` set; the held-out set is the same for all)
        self.order: dict[tuple[str, str], list] = {}
        for (run, it, st), key in pair_list.items():
            v = self.meta[run]["variant"]
            ref = self.order.setdefault((v, st), pair_list.get((self.runs_of[v][0], -1, st), key))
            if key != ref:
                raise BadInput(
                    f"pairs.parquet: run {run} iteration {it} set {st} does not hold the same (prompt, eval seed) "
                    f"pairs as {self.runs_of[v][0]}'s baseline: re-export the study"
                )
        self.spp = {
            k: np.unique(np.array([p for p, _ in o]), return_counts=True)[1] for k, o in self.order.items()
        }  # seeds per prompt, prompts in order (the pairs are sorted by prompt)
        self.baseline_identical = all(
            np.array_equal(self.reward[(r, -1, st)], self.reward[(self.runs_of[v][0], -1, st)])
            for v in self.variants
            for r in self.runs_of[v]
            for st in self.sets
            if (r, -1, st) in self.reward
        ) and all(
            np.array_equal(self.reward[(self.runs_of[v][0], -1, st)], self.reward[(self.runs_of[w][0], -1, st)])
            for v in self.variants
            for w in self.variants
            for st in self.sets
            if self.same_design(v, w, st)
        )

    def design(self, v: str, s: str) -> tuple[str, np.ndarray]:
        """(bootstrap key, seeds per prompt) of a variant's evaluation set: variants with the same
        pairs share the key, hence the prompt/eval-seed draws."""
        return f"{s}:{zlib.crc32(repr(self.order[(v, s)]).encode()):08x}", self.spp[(v, s)]

    def same_design(self, a: str, b: str, s: str) -> bool:
        return (a, s) in self.order and (b, s) in self.order and self.order[(a, s)] == self.order[(b, s)]

    def weights(self, boot: Bootstrap, v: str, s: str, fixed_prompts: bool = False) -> np.ndarray:
        return boot.pair_weights(*self.design(v, s), fixed_prompts=fixed_prompts)

    def size(self, v: str, s: str) -> tuple[int, int]:
        """(prompts, pairs) of a variant's evaluation set."""
        return len(self.spp[(v, s)]), int(self.spp[(v, s)].sum())

    def evaluated(self, run: str, s: str) -> list[int]:
        return sorted(k[1] for k in self.reward if k[0] == run and k[2] == s and k[1] >= 0)

    def gain(self, run: str, it: int, s: str, what: str = "reward") -> np.ndarray:
        src = self.reward if what == "reward" else self.strict
        return src[(run, it, s)] - src[(run, -1, s)]

    def horizon(self, variant: str, s: str) -> list[int]:
        """The evaluated iterations every run of the variant has (a study still running: the common part)."""
        runs = [r for r in self.runs_of.get(variant, []) if self.evaluated(r, s)]
        if not runs:
            return []
        return sorted(set.intersection(*(set(self.evaluated(r, s)) for r in runs)))

    def active(self, variant: str, s: str) -> list[str]:
        return [r for r in self.runs_of.get(variant, []) if self.evaluated(r, s)]


# --- the analyses ----------------------------------------------------------------------------------------


def estimate(data: Data, boot: Bootstrap, v: str, s: str, g: np.ndarray) -> dict:
    """Mean over runs (rows of g) of the pair mean on variant v's set s, with its two-level bootstrap."""
    reps = resampled_mean(g, boot.runs(len(g)), data.weights(boot, v, s))
    out = summary(float(g.mean()), reps, g.mean(axis=1), data.size(v, s)[0], g.shape[1])
    # the same with the evaluation set's prompts held fixed: about these prompts, not prompts like them
    fixed = resampled_mean(g, boot.runs(len(g)), data.weights(boot, v, s, fixed_prompts=True))
    out["ci95_fixed_prompts"] = rnd(list(np.quantile(fixed, [0.025, 0.975])))
    return out


def curves(data: Data, boot: Bootstrap) -> dict:
    """Per set, variant and evaluated iteration (common to the variant's runs): gain and strict gain."""
    out: dict = {}
    for s in data.sets:
        for v in data.variants:
            runs = data.active(v, s)
            rows = []
            for it in data.horizon(v, s):
                row = {"iteration": it, **estimate(data, boot, v, s, np.stack([data.gain(r, it, s) for r in runs]))}
                st = np.stack([data.gain(r, it, s, "strict") for r in runs])
                if np.isfinite(st).all():
                    row["strict_gain"] = estimate(data, boot, v, s, st)
                    row["strict_base"] = rnd(np.mean([data.strict[(r, -1, s)].mean() for r in runs]))
                    row["strict"] = rnd(np.mean([data.strict[(r, it, s)].mean() for r in runs]))
                rows.append(row)
            if rows:
                out.setdefault(s, {})[v] = rows
    return out


def per_run(data: Data, boot: Bootstrap) -> dict:
    """Each run's own paired gain at each evaluated iteration, its interval from the evaluation
    pairs alone (prompts, then eval seeds within prompt): what one run can say by itself."""
    out: dict = {}
    for v in data.variants:
        for r in data.runs_of[v]:
            for s in data.sets:
                rows = []
                for it in data.evaluated(r, s):
                    g = data.gain(r, it, s)[None, :]
                    reps = resampled_mean(g, np.zeros((boot.n, 1), dtype=np.int64), data.weights(boot, v, s))
                    rows.append(
                        {
                            "iteration": it,
                            "mean": rnd(g.mean()),
                            "ci95": rnd(list(np.quantile(reps, [0.025, 0.975]))),
                            "strict_base": rnd(data.strict[(r, -1, s)].mean()),
                            "strict": rnd(data.strict[(r, it, s)].mean()),
                        }
                    )
                if rows:
                    out.setdefault(r, {})[s] = rows
    return out


def paired_difference(data: Data, boot: Bootstrap, a: str, b: str, s: str) -> list[dict]:
    """a − b per training seed on the same pairs, at every iteration both have evaluated ([] when
    the two variants' sets hold different pairs)."""
    if not data.same_design(a, b, s):
        return []
    seeds_a = {data.meta[r]["training_seed"]: r for r in data.active(a, s)}
    seeds_b = {data.meta[r]["training_seed"]: r for r in data.active(b, s)}
    seeds = sorted(set(seeds_a) & set(seeds_b))
    if not seeds:
        return []
    its = sorted(
        set.intersection(*(set(data.evaluated(seeds_a[k], s)) & set(data.evaluated(seeds_b[k], s)) for k in seeds))
    )
    rows = []
    for it in its:
        d = np.stack([data.gain(seeds_a[k], it, s) - data.gain(seeds_b[k], it, s) for k in seeds])
        gb = np.stack([data.gain(seeds_b[k], it, s) for k in seeds])
        row = {"iteration": it, "training_seeds": seeds, **estimate(data, boot, a, s, d)}
        row["b_gain"] = rnd(gb.mean())
        rows.append(row)
    return rows


def unpaired_difference(data: Data, boot: Bootstrap, a: str, b: str, s: str) -> list[dict]:
    """a − b with each variant's training seeds resampled on their own (not paired), pairs shared."""
    ra, rb = data.active(a, s), data.active(b, s)
    if not ra or not rb or not data.same_design(a, b, s):
        return []
    its = sorted(set(data.horizon(a, s)) & set(data.horizon(b, s)))
    w = data.weights(boot, a, s)
    rows = []
    for it in its:
        ga = np.stack([data.gain(r, it, s) for r in ra])
        gb = np.stack([data.gain(r, it, s) for r in rb])
        reps = resampled_mean(ga, boot.runs(len(ra), f"unpaired:{a}"), w) - resampled_mean(
            gb, boot.runs(len(rb), f"unpaired:{b}"), w
        )
        point = float(ga.mean() - gb.mean())
        lo95, hi95, lo90, hi90 = np.quantile(reps, [0.025, 0.975, 0.05, 0.95])
        va, vb = ga.mean(axis=1), gb.mean(axis=1)
        se = (
            float(np.sqrt(np.var(va, ddof=1) / len(va) + np.var(vb, ddof=1) / len(vb)))
            if min(len(va), len(vb)) > 1
            else float("nan")
        )
        rows.append(
            {
                "iteration": it,
                "mean": rnd(point),
                "ci95": rnd([lo95, hi95]),
                "ci90": rnd([lo90, hi90]),
                "seeds": [len(ra), len(rb)],
                "df": len(ra) + len(rb) - 2,
                "prompts": data.size(a, s)[0],
                "pairs": data.size(a, s)[1],
                "se_welch": rnd(se),
                "a_gain": rnd(ga.mean()),
                "b_gain": rnd(gb.mean()),
                "resolved": bool(lo95 > 0 or hi95 < 0),
            }
        )
    return rows


def equivalence(rows: list[dict]) -> list[dict]:
    """Per iteration: the smallest margin δ with the 90 % interval inside [−δ, +δ] (TOST, α = 0.05),
    absolute and as a share of the reference mode's (b's) mean gain."""
    out = []
    for r in rows:
        lo, hi = r["ci90"]
        delta = max(abs(lo), abs(hi))
        out.append(
            {
                "iteration": r["iteration"],
                "difference": r["mean"],
                "ci90": r["ci90"],
                "margin": rnd(delta),
                "margin_share_of_reference_gain": rnd(delta / r["b_gain"]) if r["b_gain"] > 0 else None,
                "reference_gain": r["b_gain"],
                "seeds": r["seeds"],
                "prompts": r["prompts"],
            }
        )
    return out


def first_crossing(x: np.ndarray, y: np.ndarray, target: float) -> np.ndarray:
    """x at the first crossing of y ≥ target, interpolated linearly; inf where never.
    x: points (increasing), y: B × points (or points)."""
    y2 = np.atleast_2d(y)
    hit = y2 >= target
    has = hit.any(axis=1)
    j = hit.argmax(axis=1)
    jm = np.maximum(j - 1, 0)
    y0, y1 = np.take_along_axis(y2, jm[:, None], 1)[:, 0], np.take_along_axis(y2, j[:, None], 1)[:, 0]
    x0, x1 = x[jm], x[j]
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = np.where(y1 != y0, (target - y0) / (y1 - y0), 1.0)
    xs = np.where(j == 0, x[0], x0 + (x1 - x0) * frac)
    xs = np.where(has, xs, np.inf)
    return xs if np.ndim(y) > 1 else xs[0]


def parity_levels(final_gains: dict[str, dict], fractions=LEVEL_FRACTIONS) -> dict:
    """Fixed absolute levels: fractions of the smallest final mean gain among the modes whose final
    gain is resolved above 0 (so every compared mode's mean curve reaches them)."""
    compared = sorted(m for m, f in final_gains.items() if f["ci95"][0] > 0)
    if not compared:
        return {"compared": [], "levels": [], "base": None}
    base = min(final_gains[m]["mean"] for m in compared)
    return {
        "compared": compared,
        "base": base,
        "levels": [rnd(f * base) for f in fractions],
        "fractions": list(fractions),
    }


def iteration_costs(data: Data, runs: list[str], iterations: int) -> dict[str, np.ndarray]:
    """runs × iterations arrays of each iteration's cost-clock inputs (eval and audit excluded)."""
    t = data.timings
    t = t[(t["iteration"] >= 0) & (~t["stage"].isin(MEASURE_STAGES)) & (t["run"].isin(runs))]
    agg = t.groupby(["run", "iteration"], sort=True)[["seconds", "forwards_high", "forwards_low"]].sum()
    out = {}
    for col in ("seconds", "forwards_high", "forwards_low"):
        a = np.full((len(runs), iterations), np.nan)
        for i, r in enumerate(runs):
            for it in range(iterations):
                if (r, it) in agg.index:
                    a[i, it] = agg.loc[(r, it), col]
        out[col] = a
    return out


def parity(data: Data, boot: Bootstrap, crv: dict, s: str = "train", reference: str = "naive_scaling") -> dict:
    """Time for each mode to reach fixed gain levels, on the measured wall clock and the projected
    GPU clock (forwards, low-precision priced at each of LOW_COSTS); speed-up = reference's time / the mode's."""
    if reference not in crv.get(s, {}):
        return {"skipped": f"no {reference} runs"}
    modes = [m for m in MODES if m in crv[s] and data.same_design(m, reference, s)]
    its = sorted(set.intersection(*(set(data.horizon(m, s)) for m in modes)))
    if not its:
        return {"skipped": "no iteration evaluated by every mode"}
    last = its[-1]
    finals = {m: next(r for r in crv[s][m] if r["iteration"] == last) for m in modes}
    lv = parity_levels({m: {"mean": f["mean"], "ci95": f["ci95"]} for m, f in finals.items() if m in LEVEL_MODES})
    out = {"set": s, "last_iteration": last, "final_gains": {m: finals[m]["mean"] for m in modes}, **lv}
    if not lv["levels"]:
        out["skipped"] = f"no final gain of {', '.join(LEVEL_MODES)} is resolved above 0"
        return out
    w = data.weights(boot, reference, s)
    x_it = np.array([0.0] + [it + 1.0 for it in its])  # completed iterations (eval at t follows t+1 updates)
    per_mode: dict = {}
    for m in modes:
        runs = data.active(m, s)
        g = np.stack([np.stack([data.gain(r, it, s) for r in runs]) for it in its])  # T × runs × pairs
        idx = boot.runs(len(runs))
        pm = pair_means(g, w)  # B × T × runs
        curve_b = np.concatenate(
            [np.zeros((boot.n, 1)), np.take_along_axis(pm, idx[:, None, :].repeat(len(its), 1), axis=2).mean(axis=2)],
            axis=1,
        )
        curve = np.concatenate([[0.0], g.mean(axis=(1, 2))])
        per_run = np.concatenate([np.zeros((1, len(runs))), g.mean(axis=2)], axis=0).T  # runs × points
        cost = iteration_costs(data, runs, last + 1)
        if np.isnan(cost["seconds"]).any():
            out["skipped"] = f"{m}: stage timings missing for an iteration up to {last}"
            return out
        clocks = {"iterations": (1.0, np.ones(boot.n))}

        def rate(per_iteration):
            """Each run's median cost per iteration (robust to its stalls), then the mean over the
            (drawn) training seeds: the clock is that rate × completed iterations."""
            per_run = np.median(per_iteration, axis=1)
            return float(per_run.mean()), per_run[idx].mean(axis=1)

        clocks["wall_seconds"] = rate(cost["seconds"])
        for c in LOW_COSTS:
            clocks[f"gpu_{c:g}"] = rate(cost["forwards_high"] + c * cost["forwards_low"])
        per_mode[m] = {
            "curve": curve,
            "curve_b": curve_b,
            "per_run": per_run,
            "training_seeds": [data.meta[r]["training_seed"] for r in runs],
            "clocks": clocks,
            "seconds_per_iteration_median": rnd(float(np.median(cost["seconds"]))),
            "seconds_per_iteration_max": rnd(float(np.max(cost["seconds"]))),
            "forwards_high_per_iteration": rnd(float(np.median(cost["forwards_high"]))),
            "forwards_low_per_iteration": rnd(float(np.median(cost["forwards_low"]))),
            "seeds": len(runs),
        }

    def at_clock(u, clock, b=None):
        """The clock at (fractional) completed iterations u (inf stays inf)."""
        return u * (clock[0] if b is None else clock[1])

    rows = []
    for level, frac in zip(lv["levels"], lv["fractions"], strict=True):
        row = {"fraction": frac, "level": level, "modes": {}}
        u_point = {m: np.array([first_crossing(x_it, pm_["curve"], level)]) for m, pm_ in per_mode.items()}
        u_reps = {m: first_crossing(x_it, pm_["curve_b"], level) for m, pm_ in per_mode.items()}
        for m, pm_ in per_mode.items():
            own = first_crossing(x_it, pm_["per_run"], level)
            row.setdefault("per_seed_iterations", {})[m] = {
                str(k): rnd(u) for k, u in zip(pm_["training_seeds"], own, strict=True)
            }
            cell = {}
            for clock_name, clock in pm_["clocks"].items():
                t_point = float(at_clock(u_point[m], clock)[0])
                t_reps = at_clock(u_reps[m], clock, b=True)
                fin = np.isfinite(t_reps)
                entry = {
                    "time": rnd(t_point),
                    "ci95": rnd(list(np.quantile(t_reps[fin], [0.025, 0.975]))) if fin.any() else None,
                    "replicates_never": rnd(1.0 - fin.mean(), 4),
                }
                if m != reference and reference in per_mode:
                    ref = per_mode[reference]["clocks"][clock_name]
                    tr_point = float(at_clock(u_point[reference], ref)[0])
                    tr_reps = at_clock(u_reps[reference], ref, b=True)
                    with np.errstate(divide="ignore", invalid="ignore"):
                        sp = tr_reps / t_reps
                        sp_point = tr_point / t_point
                    ok = ~np.isnan(sp)  # never/never: no ratio
                    entry["speedup"] = rnd(sp_point) if np.isfinite(t_point) or np.isfinite(tr_point) else None
                    entry["speedup_ci95"] = rnd(list(quantiles(sp[ok], [0.025, 0.975]))) if ok.any() else None
                    entry["speedup_replicates_undefined"] = rnd(1.0 - ok.mean(), 4)
                cell[clock_name] = entry
            row["modes"][m] = cell
        rows.append(row)
    out["rows"] = rows
    out["cost"] = {
        m: {k: v for k, v in pm_.items() if k not in ("curve", "curve_b", "clocks", "per_run", "training_seeds")}
        for m, pm_ in per_mode.items()
    }
    out["curves"] = {
        m: {
            "completed_iterations": rnd(list(x_it)),
            "gain": rnd(list(pm_["curve"])),
            "wall_seconds": rnd(list(pm_["clocks"]["wall_seconds"][0] * x_it)),
        }
        for m, pm_ in per_mode.items()
    }
    return out


def winners_curse(data: Data, boot: Bootstrap) -> dict:
    """From the audit rows (proxy = this iteration's explore): per variant (and its N), for the
    proxy-selected top K/2 seeds, |proxy rank − true rank|/N, the share not in the true top K/2
    (chance: 1 − (K/2)/N for a random pick), its ratio to chance, and Spearman's ρ of proxy vs
    truth; per audited prompt, then mean over iterations and training seeds; the bootstrap resamples
    training seeds, then audited iterations within each."""
    from scipy import stats

    if data.audit is None or data.audit.empty:
        return {}
    a = data.audit[data.audit["proxy"] == "explore"]
    out = {}
    for v in data.variants:
        runs = data.runs_of[v]
        runs = [r for r in runs if (a["run"] == r).any()]
        if not runs:
            continue
        metrics: dict[str, list] = {
            "rank_error_bottom": [],
            "false_bottom": [],
            "rank_error_top": [],
            "false_top": [],
            "spearman": [],
            "true_reward_mean": [],
            "true_reward_sd": [],
        }
        n_, k_ = data.meta[runs[0]]["explore_n"], data.meta[runs[0]]["select_k"]
        half = k_ // 2
        for r in runs:
            ar = a[a["run"] == r]
            per = {m: [] for m in metrics}
            for it in sorted(ar["iteration"].unique()):
                u = ar[ar["iteration"] == it]
                for pid in sorted(u["prompt_id"].unique()):
                    p = u[u["prompt_id"] == pid].sort_values(["reward", "seed"], ascending=[False, True], kind="stable")
                    true_rank = np.arange(1, len(p) + 1)
                    proxy_rank = p["proxy_rank"].to_numpy()
                    top = proxy_rank <= half
                    per["rank_error_top"].append(float(np.mean(np.abs(proxy_rank[top] - true_rank[top]) / len(p))))
                    per["false_top"].append(float(np.mean(true_rank[top] > half)))
                    bottom = proxy_rank > len(p) - half
                    per["rank_error_bottom"].append(
                        float(np.mean(np.abs(proxy_rank[bottom] - true_rank[bottom]) / len(p)))
                    )
                    per["false_bottom"].append(float(np.mean(true_rank[bottom] <= len(p) - half)))
                    per["spearman"].append(float(stats.spearmanr(p["proxy_reward"], p["reward"]).statistic))
                    per["true_reward_mean"].append(float(p["reward"].mean()))
                    per["true_reward_sd"].append(float(p["reward"].std(ddof=1)))
            for m in metrics:
                metrics[m].append(per[m])
        units = min(len(x) for x in metrics["spearman"])  # audited prompts per run, the common part (lock-step)
        metrics = {m: [x[:units] for x in vals] for m, vals in metrics.items()}
        chance = 1.0 - half / n_
        row = {"n": n_, "k": k_, "seeds": len(runs), "audited_iterations": units, "chance_false_top": rnd(chance)}
        ridx = boot.runs(len(runs), f"audit:{v}")
        uidx = boot.rng(f"audit-units:{v}").integers(0, units, size=(boot.n, len(runs), units))
        for m, vals in metrics.items():
            arr = np.array(vals)  # runs × units
            reps = arr[ridx[:, :, None], uidx].mean(axis=(1, 2))
            row[m] = {"mean": rnd(arr.mean()), "ci95": rnd(list(np.quantile(reps, [0.025, 0.975])))}
            if m in ("spearman", "false_top"):  # per audit (iteration), over training seeds
                per_unit = arr[ridx].mean(axis=1)  # B × units
                row[m]["by_audit"] = {
                    "mean": rnd(list(arr.mean(axis=0))),
                    "ci95_low": rnd(list(np.quantile(per_unit, 0.025, axis=0))),
                    "ci95_high": rnd(list(np.quantile(per_unit, 0.975, axis=0))),
                }
            if m == "false_top":
                row["false_top_over_chance"] = {
                    "mean": rnd(arr.mean() / chance),
                    "ci95": rnd(list(np.quantile(reps, [0.025, 0.975]) / chance)),
                }
        # the audited prompt's high-precision rewards over its N seeds: first and last audit (a
        # different prompt each iteration: the first of that iteration's draw)
        for m in ("true_reward_mean", "true_reward_sd"):
            arr = np.array(metrics[m])
            row[m] = {
                "first": rnd(arr[:, 0].mean()),
                "last": rnd(arr[:, -1].mean()),
                "by_iteration": rnd(list(arr.mean(axis=0))),
            }
        out[v] = row
    return out


def analyse(folder: str, n_boot: int = 4000, seed: int = 0) -> dict:
    data = Data(folder)
    boot = Bootstrap(n_boot, seed)
    crv = curves(data, boot)
    res: dict = {
        "bootstrap": {
            "replicates": n_boot,
            "seed": seed,
            "levels": "training seeds; prompts, then eval seeds within prompt",
        },
        "host": data.info.get("host"),
        "hosts": {
            h: sorted(r for r in data.meta if data.meta[r].get("host") == h)
            for h in sorted({m["host"] for m in data.meta.values() if m.get("host")})
        },
        "baseline_identical_across_runs": data.baseline_identical,
        "runs": {
            r: {
                k: data.meta[r][k]
                for k in (
                    "variant",
                    "mode",
                    "training_seed",
                    "explore_n",
                    "prompts_pool",
                    "config_hash",
                    "iterations_complete",
                    "evaluated",
                )
            }
            for r in sorted(data.meta)
        },
        "processes": processes(data),
        "sets": {
            s: {
                v: dict(zip(("prompts", "pairs"), data.size(v, s), strict=True))
                for v in data.variants
                if (v, s) in data.order
            }
            for s in data.sets
        },
        "curves": crv,
    }
    res["per_run"] = per_run(data, boot)
    res["differences"] = {
        s: {
            f"{a} - {b}": paired_difference(data, boot, a, b, s)
            for a, b in DIFFS
            if a in data.runs_of and b in data.runs_of and data.same_design(a, b, s)
        }
        for s in data.sets
    }
    if "train" in res["differences"] and "sol_rl - naive_scaling" in res["differences"]["train"]:
        res["equivalence"] = {
            "sol_rl - naive_scaling": {
                s: equivalence(res["differences"][s]["sol_rl - naive_scaling"])
                for s in data.sets
                if "sol_rl - naive_scaling" in res["differences"][s]
            }
        }
    # pool size N: sol_rl (its own N) and sol_rl_N<n>, paired by training seed
    ns = {
        int(data.meta[data.runs_of[v][0]]["explore_n"]): v
        for v in data.runs_of
        if v == "sol_rl" or re.fullmatch(r"sol_rl_N\d+", v)
    }
    if len(ns) > 1:
        keys = sorted(ns)
        res["pool_size_n"] = {
            s: {
                f"N{hi} - N{lo}": paired_difference(data, boot, ns[hi], ns[lo], s)
                for i, lo in enumerate(keys)
                for hi in keys[i + 1 :]
            }
            for s in data.sets
        }
    pools = {
        int(data.meta[data.runs_of[v][0]]["prompts_pool"]): v
        for v in data.runs_of
        if v == "sol_rl" or re.fullmatch(r"sol_rl_pool\d+", v)
    }
    if len(pools) > 1 and "held_out" in data.sets:
        keys = sorted(pools)
        res["training_pool"] = {
            f"pool {hi} - pool {lo}": unpaired_difference(data, boot, pools[hi], pools[lo], "held_out")
            for i, lo in enumerate(keys)
            for hi in keys[i + 1 :]
        }
    res["parity"] = parity(data, boot, crv)
    res["winners_curse"] = winners_curse(data, boot)
    res["verdicts"] = verdicts(res)
    return res


def processes(data: Data) -> dict:
    """Which process (host:pid of the stage records) ran which variants, and in what order it ran
    its runs' iterations (the runs of the earliest iteration it ran, by start time): the wall clock
    compares modes fairly only within one process."""
    t = data.timings[data.timings["iteration"] >= 0].copy()
    # a pid recurs on another machine or in another session: a process is (worker, the run's host
    # and the export that brought it)
    piece = {r: f"{m.get('host')}, exported {m.get('exported_at')}" for r, m in data.meta.items()}
    t["process"] = [
        w if len(set(piece.values())) <= 1 else f"{w} ({piece.get(r)})"
        for w, r in zip(t["worker"], t["run"], strict=True)
    ]
    out: dict = {}
    for w, g in t.groupby("process", sort=True):
        first = g[g["iteration"] == g["iteration"].min()].groupby("run")["started_at"].min().sort_values(kind="stable")
        out[w] = {
            "variants": sorted({data.meta[r]["variant"] for r in g["run"].unique() if r in data.meta}),
            "iterations": [int(g["iteration"].min()), int(g["iteration"].max())],
            "order_in_a_round": list(first.index),
        }
    return out


# --- report ----------------------------------------------------------------------------------------------


def set_label(res: dict, s: str) -> str:
    """'8 prompts, 64 pairs' (and the variants whose set differs, e.g. a larger training pool)."""
    sizes: dict = {}
    for v, d in res["sets"][s].items():
        sizes.setdefault((d["prompts"], d["pairs"]), []).append(v)
    (main, _), *others = sorted(sizes.items(), key=lambda kv: -len(kv[1]))
    text = f"{main[0]} prompts, {main[1]} pairs"
    return text + "".join(f"; {', '.join(vs)}: {p} prompts, {n} pairs" for (p, n), vs in others)


def ci(c) -> str:
    return "–" if not c else f"[{c[0]:+.4f}, {c[1]:+.4f}]"


def verdict(row: dict, a: str, b: str) -> str:
    lo, hi = row["ci95"]
    if lo > 0:
        return f"{a} ahead"
    if hi < 0:
        return f"{b} ahead"
    return "not resolved"


def verdicts(res: dict) -> list[str]:
    """One sentence per question the study answers, each with its interval, seeds and prompts."""
    out = []

    def diff_line(name, r, s, a, b):
        sd = (
            f"{r['seeds']} training seeds"
            if isinstance(r["seeds"], int)
            else f"{r['seeds'][0]} + {r['seeds'][1]} training seeds"
        )
        line = (
            f"{name}, `{s}`, iteration {r['iteration']}: {r['mean']:+.4f}, 95 % {ci(r['ci95'])} "
            f"({sd}, {r['prompts']} prompts): {verdict(r, a, b)}."
        )
        t = r.get("t95_seeds")
        resolved = r["ci95"][0] > 0 or r["ci95"][1] < 0
        if resolved and t and t[0] is not None and t[0] <= 0 <= t[1]:
            # a bootstrap over few seeds understates their spread; the t interval is the check
            line += f" The t interval over the training seeds, {ci(t)}, includes 0: not counted as resolved."
        fx = r.get("ci95_fixed_prompts")
        if fx:
            line += f" These {r['prompts']} prompts held fixed: {ci(fx)}" + (
                " (resolved)." if fx[0] > 0 or fx[1] < 0 else " (not resolved)."
            )
        return line

    for s, diffs in res["differences"].items():
        for name, rows in diffs.items():
            if rows:
                a, b = name.split(" - ")
                line = diff_line(name, rows[-1], s, a, b)
                if name == "sol_rl - naive_scaling":
                    e = next(x for x in res["equivalence"][name][s] if x["iteration"] == rows[-1]["iteration"])
                    share = e["margin_share_of_reference_gain"]
                    line += (
                        f" Equivalence (TOST, α = 0.05): within ±{e['margin']:.4f}"
                        + (
                            f" = ±{share:.0%} of naive_scaling's gain ({e['reference_gain']:+.4f})"
                            if share is not None
                            else ""
                        )
                        + ", and no narrower margin."
                    )
                out.append(line)
    for s, d in (res.get("pool_size_n") or {}).items():
        for name, rows in d.items():
            if rows:
                a, b = name.split(" - ")
                out.append(diff_line(f"sol_rl {name}", rows[-1], s, a, b))
    for name, rows in (res.get("training_pool") or {}).items():
        if rows:
            a, b = name.split(" - ")
            out.append(diff_line(f"sol_rl training {name} (not paired)", rows[-1], "held_out", a, b))
    p = res.get("parity") or {}
    for row in p.get("rows", []):
        for m, cell in row["modes"].items():
            if m == "naive_scaling":
                continue
            out.append(
                f"Time to gain {row['level']:+.4f} ({row['fraction']:.0%} of {p['base']:+.4f}), {m} vs naive_scaling: "
                f"wall clock {sp(cell['wall_seconds'])}; projected GPU clock "
                + ", ".join(f"c = {c:g}: {sp(cell[f'gpu_{c:g}'])}" for c in LOW_COSTS)
                + f"; iterations {sp(cell['iterations'])}."
            )
    for v, r in (res.get("winners_curse") or {}).items():
        out.append(
            f"Winner's curse, {v} (N {r['n']}, {r['seeds']} seeds × {r['audited_iterations']} audits): "
            f"{r['false_top']['mean']:.3f} {ci(r['false_top']['ci95'])} of the proxy's top K/2 are not in the true top K/2 "
            f"(chance {r['chance_false_top']:.3f}; ratio {r['false_top_over_chance']['mean']:.2f} "
            f"{ci(r['false_top_over_chance']['ci95'])}); Spearman ρ {r['spearman']['mean']:.3f} {ci(r['spearman']['ci95'])}."
        )
    return out


def report(res: dict) -> str:
    L = ["# The four-mode study (benchmarks/study.py, from the committed Parquet)\n"]
    if res.get("verdicts"):
        L.append("## Verdicts (95 % bootstrap intervals; 'not resolved' where the interval includes 0)\n")
        L += [f"* {v}" for v in res["verdicts"]] + [""]
    b = res["bootstrap"]
    L.append(
        f"Intervals: two-level bootstrap, {b['replicates']} replicates (seed {b['seed']}): training seeds with replacement; "
        "within the evaluation set, prompts with replacement, then eval seeds within each drawn prompt (one draw shared by all runs: "
        "the pairs are the same for every run). 95 % percentile intervals; 'not resolved' where the interval includes 0. "
        "Beside it, the same bootstrap with the evaluation set's prompts held fixed (every prompt in every replicate, "
        "eval seeds and training seeds resampled: a statement about these prompts, not prompts like them), and the plain "
        "mean ± SE over training seeds (t interval, df = seeds − 1).\n"
    )
    L.append(f"Baseline rows identical across runs: {res['baseline_identical_across_runs']}.\n")
    if res.get("hosts"):
        L.append(
            "Hosts (CPU, torch kernel capability) and how many runs each ran: "
            + "; ".join(f"{h}: {len(rs)}" for h, rs in res["hosts"].items())
            + ".\n"
        )
    L.append(
        "Processes (host:pid of the stage records), the variants each ran and the order of its runs within one "
        "iteration round: "
        + "; ".join(
            f"`{w}` (iterations {p['iterations'][0]}–{p['iterations'][1]}): {', '.join(p['order_in_a_round'])}"
            for w, p in res["processes"].items()
        )
        + ".\n"
    )
    for s, cv in res["curves"].items():
        L.append(f"## Paired gain over the base model, `{s}` ({set_label(res, s)})\n")
        its = sorted({r["iteration"] for rows in cv.values() for r in rows})
        rows = []
        for it in its:
            cells = [it]
            for v in cv:
                r = next((r for r in cv[v] if r["iteration"] == it), None)
                cells.append("–" if r is None else f"{r['mean']:+.4f} {ci(r['ci95'])} ({r['seeds']} seeds)")
            rows.append(cells)
        L += [C.md_table(["iteration", *cv], rows), ""]
        rows = []
        for v, rs in cv.items():
            r = rs[-1]
            sg = r.get("strict_gain")
            rows.append(
                [
                    v,
                    r["iteration"],
                    f"{r['mean']:+.4f}",
                    ci(r["ci95"]),
                    ci(r["ci95_fixed_prompts"]),
                    f"{r['mean']:+.4f} ± {r['se_seeds']:.4f} (df {r['df']})" if r["se_seeds"] is not None else "–",
                    ci(r["t95_seeds"]) if r["t95_seeds"][0] is not None else "–",
                    f"{r['strict_base']:.3f} → {r['strict']:.3f}, {sg['mean']:+.3f} {ci(sg['ci95'])}" if sg else "–",
                    "resolved" if r["resolved"] else "not resolved",
                ]
            )
        L.append(f"### Last common evaluation, `{s}`: bootstrap vs the plain SE over seeds\n")
        L += [
            C.md_table(
                [
                    "variant",
                    "iteration",
                    "gain",
                    "bootstrap 95 %",
                    "95 %, these prompts fixed",
                    "mean ± SE over seeds",
                    "t 95 %",
                    "strict: base → run, gain [95 %]",
                    "gain > 0",
                ],
                rows,
            ),
            "",
        ]
    L.append(
        "## Every run at its last evaluation (its own paired gain; 95 % interval from the pairs alone: prompts, "
        "then eval seeds)\n"
    )
    rows = []
    for r, per_set in res["per_run"].items():
        cells = [r]
        for s in res["curves"]:
            x = per_set.get(s, [None])[-1]
            cells += (
                ["–", "–"]
                if x is None
                else [
                    f"{x['mean']:+.4f} {ci(x['ci95'])} (it. {x['iteration']})",
                    f"{x['strict_base']:.3f} → {x['strict']:.3f}" if x["strict"] is not None else "–",
                ]
            )
        rows.append(cells)
    header = ["run"] + [h for s in res["curves"] for h in (f"`{s}` gain", f"`{s}` strict")]
    L += [C.md_table(header, rows), ""]
    for s, diffs in res["differences"].items():
        L.append(f"## Mode differences, `{s}` (paired by training seed, same pairs)\n")
        rows = []
        for name, rs in diffs.items():
            a, bb = name.split(" - ")
            for r in rs:
                rows.append(
                    [
                        name,
                        r["iteration"],
                        f"{r['mean']:+.4f}",
                        ci(r["ci95"]),
                        f"± {r['se_seeds']:.4f}" if r["se_seeds"] is not None else "–",
                        f"{r['seeds']} / {r['prompts']}",
                        verdict(r, a, bb),
                    ]
                )
        L += [
            C.md_table(
                ["difference", "iteration", "mean", "bootstrap 95 %", "SE over seeds", "seeds / prompts", "verdict"],
                rows,
            ),
            "",
        ]
    for name, per_set in (res.get("equivalence") or {}).items():
        L.append(f"## Equivalence, {name} (TOST at α = 0.05: the 90 % interval inside ±δ)\n")
        rows = []
        for s, rs in per_set.items():
            for r in rs:
                share = r["margin_share_of_reference_gain"]
                rows.append(
                    [
                        s,
                        r["iteration"],
                        f"{r['difference']:+.4f}",
                        ci(r["ci90"]),
                        f"{r['margin']:.4f}",
                        f"{share:.0%}" if share is not None else "– (reference gain ≤ 0)",
                        f"{r['reference_gain']:+.4f}",
                        f"{r['seeds']} / {r['prompts']}",
                    ]
                )
        L += [
            C.md_table(
                [
                    "set",
                    "iteration",
                    "difference",
                    "90 % interval",
                    "smallest margin δ",
                    "δ / naive_scaling's gain",
                    "naive_scaling's gain",
                    "seeds / prompts",
                ],
                rows,
            ),
            "",
            "Read: at each iteration the data support 'within ±δ of naive_scaling's gain', and no narrower margin.\n",
        ]
    if res.get("pool_size_n"):
        L.append("## Pool size N (sol_rl, paired by training seed)\n")
        rows = []
        for s, d in res["pool_size_n"].items():
            for name, rs in d.items():
                if rs:
                    r = rs[-1]
                    a, bb = name.split(" - ")
                    rows.append(
                        [
                            s,
                            name,
                            r["iteration"],
                            f"{r['mean']:+.4f}",
                            ci(r["ci95"]),
                            ci(r["t95_seeds"]) if r["t95_seeds"][0] is not None else "–",
                            f"{r['seeds']} / {r['prompts']}",
                            verdict(r, a, bb),
                        ]
                    )
        L += [
            C.md_table(
                [
                    "set",
                    "difference",
                    "iteration",
                    "mean",
                    "bootstrap 95 %",
                    "t over seeds, 95 %",
                    "seeds / prompts",
                    "verdict (bootstrap)",
                ],
                rows,
            ),
            "Where the t interval over training seeds includes 0 and the bootstrap's does not, the "
            "bootstrap's resampling of few seeds understates their spread: read it as not resolved.\n",
        ]
    if res.get("training_pool"):
        L.append("## Training pool size, held-out gain (not paired by training seed; the held-out pairs are shared)\n")
        rows = []
        for name, rs in res["training_pool"].items():
            for r in rs[-1:]:
                a, bb = name.split(" - ")
                rows.append(
                    [
                        name,
                        r["iteration"],
                        f"{r['a_gain']:+.4f} vs {r['b_gain']:+.4f}",
                        f"{r['mean']:+.4f}",
                        ci(r["ci95"]),
                        f"{r['seeds'][0]} + {r['seeds'][1]} (df {r['df']}) / {r['prompts']}",
                        verdict(r, a, bb),
                    ]
                )
        L += [
            C.md_table(
                [
                    "difference",
                    "iteration",
                    "held-out gains",
                    "difference",
                    "bootstrap 95 %",
                    "seeds / prompts",
                    "verdict",
                ],
                rows,
            ),
            "",
        ]
    L += parity_report(res.get("parity") or {})
    wc = res.get("winners_curse") or {}
    if wc:
        L.append(
            "## Winner's curse and proxy fidelity (audit rows; bootstrap over training seeds, then audited iterations)\n"
        )
        rows = []
        for v, r in wc.items():
            rows.append(
                [
                    v,
                    r["n"],
                    f"{r['seeds']} × {r['audited_iterations']}",
                    f"{r['rank_error_top']['mean']:.3f} {ci(r['rank_error_top']['ci95'])}",
                    f"{r['false_top']['mean']:.3f} {ci(r['false_top']['ci95'])}",
                    f"{r['chance_false_top']:.3f}",
                    f"{r['false_top_over_chance']['mean']:.2f} {ci(r['false_top_over_chance']['ci95'])}",
                    f"{r['spearman']['mean']:.3f} {ci(r['spearman']['ci95'])}",
                    f"{r['true_reward_mean']['first']:.3f} → {r['true_reward_mean']['last']:.3f}",
                    f"{r['true_reward_sd']['first']:.3f} → {r['true_reward_sd']['last']:.3f}",
                ]
            )
        L += [
            C.md_table(
                [
                    "variant",
                    "N",
                    "seeds × audits",
                    "mean abs(proxy rank − true rank)/N, top",
                    "top seeds not in the true top K/2",
                    "chance",
                    "ratio to chance",
                    "Spearman ρ",
                    "audited prompt's reward, first → last audit",
                    "its SD over the N seeds",
                ],
                rows,
            ),
            "",
            "Chance: the share of a random pick of K/2 of the N seeds that is not in the true top K/2. The audited "
            "prompt is the first of each iteration's draw, so its reward trend mixes prompts and policy.\n",
        ]
    return "\n".join(L)


def parity_report(p: dict) -> list[str]:
    L = ["## Time to fixed gain levels (`train`)\n"]
    if not p or p.get("skipped") and not p.get("rows"):
        return L + [f"Not computed: {p.get('skipped', 'no data')}.\n"]
    L.append(
        f"Levels: {', '.join(f'{f:.0%}' for f in p['fractions'])} of {p['base']:+.4f}, the smallest final mean gain (iteration "
        f"{p['last_iteration']}) among the modes resolved above 0 ({', '.join(p['compared'])}); every mode's mean curve is "
        "interpolated between evaluations (x = completed iterations; the eval at iteration t follows t + 1 updates). Clocks: "
        "completed iterations × the mean over training seeds of each run's median cost per iteration (a stall moves no "
        "clock; every iteration does the same work by design); wall = stage seconds (eval and audit excluded) on "
        "each run's host (runs.json), one torch thread per process; GPU "
        "projection = transformer forwards, a low-precision forward priced at c high-precision forwards. Speed-up = "
        "naive_scaling's time / the mode's; bootstrap over training seeds and evaluation pairs ('never' when a replicate's "
        "curve does not reach the level within the run).\n"
    )
    rows = []
    for row in p["rows"]:
        for m, cell in row["modes"].items():
            it, wall = cell["iterations"], cell["wall_seconds"]
            rows.append(
                [
                    f"{row['fraction']:.0%} = {row['level']:+.4f}",
                    m,
                    f"{it['time']:.2f} {ci2(it['ci95'])}" if it["time"] != "inf" else "never",
                    f"{wall['time']:.0f} {ci2(wall['ci95'], 0)}" if wall["time"] != "inf" else "never",
                    sp(wall),
                    f"{wall['replicates_never']:.1%}",
                ]
            )
    L += [
        C.md_table(
            [
                "level",
                "mode",
                "iterations [95 %]",
                "wall seconds [95 %]",
                "wall-clock speed-up [95 %]",
                "replicates never reaching",
            ],
            rows,
        ),
        "",
    ]
    L.append(
        "### Projected GPU clock: speed-up vs naive_scaling by the low-precision forward's cost c\n\n"
        "c = the cost of one low-precision transformer forward in high-precision forwards: 0.41 the paper's measured FP4 "
        "rollout ratio; 0.5; 0.83 benchmarks/results/cost's explore ÷ rollout on this CPU, which is per sample (6 explore "
        "steps vs 10 rollout steps), so read as a per-forward cost it is optimistic; 1.0 no saving; 1.38 this CPU's "
        "emulated NVFP4 forward per step (cost.md's linear fit). Training and regeneration forwards are high precision.\n"
    )
    header = ["level", "mode"] + [f"c = {c:g}" for c in LOW_COSTS]
    rows = []
    for row in p["rows"]:
        for m, cell in row["modes"].items():
            if m == "naive_scaling":
                continue
            rows.append([f"{row['fraction']:.0%}", m] + [sp(cell[f"gpu_{c:g}"]) for c in LOW_COSTS])
    L += [C.md_table(header, rows), ""]
    L.append("### Cost per iteration (median across runs and iterations)\n")
    rows = [
        [
            m,
            f"{c['seconds_per_iteration_median']:.1f}",
            f"{c['seconds_per_iteration_max']:.1f}",
            f"{c['forwards_high_per_iteration']:.0f}",
            f"{c['forwards_low_per_iteration']:.0f}",
            c["seeds"],
        ]
        for m, c in p["cost"].items()
    ]
    L += [
        C.md_table(
            [
                "mode",
                "wall s / iteration (median)",
                "max (stalls)",
                "high-precision forwards",
                "low-precision forwards",
                "seeds",
            ],
            rows,
        ),
        "",
    ]
    return L


def ci2(c, digits: int = 2) -> str:
    if not c:
        return "[never]"
    f = lambda x: "∞" if x == "inf" else f"{x:.{digits}f}"  # noqa: E731
    return f"[{f(c[0])}, {f(c[1])}]"


def sp(cell: dict) -> str:
    if "speedup" not in cell:
        return "(reference)"
    s = cell["speedup"]
    if s is None:
        return "never / never"
    s_txt = "∞ (naive_scaling never)" if s == "inf" else ("0 (mode never)" if s == 0 else f"{s:.2f}×")
    return f"{s_txt} {ci2(cell['speedup_ci95'])}"


# --- plots -------------------------------------------------------------------------------------------------


def color(v: str, variants: list[str]) -> str:
    """The mode's colour; other variants (N, pool size) take the next ones, in their order."""
    if v in COLORS:
        return COLORS[v]
    return f"C{len(COLORS) + [w for w in variants if w not in COLORS].index(v)}"


def plot(res: dict, out: Path) -> list[Path]:
    plt = C.pyplot()
    pngs = []
    sets = list(res["curves"])
    fig, axes = plt.subplots(1, len(sets), figsize=(6.5 * len(sets), 4.4), squeeze=False)
    for ax, s in zip(axes[0], sets, strict=True):
        for v, rows in res["curves"][s].items():
            x = np.array([r["iteration"] for r in rows])
            y = np.array([r["mean"] for r in rows])
            lo, hi = np.array([r["ci95"][0] for r in rows]), np.array([r["ci95"][1] for r in rows])
            c = color(v, list(res["curves"][s]))
            ax.plot(x, y, "o-" if v in MODES else "s--", ms=3, color=c, label=f"{v} ({rows[-1]['seeds']} seeds)")
            ax.fill_between(x, lo, hi, color=c, alpha=0.15)
        ax.axhline(0, color="0.5", lw=0.8)
        ax.set_xlabel("iteration")
        ax.set_ylabel(f"{s}: reward − base model (paired)")
        ax.set_title(f"{s} ({set_label(res, s)}): band = bootstrap 95 %", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    pngs += C.save_figure(fig, out, "study_gain")
    fig, axes = plt.subplots(1, len(sets), figsize=(6.5 * len(sets), 4.4), squeeze=False)
    for ax, s in zip(axes[0], sets, strict=True):
        for j, (name, rows) in enumerate(res["differences"][s].items()):
            if not rows:
                continue
            x = np.array([r["iteration"] for r in rows]) + 0.15 * (j - 1)
            y = np.array([r["mean"] for r in rows])
            e = np.array([[r["mean"] - r["ci95"][0], r["ci95"][1] - r["mean"]] for r in rows]).T
            ax.errorbar(x, y, yerr=e, fmt="o-", ms=3, capsize=3, label=name)
        ax.axhline(0, color="0.5", lw=0.8)
        ax.set_xlabel("iteration")
        ax.set_ylabel(f"{s}: difference of paired gains")
        ax.set_title(f"mode differences, {s}: bootstrap 95 %", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    pngs += C.save_figure(fig, out, "study_differences")
    p = res.get("parity") or {}
    if p.get("rows"):
        fig, axes = plt.subplots(1, 2, figsize=(13, 4.4))
        for m, cv in p["curves"].items():
            axes[0].plot(np.array(cv["wall_seconds"]) / 60, cv["gain"], "o-", ms=3, color=COLORS.get(m), label=m)
        for lv in p["levels"]:
            axes[0].axhline(lv, color="0.4", ls=":", lw=0.8)
        axes[0].set_xlabel("wall minutes (iterations × per-run median s/iteration, eval and audit excluded)")
        axes[0].set_ylabel("train: mean paired gain")
        axes[0].legend(fontsize=7)
        axes[0].grid(alpha=0.3)
        labels, pts, errs = [], [], []
        for row in p["rows"]:
            for m, cell in row["modes"].items():
                for clock in ("wall_seconds", "gpu_0.41", "gpu_0.83"):
                    c = cell[clock]
                    if "speedup" not in c or c["speedup"] in (None, "inf") or not c["speedup_ci95"]:
                        continue
                    labels.append(f"{m} {row['fraction']:.0%} {clock}")
                    pts.append(c["speedup"])
                    # an interval open to infinity (some replicates of the mode never reach the level,
                    # or naive_scaling's never does) is drawn to the axis edge with an arrow
                    hi = SPEEDUP_AXIS if c["speedup_ci95"][1] == "inf" else min(c["speedup_ci95"][1], SPEEDUP_AXIS)
                    lo = 0.0 if c["speedup_ci95"][0] == "inf" else c["speedup_ci95"][0]
                    errs.append([max(0.0, c["speedup"] - lo), max(0.0, hi - c["speedup"])])
                    if hi == SPEEDUP_AXIS:
                        axes[1].annotate("→ ∞", (SPEEDUP_AXIS, len(pts) - 1), fontsize=6, va="center", ha="right")
        if pts:
            y = np.arange(len(pts))
            axes[1].errorbar(pts, y, xerr=np.array(errs).T, fmt="o", capsize=3)
            axes[1].set_yticks(y, labels, fontsize=6)
            axes[1].axvline(1, color="0.5", lw=0.8)
            axes[1].set_xlim(0, SPEEDUP_AXIS)
            axes[1].set_xlabel("speed-up vs naive_scaling (bootstrap 95 %; → ∞: the interval is open)")
            axes[1].grid(alpha=0.3)
        fig.suptitle("Time to fixed gain levels (dotted lines) that every compared mode reaches", fontsize=10)
        pngs += C.save_figure(fig, out, "study_parity")
    wc = res.get("winners_curse") or {}
    if wc:
        fig, axes = plt.subplots(1, 2, figsize=(13, 4.2))
        for ax, m, label in (
            (axes[0], "spearman", "Spearman ρ, proxy vs high precision"),
            (axes[1], "false_top", "share of the proxy's top K/2 not in the true top K/2"),
        ):
            for v, r in wc.items():
                b = r[m]["by_audit"]
                x = np.arange(len(b["mean"]))
                c = color(v, list(wc))
                ax.plot(x, b["mean"], "o-", ms=3, color=c, label=f"{v} (N {r['n']}, {r['seeds']} seeds)")
                ax.fill_between(x, b["ci95_low"], b["ci95_high"], color=c, alpha=0.15)
                if m == "false_top":
                    ax.axhline(r["chance_false_top"], color=c, ls=":", lw=0.8)
            ax.set_xlabel("audit (one per iteration, the iteration's first prompt)")
            ax.set_ylabel(label, fontsize=8)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        fig.suptitle(
            "Proxy fidelity while training (band: bootstrap 95 % over training seeds; dotted: chance)", fontsize=10
        )
        pngs += C.save_figure(fig, out, "study_fidelity")
    if res.get("pool_size_n") or res.get("training_pool"):
        fig, (ax_n, ax) = plt.subplots(1, 2, figsize=(11.5, 4.6), gridspec_kw={"width_ratios": [1, 1.3]})
        # left: each N's gain at the N comparison's last common evaluation, per eval set
        n_of = {
            int(res["runs"][r]["explore_n"]): res["runs"][r]["variant"]
            for r in res["runs"]
            if res["runs"][r]["variant"] == "sol_rl" or re.fullmatch(r"sol_rl_N\d+", res["runs"][r]["variant"])
        }
        drawn = False
        seeds_of: dict[int, set[int]] = {}  # N -> the seed counts behind its points (shown under the tick)
        for k, (s, d) in enumerate((res.get("pool_size_n") or {}).items()):
            its = [rows[-1]["iteration"] for rows in d.values() if rows]
            if not its:
                continue
            it = min(its)
            xs, ms, lo, hi = [], [], [], []
            for n in sorted(n_of):
                pt = next((p for p in res["curves"][s].get(n_of[n], []) if p["iteration"] == it), None)
                if pt:
                    seeds_of.setdefault(n, set()).add(int(pt["seeds"]))
                    xs.append(n)
                    ms.append(pt["mean"])
                    lo.append(pt["mean"] - pt["ci95"][0])
                    hi.append(pt["ci95"][1] - pt["mean"])
            if xs:
                off = (k - 0.5) * 0.04  # side by side on the log axis
                ax_n.errorbar(
                    np.array(xs) * (1 + off), ms, yerr=[lo, hi], fmt="o-", capsize=3, label=f"{s}, iteration {it}"
                )
                drawn = True
        if drawn:
            ax_n.set_xscale("log", base=2)
            # N 48 is the four-mode study's sol_rl, whose seeds need not be N 24 / 96's: each point's seed
            # count goes on the axis, as the points are unpaired (the paired differences are on the right)
            ax_n.set_xticks(
                sorted(n_of),
                [f"{n}\n({'/'.join(map(str, sorted(seeds_of.get(n, ()))))} seeds)" for n in sorted(n_of)],
            )
            ax_n.axhline(0, color="0.5", lw=0.8)
            ax_n.set_xlabel("explore pool size N (K fixed)")
            ax_n.set_ylabel("paired gain over the base model")
            ax_n.set_title("gain per N (each N's own training seeds, unpaired; bootstrap 95 %)", fontsize=9)
            ax_n.legend(fontsize=7)
            ax_n.grid(alpha=0.3)
        else:
            ax_n.set_axis_off()
        # right: the differences, paired by training seed (N) or not (training pool)
        labels, pts, errs = [], [], []
        for s, d in (res.get("pool_size_n") or {}).items():
            for name, rows in d.items():
                if rows:
                    r = rows[-1]
                    labels.append(f"{name}, {s} ({r['seeds']} seeds, it. {r['iteration']})")
                    pts.append(r["mean"])
                    errs.append([r["mean"] - r["ci95"][0], r["ci95"][1] - r["mean"]])
        for name, rows in (res.get("training_pool") or {}).items():
            if rows:
                r = rows[-1]
                labels.append(
                    f"{name.replace(' - pool ', ' - ')}, held_out\n(unpaired, {r['seeds'][0]}+{r['seeds'][1]} seeds, it. {r['iteration']})"
                )
                pts.append(r["mean"])
                errs.append([r["mean"] - r["ci95"][0], r["ci95"][1] - r["mean"]])
        if pts:
            y = np.arange(len(pts))
            ax.errorbar(pts, y, xerr=np.array(errs).T, fmt="o", capsize=3)
            ax.set_yticks(y, labels, fontsize=7)
            ax.axvline(0, color="0.5", lw=0.8)
            ax.set_xlabel("difference of gains (bootstrap 95 %)")
            ax.grid(alpha=0.3)
            ax.set_title("differences: pool size N and training-pool size", fontsize=9)
        else:
            ax.set_axis_off()
        fig.suptitle("sol_rl: explore pool size N and training-pool size", fontsize=10)
        pngs += C.save_figure(fig, out, "study_sizes")
    return pngs


# --- the design and what is left of it -------------------------------------------------------------------


def pending_pieces(folder: str) -> dict[str, dict]:
    """The pieces exported to <folder>/pending/<name>/ and committed before their analysis:
    name -> that piece's runs.json entries."""
    root = Path(folder) / PENDING
    out = {}
    for f in sorted(root.glob("*/runs.json")) if root.is_dir() else []:
        out[f.parent.name] = json.loads(f.read_text())["runs"]
    return out


def remaining(folder: str, iterations: int) -> dict:
    """Per training seed, the design's variants whose run is neither committed complete in folder
    nor waiting complete in one of its pending pieces."""
    f = Path(folder) / "runs.json"
    runs = json.loads(f.read_text())["runs"] if f.is_file() else {}
    complete = lambda m: m.get("design") and m.get("iterations_complete", 0) >= iterations  # noqa: E731
    done = {r for r, m in runs.items() if complete(m)}
    pending = {r for piece in pending_pieces(folder).values() for r, m in piece.items() if complete(m)} - done
    left: dict[int, list[str]] = {}
    for v, (_, seeds) in DESIGN.items():
        for seed in seeds:
            if f"{v}-seed{seed}" not in done | pending:
                left.setdefault(seed, []).append(v)
    return {"done": sorted(done), "pending": sorted(pending), "left": dict(sorted(left.items())), "runs": runs}


def status(folder: str, runs_root: str, preset: str = PRESET) -> str:
    """What the committed data cover, what is left, and the commands that run the rest."""
    from solrl.config import load_config

    iterations = load_config(preset).run.iterations
    st = remaining(folder, iterations)
    lines = [f"The study's design: {len(DESIGN)} variants of {preset}, {iterations} iterations each."]
    by_host: dict[str, list[str]] = {}
    for r, m in st["runs"].items():
        by_host.setdefault(m.get("host", "unknown") if m.get("design") else "", []).append(r)
    stale = by_host.pop("", [])
    for v, (_, seeds) in DESIGN.items():
        cells = []
        for seed in seeds:
            m = st["runs"].get(f"{v}-seed{seed}")
            n = m.get("iterations_complete", 0) if m and m.get("design") else 0
            state = "done" if n >= iterations else f"{n}/{iterations}" if n else "-"
            if f"{v}-seed{seed}" in st["pending"]:
                state = "pending"
            cells.append(f"seed {seed}: {state}")
        lines.append(f"  {v:<15} " + ", ".join(cells))
    for h, rs in sorted(by_host.items()):
        lines.append(f"committed runs from {h}: {len(rs)}")
    if stale:
        lines.append(f"committed runs of an older preset (dropped by the next export --merge): {len(stale)}")
    pieces = pending_pieces(folder)
    merge_cmd = (
        f"python benchmarks/study.py merge {' '.join(f'{folder}/{PENDING}/{n}' for n in pieces)} --out {folder}"
        f" && git rm -r -q {folder}/{PENDING}"
    )
    if pieces:
        lines.append(
            f"exported and committed, not yet merged ({folder}/{PENDING}/; merge them before the next analyse): "
            + ", ".join(f"{n} ({len(rs)} runs)" for n, rs in pieces.items())
        )
    if not st["left"]:
        tail = [f"  {merge_cmd} && python benchmarks/study.py analyse --data {folder}"] if pieces else []
        return "\n".join(lines + ["Nothing left to run: every run of the design is committed complete.", *tail])
    lines.append(
        "Left, one process per training seed (its variants interleaved, one iteration each in turn, so that "
        "their wall clocks compare), one torch thread each; when a process ends, export its runs with --merge:"
    )
    for seed, vs in st["left"].items():
        specs = " ".join(f"--variant {v}:{DESIGN[v][0]}" for v in vs)
        lines.append(
            f"  OMP_NUM_THREADS=1 python benchmarks/learning.py --config {preset} --threads 1 --seeds {seed} "
            f"{specs} --runs-root {runs_root} --out {Path(runs_root).parent / f'progress-seed{seed}'}"
        )
    lines.append(
        f"  python benchmarks/study.py export --merge --runs-root {runs_root} --out {folder}"
        + (f" && {merge_cmd}" if pieces else "")
        + f" && python benchmarks/study.py analyse --data {folder}"
    )
    return "\n".join(lines)


# --- command line -------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    ap = C.parser(__doc__)
    sub = ap.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("export", help="runs -> pairs.parquet, audit.parquet, timings.parquet, runs.json")
    ex.add_argument(
        "--runs-root", required=True, help="the folder holding the study's <variant>-seed<s> runs (read only)"
    )
    ex.add_argument("--out", required=True, help="where the Parquet and runs.json go")
    ex.add_argument(
        "--merge",
        action="store_true",
        help="keep the rows already in --out for runs not under --runs-root (a study run in pieces); "
        "runs not yet complete are left out unless --partial",
    )
    ex.add_argument("--partial", action="store_true", help="with --merge: export incomplete runs too")
    mg = sub.add_parser(
        "merge",
        help="folders export wrote (pieces committed before their analysis) -> the study's data, "
        "their runs replacing the same runs' rows",
    )
    mg.add_argument("pieces", nargs="+", help="folders that `export` wrote")
    mg.add_argument("--out", default="benchmarks/results/study", help="the study's data folder")
    for sp in (
        ex,
        mg,
        stp := sub.add_parser("status", help="which runs of the design are committed, and the commands for the rest"),
    ):
        sp.add_argument("--preset", default=PRESET, help=f"the study's config (default {PRESET})")
    stp.add_argument("--data", default="benchmarks/results/study", help="the folder export wrote")
    stp.add_argument("--runs-root", default="/tmp/study/runs", help="where the commands it prints put new runs")
    an = sub.add_parser(
        "analyse", help="the committed Parquet -> study.json, study.md, PNGs (the replot; reads no run)"
    )
    an.add_argument("--data", default="benchmarks/results/study", help="the folder export wrote")
    an.add_argument("--out", default=None, help="where study.json/.md and PNGs go (default: --data)")
    an.add_argument("--bootstrap", type=int, default=4000, help="bootstrap replicates (default 4000)")
    an.add_argument("--seed", type=int, default=0, help="the bootstrap's seed (default 0)")
    an.add_argument("--no-plots", action="store_true", help="write study.json and study.md only")
    args = ap.parse_args(argv)
    try:
        if args.command == "export":
            export(
                args.runs_root, args.out, merge=args.merge, partial=args.partial or not args.merge, preset=args.preset
            )
            return 0
        if args.command == "merge":
            merge_pieces(args.pieces, args.out, preset=args.preset)
            return 0
        if args.command == "status":
            print(status(args.data, args.runs_root, args.preset))
            return 0
        if args.bootstrap < 100:
            raise BadInput(
                f"--bootstrap {args.bootstrap} is too few replicates for a 95 % interval: give 100 or more (default 4000)"
            )
        res = analyse(args.data, args.bootstrap, args.seed)
    except BadInput as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out or args.data)
    out.mkdir(parents=True, exist_ok=True)
    text = report(res)
    (out / "study.json").write_text(json.dumps(res, indent=1, sort_keys=False) + "\n")
    (out / "study.md").write_text(text + "\n")
    pngs = [] if args.no_plots else plot(res, out)
    print(text)
    print(f"\nwrote {out}/study.json, study.md" + "".join(f", {p.name}" for p in pngs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
