"""Clean stops of `sol-rl run` under Prefect's ephemeral mode: SIGINT/SIGTERM stop the run at the
next safe point within seconds, print one line, and leave no process behind.

Why each piece is needed (measured on Prefect 3.8.8; reference notes in the project history):
  * Prefect's own ephemeral server is started with a plain Popen in our process group, so a
    terminal's Ctrl-C killed it first and every later API call retried against a dead server for
    minutes. `start_server()` instead starts `prefect server start` (the public CLI) in a session
    of its own, with PR_SET_PDEATHSIG so it dies with us even after a SIGKILL (Linux), on a free
    loopback port, and points this process at it with `prefect.settings.temporary_settings` —
    public API only.
  * Prefect installs a SIGTERM handler for every flow run that raises in the main thread and
    lets the running task finish; `reclaim_sigterm()` puts ours back in each flow body.
  * Compute runs in task threads: the handler only sets a flag (solrl/interrupt.py) and the
    compute loops raise StopRequested (a BaseException: never retried, no traceback) at their
    next solver step or training micro-batch.
  * Logs and events are drained while the server is still up, then the server is stopped, then
    the process leaves with os._exit (torch and prefect take seconds to tear down otherwise).
A second signal exits at once.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

from solrl import interrupt

_state: dict = {"installed": False, "signum": None, "server": None, "stopping_server": False}


def _handler(signum, frame) -> None:
    if interrupt.requested():  # a second signal: now
        proc = _state["server"]
        if proc is not None:
            proc.kill()
        os._exit(128 + signum)
    _state["signum"] = signum
    interrupt.request(signal.Signals(signum).name)
    if "prefect.logging" in sys.modules:  # handlers created since (a flow run's, Dask's): quiet them too
        quiet_expected_stop()
    logging.getLogger("distributed").setLevel(logging.ERROR)  # "worker still alive ... killing" as the cluster closes


def install() -> None:
    """Our SIGINT/SIGTERM handlers (main thread, before Prefect runs anything)."""
    _state["installed"] = True
    signal.signal(signal.SIGINT, _handler)
    signal.signal(signal.SIGTERM, _handler)


def reclaim_sigterm() -> None:
    """First thing in every flow body: Prefect's flow engine swapped in its own SIGTERM handler
    for this flow run (it restores ours when the run ends). Under a deployment's worker we never
    installed ours, and Prefect's bridge is what cancellation needs: leave it."""
    if _state["installed"] and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _handler)


def exit_code() -> int:
    """128 + the signal, or 1 when the run stopped for another reason (its lease was taken over)."""
    return 128 + _state["signum"] if _state["signum"] else 1


def _child_setup() -> None:  # in the forked server, before exec
    try:  # Linux: SIGTERM the server when the thread that started it (our main thread) dies
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - other platforms: the atexit stop still applies
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as r:  # noqa: S310 - our own loopback server
            return r.status == 200
    except OSError:
        return False


def start_server(startup_timeout_s: float = 120.0):
    """A temporary Prefect server for this run, started with Prefect's own CLI (`prefect server
    start`) in a session of its own, on a free loopback port; returns (process, api url). None
    when PREFECT_API_URL already names a server."""
    from prefect.settings import get_current_settings

    if get_current_settings().api.url:
        return None
    interrupt.check()
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    cmd = [
        sys.executable,
        "-m",
        "prefect",
        "server",
        "start",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--no-ui",
        "--analytics-off",
    ]
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=_child_setup,
    )
    _state["server"] = proc
    deadline = time.monotonic() + startup_timeout_s
    try:
        while not _healthy(url):
            interrupt.check()  # Ctrl-C while the server starts: no compute to finish, stop now
            if proc.poll() is not None:
                raise RuntimeError(
                    f"the temporary Prefect server exited with code {proc.returncode} before it was up: "
                    "run `prefect server start` yourself to see why, or set PREFECT_API_URL to a running server"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the temporary Prefect server was not up after {startup_timeout_s:.0f} s: "
                    "set PREFECT_API_URL to a running server"
                )
            time.sleep(0.2)  # poll the health endpoint
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    threading.Thread(target=_watch, args=(proc,), name="sol-rl-server-watch", daemon=True).start()
    return proc, url


def _watch(proc: subprocess.Popen) -> None:
    """A supervisor that signals every process at once (systemd's KillMode=control-group) takes
    the server down with us: then leave within seconds instead of retrying a dead API."""
    while not _state["stopping_server"]:
        time.sleep(0.5)  # a supervisor thread's poll of the server process
        if proc.poll() is not None and interrupt.requested():
            time.sleep(5)  # let the compute reach its safe point
            os.write(
                2,
                f"stopped by {signal.Signals(exit_code() - 128).name} (the Prefect server stopped too): resume with the same --run-id\n".encode(),
            )
            os._exit(exit_code())


def stop_server(proc: subprocess.Popen | None) -> None:
    """Flush logs and events while the server is up, then stop it."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        try:
            worker.drain_all(timeout=5)
        except Exception:  # noqa: BLE001 - nothing to flush, or the server already gone
            pass
    _state["stopping_server"] = True
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class _DropExpectedStop(logging.Filter):
    """Console only (the server keeps every record): after a requested stop, Prefect's lines
    about the crashed runs say nothing a user needs."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not interrupt.requested():
            return True
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, interrupt.StopRequested):
            return False
        msg = record.getMessage()
        return not any(
            m in msg
            for m in ("StopRequested", "Crash detected", "Still processing items", "cancelled by the task runner")
        )


def quiet_expected_stop() -> None:
    import prefect.logging  # noqa: F401 - importing prefect configures its handlers

    for name in ["", *logging.root.manager.loggerDict]:
        for h in getattr(logging.getLogger(name), "handlers", []):
            if isinstance(h, logging.StreamHandler) and not any(isinstance(f, _DropExpectedStop) for f in h.filters):
                h.addFilter(_DropExpectedStop())


@contextlib.contextmanager
def ephemeral_prefect():
    """A temporary Prefect server for this run, stoppable: quiet logs, the server in its own
    session (Prefect's own `prefect server start`, pointed at with `temporary_settings`), Prefect's
    console lines about a requested stop dropped; the server stopped after draining, on every way out."""
    from prefect.logging.configuration import setup_logging
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_LOGGING_LEVEL,
        PREFECT_SERVER_ANALYTICS_ENABLED,
        temporary_settings,
    )

    with temporary_settings({PREFECT_LOGGING_LEVEL: "WARNING", PREFECT_SERVER_ANALYTICS_ENABLED: False}):
        setup_logging(incremental=True)  # the console at WARNING for this run (Prefect's own config, re-read)
        started = start_server()
        proc, url = started if started else (None, None)
        try:
            with temporary_settings({PREFECT_API_URL: url} if url else {}):
                quiet_expected_stop()
                interrupt.check()
                yield
        finally:
            if proc is not None:
                stop_server(proc)


def where_stopped(run, iterations: int, stop: interrupt.StopRequested, resume: str) -> str:
    """The one line a stopped run prints: which signal, the stage a resume starts at, how."""
    from tasks.status import next_stage

    where = next_stage(run, iterations)
    at = "" if where is None else f" at the {where[1]}" + ("" if where[0] is None else f" of iteration {where[0]}")
    return f"stopped by {stop}{at}: nothing half-done was committed; resume with: {resume}"


def fast_exit(code: int) -> None:
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001
            pass
    os._exit(code)
