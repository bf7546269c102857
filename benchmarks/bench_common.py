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


def machine() -> dict:
    """Platform, CPU model, cores, memory, load, torch version and threads."""
    import torch

    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "mem_total_gib": _mem_total_gib(),
        "loadavg_at_start": load,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "nvfp4_kernel": "eager" if os.environ.get("SOLRL_NO_COMPILE") == "1" else "torch.compile",
    }


def add_threads_arg(ap) -> None:
    ap.add_argument("--threads", type=int, default=None,
                    help="torch intra-op threads (default: torch's default, the core count). On a machine that other "
                         "jobs load, 1 avoids OpenMP oversubscription, which can slow small ops many-fold")


def set_threads(n: int | None) -> None:
    import torch

    if n:
        torch.set_num_threads(n)


def median(xs) -> float:
    return float(statistics.median(xs))


def timed(fn, *args, **kw) -> tuple[float, object]:
    """(seconds, result) of one call."""
    t = time.perf_counter()
    out = fn(*args, **kw)
    return time.perf_counter() - t, out


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
    ap = argparse.ArgumentParser(description=head.splitlines()[0], epilog=rest or None,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
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


def finish(out: Path, name: str, res: dict, text: str, pngs: list[Path], what: str = "") -> dict:
    """Write <name>.json and <name>.md next to the plots, print the summary and where it went."""
    res["pngs"] = [p.name for p in pngs]
    write_json(out, name, res)
    write_summary(out, name, text)
    print(text)
    print(f"\nwrote {out}/{name}.json, {name}.md, " + ", ".join(res["pngs"]) + f" ({res['wall_seconds']:.0f} s{what})")
    return res
