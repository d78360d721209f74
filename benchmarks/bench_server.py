"""Benchmarks of the vfio-user server over a socketpair, client and server in two processes.

* ``region_read_roundtrip``: REGION_READ of 4 bytes of device memory, round trips per second
  (client codec + socket + ``server.io.pump`` + core + device). ``baseline`` is a raw 20-byte
  echo between two Python processes over a socketpair (``recv_into``/``send``); goal ratio
  >= 0.8.
* ``mig_data_stream``: the *protocol path* of migration data. MIG_DATA_READ at 1 MiB chunks
  (PRE_COPY until caught up, then STOP_COPY until the end; the two state changes are not
  timed, only the reads: the bytes/s of MIG_DATA_READ streaming) with
  ``Client.mig_data_read_stream(CHUNK, depth=2, into=buf)``: two requests in flight, each reply
  received into one reused buffer, from a ``MemStreamDev``: a migdev whose save stream (64 MiB
  of memory, 8 MiB with ``quick``) was encoded before the timing and is served as zero-copy
  memoryview slices, so the figure is client + socket + pump + server core, without the
  device's save work. bytes/s; goal ratio >= 0.9. ``baseline``: raw request/response exchanges
  between two processes, one 1 MiB ``sendall`` answered by ``recv_into`` a reused buffer per
  1-byte request, as many as the stream has chunks, sending the successive chunks of a buffer
  as large as the stream: the same bytes moved, like for like. ``baseline_hot``/``ratio_hot``:
  the same exchanges always sending one cache-resident 1 MiB chunk; no stream of 64 MiB can be
  cache-resident, so that figure bounds what the kernel copy costs from cache, not what a
  stream can reach (it was the primary baseline before 2026-11-25; both are reported).
* ``mig_data_stream_serial``: the same stream read strictly one request at a time with
  ``Client.mig_data_read_into`` a reused buffer (the figure ``mig_data_stream`` was before
  pipelining).
* ``mig_data_stream_bytes``: serial, with ``Client.mig_data_read``, which returns a new
  ``bytes`` per chunk (received into it without a copy, but a fresh 1 MiB allocation each).
* ``mig_data_stream_migdev``: the same pipelined reads (depth 2, into a reused buffer) from a
  real ``MigDev``
  whose memory was filled with the same pattern before the timing: the protocol path plus the
  device's save path (stream format 2: the first pass copies memory into the staging shadow
  and computes page CRC-32s there, reads are zero-copy views of it; comparison passes for
  what changed; SHA-256 of the page-CRC table for END). Same baselines; no goal of its own: it
  shows what the save path costs on top of the protocol path.

Processes come from the ``fork`` context; every figure is the best of a few repeats.
``run(quick)`` returns ``{name: {"value", "unit", "baseline", "ratio", ...}}``; run this file
directly to print the JSON.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import socket
import sys
import time
from collections.abc import Callable

from vfio_user_mig.model import State
from vfio_user_mig.simulator.client.api import Client
from vfio_user_mig.simulator.device import MigDev
from vfio_user_mig.simulator.device.memstream import MemStreamDev
from vfio_user_mig.simulator.server.core import ServerCore
from vfio_user_mig.simulator.server.io import pump

CHUNK = 1 << 20
BAR2 = 2
_CTX = mp.get_context("fork")


# ----- child processes ---------------------------------------------------------------------
def _fill(device: MigDev) -> None:
    """Write the same pattern as ``MemStreamDev(fill=True)`` into device memory (before the
    timing): a device's memory holds data, and pages of the memfd never touched would make
    the first pass measure the kernel allocating them."""
    pattern = bytes(range(256)) * (CHUNK // 256)
    for off in range(0, device.mem_size, CHUNK):
        device.region_write(BAR2, off, pattern[: device.mem_size - off], 0.0)


def _serve(
    sock: socket.socket, peer: socket.socket, mem_size: int, pregenerated: bool = False
) -> None:
    peer.close()
    device = MemStreamDev(mem_size=mem_size) if pregenerated else MigDev(mem_size=mem_size)
    if not pregenerated and mem_size > (1 << 16):
        _fill(device)
    core = ServerCore(device)
    try:
        pump(core, sock)
    finally:
        core.close()
        device.close()
        sock.close()


def _echo(sock: socket.socket, peer: socket.socket) -> None:
    peer.close()
    buf = memoryview(bytearray(4096))
    while True:
        n = sock.recv_into(buf)
        if n == 0:
            break
        sock.send(buf[:n])
    sock.close()


def _bulk(sock: socket.socket, peer: socket.socket, chunk: int, total: int = 0) -> None:
    """For every request byte received, send one chunk: always the same (cache-hot) chunk,
    or with ``total``, the next chunk of a ``total``-byte stream (cold, like a real stream);
    then the reply ``b"k"`` says the stream is built."""
    peer.close()
    data = bytes(chunk)
    stream = memoryview(bytes(range(256)) * (-(-total // 256))) if total else None
    if stream is not None:
        sock.sendall(b"k")
    pos = 0
    buf = memoryview(bytearray(64))
    while True:
        n = sock.recv_into(buf)
        if n == 0:
            break
        for _ in range(n):
            if stream is None:
                sock.sendall(data)
            else:
                if pos + chunk > len(stream):
                    pos = 0
                sock.sendall(stream[pos : pos + chunk])
                pos += chunk
    sock.close()


def _with_child(
    target: Callable[..., None], args: tuple[object, ...], body: Callable[[socket.socket], float]
) -> float:
    """Run ``target(child_sock, parent_sock, *args)`` in a forked process; time ``body``."""
    parent, child = socket.socketpair()
    proc = _CTX.Process(target=target, args=(child, parent, *args), daemon=True)
    proc.start()
    child.close()
    try:
        return body(parent)
    finally:
        parent.close()
        proc.join(10)
        if proc.is_alive():
            proc.terminate()
            proc.join(5)


# ----- region_read_roundtrip -----------------------------------------------------------------
def _region_reads(n: int) -> Callable[[socket.socket], float]:
    def body(sock: socket.socket) -> float:
        client = Client(sock, timeout=10.0)
        client.negotiate()
        client.region_write(BAR2, 0, b"\xfe\xca\xbe\xba")
        for _ in range(200):  # warm-up
            client.region_read(BAR2, 0, 4)
        t0 = time.perf_counter()
        for _ in range(n):
            client.region_read(BAR2, 0, 4)
        elapsed = time.perf_counter() - t0
        assert client.region_read(BAR2, 0, 4) == b"\xfe\xca\xbe\xba"
        return n / elapsed

    return body


def _raw_echo(n: int) -> Callable[[socket.socket], float]:
    def body(sock: socket.socket) -> float:
        msg = bytes(20)
        buf = memoryview(bytearray(4096))

        def one() -> None:
            sock.send(msg)
            got = 0
            while got < 20:
                got += sock.recv_into(buf[got:])

        for _ in range(200):
            one()
        t0 = time.perf_counter()
        for _ in range(n):
            one()
        return n / (time.perf_counter() - t0)

    return body


# ----- mig_data_stream -----------------------------------------------------------------------
def _mig_stream_with(into: bool, depth: int = 0) -> Callable[[socket.socket], float]:
    """Drain PRE_COPY then STOP_COPY in CHUNK reads: with ``depth``, pipelined with
    ``Client.mig_data_read_stream`` into a reused buffer; otherwise one request at a time with
    ``Client.mig_data_read_into`` a reused buffer (like the baseline's ``recv_into``), or
    ``Client.mig_data_read`` (a new ``bytes`` per chunk)."""

    def body(sock: socket.socket) -> float:
        client = Client(sock, timeout=30.0)
        client.negotiate()
        buf = memoryview(bytearray(CHUNK))
        total = 0
        elapsed = 0.0
        for phase in (State.PRE_COPY, State.STOP_COPY):
            client.set_state(phase)  # not timed: a state change is not streaming
            t0 = time.perf_counter()
            if depth:
                for data in client.mig_data_read_stream(CHUNK, depth, into=buf):
                    total += len(data)
            else:
                while True:
                    n = client.mig_data_read_into(buf) if into else len(client.mig_data_read(CHUNK))
                    total += n
                    if n < CHUNK:
                        break
            elapsed += time.perf_counter() - t0
        client.set_state(State.STOP)
        _mig_stream.last_total = total  # type: ignore[attr-defined]
        return total / elapsed

    return body


_mig_stream = _mig_stream_with(into=True, depth=2)
_mig_stream_serial = _mig_stream_with(into=True)


def _raw_bulk(chunks: int, cold: bool = False) -> Callable[[socket.socket], float]:
    def body(sock: socket.socket) -> float:
        buf = memoryview(bytearray(CHUNK))
        if cold:
            sock.recv(1)  # the sender's stream is built
        t0 = time.perf_counter()
        for _ in range(chunks):
            sock.send(b"r")
            got = 0
            while got < CHUNK:
                got += sock.recv_into(buf[got:])
        return chunks * CHUNK / (time.perf_counter() - t0)

    return body


def run(quick: bool) -> dict[str, dict[str, float | str | None]]:
    n, repeat = (2_000, 2) if quick else (20_000, 5)
    mem_size = (8 << 20) if quick else (64 << 20)
    rr = max(_with_child(_serve, (1 << 16,), _region_reads(n)) for _ in range(repeat))
    echo = max(_with_child(_echo, (), _raw_echo(n)) for _ in range(repeat))

    stream = max(_with_child(_serve, (mem_size, True), _mig_stream) for _ in range(repeat))
    total = _mig_stream.last_total  # type: ignore[attr-defined]
    serial = max(_with_child(_serve, (mem_size, True), _mig_stream_serial) for _ in range(repeat))
    as_bytes = max(
        _with_child(_serve, (mem_size, True), _mig_stream_with(into=False)) for _ in range(repeat)
    )
    device = max(_with_child(_serve, (mem_size,), _mig_stream) for _ in range(repeat))
    dev_total = _mig_stream.last_total  # type: ignore[attr-defined]
    chunks = -(-total // CHUNK)
    raw = max(_with_child(_bulk, (CHUNK,), _raw_bulk(chunks)) for _ in range(repeat))
    cold = max(
        _with_child(_bulk, (CHUNK, chunks * CHUNK), _raw_bulk(chunks, True)) for _ in range(repeat)
    )
    return {
        "region_read_roundtrip": {
            "value": round(rr, 1),
            "unit": "round trips/s",
            "baseline": round(echo, 1),
            "ratio": round(rr / echo, 4),
            "note": "REGION_READ 4 B, two processes; baseline raw 20-byte socketpair echo",
        },
        "mig_data_stream": {
            "value": round(stream, 1),
            "unit": "bytes/s",
            "baseline": round(cold, 1),
            "ratio": round(stream / cold, 4),
            "stream_bytes": total,
            "mem_size": mem_size,
            "baseline_hot": round(raw, 1),
            "ratio_hot": round(stream / raw, 4),
            "note": "protocol path: MIG_DATA_READ 1 MiB chunks of a pre-generated stream "
                    "(zero-copy device), PRE_COPY + STOP_COPY reads (state changes untimed), "
                    "2 requests in flight; baseline raw request/sendall 1 MiB/recv_into of the "
                    "same bytes (same chunk count); ratio_hot: against one cache-resident chunk",
        },
        "mig_data_stream_serial": {
            "value": round(serial, 1),
            "unit": "bytes/s",
            "baseline": round(cold, 1),
            "ratio": round(serial / cold, 4),
            "baseline_hot": round(raw, 1),
            "ratio_hot": round(serial / raw, 4),
            "note": "as mig_data_stream but one request at a time (mig_data_read_into)",
        },
        "mig_data_stream_bytes": {
            "value": round(as_bytes, 1),
            "unit": "bytes/s",
            "baseline": round(cold, 1),
            "ratio": round(as_bytes / cold, 4),
            "baseline_hot": round(raw, 1),
            "ratio_hot": round(as_bytes / raw, 4),
            "note": "as mig_data_stream_serial but Client.mig_data_read (a new bytes object "
                    "per chunk) instead of mig_data_read_into a reused buffer",
        },
        "mig_data_stream_migdev": {
            "value": round(device, 1),
            "unit": "bytes/s",
            "baseline": round(cold, 1),
            "ratio": round(device / cold, 4),
            "stream_bytes": dev_total,
            "mem_size": mem_size,
            "baseline_hot": round(raw, 1),
            "ratio_hot": round(device / raw, 4),
            "note": "as mig_data_stream but a real MigDev: protocol path + save path (staging "
                    "shadow copy, page CRC-32s, comparison passes, END digest)",
        },
    }


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv[1:]), indent=2))
