"""Run a :class:`ServerCore` over a real socket: the thin IO pump, and a UNIX-path listener.

The pump reads small messages with ``recvmsg_into`` a reused buffer and large ones straight
into their own buffer (or, for a MIG_DATA_WRITE the core claimed, :mod:`.mig_write`, into the
buffers its sink gives: device memory, scatter-gather; after such a request the reused buffer
takes only what the core asks for, ``recv_limit``, so that the next one is claimed before its
data comes), feeds the core, processes every whole message, and writes the replies
with ``sendmsg`` scatter-gather (one call per batch). A client that pipelines (several
requests per receive, e.g. MIG_DATA_READs in flight) gets each large reply as soon as it is
made: once :data:`FLUSH_BYTES` are queued they go out before the next request is processed,
so the client receives one chunk while the device makes the next; the socket's send buffer is
widened (``transport.widen_send_buffer``) so such a reply goes to the kernel in one call and the
pump goes on with the next request while the client drains it. Device timers run between
messages (the pump wakes at least every ``tick`` seconds). On disconnect the core unmaps the
client's memory and closes its fds; the device keeps its state for the next connection.

A migration-data channel agreed at VERSION (experimental, :mod:`.mig_channel`) is served by
the same pump in a second thread; both pumps process messages under one lock (the device is
shared) and receive and send outside it. The channel's thread ends with its socket or with
the main connection.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import threading
import time
from collections.abc import Callable
from typing import Protocol

from vfio_user_mig import wire
from vfio_user_mig.simulator.server.core import ServerCore
from vfio_user_mig.simulator.server.mig_channel import NewChannel
from vfio_user_mig.simulator.server.socket_end import Parts
from vfio_user_mig.simulator.server.types import Handled
from vfio_user_mig.simulator.transport import (
    PeerClosed,
    close_fds,
    listen_unix,
    recv_into,
    send_parts,
    set_recv_timeout,
    widen_send_buffer,
)
from vfio_user_mig.wire.layouts import HEADER, REGION_ACCESS

log = logging.getLogger("vfio_user_mig.server")

#: A message still missing at least this many bytes is received straight into its own
#: buffer (``Framer.recv_buffer``/``commit``): no copy out of the reused buffer.
DIRECT_RECV = 64 * 1024
#: Size of the reused receive buffer (one recv may carry several small messages; a larger
#: one's rest goes to its own buffer). Kept small: a pump is started per connection, and a
#: fresh buffer is zeroed page by page.
RECV_BUFFER = DIRECT_RECV
#: Most parts gathered into one ``sendmsg`` (well below IOV_MAX).
MAX_IOV = 512
#: A receive of exactly this many bytes (without fds) may be one REGION_READ request,
#: offered to the core's fast path (``ServerCore.region_read_fast``) before the framer.
FAST_SIZE = REGION_ACCESS.size + HEADER.size
#: Replies queued up to this many bytes wait for the end of the batch; more are sent before
#: the next request of the batch is processed.
FLUSH_BYTES = 64 * 1024


class Pumped(Protocol):
    """What :func:`pump` serves: a :class:`ServerCore` or a migration-data channel."""

    framer: wire.Framer

    def receive_data(
        self, data: bytes | memoryview, fds: list[int] | tuple[int, ...] = ()
    ) -> None: ...

    def next_event(self, now: float = 0.0) -> Handled | None: ...

    def data_to_send(self) -> list[tuple[Parts, list[int]]]: ...

    def connection_lost(self) -> None: ...


class _Channels:
    """The migration-data channels a main pump started (normally at most one)."""

    def __init__(self, lock: threading.Lock, tick: float, clock: Callable[[], float],
                 on_event: Callable[[Handled], None] | None) -> None:
        self.lock = lock
        self.tick = tick
        self.clock = clock
        self.on_event = on_event
        self.running: list[tuple[threading.Thread, threading.Event, socket.socket]] = []

    def start(self, new: NewChannel) -> None:
        """Serve ``new`` (its client end went out with the VERSION reply: close ours)."""
        new.client_end.close()
        stop = threading.Event()
        thread = threading.Thread(
            target=self._serve, args=(new, stop), name="vfio-user-mig-data", daemon=True
        )
        self.running.append((thread, stop, new.server_sock))
        thread.start()

    def _serve(self, new: NewChannel, stop: threading.Event) -> None:
        with new.server_sock:
            reason = pump(new.channel, new.server_sock, stop, tick=self.tick, clock=self.clock,
                          on_event=self.on_event, lock=self.lock)
        log.info("migration-data channel ended: %s", reason)

    def stop_all(self) -> None:
        """End every channel (the main connection ended)."""
        for thread, stop, sock in self.running:
            stop.set()
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            thread.join(5)
        self.running.clear()


def pump(
    core: Pumped,
    sock: socket.socket,
    stop: threading.Event | None = None,
    *,
    tick: float = 0.05,
    clock: Callable[[], float] = time.monotonic,
    on_event: Callable[[Handled], None] | None = None,
    lock: threading.Lock | None = None,
) -> str:
    """Serve one connection until the peer closes it or ``stop`` is set.

    Returns why it ended: ``"closed"``, ``"stopped"`` or ``"error: ..."``.

    A blocking socket is read with one ``recvmsg_into`` per wake-up, bounded by ``tick``
    with SO_RCVTIMEO (no ``select`` first); a socket with a Python timeout is polled with
    ``select`` as before. Whole messages are processed, then all replies go out together
    (one ``sendmsg`` per run of fd-less messages). When no message was processed (idle
    ``tick``, or only part of a message arrived), the core still gets a ``next_event`` call
    so device timers and DMA jobs run.

    ``lock`` (made here when not given) is held while the core processes a message; a
    migration-data channel the core agrees to is served in a thread with the same lock.
    """
    if lock is None:
        lock = threading.Lock()
    take_channel = getattr(core, "take_new_channel", None)
    fast = getattr(core, "region_read_fast", None)
    recv_limit = getattr(core, "recv_limit", None)
    channels = _Channels(lock, tick, clock, on_event)
    buf = bytearray(RECV_BUFFER)
    view = memoryview(buf)
    reason = "closed"
    blocking = set_recv_timeout(sock, tick)
    widen_send_buffer(sock)
    try:
        while stop is None or not stop.is_set():
            try:
                if not blocking and not select.select([sock], [], [], tick)[0]:
                    raise BlockingIOError
                framer = core.framer
                needed = framer.needed
                if framer.claimed is not None or (needed >= DIRECT_RECV
                                                  and not framer.at_boundary):
                    n, fds = recv_into(sock, framer.recv_buffers(needed))
                    framer.commit(n, fds)
                else:
                    limit = recv_limit() if recv_limit is not None else None
                    n, fds = recv_into(sock, view[:limit] if limit else view)
                    if n == FAST_SIZE and fast is not None and not fds:
                        with lock:
                            event = fast(view[:n], clock())
                        if event is not None:  # answered: send it, no batch to process
                            if on_event is not None:
                                on_event(event)
                            _send_all(sock, core.data_to_send())
                            continue
                    core.receive_data(view[:n], fds)
            except PeerClosed:
                break
            except BlockingIOError:  # tick expired (SO_RCVTIMEO / select): timers only
                pass
            processed = False
            held: list[tuple[list[bytes | memoryview], list[int]]] = []
            held_bytes = 0
            try:
                while core.framer.pending:
                    with lock:
                        event = core.next_event(clock())
                    if event is None:
                        break
                    processed = True
                    if on_event is not None:
                        on_event(event)
                    if core.framer.pending:  # more to process: send what is big enough now
                        for parts, fds in core.data_to_send():
                            held.append((parts, fds))
                            for part in parts:
                                held_bytes += len(part)
                        if held_bytes >= FLUSH_BYTES:
                            _send_all(sock, held)
                            held, held_bytes = [], 0
                if not processed:
                    with lock:
                        core.next_event(clock())
            finally:  # replies taken go out even when the core ends the connection
                held.extend(core.data_to_send())
                _send_all(sock, held)
                if take_channel is not None and (new := take_channel()) is not None:
                    channels.start(new)
        else:
            reason = "stopped"
    except (OSError, ConnectionError) as exc:
        reason = f"error: {exc}"
    except Exception as exc:  # a core bug ends this connection, never the server
        log.exception("connection dropped after an internal error")
        reason = f"internal error: {exc!r}"
    finally:
        channels.stop_all()
        with lock:
            try:
                core.connection_lost()
            except Exception:  # a cleanup bug costs this connection's cleanup, not the server
                log.exception("cleanup after the connection failed")
                reason = f"{reason}; {CLEANUP_FAILED}"
        if blocking:
            with contextlib.suppress(OSError):
                set_recv_timeout(sock, None)
    return reason


#: Added to :func:`pump`'s reason when the cleanup after the connection raised.
CLEANUP_FAILED = "cleanup failed"


def _send_all(sock: socket.socket, out: list[tuple[list[bytes | memoryview], list[int]]]) -> None:
    """Send messages in order: fd-less ones gathered into one ``sendmsg``; a message with
    fds starts a new ``sendmsg`` so its fds ride on its first byte."""
    if not out:
        return
    if len(out) == 1:
        send_parts(sock, *out[0])
        return
    batch: list[bytes | memoryview] = []
    batch_fds: list[int] = []
    for parts, fds in out:
        if batch and (fds or len(batch) + len(parts) > MAX_IOV):
            send_parts(sock, batch, batch_fds)
            batch, batch_fds = [], []
        if fds:
            batch_fds = fds
        batch.extend(parts)
    send_parts(sock, batch, batch_fds)


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
