"""Clean stops of `sol-rl run` under Prefect's ephemeral mode: SIGINT/SIGTERM stop the run at the
next safe point within seconds, print one line, and leave no process behind.

Why each piece is needed (measured on Prefect 3.8.8; reference notes in the project history):
  * Prefect starts its temporary server with a plain Popen in our process group, so a terminal's
    Ctrl-C killed it first and every later API call retried against a dead server for minutes.
    `start_server()` starts it in its own session, with PR_SET_PDEATHSIG so it dies with us even
    after a SIGKILL (Linux), and registers it as the instance Prefect's own calls get. (This uses
    SubprocessASGIServer's private hooks: prefect is pinned, re-check on upgrade.)
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
import subprocess
import sys
import threading
import time

from solrl import interrupt

_state: dict = {"installed": False, "signum": None, "server": None, "stopping_server": False, "raise_now": False}


def _handler(signum, frame) -> None:
    if interrupt.requested():  # a second signal: now
        proc = getattr(_state["server"], "server_process", None)
        if proc is not None:
            proc.kill()
        os._exit(128 + signum)
    _state["signum"] = signum
    interrupt.request(signal.Signals(signum).name)
    if "prefect.logging" in sys.modules:  # handlers created since (a flow run's, Dask's): quiet them too
        quiet_expected_stop()
    logging.getLogger("distributed").setLevel(logging.ERROR)  # "worker still alive ... killing" as the cluster closes
    if _state["raise_now"]:  # waiting for the server to come up: no compute to finish, stop now
        _state["raise_now"] = False
        raise interrupt.StopRequested(signal.Signals(signum).name)


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


def start_server():
    """Prefect's temporary server in a session of its own (None when PREFECT_API_URL names one)."""
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value():
        return None
    interrupt.check()
    popen = subprocess.Popen

    class OwnSessionServer(SubprocessASGIServer):
        def _run_uvicorn_command(self):
            def own_session(*a, **kw):
                return popen(*a, **{**kw, "start_new_session": True, "preexec_fn": _child_setup})

            subprocess.Popen = own_session  # only around Prefect's own call
            try:
                self.server_process = super()._run_uvicorn_command()
            finally:
                subprocess.Popen = popen
            _state["raise_now"] = True
            interrupt.check()
            return self.server_process

    server = OwnSessionServer(port=None)
    SubprocessASGIServer._instances[None] = server
    _state["server"] = server
    try:
        server.start()
    except interrupt.StopRequested:
        # not up yet: SIGKILL (a SIGTERM during uvicorn's startup prints a traceback of its own)
        if getattr(server, "server_process", None) is not None:
            server.server_process.kill()
            server.server_process.wait()
        raise
    finally:
        _state["raise_now"] = False
    threading.Thread(target=_watch, args=(server,), name="sol-rl-server-watch", daemon=True).start()
    return server


def _watch(server) -> None:
    """A supervisor that signals every process at once (systemd's KillMode=control-group) takes
    the server down with us: then leave within seconds instead of retrying a dead API."""
    while not _state["stopping_server"]:
        time.sleep(0.5)  # a supervisor thread's poll of the server process
        proc = server.server_process
        if proc is not None and proc.poll() is not None and interrupt.requested():
            time.sleep(5)  # let the compute reach its safe point
            os.write(2, f"stopped by {signal.Signals(exit_code() - 128).name} (the Prefect server stopped too): resume with the same --run-id\n".encode())
            os._exit(exit_code())


def stop_server(server) -> None:
    """Flush logs and events while the server is up, then stop it."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for drain in (lambda: APILogWorker.drain_all(timeout=5), lambda: EventsWorker.drain_all(timeout=5)):
        try:
            drain()
        except Exception:  # noqa: BLE001 - nothing to flush, or the server already gone
            pass
    _state["stopping_server"] = True
    if server is not None and getattr(server, "server_process", None) is not None:
        server.stop()


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
        return not any(m in msg for m in ("StopRequested", "Crash detected", "Still processing items", "cancelled by the task runner"))


def quiet_expected_stop() -> None:
    import prefect.logging  # noqa: F401 - importing prefect configures its handlers

    for name in ["", *logging.root.manager.loggerDict]:
        for h in getattr(logging.getLogger(name), "handlers", []):
            if isinstance(h, logging.StreamHandler) and not any(isinstance(f, _DropExpectedStop) for f in h.filters):
                h.addFilter(_DropExpectedStop())


@contextlib.contextmanager
def ephemeral_prefect():
    """Prefect in ephemeral mode, stoppable: quiet logs, our own temporary server (its own
    session), Prefect's console lines about a requested stop dropped; the server stopped after
    draining, on every way out."""
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    server = start_server()
    try:
        quiet_expected_stop()
        interrupt.check()
        yield
    finally:
        if server is not None:
            stop_server(server)


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
