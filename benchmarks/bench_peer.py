"""Our server against another vfio-user server (e.g. libvfio-user's C ``samples/server``),
both driven by the same minimal client: ``python benchmarks/run.py --peer SOCKET`` or
``--peer-spawn 'CMD {socket}'``.

* ``region_read_vs_peer``: 4-byte REGION_READ round trips per second against our server
  (``value``) with the peer's rate as the ``baseline``; ``ratio`` > 1 means ours is faster.
  The client is deliberately minimal and identical for both: one VERSION exchange (encoded by
  :mod:`vfio_user_mig.wire`), then each request is one ``struct`` pack of header + access
  fixed part (:data:`~vfio_user_mig.wire.layouts.HEADER`,
  :data:`~vfio_user_mig.wire.layouts.REGION_ACCESS`), one ``send`` and ``recv_into`` a reused
  buffer until the 16 + 16 + 4 reply bytes are in; the last reply's header is checked (reply,
  no error, same id). No framer, no decode: the client costs both sides the same.

  The peer is read at ``--peer-region`` (default 1: the C sample's BAR1, device memory
  readable anywhere in its first 0x3000 bytes; its BAR0 refuses any access but 8 bytes at
  offset 0 with EINVAL); ours hosts a migdev (64 KiB) in a forked process listening on a UNIX
  path, read at BAR2 offset 0 (``region_read_roundtrip``'s access), the same server as
  ``region_read_roundtrip`` (``server.io.pump`` over :class:`ServerCore`).
  ``--peer SOCKET`` connects to a listening server once per measurement (it must accept
  several clients); ``--peer-spawn`` starts the command (``{socket}`` replaced by a fresh
  path) per measurement, since the C sample serves one client and exits.

Without a peer the benchmark is skipped: ``run`` returns ``{"region_read_vs_peer":
{"skipped": "..."}}`` (run.py prints the reason).
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator

from vfio_user_mig import wire
from vfio_user_mig.simulator.device import MigDev
from vfio_user_mig.simulator.server.core import ServerCore
from vfio_user_mig.simulator.server.io import pump
from vfio_user_mig.simulator.transport import listen_unix
from vfio_user_mig.wire.layouts import HEADER, REGION_ACCESS

#: run.py passes ``peer``/``peer_spawn``/``peer_region`` to modules that set this.
ACCEPTS_PEER = True
_CTX = mp.get_context("fork")
_REQUEST = REGION_ACCESS.with_prefix(HEADER)
_REPLY = _REQUEST  # the reply's fixed part is the same record, 4 data bytes follow
_COUNT = 4
_REPLY_FLAG = int(wire.MsgType.REPLY)
_ERROR_FLAG = int(wire.HeaderFlag.ERROR)


def _recv_exact(sock: socket.socket, buf: memoryview, size: int) -> None:
    got = 0
    while got < size:
        n = sock.recv_into(buf[got:size])
        if n == 0:
            raise ConnectionError("server closed the connection")
        got += n


def minimal_reads(sock: socket.socket, region: int, offset: int, n: int, warmup: int) -> float:
    """VERSION, then ``warmup`` + ``n`` REGION_READs of 4 bytes one at a time; returns round
    trips per second over the ``n`` timed ones."""
    parts = wire.encode_parts(wire.Version(major=0, minor=2, msg_id=1))
    sock.sendall(b"".join(bytes(p) for p in parts))
    head = memoryview(bytearray(1 << 16))
    _recv_exact(sock, head, HEADER.size)
    _mid, _cmd, size, flags, err = HEADER.unpack_from(head)
    if flags & _ERROR_FLAG or not 16 <= size <= len(head):
        raise ConnectionError(f"VERSION refused (errno {err})")
    _recv_exact(sock, head[HEADER.size :], size - HEADER.size)
    command = int(wire.Command.REGION_READ)
    reply_size = _REPLY.size + _COUNT
    buf = memoryview(bytearray(4096))
    pack = _REQUEST.pack
    recv_into = sock.recv_into
    send = sock.send
    msg_id = 1
    t0 = 0.0
    for i in range(warmup + n):
        if i == warmup:
            t0 = time.perf_counter()
        msg_id = (msg_id & 0x7FFF) + 1
        send(pack(msg_id, command, _REQUEST.size, 0, 0, offset, region, _COUNT))
        got = recv_into(buf)
        while got < reply_size:
            more = recv_into(buf[got:])
            if more == 0:
                raise ConnectionError("server closed the connection")
            got += more
    rate = n / (time.perf_counter() - t0)
    rid, rcmd, rsize, rflags, rerr, *_ = _REPLY.unpack_from(buf)
    if (rid, rcmd, rsize, rflags, rerr) != (msg_id, command, reply_size, _REPLY_FLAG, 0):
        raise ConnectionError(f"bad REGION_READ reply {(rid, rcmd, rsize, rflags, rerr)}")
    return rate


def _connect(path: str, deadline: float) -> socket.socket:
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
            return sock
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.005)


def _serve_ours(listener: socket.socket) -> None:
    device = MigDev(mem_size=1 << 16)
    core = ServerCore(device)
    conn, _ = listener.accept()
    listener.close()
    try:
        pump(core, conn)
    finally:
        conn.close()
        core.close()
        device.close()


@contextlib.contextmanager
def _ours() -> Iterator[str]:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "ours.sock")
        listener = listen_unix(path)
        proc = _CTX.Process(target=_serve_ours, args=(listener,), daemon=True)
        proc.start()
        listener.close()
        try:
            yield path
        finally:
            proc.join(10)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)


@contextlib.contextmanager
def _spawned(command: str) -> Iterator[str]:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "peer.sock")
        argv = [arg.replace("{socket}", path) for arg in shlex.split(command)]
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            yield path
        finally:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.terminate()
                proc.wait(5)


def _measure(
    where: Callable[[], contextlib.AbstractContextManager[str]], region: int, offset: int,
    n: int, repeat: int,
) -> float:
    best = 0.0
    for _ in range(repeat):
        with where() as path:
            sock = _connect(path, time.monotonic() + 10)
            try:
                best = max(best, minimal_reads(sock, region, offset, n, warmup=200))
            finally:
                sock.close()
    return best


def run(
    quick: bool, peer: str | None = None, peer_spawn: str | None = None, peer_region: int = 1
) -> dict[str, dict[str, float | str | None]]:
    if peer is None and peer_spawn is None:
        return {"region_read_vs_peer": {
            "skipped": "no peer server given (--peer SOCKET or --peer-spawn 'CMD {socket}')"}}
    n, repeat = (2_000, 2) if quick else (20_000, 5)

    def theirs() -> contextlib.AbstractContextManager[str]:
        if peer_spawn is not None:
            return _spawned(peer_spawn)
        assert peer is not None
        return contextlib.nullcontext(peer)

    # Interleaved, so both see the same machine load.
    ours_best, peer_best = 0.0, 0.0
    for _ in range(repeat):
        ours_best = max(ours_best, _measure(_ours, 2, 0, n, 1))
        peer_best = max(peer_best, _measure(theirs, peer_region, 0, n, 1))
    return {
        "region_read_vs_peer": {
            "value": round(ours_best, 1),
            "unit": "round trips/s",
            "baseline": round(peer_best, 1),
            "ratio": round(ours_best / peer_best, 4),
            "peer": peer_spawn if peer_spawn is not None else peer,
            "note": "REGION_READ 4 B, same minimal client (struct pack/send/recv_into); ours: "
                    "migdev BAR2 in a forked process on a UNIX path; baseline: the peer server "
                    f"(region {peer_region} offset 0)",
        }
    }


if __name__ == "__main__":
    args = sys.argv[1:]
    spawn = args[args.index("--peer-spawn") + 1] if "--peer-spawn" in args else None
    path = args[args.index("--peer") + 1] if "--peer" in args else None
    print(json.dumps(run("--quick" in args, path, spawn), indent=2))
