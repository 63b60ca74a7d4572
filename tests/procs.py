"""Subprocesses of the tests (training, alignment, evaluation): started in a session of their own with
stdout and stderr in files, waited for with explicit deadlines that fail naming what was awaited (and the
output's tail), and killed with their whole process tree, so that none outlives its test.

torchrun's workers run in sessions of their own (a kill of torchrun's process group misses them) and
DataLoader workers run under them: kill_tree finds every descendant through /proc, stops them all
(a stopped process cannot fork, and a killed parent would orphan its children out of reach), then
SIGKILLs them and waits until each has exited.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import time
from pathlib import Path

import pytest


def _children() -> dict[int, list[int]]:
    """Every process's children, from the parent pid in /proc/<pid>/stat."""
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path("/proc", entry, "stat").read_text()
        except OSError:                                   # gone meanwhile
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])    # the command name may hold spaces and parentheses
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants."""
    kids, tree, todo = _children(), [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += kids.get(p, [])
    return tree


def _signal(fd: int, sig: int) -> None:
    try:
        signal.pidfd_send_signal(fd, sig)
    except ProcessLookupError:                            # already exited
        pass


def kill_tree(pid: int, timeout: float = 120) -> list[int]:
    """SIGKILL `pid` and every process below it; return once all have exited. Returns the pids killed."""
    fds: dict[int, int] = {}
    gone: set[int] = set()                                # exited (and reaped) already: nothing to kill
    try:
        while True:                                       # until no stopped process has a child not yet seen
            new = [p for p in process_tree(pid) if p not in fds and p not in gone]
            if not new:
                break
            for p in new:
                try:
                    fds[p] = os.pidfd_open(p)
                except ProcessLookupError:
                    gone.add(p)
                    continue
                _signal(fds[p], signal.SIGSTOP)
        for fd in fds.values():
            _signal(fd, signal.SIGKILL)
        pending, deadline = set(fds.values()), time.monotonic() + timeout
        while pending:                                    # a pidfd turns readable when its process exits
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"processes {sorted(p for p, fd in fds.items() if fd in pending)} "
                                     f"still alive {timeout} s after SIGKILL")
            ready, _, _ = select.select(list(pending), [], [], left)
            pending -= set(ready)
    finally:
        for fd in fds.values():
            os.close(fd)
    return sorted(fds)


class Launched:
    """A subprocess in a session of its own; stdout and stderr go to `<log>.out` and `<log>.err`.
    Use it as a context manager: leaving the block kills whatever of its tree still runs."""

    def __init__(self, argv: list[str], log: Path, env: dict | None = None, cwd: Path | None = None):
        self.argv, self.log = [str(a) for a in argv], Path(log)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self._out, self._err = open(f"{log}.out", "w"), open(f"{log}.err", "w")
        self.proc = subprocess.Popen(self.argv, env=env, cwd=cwd, stdout=self._out, stderr=self._err,
                                     start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    def stdout(self) -> str:
        return Path(f"{self.log}.out").read_text(errors="replace")

    def stderr(self) -> str:
        return Path(f"{self.log}.err").read_text(errors="replace")

    def output(self) -> str:
        return self.stdout() + self.stderr()

    def tail(self, chars: int = 4000) -> str:
        return f"$ {' '.join(self.argv)}\n--- stdout\n{self.stdout()[-chars:]}\n--- stderr\n{self.stderr()[-chars:]}"

    def wait_for(self, condition, what: str, timeout: float) -> None:
        """Until `condition()` holds (checked every 20 ms); fail if the process ends first or `timeout` s pass."""
        deadline = time.monotonic() + timeout
        while not condition():
            if self.proc.poll() is not None:
                pytest.fail(f"the process ended (exit {self.proc.returncode}) before {what}\n{self.tail()}")
            if time.monotonic() > deadline:
                pytest.fail(f"no {what} after {timeout:.0f} s\n{self.tail()}")
            time.sleep(0.02)

    def finish(self, timeout: float) -> int:
        """Wait for the exit status; after `timeout` s, kill the tree and fail."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"still running after {timeout:.0f} s, killed\n{self.tail()}")

    def send_signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def kill(self) -> list[int]:
        """SIGKILL the whole tree (no chance to save or clean up) and reap; returns the pids killed."""
        killed = kill_tree(self.proc.pid) if self.proc.poll() is None else []
        self.proc.wait()
        return killed

    def __enter__(self) -> "Launched":
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.kill()
        finally:
            self._out.close()
            self._err.close()
