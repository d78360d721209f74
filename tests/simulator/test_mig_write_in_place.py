"""MIG_DATA_WRITE received in place (server/mig_write.py), end to end over sockets: a large
request's data goes into device memory as it arrives, with the same answers and the same
refusals as a request framed whole (small requests are never claimed: the reference), and a
connection cut inside a claimed request makes the restore refused."""

from __future__ import annotations

import errno
import os
import random
import socket
import struct
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vfio_user_mig import wire
from vfio_user_mig.model import State as S
from vfio_user_mig.simulator.client.api import Client
from vfio_user_mig.simulator.client.io import VfioUserError
from vfio_user_mig.simulator.device import MigDev
from vfio_user_mig.simulator.device.stream import RECORD_HEADER, RecordType
from vfio_user_mig.simulator.server.core import ServerCore
from vfio_user_mig.simulator.server.io import RECV_BUFFER, serve_socketpair

MEM = 1 << 21
BIG = 1 << 20  # claimed: larger than the pump's receive buffer, so it arrives in pieces
SMALL = 16 << 10  # below the claim threshold: framed whole, the reference path


def _source_stream() -> tuple[bytes, str]:
    """A whole save stream of a device with random memory, and that device's digest."""
    src = MigDev(mem_size=MEM)
    rng = random.Random(5)
    for at in range(0, MEM, 1 << 18):
        src.region_write(2, at, rng.randbytes(1 << 18), 0.0)
    src.on_arc(S.RUNNING, S.STOP)
    src.on_arc(S.STOP, S.STOP_COPY)
    out = []
    while chunk := src.mig_data_read(1 << 20):
        out.append(bytes(chunk))
    digest = src.digest()
    src.close()
    return b"".join(out), digest


STREAM, DIGEST = _source_stream()


class Dst:
    """A migdev destination served over a socketpair (reconnectable: same core, device)."""

    def __init__(self) -> None:
        self.device = MigDev(mem_size=MEM)
        self.core = ServerCore(self.device)
        self.conns: list[tuple[socket.socket, threading.Thread, threading.Event]] = []
        self.client = self.connect()

    def connect(self) -> Client:
        a, b = socket.socketpair()
        thread, stop = serve_socketpair(self.core, a)
        self.conns.append((a, thread, stop))
        client = Client(b, timeout=10.0)
        client.negotiate()
        return client

    def disconnect(self) -> None:
        self.client.close()
        a, thread, stop = self.conns[-1]
        thread.join(5)
        stop.set()
        a.close()

    def close(self) -> None:
        self.client.close()
        for a, thread, stop in self.conns:
            stop.set()
            thread.join(5)
            a.close()
        self.core.close()
        self.device.close()

    @property
    def in_place(self) -> int:
        return self.core.stats["mig_writes_in_place"]


def _restore(stream: bytes, chunk: int) -> tuple[list[int | None], int | None, S, str, int]:
    """Write ``stream`` in ``chunk``-byte MIG_DATA_WRITEs to a fresh destination, then go to
    STOP. Returns each write's errno (None: ok), STOP's errno, the state, the digest and how
    many writes were received in place."""
    dst = Dst()
    try:
        dst.client.set_state(S.STOP)
        dst.client.set_state(S.RESUMING)
        answers: list[int | None] = []
        for at in range(0, len(stream), chunk):
            try:
                dst.client.mig_data_write(stream[at : at + chunk])
                answers.append(None)
            except VfioUserError as exc:
                answers.append(exc.errno)
        stop: int | None = None
        try:
            dst.client.set_state(S.STOP)
        except VfioUserError as exc:
            stop = exc.errno
        return answers, stop, dst.device.mig_state, dst.device.digest(), dst.in_place
    finally:
        dst.close()


def _records() -> list[tuple[int, int, int]]:
    """(offset, type, length) of each record of the stream."""
    out, pos = [], 0
    while pos < len(STREAM):
        _m, _v, rtype, _s, length, _c = RECORD_HEADER.unpack_from(STREAM, pos)
        out.append((pos, rtype, length))
        pos += RECORD_HEADER.size + length
    return out


def test_large_writes_restore_in_place() -> None:
    answers, stop, state, digest, in_place = _restore(STREAM, BIG)
    assert answers == [None] * len(answers) and stop is None
    assert state is S.STOP and digest == DIGEST
    assert in_place == len(answers) - 1  # each but the short last one (whole in one receive)
    assert BIG > RECV_BUFFER


def _flipped(at: int) -> bytes:
    bad = bytearray(STREAM)
    bad[at] ^= 0x40
    return bytes(bad)


@pytest.mark.parametrize("where", ["page", "checked span", "record header", "regs"])
def test_a_corrupted_stream_is_refused_as_when_framed(where: str) -> None:
    """A byte changed in a page received in place (refused at RESUMING -> STOP: its
    fingerprint), in a PAGES checked span or a record header (the write that carries it is
    refused, EINVAL), in REGS: the same answers, state and memory as the same stream written
    in small requests that are framed whole."""
    pages = [r for r in _records() if r[1] == RecordType.PAGES]
    off, _t, length = pages[len(pages) // 2]
    at = {
        "page": off + length,  # the last byte of the record's last page
        "checked span": off + RECORD_HEADER.size + 9,
        "record header": off + 5,
        "regs": next(o for o, t, _n in _records() if t == RecordType.REGS) + 30,
    }[where]
    bad = _flipped(at)
    big = _restore(bad, BIG)
    small = _restore(bad, SMALL)
    assert big[4] > 0 and small[4] == 0
    assert big[2] is S.ERROR and small[2] is S.ERROR
    assert big[1] == small[1] == errno.EINVAL  # RESUMING -> STOP refused
    # The write carrying the bad byte (and every later one) is refused alike when it is
    # refused at all; a page is checked only at the end.
    refused_big = [i for i, e in enumerate(big[0]) if e is not None]
    refused_small = [i for i, e in enumerate(small[0]) if e is not None]
    if where == "page":
        assert not refused_big and not refused_small
    else:
        assert refused_big and refused_small
        assert refused_big[0] == at // BIG and refused_small[0] == at // SMALL
        assert all(big[0][i] == errno.EINVAL for i in refused_big)
    assert big[3] == small[3]  # cleared alike (power-on state)


def _head(msg_id: int, size: int) -> bytes:
    """The head of a MIG_DATA_WRITE of ``size`` data bytes (the codec's encoding)."""
    return bytes(wire.encode_parts(wire.MigDataWrite(bytes(size), msg_id=msg_id))[0])


def _send_partial_write(sock: socket.socket, data: bytes, total: int) -> None:
    sock.sendall(_head(0x77, total) + data)


def test_a_connection_cut_inside_a_claimed_write_refuses_the_restore() -> None:
    """The device took the first bytes of a claimed request whose rest never came: a new
    connection cannot continue the stream (RESUMING -> STOP refused, ERROR), even with the
    whole stream written again; cut inside a small request (framed: dropped unseen), the
    stream continues."""
    for size, refused in ((BIG, True), (SMALL, False)):
        dst = Dst()
        try:
            dst.client.set_state(S.STOP)
            dst.client.set_state(S.RESUMING)
            _send_partial_write(dst.client.sock, STREAM[: size // 2], size)
            dst.disconnect()
            dst.client = dst.connect()
            assert dst.in_place == 0
            for at in range(0, len(STREAM), SMALL):
                try:
                    dst.client.mig_data_write(STREAM[at : at + SMALL])
                except VfioUserError as exc:
                    assert refused and exc.errno == errno.EINVAL
            if refused:
                with pytest.raises(VfioUserError) as stop:
                    dst.client.set_state(S.STOP)
                assert stop.value.errno == errno.EINVAL and dst.device.mig_state is S.ERROR
            else:
                dst.client.set_state(S.STOP)
                assert dst.device.digest() == DIGEST
        finally:
            dst.close()


def test_fds_with_a_claimed_write_refuse_it_and_the_restore() -> None:
    """fds sent with the bytes of a claimed request after its head: the request is refused
    (EINVAL, as any MIG_DATA_WRITE with fds, and the fds are closed), and so is the restore
    (the device took bytes of a refused request)."""
    dst = Dst()
    r, w = os.pipe()
    try:
        dst.client.set_state(S.STOP)
        dst.client.set_state(S.RESUMING)
        body = STREAM[:BIG]
        sock = dst.client.sock
        sock.sendall(_head(0x99, BIG) + body[: BIG // 2])
        sock.sendmsg([body[BIG // 2 :]], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                           struct.pack("i", r))])
        reply = wire.decode(sock.recv(wire.HEADER_SIZE, socket.MSG_WAITALL), expect_reply=True)
        assert isinstance(reply, wire.ErrorReply) and reply.msg_id == 0x99
        assert reply.errno == errno.EINVAL
        assert dst.device.mig_state is S.RESUMING
        with pytest.raises(VfioUserError):
            dst.client.set_state(S.STOP)
        assert dst.device.mig_state is S.ERROR
    finally:
        os.close(r)
        os.close(w)
        dst.close()


@settings(max_examples=12, deadline=None)
@given(at=st.integers(0, len(STREAM) - 1), bit=st.integers(0, 7),
       chunk=st.sampled_from([BIG, 3 * (1 << 18) + 5, RECV_BUFFER + 4097]))
def test_any_flipped_bit_gets_the_answers_of_the_framed_path(at: int, bit: int,
                                                              chunk: int) -> None:
    """A bit flipped anywhere, the stream written in claimed requests of various sizes: the
    restore is refused, with the same state and the same first refused write as the same
    bytes in small framed requests (a write is refused as soon as its bytes are refused)."""
    bad = bytearray(STREAM)
    bad[at] ^= 1 << bit
    claimed = _restore(bytes(bad), chunk)
    framed = _restore(bytes(bad), SMALL)
    assert claimed[4] > 0 and framed[4] == 0
    assert claimed[2] is framed[2] is S.ERROR
    assert claimed[1] == framed[1] == errno.EINVAL
    first = [i for i, e in enumerate(claimed[0]) if e is not None]
    first_framed = [i for i, e in enumerate(framed[0]) if e is not None]
    assert bool(first) == bool(first_framed)
    if first:  # the write carrying the refused byte, in each chunking
        span = range(first_framed[0] * SMALL, (first_framed[0] + 1) * SMALL)
        assert first[0] in {span[0] // chunk, span[-1] // chunk}
    assert claimed[3] == framed[3]
