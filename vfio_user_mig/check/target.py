"""The server under test: a command spawned afresh per sequence, or one socket reconnected.

* :class:`SpawnTarget` (``--spawn 'CMD ... {socket} ...'``) starts a fresh server process for
  each sequence with ``{socket}`` replaced by a fresh path, waits until the socket accepts a
  connection, and stops the process afterwards (SIGTERM, then SIGKILL). Many servers, among
  them libvfio-user's samples, serve one client and exit. A process that dies while a sequence
  runs is a ``crash`` (its exit status and the tail of its stderr are reported).
* :class:`SocketTarget` (``--socket PATH``) connects to a running server for each sequence; a
  server that stops accepting connections is a ``crash``.

Nothing here ever waits without a deadline.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

#: ``file.c:123`` in a failed assertion's message.
_SOURCE_LOCATION = re.compile(r"([\w./-]+\.(?:c|cc|cpp|rs|py|go):\d+)")

#: How long a spawned server may take to accept its first connection.
START_TIMEOUT = 15.0


class TargetError(RuntimeError):
    """The server could not be started or reached at all (not a finding: nothing to check)."""


@dataclass
class Death:
    """How a server process ended while a sequence ran."""

    status: str
    stderr_tail: str

    def describe(self) -> str:
        tail = f"; stderr: {self.stderr_tail}" if self.stderr_tail else ""
        return f"the server process {self.status}{tail}"

    def title(self, command: str) -> str:
        """A finding title that tells deaths apart: the command, how the process ended and,
        when its stderr names one, the source location of the failed assertion."""
        where = _SOURCE_LOCATION.findall(self.stderr_tail)
        at = f" at {where[-1]}" if where and "ssert" in self.stderr_tail else ""
        return f"server dies on {command} ({self.status}{at})"


class Target(Protocol):
    """What the checker needs of a server under test."""

    name: str

    def begin(self) -> socket.socket:
        """A fresh connection for one sequence (for spawn: a fresh process too)."""

    def death(self) -> Death | None:
        """How the server died during the sequence, ``None`` while it lives."""

    def end(self) -> None:
        """The sequence is over: stop the process (spawn) and free what it held."""


def _connect(path: str, deadline: float, alive: Callable[[], bool] | None = None
             ) -> socket.socket:
    last: OSError | None = None
    while time.monotonic() < deadline:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
            return sock
        except OSError as exc:
            sock.close()
            last = exc
        if alive is not None and not alive():
            break
        time.sleep(0.005)
    raise TargetError(f"cannot connect to {path}: {last}")


def _describe_status(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by {name}"
    return f"exited with status {code}"


class SpawnTarget:
    """A server command started afresh for each sequence (module docstring)."""

    def __init__(self, template: str, start_timeout: float = START_TIMEOUT) -> None:
        if "{socket}" not in template:
            raise TargetError("the --spawn command must contain {socket}")
        self.template = template
        self.name = template
        self.start_timeout = start_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir: str | None = None
        self._stderr: Path | None = None
        self.spawned = 0

    def begin(self) -> socket.socket:
        self.end()
        self._dir = tempfile.mkdtemp(prefix="vfio-user-check-")
        path = os.path.join(self._dir, "server.sock")
        argv = [arg.replace("{socket}", path) for arg in shlex.split(self.template)]
        self._stderr = Path(self._dir) / "stderr"
        with open(self._stderr, "wb") as err:
            try:
                self._proc = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                    start_new_session=True,
                )
            except OSError as exc:
                raise TargetError(f"cannot start {argv[0]}: {exc}") from exc
        self.spawned += 1
        proc = self._proc
        try:
            return _connect(path, time.monotonic() + self.start_timeout,
                            lambda: proc.poll() is None)
        except TargetError as exc:
            death = self.death()
            self.end()
            raise TargetError(f"{exc}; {death.describe() if death else 'still running'}"
                              ) from exc

    def stderr_tail(self, limit: int = 400) -> str:
        if self._stderr is None:
            return ""
        try:
            text = self._stderr.read_bytes()[-4096:].decode("utf-8", "replace")
        except OSError:
            return ""
        lines = [ln for ln in text.strip().splitlines() if ln.strip()]
        return " | ".join(lines[-3:])[-limit:]

    def death(self) -> Death | None:
        if self._proc is None:
            return None
        # A process that is exiting may need a moment after closing its socket.
        for _ in range(20):
            code = self._proc.poll()
            if code is not None:
                return Death(_describe_status(code), self.stderr_tail())
            time.sleep(0.005)
        return None

    def end(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=2.0)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5.0)
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


class SocketTarget:
    """A running server reconnected for each sequence (module docstring)."""

    def __init__(self, path: str, connect_timeout: float = 5.0) -> None:
        self.path = path
        self.name = f"socket {path}"
        self.connect_timeout = connect_timeout
        self._gone = False

    def begin(self) -> socket.socket:
        return _connect(self.path, time.monotonic() + self.connect_timeout)

    def death(self) -> Death | None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(1.0)
            sock.connect(self.path)
            return None
        except OSError as exc:
            self._gone = True
            return Death(f"stopped accepting connections ({exc.strerror or exc})", "")
        finally:
            sock.close()

    def end(self) -> None:
        return None
