"""Our own server as a check :class:`~vfio_user_mig.check.target.Target`, served in this process.

:class:`ServedTarget` builds a fresh hosted device for every sequence
(:func:`~vfio_user_mig.simulator.server.hosting.host_device`, or the ``factory`` given) and
serves its :class:`~vfio_user_mig.simulator.server.core.ServerCore` over one end of a UNIX
socketpair with the real IO pump (:func:`~vfio_user_mig.simulator.server.io.pump`) in a
thread; the checker gets the other end; :meth:`ServedTarget.twin` is a second instance with the
same factory (the round trip's destination). Nothing is spawned and no path is bound, so a
sequence costs the device's construction and one thread: this is the cheapest target there
is, for the checker's own tests and for its mutation tests (``factory`` builds a core or a
device with a planted defect, in the test process only).

The target behaves as a ``--spawn`` target whose server serves one client and exits: the
device starts afresh with each sequence, and when the serving thread ends the server's end of
the socket is closed (the client sees the connection close). A thread that ended on an
exception the pump did not turn into an error reply is this server's *death*
(:meth:`ServedTarget.death`, reported by the checker as a crash); closing the connection
deliberately is not.

:class:`ServedSocketTarget` is the ``--socket`` flavour: one hosted device served on a UNIX
path from a thread (:class:`~vfio_user_mig.simulator.server.io.UnixServer`), connection after
connection, keeping the device's state between them (vfio-user.rst "Connection drop"), as the
``disconnect`` group's reconnection checks need.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from vfio_user_mig.check.target import Death, SocketTarget
from vfio_user_mig.simulator.server.hosting import HostedDevice, host_device
from vfio_user_mig.simulator.server.io import CLEANUP_FAILED, UnixServer, pump
from vfio_user_mig.simulator.server.types import ServerConfig

#: Device memory of a served device unless told otherwise: small, so that a STOP_COPY stream
#: is read in a few messages, and large enough for every profile's stimulus.
SERVED_MEM_SIZE = 64 << 10
#: How long :meth:`ServedTarget.end` waits for the serving thread once both ends are closed.
JOIN_TIMEOUT = 2.0

#: Builds the hosted device of one sequence.
Factory = Callable[[], HostedDevice]


def default_factory(device: str = "migdev", *, mem_size: int = SERVED_MEM_SIZE,
                    config: ServerConfig | None = None) -> Factory:
    """A factory of fresh, unmodified hosted devices ``device``."""
    def build() -> HostedDevice:
        return host_device(device, mem_size=mem_size, config=config)
    return build


@dataclass
class _Run:
    """One sequence's hosted device, its serving thread and how the thread ended."""

    hosted: HostedDevice
    sock: socket.socket
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    reason: str | None = None
    crashed: str | None = None


class ServedTarget:
    """Our server in this process, a fresh hosted device per sequence (module docstring)."""

    def __init__(self, device: str = "migdev", *, factory: Factory | None = None,
                 mem_size: int = SERVED_MEM_SIZE, config: ServerConfig | None = None,
                 tick: float = 0.05, name: str | None = None) -> None:
        self.factory = factory or default_factory(device, mem_size=mem_size, config=config)
        self.name = name or f"in-process {device}"
        self.tick = tick
        self.started = 0
        self._run: _Run | None = None

    @property
    def hosted(self) -> HostedDevice | None:
        """The hosted device of the sequence running (``None`` between sequences)."""
        return self._run.hosted if self._run is not None else None

    def twin(self) -> ServedTarget:
        """A second instance of this server (same factory), for a migration round trip's
        destination; the caller closes it."""
        return ServedTarget(factory=self.factory, tick=self.tick, name=f"{self.name} (twin)")

    def begin(self) -> socket.socket:
        self.end()
        hosted = self.factory()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        run = _Run(hosted, theirs)
        run.thread = threading.Thread(target=self._serve, args=(run,),
                                      name="vfio-user-served", daemon=True)
        self._run = run
        self.started += 1
        run.thread.start()
        return ours

    def _serve(self, run: _Run) -> None:
        try:
            run.reason = pump(run.hosted.core, run.sock, run.stop, tick=self.tick)
        except BaseException as exc:  # a planted defect may raise anything
            run.crashed = f"{type(exc).__name__}: {exc}"
        finally:
            with contextlib.suppress(OSError):
                run.sock.shutdown(socket.SHUT_RDWR)
            run.sock.close()
        if run.reason is not None and (run.reason.startswith("internal error")
                                       or run.reason.endswith(CLEANUP_FAILED)):
            run.crashed = run.reason  # a planted defect that raises: a server dying of it

    def death(self) -> Death | None:
        run = self._run
        if run is None or run.thread is None:
            return None
        run.thread.join(0.01)
        if run.thread.is_alive() or run.crashed is None:
            return None
        return Death("ended on an internal error", run.crashed[-400:])

    def end(self) -> None:
        run, self._run = self._run, None
        if run is None:
            return
        run.stop.set()
        with contextlib.suppress(OSError):
            run.sock.shutdown(socket.SHUT_RDWR)
        if run.thread is not None:
            run.thread.join(JOIN_TIMEOUT)
            if run.thread.is_alive():  # a server stuck in a handler: leave it (daemon)
                return
        with contextlib.suppress(Exception):  # a server that fails to clean up has ended
            run.hosted.close()

    def close(self) -> None:
        self.end()


class ServedSocketTarget(SocketTarget):
    """One hosted device served on a UNIX path in this process, reconnected for each sequence
    (module docstring): the ``--socket`` semantics, device state kept across connections."""

    def __init__(self, device: str = "migdev", *, factory: Factory | None = None,
                 mem_size: int = SERVED_MEM_SIZE, config: ServerConfig | None = None) -> None:
        self._dir = tempfile.mkdtemp(prefix="vfio-user-served-")
        path = os.path.join(self._dir, "server.sock")
        build = factory or default_factory(device, mem_size=mem_size, config=config)
        self.hosted = build()
        self.server = UnixServer(self.hosted.core, path).start()
        super().__init__(path)
        self.name = f"in-process {device} on {path}"

    def close(self) -> None:
        self.server.stop()
        self.hosted.close()
        shutil.rmtree(self._dir, ignore_errors=True)


__all__ = ["SERVED_MEM_SIZE", "Factory", "ServedSocketTarget", "ServedTarget",
           "default_factory"]
