"""Cooperative stops: a signal handler asks, the compute loops stop at their next safe point.

Compute runs in worker threads (Prefect's task runner) where a signal cannot interrupt it, so
the command line's SIGINT/SIGTERM handler calls `request()` and every long loop (each solver
step, each training micro-batch) calls `check()`, which raises `StopRequested` once a stop was
asked for. Nothing is committed by a stage that raised, so the run resumes at that stage.
"""

from __future__ import annotations

import threading

_stop = threading.Event()
_reason = ["stop requested"]


class StopRequested(BaseException):
    """Raised by `check()` after `request()`; the stage in flight is abandoned, uncommitted.
    A BaseException, like KeyboardInterrupt: no `except Exception` swallows it and Prefect
    neither retries it nor prints a traceback for it."""


def request(reason: str = "stop requested") -> None:
    _reason[0] = reason
    _stop.set()


def requested() -> bool:
    return _stop.is_set()


def check() -> None:
    if _stop.is_set():
        raise StopRequested(_reason[0])


def reset() -> None:
    _stop.clear()
