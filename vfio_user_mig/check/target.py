"""The server under test: a command spawned afresh per sequence, or one socket reconnected.

* :class:`SpawnTarget` (``--spawn 'CMD ... {socket} ...'``) starts a fresh server process for
  each sequence with ``{socket}`` replaced by a fresh path, waits until the socket accepts a
  connection, and stops the process afterwards (SIGTERM, then SIGKILL). Many servers, among
  them libvfio-user's samples, serve one client and exit. A process that dies while a sequence
  runs is a ``crash`` (its exit status and the tail of its stderr are reported). Unless told
  not to (``prespawn=False``, for servers that cannot run twice at once), the process of the
  next sequence is started while the current one runs, so a slow-starting server costs its
  start-up once, not once per sequence; :meth:`SpawnTarget.close` stops it.
* :class:`SocketTarget` (``--socket PATH``) connects to a running server for each sequence; a
  server that stops accepting connections is a ``crash``.

A target may also offer ``twin()``: a second instance of the same server, to be closed by the
caller, which the round trip migrates to (:meth:`SpawnTarget.twin`; an in-process target can
offer one too).

Nothing here ever waits without a deadline, and no process started here outlives the checker:
each runs in a process group of its own, recorded in :data:`LIVE` until it is stopped;
:func:`stop_all` stops every one still recorded (``check`` calls it on exit, on SIGTERM,
SIGINT and SIGHUP, and from :mod:`atexit`), and on Linux a spawned process also gets SIGKILL
when the checker's thread that started it dies (``PR_SET_PDEATHSIG``, set by util-linux's
``setpriv`` where it is installed, else between fork and exec), which covers a checker killed
by SIGKILL.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import re
import select
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

#: ``file.c:123`` in a failed assertion's message.
_SOURCE_LOCATION = re.compile(r"([\w./-]+\.(?:c|cc|cpp|rs|py|go):\d+)")

#: How long a spawned server may take to accept its first connection.
START_TIMEOUT = 15.0

#: Seconds a server that closed its connection (or saw its client leave) has to be seen
#: exiting before it counts as alive: a crash closes the socket a moment before the exit.
DEATH_WINDOW = 0.05

#: Seconds a server has to exit after SIGTERM before it gets SIGKILL.
STOP_GRACE = 2.0

#: Server processes started ahead of the sequences that will use them (``--spawn``): on a
#: multi-core machine the next servers' start-up runs while the current sequence does.
AHEAD = 2

#: Every launched server process not stopped yet (module docstring).
LIVE: set[_Launch] = set()
_PR_SET_PDEATHSIG = 1


#: util-linux ``setpriv``: it sets the parent-death signal and execs the server, so a spawn
#: runs no Python between fork and exec (the fast vfork path, not a fork of the checker whose
#: exec the checker waits for); without it, :func:`_die_with_parent` runs in the child.
_SETPRIV = shutil.which("setpriv")


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Ask the kernel for SIGKILL when the parent thread dies (Linux ``prctl``)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)


def stop_all() -> int:
    """Stop every launched server process still recorded in :data:`LIVE` (SIGTERM to its
    process group, SIGKILL after a short grace); returns how many were running."""
    launches = [launch for launch in LIVE if launch.owner == os.getpid()]  # not a fork's
    for launch in launches:
        launch.signal(signal.SIGTERM)
    deadline = time.monotonic() + 1.0
    for launch in launches:
        with contextlib.suppress(subprocess.TimeoutExpired):
            launch.proc.wait(timeout=max(deadline - time.monotonic(), 0.01))
    for launch in launches:
        launch.signal(signal.SIGKILL)
        launch.stop()
    return len(launches)


atexit.register(stop_all)


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

    def close(self) -> None:
        """The run is over: :meth:`end`, and stop anything started ahead for later."""


def _wait_exit(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Return once ``proc`` exited or ``timeout`` seconds passed (a pidfd where the kernel
    has them: woken at the exit, not at the next poll)."""
    try:
        fd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):  # not Linux 5.3+, or the process is already reaped
        deadline = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        return
    try:
        select.select([fd], [], [], timeout)
    finally:
        os.close(fd)


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


@dataclass(eq=False)
class _Launch:
    """One started server process, its private directory, socket path and stderr file."""

    proc: subprocess.Popen[bytes]
    dir: str
    path: str
    stderr: Path
    #: The checker process that started it (a forked worker inherits :data:`LIVE`).
    owner: int = field(default_factory=os.getpid)
    #: When :meth:`terminate` sent SIGTERM (monotonic seconds); ``None`` before.
    term_at: float | None = None

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the process group (its children too), even after the leader
        exited (a server that forked)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    def terminate(self) -> None:
        """Ask the process to stop (SIGTERM) without waiting; :meth:`reaped` finishes."""
        if self.term_at is None:
            self.term_at = time.monotonic()
            if self.proc.poll() is None:
                self.signal(signal.SIGTERM)

    def reaped(self, wait: bool = False) -> bool:
        """Finish a :meth:`terminate`: True once the process exited (or was killed after
        :data:`STOP_GRACE` seconds) and everything it held is freed; ``wait`` blocks."""
        self.terminate()
        assert self.term_at is not None
        grace = self.term_at + STOP_GRACE - time.monotonic()
        if self.proc.poll() is None:
            if not wait and grace > 0:
                return False
            try:
                self.proc.wait(timeout=max(grace, 0.0))
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=5.0)
        self.signal(signal.SIGKILL)  # anything the server left in its group
        LIVE.discard(self)
        shutil.rmtree(self.dir, ignore_errors=True)
        return True

    def stop(self) -> None:
        """Stop the process and free what it held (SIGTERM, SIGKILL after the grace)."""
        self.reaped(wait=True)


class SpawnTarget:
    """A server command started afresh for each sequence (module docstring)."""

    def __init__(self, template: str, start_timeout: float = START_TIMEOUT,
                 prespawn: bool = True, ahead: int = AHEAD) -> None:
        if "{socket}" not in template:
            raise TargetError("the --spawn command must contain {socket}")
        self.template = template
        self.name = template
        self.start_timeout = start_timeout
        self.prespawn = prespawn
        self.ahead = max(ahead, 1)
        self._live: _Launch | None = None
        #: started ahead, oldest first (:meth:`begin` takes the oldest)
        self._spares: deque[_Launch] = deque()
        #: told to stop, not reaped yet (reaped without waiting at each :meth:`end`)
        self._stopping: list[_Launch] = []
        self.spawned = 0

    def _launch(self) -> _Launch:
        where = tempfile.mkdtemp(prefix="vfio-user-check-")
        path = os.path.join(where, "server.sock")
        argv = [arg.replace("{socket}", path) for arg in shlex.split(self.template)]
        stderr = Path(where) / "stderr"
        preexec: Callable[[], None] | None = _die_with_parent
        if _SETPRIV is not None and argv and shutil.which(argv[0]) is not None:
            argv, preexec = [_SETPRIV, "--pdeathsig", "KILL", "--", *argv], None
        with open(stderr, "wb") as err:
            try:
                proc = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                    start_new_session=True, preexec_fn=preexec,
                )
            except OSError as exc:
                shutil.rmtree(where, ignore_errors=True)
                raise TargetError(f"cannot start {argv[0]}: {exc}") from exc
        self.spawned += 1
        launch = _Launch(proc, where, path, stderr)
        LIVE.add(launch)
        return launch

    def twin(self) -> SpawnTarget | None:
        """A second instance of this server for the round trip (its process started now,
        while the source saves); ``None`` for ``prespawn=False`` servers, which cannot run
        twice at once."""
        if not self.prespawn:
            return None
        twin = SpawnTarget(self.template, start_timeout=self.start_timeout, prespawn=False)
        twin.warm()
        return twin

    def warm(self) -> None:
        """Start the process of the next :meth:`begin` now, if none is waiting (a round
        trip's destination starts while the source saves)."""
        if not self._spares:
            self._spares.append(self._launch())

    def begin(self) -> socket.socket:
        self.end()
        live = self._spares.popleft() if self._spares else self._launch()
        self._live = live
        if self.prespawn:
            while len(self._spares) < self.ahead:
                self._spares.append(self._launch())
        try:
            return _connect(live.path, time.monotonic() + self.start_timeout,
                            lambda: live.proc.poll() is None)
        except TargetError as exc:
            death = self.death()
            self.end()
            raise TargetError(f"{exc}; {death.describe() if death else 'still running'}"
                              ) from exc

    def stderr_tail(self, limit: int = 400) -> str:
        if self._live is None:
            return ""
        try:
            text = self._live.stderr.read_bytes()[-4096:].decode("utf-8", "replace")
        except OSError:
            return ""
        lines = [ln for ln in text.strip().splitlines() if ln.strip()]
        return " | ".join(lines[-3:])[-limit:]

    def death(self) -> Death | None:
        """How the process ended, waiting up to :data:`DEATH_WINDOW` seconds for one that is
        exiting (it closed its socket a moment before its exit status is there); ``None``
        while it lives."""
        if self._live is None:
            return None
        proc = self._live.proc
        if proc.poll() is None:
            _wait_exit(proc, DEATH_WINDOW)
        code = proc.poll()
        return None if code is None else Death(_describe_status(code), self.stderr_tail())

    def end(self) -> None:
        """Stop the sequence's server without waiting for it to exit (it is reaped at a
        later :meth:`end`, or by :meth:`close`)."""
        live, self._live = self._live, None
        if live is not None:
            live.terminate()
            self._stopping.append(live)
        self._stopping = [launch for launch in self._stopping if not launch.reaped()]

    def close(self) -> None:
        self.end()
        while self._spares:
            spare = self._spares.popleft()
            spare.terminate()  # all told at once, then each waited for
            self._stopping.append(spare)
        for launch in self._stopping:
            launch.stop()
        self._stopping = []


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

    def close(self) -> None:
        return None
