"""Preloaded by the Dask workers of a LocalCluster the run starts (flows/cluster.py).

A terminal's Ctrl-C signals the whole process group, worker processes included: they ignore
SIGINT, so the run's own handler decides (it stops at the next safe point and closes the
cluster), instead of every worker dying with a traceback and its nanny restarting it."""

from __future__ import annotations

import signal


def dask_setup(worker) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
