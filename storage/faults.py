"""Fault injection for the reliability tests and the soak benchmark: an fsspec file system that
fails on purpose, and one that pauses after data files (so a test can kill between a file and
its commit).

Never active unless installed by whoever drives the process: `install(spec)` /
`pause_after_writes(seconds, match)` wrap the file system of every store opened afterwards
(storage.store.add_filesystem_wrapper); `uninstall()` removes them. Subprocesses started by
tests install them from tests/hooks/sitecustomize.py. Spec: `<op>[@<text>]:<n>:<effect>[:<log file>]` — at the n-th (1-based) operation of kind `op`
made by this process (counting only paths that contain <text>, when given), apply `effect`:

    op      write (a file written or renamed into place), read (a file read), any
    effect  enospc      OSError(ENOSPC, "No space left on device")
            eio         OSError(EIO)
            connection  ConnectionError (what an unreachable S3 endpoint looks like)
            kill        SIGKILL this process (a crash exactly there)
            count       nothing: only append every operation ("write <path>") to the log file

A local atomic write is two operations (the temporary file, then the rename into place), so
"write" points include the inside of every commit-record write.
"""

from __future__ import annotations

import errno
import os
import signal
import time

from fsspec import AbstractFileSystem

EFFECTS = ("enospc", "eio", "connection", "kill", "count")


class _Plan:
    """The process's fault plan and operation counts (shared by every store the process opens)."""

    def __init__(self, spec: str):
        parts = spec.split(":", 3)
        op, _, self.where = parts[0].partition("@")
        if len(parts) < 3 or op not in ("write", "read", "any") or parts[2] not in EFFECTS or not parts[1].isdigit():
            raise ValueError(
                f"fault spec {spec!r} is not <write|read|any>[@<path text>]:<n>:<{'|'.join(EFFECTS)}>[:<log file>]"
            )
        self.spec, self.op, self.n, self.effect = spec, op, int(parts[1]), parts[2]
        self.log = parts[3] if len(parts) > 3 else None
        self.counts = {"write": 0, "read": 0, "any": 0}
        self.fired = False


_PLAN: list[_Plan] = []


def plan_for(spec: str) -> _Plan:
    """One plan per process and spec: counts run across every store of the process."""
    if not _PLAN or _PLAN[0].spec != spec:
        _PLAN[:] = [_Plan(spec)]
    return _PLAN[0]


def reset() -> None:
    """Forget the counts (a test that injects several faults in one process)."""
    _PLAN.clear()


_INSTALLED: list = []


def install(spec: str) -> None:
    """Every store opened from now on in this process fails as `spec` says (counts start at 0)."""
    from .store import add_filesystem_wrapper

    uninstall()
    reset()
    plan = plan_for(spec)

    def wrap(fs):
        return FaultyFileSystem(fs, plan)

    _INSTALLED.append(wrap)
    add_filesystem_wrapper(wrap)


def pause_after_writes(seconds: float, match: str = "") -> None:
    """Every store opened from now on sleeps `seconds` after each data file (not a commit record,
    lease or run.json) whose path contains `match`."""
    from .store import add_filesystem_wrapper

    def wrap(fs):
        return PausingFileSystem(fs, seconds, match)

    _INSTALLED.append(wrap)
    add_filesystem_wrapper(wrap)


def uninstall() -> None:
    """Remove every wrapper installed here; forget the counts."""
    from .store import remove_filesystem_wrapper

    while _INSTALLED:
        remove_filesystem_wrapper(_INSTALLED.pop())
    reset()


class PausingFileSystem:
    """Delegates to `inner`; sleeps after a data file is in place (the rename of a local atomic
    write, or the one PUT on S3)."""

    def __init__(self, inner: AbstractFileSystem, seconds: float, match: str = ""):
        self.inner, self.seconds, self.match = inner, seconds, match

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def _maybe_pause(self, path: str) -> None:
        from .store import TMP_PREFIX

        name = path.rsplit("/", 1)[-1]
        if not name.startswith(("_", TMP_PREFIX)) and name != "run.json" and self.match in path:
            time.sleep(self.seconds)  # the window a test kills the process in

    def pipe_file(self, path, value, **kw):
        out = self.inner.pipe_file(path, value, **kw)
        self._maybe_pause(path)
        return out

    def mv(self, path1, path2, **kw):
        out = self.inner.mv(path1, path2, **kw)
        self._maybe_pause(path2)
        return out


class FaultyFileSystem:
    """Delegates to `inner`; counts writes/reads and injects the configured fault."""

    def __init__(self, inner: AbstractFileSystem, spec: str | _Plan):
        self.inner, self.plan = inner, spec if isinstance(spec, _Plan) else plan_for(spec)

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def _tick(self, op: str, path: str) -> None:
        p = self.plan
        if p.where and p.where not in path:
            return
        p.counts[op] += 1
        p.counts["any"] += 1
        if p.log:
            with open(p.log, "a") as f:
                f.write(f"{op} {path}\n")
        hit = (p.op in ("any", op)) and p.counts[p.op] == p.n and not p.fired
        if p.effect == "count" or not hit:
            return
        p.fired = True
        if p.effect == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if p.effect == "connection":
            raise ConnectionError(f"injected connection error at {op} {path}")
        code = errno.ENOSPC if p.effect == "enospc" else errno.EIO
        raise OSError(code, os.strerror(code), path)

    # writes
    def pipe_file(self, path, value, **kw):
        self._tick("write", path)
        return self.inner.pipe_file(path, value, **kw)

    def mv(self, path1, path2, **kw):
        self._tick("write", path2)
        return self.inner.mv(path1, path2, **kw)

    # reads
    def cat_file(self, path, **kw):
        self._tick("read", path)
        return self.inner.cat_file(path, **kw)
