"""Fixtures: a migdev served by a ServerCore over a real socketpair, and a client."""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from vfio_user_mig.simulator.client.api import Client
from vfio_user_mig.simulator.client.memory import GuestMemory
from vfio_user_mig.simulator.device import MigDev
from vfio_user_mig.simulator.device.stream import StreamGeometry, page_fingerprints
from vfio_user_mig.simulator.server.core import ServerCore
from vfio_user_mig.simulator.server.hosting import host_device
from vfio_user_mig.simulator.server.io import serve_socketpair


@dataclass
class Session:
    device: MigDev
    core: ServerCore
    client: Client
    memory: GuestMemory
    server_sock: socket.socket

    def reconnect(self, **client_kwargs: object) -> Client:
        """Drop the connection and connect a new client to the same server core."""
        self.client.close()
        self._thread.join(5)
        self.server_sock.close()
        a, b = socket.socketpair()
        self.server_sock = a
        self._thread, self._stop = serve_socketpair(self.core, a)
        self.client = Client(b, memory=self.memory, timeout=5.0, **client_kwargs)  # type: ignore[arg-type]
        return self.client


def make_session(mem_size: int = 1 << 20, guest: int = 1 << 20, **client_kwargs: object) -> Session:
    hosted = host_device("migdev", mem_size=mem_size)
    device, core = hosted.device, hosted.core
    a, b = socket.socketpair()
    thread, stop = serve_socketpair(core, a)
    memory = GuestMemory(guest)
    client = Client(b, memory=memory, timeout=5.0, **client_kwargs)  # type: ignore[arg-type]
    session = Session(device, core, client, memory, a)
    session._thread, session._stop = thread, stop  # type: ignore[attr-defined]
    return session


def close_session(s: Session) -> None:
    s.client.close()
    s._stop.set()  # type: ignore[attr-defined]
    s._thread.join(5)  # type: ignore[attr-defined]
    s.server_sock.close()
    s.core.close()
    s.device.close()
    s.memory.close()


@pytest.fixture
def session() -> Iterator[Session]:
    s = make_session()
    s.client.negotiate()
    yield s
    close_session(s)


def serve_core(core: ServerCore, *, timeout: float = 5.0, socket_timeout: float | None = None,
               client_cls: type[Client] = Client) -> tuple[Client, Callable[[], None]]:
    """``core`` served on one end of a socketpair (its pump in a thread), a negotiated client
    of ``client_cls`` on the other; returns the client and the function that closes all of it
    (the core too). ``socket_timeout`` puts a Python timeout on the client's socket (then the
    client polls with select instead of SO_RCVTIMEO)."""
    a, b = socket.socketpair()
    if socket_timeout is not None:
        b.settimeout(socket_timeout)
    thread, stop = serve_socketpair(core, a)
    client = client_cls(b, timeout=timeout)
    client.negotiate()

    def close() -> None:
        client.close()
        stop.set()
        thread.join(5)
        a.close()
        core.close()

    return client, close


def serve_device(device: MigDev, *, timeout: float = 5.0, socket_timeout: float | None = None,
                 client_cls: type[Client] = Client) -> tuple[Client, Callable[[], None]]:
    """:func:`serve_core` for a new :class:`ServerCore` of ``device``; closing closes the
    device too."""
    client, close_core = serve_core(ServerCore(device), timeout=timeout,
                                    socket_timeout=socket_timeout, client_cls=client_cls)

    def close() -> None:
        close_core()
        device.close()

    return client, close


class MemorySink:
    """A restore sink over a ``bytearray`` of ``geo``'s memory: what a stream decoder writes
    into a device (pages, REGS), its digest the SHA-256 of the REGS then the memory."""

    def __init__(self, geo: StreamGeometry) -> None:
        self.ps = geo.page_size
        self.mem = bytearray(geo.mem_size)
        self.regs = b""

    def load_pages(self, first_page: int, data: memoryview) -> None:
        self.mem[first_page * self.ps : first_page * self.ps + len(data)] = data

    def load_regs(self, data: bytes) -> None:
        self.regs = data

    def page_fingerprints(self, first_page: int, count: int) -> bytes:
        ps = self.ps
        return page_fingerprints(self.mem[first_page * ps : (first_page + count) * ps], ps)

    def restored_digest(self, page_fingerprints: bytes) -> bytes:
        return hashlib.sha256(self.regs + self.mem).digest()


class InPlaceSink(MemorySink):
    """A :class:`MemorySink` whose memory the decoder may receive into (``page_view``)."""

    def page_view(self, first_page: int, count: int) -> memoryview:
        return memoryview(self.mem)[first_page * self.ps : (first_page + count) * self.ps]
