"""A vfio-user client that several threads use at once, as a VMM does.

A VMM touches the device from its vCPU threads (REGION_READ/WRITE) while its migration thread
streams MIG_DATA_READ/WRITE on the same socket. :class:`ThreadedClient` is :class:`Client`
with one receiver thread that takes every message off the socket: each reply goes to the
thread waiting for its msg id (vfio-user.rst "Message ID": replies are matched by id, not by
order), and the server's DMA_READ/DMA_WRITE requests are answered from guest memory by the
receiver itself, so no waiting thread can deadlock the server. Sends are serialized (one
message's bytes are never interleaved with another's) and message ids are allocated under
the same lock.

Every protocol operation of :class:`Client` works unchanged; the difference is that a reply
is always received through the framer by the receiver thread (the single-thread zero-copy
receive paths of :class:`Client` would need exclusive use of the socket). Used by the
transport study (:mod:`vfio_user_mig.studies.transport`) for a vCPU thread probing the
device while a migration runs.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

from vfio_user_mig import wire
from vfio_user_mig.simulator.client.api import Client
from vfio_user_mig.simulator.client.core import ErrorReceived, ReplyReceived, ServerRequest
from vfio_user_mig.simulator.client.io import BULK_REPLY, VfioUserError
from vfio_user_mig.simulator.transport import PeerClosed, recv_into, set_recv_timeout

#: The receiver wakes at least this often to notice :meth:`ThreadedClient.close`.
RECEIVER_TICK = 0.1


class ThreadedClient(Client):
    """A :class:`Client` safe to share between threads (see module docstring)."""

    def __init__(self, sock: socket.socket, **kwargs: Any) -> None:
        super().__init__(sock, **kwargs)
        self._send_lock = threading.RLock()
        self._cond = threading.Condition()
        self._failure: BaseException | None = None
        self._closing = False
        if sock.gettimeout() is not None:
            sock.settimeout(None)
        set_recv_timeout(sock, RECEIVER_TICK)
        self._receiver = threading.Thread(
            target=self._run, name="vfio-user-client-rx", daemon=True
        )
        self._receiver.start()

    # ----- the receiver thread ----------------------------------------------------------------
    def _run(self) -> None:
        core = self.core
        view = self._view
        try:
            while not self._closing:
                framer = core.framer
                try:
                    needed = framer.needed
                    if needed >= BULK_REPLY and not framer.at_boundary:
                        n, fds = recv_into(self.sock, framer.recv_buffer(needed))
                        framer.commit(n, fds)
                    else:
                        n, fds = recv_into(self.sock, view)
                        core.receive_data(view[:n], fds)
                except BlockingIOError:
                    continue
                requests: list[ServerRequest] = []
                with self._cond:
                    while (event := core.next_event()) is not None:
                        if type(event) is ReplyReceived or type(event) is ErrorReceived:
                            self._keep(event)
                        elif type(event) is ServerRequest:
                            requests.append(event)
                        else:
                            self._other_event(event)
                    self._cond.notify_all()
                for request in requests:
                    if self.serve_dma_while_waiting:
                        self.serve(request.message, request.fds)
                    else:
                        self.deferred_requests.append((request.message, request.fds))
        except BaseException as exc:  # handed to every waiting thread
            failure: BaseException = exc
        else:
            failure = PeerClosed("client closed")
        with self._cond:
            self._failure = failure
            self._cond.notify_all()

    # ----- Client overrides -------------------------------------------------------------------
    def _new_id(self) -> int:
        with self._send_lock:
            return self.core.next_id()

    def send(self, msg: Any, fds: Sequence[int] = ()) -> None:
        with self._send_lock:
            super().send(msg, fds)

    def request(self, msg: Any, fds: Sequence[int] = ()) -> tuple[Any, list[int]]:
        with self._send_lock:
            msg = self.core.with_id(msg)
            super().send(msg, fds)
        return self._wait_reply(msg.msg_id)

    def _wait_reply(self, msg_id: int) -> tuple[Any, list[int]]:
        timeout = self.timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while (got := self._early.pop(msg_id, None)) is None:
                if self._failure is not None:
                    raise ConnectionError(f"connection lost: {self._failure}") from self._failure
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise self._timed_out()
                self._cond.wait(remaining)
        if isinstance(got, ErrorReceived):
            raise VfioUserError(got.command, got.errno, got.payload)
        return got.message, got.fds

    def abandon(self, msg_ids: Iterable[int]) -> None:
        with self._cond:
            super().abandon(msg_ids)

    def _bulk_ok(self, size: int) -> bool:
        return False  # only the receiver thread reads the socket

    def region_read(self, region: int, offset: int, count: int) -> bytes:
        reply, _ = self.request(wire.RegionRead(offset=offset, region=region, count=count))
        return bytes(reply.data)

    def poll(self, timeout: float = 0.0) -> int:
        """Server requests are answered by the receiver thread: wait ``timeout`` and return
        how many it answered meanwhile."""
        before = self.dma_served
        time.sleep(timeout)
        return self.dma_served - before

    def _channel_client(self, sock: socket.socket) -> Client:
        return ThreadedClient(sock, timeout=self.timeout,
                              max_data_xfer_size=self.max_data_xfer_size,
                              max_msg_fds=self.max_msg_fds)

    def close(self) -> None:
        """Stop the receiver, then close the connection (and the migration-data channel)."""
        self._closing = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        if self._receiver is not threading.current_thread():
            self._receiver.join(5)
        super().close()


__all__ = ["RECEIVER_TICK", "ThreadedClient"]
