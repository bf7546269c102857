"""What every benchmark script shares: the machine description, output writing, a markdown table,
and side-by-side timing helpers. Scripts run as `python benchmarks/<name>.py`, so this module is
importable by its bare name."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # solrl, storage, tasks and flows importable without an install
    sys.path.insert(0, str(REPO))


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8")


def cpu_flags() -> dict[str, bool]:
    """The /proc/cpuinfo flags that decide the CPU's bf16 and low-precision speed (x86)."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        flags = set()
    return {f: f in flags for f in CPU_FLAGS}


def machine() -> dict:
    """Platform, CPU model and flags, cores, memory, load, torch version and threads."""
    import torch

    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": _cpu_model(),
        "cpu_flags": cpu_flags(),
        # what model.dtype auto resolves to on this CPU (solrl.models.base.pick_dtype)
        "bf16_matmul": any(cpu_flags()[f] for f in ("avx512_bf16", "amx_bf16")),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "mem_total_gib": _mem_total_gib(),
        "loadavg_at_start": load,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "nvfp4_kernel": "eager" if os.environ.get("SOLRL_NO_COMPILE") == "1" else "torch.compile",
        # the kernels torch and oneDNN may use: ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 hold a
        # larger CPU to an AVX2 host's kernels (how the AVX2 kind is measured here)
        "aten_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "env_ATEN_CPU_CAPABILITY": os.environ.get("ATEN_CPU_CAPABILITY"),
        "env_ONEDNN_MAX_CPU_ISA": os.environ.get("ONEDNN_MAX_CPU_ISA"),
    }


def add_threads_arg(ap) -> None:
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (default: torch's default, the core count). On a machine that other "
        "jobs load, 1 avoids OpenMP oversubscription, which can slow small ops many-fold",
    )


def add_model_args(ap) -> None:
    """--config and --weights: which run config and which shapes model a script measures."""
    ap.add_argument(
        "--config",
        default=str(REPO / "configs" / "shapes.yaml"),
        help="run config (YAML path or preset name; default configs/shapes.yaml)",
    )
    ap.add_argument(
        "--weights",
        default=None,
        help="model weights directory (model.weights; default: the config's, i.e. the shipped shapes model)",
    )


def base_config(args, **overrides):
    """The run config of --config with --weights and `overrides` (dotted keys) applied."""
    from solrl.config import load_config

    cfg = load_config(args.config)
    if getattr(args, "weights", None):
        overrides = {"model.weights": str(Path(args.weights).resolve()), **overrides}
    return cfg.with_overrides(**overrides) if overrides else cfg


DTYPES = {"fp32": "float32", "bf16": "bfloat16"}  # short names used in result keys -> model.dtype


def load_policy(cfg, dtype: str | None = None):
    """The policy of `cfg` (solrl.models.load_policy), in model.dtype `dtype` (float32 / bfloat16;
    None = the config's, `auto` resolved on this machine)."""
    from solrl.models import load_policy as load

    return load(cfg.with_overrides(**{"model.dtype": dtype}) if dtype else cfg)


def model_label(cfg) -> str:
    return cfg.model.weights or "shipped"


def prefect_env() -> str:
    """A private Prefect home (SQLite DB, settings) and quiet logs, before Prefect is imported:
    the flow then runs on an ephemeral Prefect server of this process, as `sol-rl run` does."""
    import tempfile

    home = tempfile.mkdtemp(prefix="solrl-bench-prefect-")
    os.environ["PREFECT_HOME"] = home
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    return home


def set_threads(n: int | None) -> None:
    import torch

    if n:
        torch.set_num_threads(n)


def median(xs) -> float:
    return float(statistics.median(xs))


# --quick: the pipeline tests' tiny iteration (tests/pipeline_helpers.py TINY), evaluation included
QUICK_ITERATION = {
    "prompts.per_iteration": 2,
    "explore.n": 8,
    "explore.steps": 3,
    "select.k": 4,
    "rollout.steps": 5,
    "nft.micro_batch": 8,
    "eval.train_prompts": 2,
    "eval.held_out_prompts": 2,
    "eval.seeds_per_prompt": 1,
    "eval.steps": 4,
}


def timed(fn, *args, **kw) -> tuple[float, object]:
    """(seconds, result) of one call."""
    t = time.perf_counter()
    out = fn(*args, **kw)
    return time.perf_counter() - t, out


def memory_iteration(run, iteration: int):
    """(seconds, tasks.in_memory.IterationData) of one iteration of an in-memory run (the product's
    stage steps over fsspec's memory file system), the baseline evaluation left out. The policy is
    loaded and its committed adapters restored before the clock starts (the process's policy
    cache holds one policy: interleaved configs would otherwise time its reload)."""
    from tasks.cache import CACHE
    from tasks.in_memory import iteration_data
    from tasks.stages import plan_of, run_stage

    CACHE.at(run, iteration)
    t = time.perf_counter()
    run_stage(run, iteration, "plan")
    for name in plan_of(run, iteration).stages[1:]:
        run_stage(run, iteration, name)
    return time.perf_counter() - t, iteration_data(run, iteration)


def shuffled_ratios(fns: dict, repeats: int, ref: str, per: int, log: str) -> dict[str, dict]:
    """Each function once to warm up (compiled kernels compile), then `repeats` rounds in a shuffled
    order (seeded by the round); per function: ms per item (`per` items a call, median) and its time
    ÷ `ref`'s in the same round (median, min, max, all)."""
    import random

    for fn in fns.values():
        fn()
    secs = {k: [] for k in fns}
    for r in range(repeats):
        order = list(fns)
        random.Random(r).shuffle(order)
        for k in order:
            t = time.perf_counter()
            fns[k]()
            secs[k].append(time.perf_counter() - t)
        print(f"[{log}] sampling repeat {r + 1}/{repeats}", flush=True)
    rows = {}
    for k, v in secs.items():
        ratios = [x / y for x, y in zip(v, secs[ref])]
        rows[k] = {
            "ms_per_candidate": 1000 * median(v) / per,
            "over_rollout": median(ratios),
            "over_rollout_min": min(ratios),
            "over_rollout_max": max(ratios),
            "over_rollout_all": ratios,
        }
    return rows


def rotated(items: list, k: int) -> list:
    """`items` rotated by k: the order of interleaved variants changes from repeat to repeat, so
    no variant always runs first (after a pause) or last."""
    k %= max(1, len(items))
    return items[k:] + items[:k]


def md_table(header: list[str], rows: list[list]) -> str:
    def cell(v):
        if isinstance(v, float):
            return f"{v:.3f}" if abs(v) < 100 else f"{v:.1f}"
        return str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def write_json(out_dir: Path, name: str, data: dict) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, default=float) + "\n")
    return path


def write_summary(out_dir: Path, name: str, text: str) -> Path:
    """The printed markdown summary, also kept next to the JSON."""
    path = out_dir / f"{name}.md"
    path.write_text(text + "\n")
    return path


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def parser(doc: str, name: str | None = None, quick: str | None = None) -> argparse.ArgumentParser:
    """The script's argument parser: the docstring's first line as description, the rest as epilog;
    with `name`, also --out (default benchmarks/out/<name>) and --quick (help: `quick`)."""
    head, _, rest = doc.partition("\n\n")
    ap = argparse.ArgumentParser(
        description=head.splitlines()[0], epilog=rest or None, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    if name:
        ap.add_argument("--out", default=f"benchmarks/out/{name}", help="output folder (JSON, markdown, PNG)")
        ap.add_argument("--quick", action="store_true", help=f"smoke run: {quick}")
    return ap


def save_figure(fig, out: Path, name: str) -> list[Path]:
    """Save and close a figure as <out>/<name>.png; the list of written files."""
    fig.tight_layout()
    path = out / f"{name}.png"
    fig.savefig(path, dpi=110)
    pyplot().close(fig)
    return [path]


def measure_and_finish(args, name: str, run, summary, plot) -> dict:
    """The common tail of a measuring script: run(args) timed, with the machine (described before
    the run: its load average is the one at the start) and --quick recorded, then finish()."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    machine_info = machine()
    res = run(args)
    res.update(machine=machine_info, quick=args.quick, wall_seconds=time.perf_counter() - t0)
    return finish(out, name, res, summary(res), plot(res, out))


def finish(out: Path, name: str, res: dict, text: str, pngs: list[Path], what: str = "") -> dict:
    """Write <name>.json and <name>.md next to the plots, print the summary and where it went."""
    res["pngs"] = [p.name for p in pngs]
    write_json(out, name, res)
    write_summary(out, name, text)
    print(text)
    print(f"\nwrote {out}/{name}.json, {name}.md, " + ", ".join(res["pngs"]) + f" ({res['wall_seconds']:.0f} s{what})")
    return res


# --- proxy fidelity helpers (fidelity.py, shapes_quality.py) ---------------------------------------
def study_prompts(
    cfg, train: tuple[str, ...], p: int, one_object: int | None = None, max_iterations: int = 100_000
) -> list[dict]:
    """`p` distinct prompts the default run explores, with each one's candidate seeds: walk the
    run's prompt draws (docs/algorithm.md, "Prompts and the training pool"; iterations 0, 1, ..., all training prompts,
    i.e. without a prompts.pool) and keep the first distinct prompts until there are
    `one_object` one-object and p - one_object two-object ones (None: the first p, any kind).
    Each comes with the N = explore.n seeds that iteration gives it."""
    from solrl.plan import iteration_prompts
    from solrl.seeds import seed as candidate_seed
    from solrl.shapes.prompts import parse

    want = None if one_object is None else {1: one_object, 2: p - one_object}
    out, seen = [], set()
    for it in range(max_iterations):
        for pid, text in iteration_prompts(cfg, it, train, None):
            n_obj = parse(text).n_objects
            if text in seen or (
                want is not None and want.get(n_obj, 0) <= sum(1 for r in out if r["objects"] == n_obj)
            ):
                continue
            seen.add(text)
            seeds = [candidate_seed(cfg.run.seed, it, pid, c) for c in range(cfg.explore.n)]
            out.append({"iteration": it, "prompt_id": pid, "prompt": text, "objects": n_obj, "seeds": seeds})
            if len(out) == p:
                return sorted(out, key=lambda r: (r["objects"], r["iteration"]))
    raise ValueError(
        f"the first {max_iterations} iterations' prompt draws hold fewer than the {p} prompts asked for ({want})"
    )


def proxy_metrics(proxy, truth, k: int, seeds) -> dict:
    """solrl.fidelity.ranking_metrics of one prompt's N seeds, plus the regret: the true reward
    of the truly best seed minus the best true reward among the proxy's top-K/2 (ties broken
    by seed, as the selection does; 0 = the proxy kept the best seed)."""
    import numpy as np

    from solrl.fidelity import ranking_metrics

    proxy, truth, seeds = np.asarray(proxy, float), np.asarray(truth, float), np.asarray(seeds)
    m = ranking_metrics(proxy, truth, k=k, seeds=seeds)
    top = np.lexsort((seeds, -proxy))[: k // 2]
    m["regret"] = float(truth.max() - truth[top].max())
    return m


def summarise_metrics(per_prompt: list[dict]) -> dict:
    """Mean over prompts of proxy_metrics rows, with the spread of Spearman's rho."""
    import math

    import numpy as np

    from solrl.fidelity import mean_metrics

    out = mean_metrics(per_prompt)
    rho = [m["spearman"] for m in per_prompt]
    out["spearman_min"], out["spearman_max"] = float(np.min(rho)), float(np.max(rho))
    out["spearman_sem"] = float(np.std(rho, ddof=1) / math.sqrt(len(rho))) if len(rho) > 1 else 0.0
    out["prompts"] = len(per_prompt)
    return out


def interleaved(
    fns: dict, repeats: int, per: dict | None = None, warmup: bool = True, log: str = ""
) -> dict[str, list[float]]:
    """Time every fn of `fns` (name -> zero-argument callable) once per repeat, in an order
    rotated from repeat to repeat; seconds per call divided by per[name] (default 1). With
    `warmup`, one untimed call of each first."""
    names = list(fns)
    if warmup:
        for n in names:
            fns[n]()
    out = {n: [] for n in names}
    for r in range(repeats):
        for n in rotated(names, r):
            t, _ = timed(fns[n])
            out[n].append(t / (per or {}).get(n, 1))
        if log:
            print(f"[{log}] timing repeat {r + 1}/{repeats} done", flush=True)
    return out
