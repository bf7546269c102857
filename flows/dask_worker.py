"""Preloaded by the Dask workers of a cluster the run starts (flows/cluster.py); give it to the
workers of an external scheduler too: `dask worker tcp://host:8786 --preload flows.dask_worker`.

* A terminal's Ctrl-C signals the whole process group, worker processes included: they ignore
  SIGINT, so the run's own handler decides (it stops at the next safe point and closes the
  cluster), instead of every worker dying with a traceback and its nanny restarting it.
* Dask's nannies start workers with MALLOC_TRIM_THRESHOLD_=65536. glibc then keeps its mmap
  threshold at 128 KiB, so every torch intermediate above that is mmap'ed, faulted in and unmapped
  again: sampling ran 2.5-3x slower than in a plain process (measured). The clusters the run
  starts unset the variable; a worker that still has it sets glibc's thresholds back to the
  values its dynamic threshold would settle at (mmap 32 MiB, trim 64 MiB)."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import signal

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)

log = logging.getLogger("solrl")


def restore_malloc_thresholds() -> bool:
    """Undo MALLOC_TRIM_THRESHOLD_ in this process (glibc only); True when something was set."""
    if "MALLOC_TRIM_THRESHOLD_" not in os.environ:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False  # not glibc: the variable means nothing here
    ok = mallopt(M_MMAP_THRESHOLD, 32 << 20) == 1 and mallopt(M_TRIM_THRESHOLD, 64 << 20) == 1
    if ok:
        log.info(
            "worker started with MALLOC_TRIM_THRESHOLD_=%s: glibc thresholds set back to mmap 32 MiB, trim 64 MiB",
            os.environ["MALLOC_TRIM_THRESHOLD_"],
        )
    return ok


def dask_setup(worker) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    restore_malloc_thresholds()
