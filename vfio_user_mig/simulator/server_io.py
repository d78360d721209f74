"""Run a :class:`ServerCore` over a real socket: the thin IO pump, and a UNIX-path listener.

The pump reads with ``recv_into`` a reused buffer, feeds the core, processes every whole
message, and writes replies with ``sendmsg`` scatter-gather. Device timers run between
messages (the pump wakes at least every ``tick`` seconds). On disconnect the core unmaps the
client's memory and closes its fds; the device keeps its state for the next connection.
"""

from __future__ import annotations

import logging
import select
import socket
import threading
import time
from collections.abc import Callable

from vfio_user_mig.simulator.server_core import Handled, ServerCore
from vfio_user_mig.simulator.transport import (
    PeerClosed,
    close_fds,
    listen_unix,
    recv_into,
    send_parts,
)

log = logging.getLogger("vfio_user_mig.server")

#: Size of the reused receive buffer (one recv may carry several small messages).
RECV_BUFFER = 256 * 1024


def pump(
    core: ServerCore,
    sock: socket.socket,
    stop: threading.Event | None = None,
    *,
    tick: float = 0.05,
    clock: Callable[[], float] = time.monotonic,
    on_event: Callable[[Handled], None] | None = None,
) -> str:
    """Serve one connection until the peer closes it or ``stop`` is set.

    Returns why it ended: ``"closed"``, ``"stopped"`` or ``"error: ..."``.
    """
    buf = bytearray(RECV_BUFFER)
    view = memoryview(buf)
    reason = "closed"
    try:
        while stop is None or not stop.is_set():
            ready, _, _ = select.select([sock], [], [], tick)
            if ready:
                try:
                    n, fds = recv_into(sock, view)
                except PeerClosed:
                    break
                core.receive_data(view[:n], fds)
            while True:
                event = core.next_event(clock())
                if event is None:
                    break
                if on_event is not None:
                    on_event(event)
                _flush(core, sock)
            _flush(core, sock)
        else:
            reason = "stopped"
    except (OSError, ConnectionError) as exc:
        reason = f"error: {exc}"
    except Exception as exc:  # a core bug ends this connection, never the server
        log.exception("connection dropped after an internal error")
        reason = f"internal error: {exc!r}"
    finally:
        core.connection_lost()
    return reason


def _flush(core: ServerCore, sock: socket.socket) -> None:
    for parts, fds in core.data_to_send():
        send_parts(sock, parts, fds)


class UnixServer:
    """A vfio-user server listening on a UNIX socket path (mode 0600), one client at a time;
    a client may disconnect and a new one connect (the device state is kept)."""

    def __init__(
        self,
        core: ServerCore,
        path: str,
        *,
        verbose: bool = False,
        max_connections: int | None = None,
    ) -> None:
        self.core = core
        self.path = path
        self.verbose = verbose
        self.max_connections = max_connections
        self.stop_event = threading.Event()
        self.listener = listen_unix(path)
        self.connections = 0
        self._thread: threading.Thread | None = None

    def _log(self, event: Handled) -> None:
        if self.verbose:
            status = "ok" if event.errno is None else f"errno {event.errno} ({event.detail})"
            kind = "reply" if event.is_reply else "request"
            log.info("%s cmd=%s id=%#x: %s", kind, event.command, event.msg_id, status)

    def serve_forever(self) -> None:
        """Accept and serve connections until :meth:`stop` (or ``max_connections`` served)."""
        try:
            while not self.stop_event.is_set():
                ready, _, _ = select.select([self.listener], [], [], 0.1)
                if not ready:
                    continue
                conn, _ = self.listener.accept()
                self.connections += 1
                with conn:
                    reason = pump(
                        self.core,
                        conn,
                        self.stop_event,
                        on_event=self._log if self.verbose else None,
                    )
                log.info("connection %d ended: %s", self.connections, reason)
                if self.max_connections is not None and self.connections >= self.max_connections:
                    break
        finally:
            self.listener.close()

    def start(self) -> UnixServer:
        """Serve in a daemon thread."""
        self._thread = threading.Thread(
            target=self.serve_forever, name="vfio-user-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving and wait for the thread."""
        self.stop_event.set()
        if self._thread is not None:
            self._thread.join(timeout)


def serve_socketpair(
    core: ServerCore, sock: socket.socket
) -> tuple[threading.Thread, threading.Event]:
    """Serve ``sock`` (one end of a socketpair) in a thread; returns (thread, stop event)."""
    stop = threading.Event()
    thread = threading.Thread(
        target=pump, args=(core, sock, stop), name="vfio-user-server", daemon=True
    )
    thread.start()
    return thread, stop


__all__ = ["RECV_BUFFER", "UnixServer", "close_fds", "pump", "serve_socketpair"]
