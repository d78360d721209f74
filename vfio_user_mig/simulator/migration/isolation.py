"""Where the two vfio-user servers of a migration run: threads, processes, or elsewhere.

An :class:`Endpoint` gives the driver a connected socket to one server and, when it hosts the
device itself, a back door for verification and fault injection (the device digest, its
migration state, arc failures, a crash):

* :class:`ThreadEndpoint`: the device and a :class:`ServerCore` pumped by a thread of this
  process over a socketpair (the default; fastest; the device is inspectable directly);
* :class:`ProcessEndpoint`: the same in a forked child process; the back door is a pipe;
* :class:`ExternalEndpoint`: any vfio-user server listening on a UNIX socket (e.g.
  libvfio-user's ``samples/server``); no back door: the driver verifies by reading regions.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any, Protocol

from vfio_user_mig.model import VFIO_USER_CAPS, MigrationCaps, State
from vfio_user_mig.simulator.transport import connect_unix

if TYPE_CHECKING:
    from vfio_user_mig.simulator.server.hosting import HostedDevice

ISOLATIONS = ("thread", "process")


def _current_cpu(allowed: set[int]) -> int:
    """The CPU the calling thread runs on (``/proc/thread-self/stat`` field 39), or the
    lowest allowed one when that cannot be read."""
    try:
        with open("/proc/thread-self/stat", "rb") as f:
            cpu = int(f.read().rsplit(b")", 1)[1].split()[36])
    except (OSError, ValueError, IndexError):
        return min(allowed)
    return cpu if cpu in allowed else min(allowed)


@contextlib.contextmanager
def one_cpu() -> Iterator[None]:
    """Keep the calling thread, and every thread it starts meanwhile (they inherit the
    affinity: the thread-isolated servers of a migration), on the CPU it runs on now; the
    previous affinity is restored on exit.

    Threads of one process never run Python in parallel (one interpreter lock), so spreading
    them over CPUs buys nothing and costs a cross-CPU wake-up at every hand-off: each request
    from the driver to a thread server, each reply back (tens of microseconds each on a
    virtual machine, against a few on one CPU). A no-op where affinity is not supported or
    already a single CPU; never use it around forked servers (children inherit it too)."""
    try:
        allowed = os.sched_getaffinity(0)
    except (AttributeError, OSError):
        allowed = set()
    if len(allowed) <= 1:
        yield
        return
    try:
        os.sched_setaffinity(0, {_current_cpu(allowed)})
    except OSError:
        yield
        return
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, allowed)


#: Seconds a crashing server may take to answer the messages sent before the crash.
_CRASH_DRAIN = 5.0


@dataclass(frozen=True)
class ServerSpec:
    """The device a hosted endpoint serves."""

    mem_size: int = 16 << 20
    caps: MigrationCaps = VFIO_USER_CAPS
    device: str = "migdev"
    mig_data_socket: bool = False
    """Agree to the experimental migration-data socket (``x-mig-data-socket``)."""
    mig_data_size: bool = False
    """Answer the experimental MIG_DATA_SIZE query (DEVICE_FEATURE 9)."""

    def host(self) -> HostedDevice:
        """Build the device and its server core (a :class:`~..hosting.HostedDevice`)."""
        from vfio_user_mig.simulator.server.hosting import host_device
        from vfio_user_mig.simulator.server.types import ServerConfig

        config = ServerConfig(experimental_mig_data_socket=self.mig_data_socket,
                              experimental_mig_data_size=self.mig_data_size)
        return host_device(self.device, mem_size=self.mem_size, caps=self.caps, config=config)


class Endpoint(Protocol):
    """One vfio-user server as the driver sees it (see module docstring)."""

    label: str
    hosted: bool

    def connect(self) -> socket.socket:
        """A socket connected to the server (one per endpoint)."""
        ...

    def digest(self) -> str | None:
        """The device state digest, or None when not available."""
        ...

    def state(self) -> State | None:
        """The device's migration state seen from the server side, or None."""
        ...

    def inject_arc_failure(self, src: State, dst: State, errno: int, broken: bool) -> bool:
        """Make the device's next ``src -> dst`` action fail; False if not possible."""
        ...

    def crash(self) -> None:
        """The server dies between two messages: it answers every message the client sent
        before the call (so where a run fails does not depend on thread timing, and a seed
        gives the same run every time), then drops the connection; the client's next send
        fails."""
        ...

    def close(self) -> None:
        """Stop serving and release everything."""
        ...


class ThreadEndpoint:
    """A hosted device served by a thread over a socketpair."""

    hosted = True

    def __init__(self, spec: ServerSpec, label: str = "server") -> None:
        self.label = label
        self.spec = spec
        self.hosted_device = spec.host()
        self._server_sock: socket.socket | None = None
        self._client_sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop: threading.Event | None = None

    @property
    def device(self) -> Any:
        """The hosted device (for inspection)."""
        return self.hosted_device.device

    def connect(self) -> socket.socket:
        from vfio_user_mig.simulator.server.io import serve_socketpair

        if self._thread is not None:
            raise RuntimeError("endpoint already connected")
        a, b = socket.socketpair()
        self._server_sock, self._client_sock = a, b
        self._thread, self._stop = serve_socketpair(self.hosted_device.core, a)
        return b

    def digest(self) -> str | None:
        return str(self.hosted_device.device.digest())

    def state(self) -> State | None:
        return self.hosted_device.core.state

    def inject_arc_failure(self, src: State, dst: State, errno: int, broken: bool) -> bool:
        inject = getattr(self.hosted_device.device, "inject_arc_failure", None)
        if inject is None:
            return False
        inject(src, dst, errno=errno, broken=broken)
        return True

    def crash(self) -> None:
        # End of stream after the messages already sent: the server answers them and stops.
        if self._client_sock is not None:
            with contextlib.suppress(OSError):
                self._client_sock.shutdown(socket.SHUT_WR)
        if self._thread is not None:
            self._thread.join(_CRASH_DRAIN)
        if self._server_sock is not None:
            with contextlib.suppress(OSError):
                self._server_sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        if self._client_sock is not None:
            with contextlib.suppress(OSError):
                self._client_sock.shutdown(socket.SHUT_RDWR)
        if self._stop is not None:
            self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        for s in (self._server_sock, self._client_sock):
            if s is not None:
                s.close()
        self._server_sock = self._client_sock = None
        self._thread = None
        self.hosted_device.close()


def _child(sock: socket.socket, ctrl: Connection, spec: ServerSpec) -> None:
    """Body of a :class:`ProcessEndpoint` child: serve ``sock``, answer ``ctrl``."""
    from vfio_user_mig.simulator.server.io import serve_socketpair

    hosted = spec.host()
    thread, stop = serve_socketpair(hosted.core, sock)
    try:
        while True:
            try:
                cmd, *args = ctrl.recv()
            except EOFError:
                break
            if cmd == "digest":
                ctrl.send(hosted.device.digest())
            elif cmd == "state":
                ctrl.send(int(hosted.core.state))
            elif cmd == "inject":
                src, dst, errno, broken = args
                inject = getattr(hosted.device, "inject_arc_failure", None)
                if inject is not None:
                    inject(State(src), State(dst), errno=errno, broken=broken)
                ctrl.send(inject is not None)
            elif cmd == "crash":  # the parent ended its side: answer what came, then drop
                thread.join(_CRASH_DRAIN)
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                ctrl.send(True)
            elif cmd == "stop":
                break
    finally:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        stop.set()
        thread.join(5)
        sock.close()
        hosted.close()


class ProcessEndpoint:
    """A hosted device served by a forked child process over a socketpair."""

    hosted = True

    def __init__(self, spec: ServerSpec, label: str = "server") -> None:
        self.label = label
        self.spec = spec
        ctx = mp.get_context("fork")
        self._sock, child_sock = socket.socketpair()
        self._ctrl, child_ctrl = ctx.Pipe()
        self._proc = ctx.Process(target=_child, args=(child_sock, child_ctrl, spec),
                                 name=f"vfio-user-{label}", daemon=True)
        self._proc.start()
        child_sock.close()
        child_ctrl.close()
        self._connected = False

    def _call(self, *msg: Any) -> Any:
        try:
            self._ctrl.send(msg)
            if not self._ctrl.poll(30):
                return None
            return self._ctrl.recv()
        except (OSError, EOFError):
            return None

    def connect(self) -> socket.socket:
        if self._connected:
            raise RuntimeError("endpoint already connected")
        self._connected = True
        return self._sock

    def digest(self) -> str | None:
        value = self._call("digest")
        return None if value is None else str(value)

    def state(self) -> State | None:
        value = self._call("state")
        return None if value is None else State(int(value))

    def inject_arc_failure(self, src: State, dst: State, errno: int, broken: bool) -> bool:
        return bool(self._call("inject", int(src), int(dst), errno, broken))

    def crash(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_WR)
        self._call("crash")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError, BrokenPipeError):
            self._ctrl.send(("stop",))
        self._proc.join(10)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(5)
        self._proc.close()
        self._ctrl.close()
        self._sock.close()


class ExternalEndpoint:
    """A vfio-user server listening on ``path`` (no back door)."""

    hosted = False

    def __init__(self, path: str, label: str = "server") -> None:
        self.label = label
        self.path = path
        self._sock: socket.socket | None = None

    def connect(self) -> socket.socket:
        self._sock = connect_unix(self.path)
        return self._sock

    def digest(self) -> str | None:
        return None

    def state(self) -> State | None:
        return None

    def inject_arc_failure(self, src: State, dst: State, errno: int, broken: bool) -> bool:
        return False

    def crash(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def make_endpoint(isolation: str, spec: ServerSpec, label: str) -> Endpoint:
    """A hosted endpoint: ``thread`` or ``process``."""
    if isolation == "thread":
        return ThreadEndpoint(spec, label)
    if isolation == "process":
        return ProcessEndpoint(spec, label)
    raise ValueError(f"unknown isolation {isolation!r} (one of {', '.join(ISOLATIONS)})")


__all__ = [
    "ISOLATIONS",
    "Endpoint",
    "ExternalEndpoint",
    "ProcessEndpoint",
    "ServerSpec",
    "ThreadEndpoint",
    "make_endpoint",
    "one_cpu",
]
