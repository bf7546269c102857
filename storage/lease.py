"""A run lease: at most one process computes and commits a run at a time.

`<run>/_LEASE.json` names the holder (owner token, host, pid, the pid's start time, when it
started) and a heartbeat refreshed by a background thread. Another process that finds a live
lease refuses in one sentence naming the holder. A lease is stale when its heartbeat is older
than the timeout, or when its holder is provably gone (same host, and that pid is not running
or is a different process now): a stale lease is taken over automatically when the holder is
provably gone, and with `take_over=True` (the CLI's --take-over) otherwise.

Works the same on a local disk and on S3: the lease is written, then read back after a short
pause; if another process wrote in between, the later writer wins and the other one refuses.
Every commit checks the lease is still ours (`Lease.check`), so a process whose lease was taken
over stops before it overwrites anything.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from .store import RunStore

LEASE = "_LEASE.json"


class LeaseHeld(RuntimeError):
    """Another live process holds the run (bad input: exit code 2)."""


class LeaseLost(RuntimeError):
    """Our lease was taken over by another process while we ran."""


def _pid_start(pid: int) -> str | None:
    """The start time of a process (Linux /proc), to tell a pid from a later reuse of it."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return start is None or _pid_start(pid) in (None, start)


@dataclass
class Lease:
    store: RunStore
    timeout_s: float = 120.0
    owner: str = field(default_factory=lambda: uuid.uuid4().hex)
    on_lost: Callable[[str], None] | None = field(default=None, repr=False)  # called with a reason when taken over
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)
    held: bool = False

    @property
    def path(self) -> str:
        return self.store.path(LEASE)

    def _record(self, started: float) -> dict:
        pid = os.getpid()
        return {
            "owner": self.owner,
            "host": socket.gethostname(),
            "pid": pid,
            "pid_start": _pid_start(pid),
            "started": started,
            "heartbeat": time.time(),
        }

    def read(self) -> dict | None:
        if not self.store.exists(self.path):
            return None
        try:
            rec = json.loads(self.store.read_bytes(self.path))
            return rec if isinstance(rec, dict) and "owner" in rec else {}
        except (ValueError, UnicodeDecodeError):
            return {}  # damaged: nobody can prove they hold it

    def stale(self, rec: dict) -> str | None:
        """Why a lease record is stale (None: its holder is alive)."""
        if not rec:
            return "the lease file is damaged"
        if rec.get("host") == socket.gethostname() and not _alive(int(rec["pid"]), rec.get("pid_start")):
            return f"its holder (pid {rec['pid']} on this host) is gone"
        age = time.time() - float(rec.get("heartbeat", 0))
        if age > self.timeout_s:
            return f"its heartbeat is {age:.0f} s old (timeout {self.timeout_s:.0f} s)"
        return None

    def acquire(self, take_over: bool = False, settle_s: float = 0.2) -> Lease:
        rec = self.read()
        if rec is not None:
            why = self.stale(rec)
            provably_gone = why is not None and "is gone" in why or rec == {}
            if why is None or not (provably_gone or take_over):
                holder = f"{rec.get('host')} pid {rec.get('pid')}" if rec else "an unknown process"
                age = time.time() - float(rec.get("heartbeat", 0)) if rec else 0
                hint = (
                    "wait for it to finish or stop it"
                    if why is None
                    else f"it looks stale ({why}): rerun with --take-over if that process is gone"
                )
                raise LeaseHeld(
                    f"run {self.store.uri} is being run by {holder} (lease heartbeat {age:.0f} s ago): {hint}"
                )
        started = time.time()
        self.store.write_json(self.path, self._record(started))
        time.sleep(settle_s)  # a concurrent acquirer's write lands now or never: read back who won
        back = self.read() or {}
        if back.get("owner") != self.owner:
            raise LeaseHeld(
                f"run {self.store.uri} was claimed at the same moment by {back.get('host')} pid {back.get('pid')}: wait for it to finish or stop it"
            )
        self.held = True
        self._started = started
        self._thread = threading.Thread(target=self._beat, name="sol-rl-lease", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.timeout_s / 4):
            try:
                holder = self.read() or {}
                if holder.get("owner") != self.owner:  # taken over: tell the run (it stops at a safe point)
                    if self.on_lost is not None:
                        self.on_lost(
                            f"the loss of the lease (taken over by {holder.get('host')} pid {holder.get('pid')})"
                        )
                    return
                self.store.write_json(self.path, self._record(self._started))
            except Exception:  # noqa: BLE001 - a missed heartbeat is retried at the next beat
                pass

    def check(self) -> None:
        """Raise LeaseLost if another process took the run over."""
        if self.held and (self.read() or {}).get("owner") != self.owner:
            raise LeaseLost(
                f"run {self.store.uri} was taken over by another process: this one stops without committing"
            )

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        if self.held:
            self.held = False
            try:
                if (self.read() or {}).get("owner") == self.owner:
                    self.store.remove(self.path)
            except Exception:  # noqa: BLE001 - the store is gone: the lease goes stale by itself
                pass

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc) -> None:
        self.release()
