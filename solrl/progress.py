"""Progress bars for long loops: rich bars on a terminal, a few log lines otherwise."""

from __future__ import annotations

import logging
import sys
from contextlib import contextmanager

log = logging.getLogger("solrl")


@contextmanager
def progress_bar(description: str, total: int):
    """Yields advance(n). On a TTY a rich bar; elsewhere a log line at every ~25 %."""
    if sys.stderr.isatty():
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            transient=False,
        ) as p:
            task = p.add_task(description, total=total)
            yield lambda n=1: p.advance(task, n)
        return
    done = [0, 0]

    def advance(n: int = 1):
        done[0] += n
        quarter = 4 * done[0] // max(1, total)
        if quarter > done[1]:
            done[1] = quarter
            log.info("%s: %d/%d", description, min(done[0], total), total)

    yield advance


def log_to_stderr() -> None:
    """Our own progress lines on stderr, once (Prefect's and httpx's chatter stays at WARNING)."""
    if not log.handlers:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        log.addHandler(h)
    log.setLevel(logging.INFO)
    log.propagate = False  # Prefect's root handler would print every line a second time
    logging.getLogger("httpx").setLevel(logging.WARNING)
