"""The thin IO layer: move bytes and file descriptors between a UNIX socket and a sans-IO core.

Nothing here knows the protocol. Receiving uses ``recvmsg_into`` a buffer the caller reuses
(no per-message allocation of payloads); sending uses ``sendmsg`` scatter-gather over the parts
a codec produced (header, fixed part, data buffer: never concatenated), with SCM_RIGHTS for
file descriptors (vfio-user.rst "Socket": fds travel with the message they belong to).
"""

from __future__ import annotations

import array
import contextlib
import os
import socket
import struct
from collections.abc import Sequence

#: Upper bound on fds accepted with one recvmsg (the ancillary buffer size is derived from it).
MAX_FDS_PER_RECV = 64
_ANC_SIZE = socket.CMSG_SPACE(MAX_FDS_PER_RECV * array.array("i").itemsize)
#: A fd-less (fixed part, data) pair is joined and sent with ``send`` up to this data size
#: (copying a few hundred bytes is cheaper than building a ``sendmsg`` iovec).
_JOIN_SMALL = 512
#: Send buffer asked for on every connected socket (:func:`widen_send_buffer`): room for a
#: few of the largest messages (1 MiB data, ``wire.DEFAULT_MAX_DATA_XFER_SIZE``), so a sender
#: hands a whole bulk message to the kernel in one call and goes on with the next one while
#: the peer drains it, instead of waking up several times per message. The kernel caps it at
#: ``net.core.wmem_max`` (no error).
SEND_BUFFER = 4 << 20


class PeerClosed(ConnectionError):
    """The peer closed the connection (EOF)."""


def widen_send_buffer(sock: socket.socket, size: int = SEND_BUFFER) -> None:
    """Ask for a send buffer of ``size`` bytes on ``sock`` unless it has one at least that
    large (the kernel may grant less: ``net.core.wmem_max``); never fails."""
    with contextlib.suppress(OSError):
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) < size:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)


def recv_into(sock: socket.socket, buf: memoryview | list[memoryview],
              flags: int = 0) -> tuple[int, list[int]]:
    """Receive into ``buf`` (or a list of buffers, filled in order); return (bytes received,
    fds received). Raises :class:`PeerClosed` on EOF. Received fds are always returned (the
    caller owns and must close them), even when they exceed what the protocol allows, so none
    leak."""
    bufs = buf if isinstance(buf, list) else [buf]
    nbytes, ancdata, msg_flags, _addr = sock.recvmsg_into(bufs, _ANC_SIZE, flags)
    if not ancdata and not msg_flags:  # the common case: bytes only
        if nbytes == 0:
            raise PeerClosed("peer closed the connection")
        return nbytes, []
    fds: list[int] = []
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            arr = array.array("i")
            arr.frombytes(data[: len(data) - (len(data) % arr.itemsize)])
            fds.extend(arr)
    if msg_flags & socket.MSG_CTRUNC:
        close_fds(fds)
        raise ConnectionError("file descriptors were truncated (more than the receive limit)")
    if nbytes == 0 and not fds:
        raise PeerClosed("peer closed the connection")
    return nbytes, fds


def send_parts(
    sock: socket.socket, parts: Sequence[bytes | memoryview], fds: Sequence[int] = ()
) -> None:
    """Send all of ``parts`` as one byte stream segment, with ``fds`` attached to its first
    byte. Partial sends are completed without copying the large parts. A single fd-less part
    goes out with ``sendall`` (no iovec to build)."""
    if not fds:
        if len(parts) == 1:
            sock.sendall(parts[0])
            return
        if len(parts) == 2 and len(parts[1]) <= _JOIN_SMALL:  # e.g. header + 4 data bytes
            sock.sendall(b"".join(parts))
            return
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] if fds else []
    sent = sock.sendmsg(parts, anc)
    total = 0
    for part in parts:
        total += len(part)
    if sent == total:
        return
    # Rare: finish the remainder (fds already went with the first byte).
    for part in parts:
        size = len(part)
        if sent >= size:
            sent -= size
            continue
        sock.sendall(memoryview(part)[sent:])
        sent = 0


def set_recv_timeout(sock: socket.socket, timeout: float | None) -> bool:
    """Make blocking receives on ``sock`` give up after ``timeout`` seconds (SO_RCVTIMEO, so a
    receive is one system call, with no select/poll before it); ``None`` = wait forever.

    Only for a socket in blocking mode (``gettimeout() is None``): returns False and does
    nothing otherwise. An expired receive raises ``BlockingIOError``/``TimeoutError``
    (EAGAIN), or returns what arrived so far."""
    if sock.gettimeout() is not None:
        return False
    usec = 0 if timeout is None else max(1, round(timeout * 1_000_000))
    timeval = struct.pack("@ll", usec // 1_000_000, usec % 1_000_000)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
    return True


def close_fds(fds: Sequence[int]) -> None:
    """Close every fd, ignoring ones already closed."""
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


#: bytes in ``sockaddr_un.sun_path``, its terminating NUL included (Linux unix(7))
_SUN_PATH_MAX = 108


def listen_unix(path: str, *, backlog: int = 1) -> socket.socket:
    """A listening AF_UNIX stream socket at ``path`` with mode 0600 (owner only).

    The socket is created under a restrictive umask so no other user can ever connect, even
    for an instant before a chmod. It is bound under a temporary name beside ``path`` and
    renamed to ``path`` once listening, so a client that waits for the file to appear (as
    libvfio-user's ``samples/client`` does) never finds a socket that refuses it; a path too
    long for a temporary name beside it is bound directly."""
    if os.path.exists(path):
        os.unlink(path)
    staging = f"{path}.{os.getpid()}~"
    direct = len(os.fsencode(staging)) >= _SUN_PATH_MAX
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(path if direct else staging)
    finally:
        os.umask(old)
    sock.listen(backlog)
    if not direct:
        os.rename(staging, path)
    os.chmod(path, 0o600)
    return sock


def connect_unix(path: str, timeout: float | None = None) -> socket.socket:
    """Connect to a vfio-user server listening at ``path``."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect(path)
    sock.settimeout(None)
    return sock


__all__ = [
    "MAX_FDS_PER_RECV",
    "SEND_BUFFER",
    "PeerClosed",
    "close_fds",
    "connect_unix",
    "listen_unix",
    "recv_into",
    "send_parts",
    "set_recv_timeout",
    "widen_send_buffer",
]
