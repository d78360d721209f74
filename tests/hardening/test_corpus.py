"""The hostile-message corpus (docs/SECURITY.md "Malformed-input corpus": ``corpus/*.hex``,
``corpus/MANIFEST.tsv``) replayed against a live server over a socketpair.

Each case is one message (annotated hex: ``#`` starts a comment) with the errno its reply must
carry, the fds sent with it, the session it needs and what happens after:

* ``session``: ``negotiated`` (VERSION done, and one DMA mapping at [0x100000, +64 KiB) without
  fd) or ``fresh`` (nothing sent yet);
* ``fds``: ``-``, ``memfd:N`` (64 KiB memfds) or ``eventfd:N``; every one must be closed by
  the server (the test only keeps its own duplicates);
* ``errno``: the reply's errno, or ``-`` when no reply may be sent (no-reply flag, replies);
* ``after``: ``serve`` (the same connection then serves a valid request) or ``close`` (the
  stream cannot be resynchronised: the server answers, then closes; a new connection is
  served).
"""

from __future__ import annotations

import errno
import os
import re
import select
import socket
import struct
from pathlib import Path

import pytest

from tests.simulator.conftest import Session, close_session, make_session
from vfio_user_mig.model import State

CORPUS = Path(__file__).parent / "corpus"
HDR = struct.Struct("<HHIII")


def load_manifest() -> list[tuple[str, str, str, str, str, str]]:
    rows = []
    for line in (CORPUS / "MANIFEST.tsv").read_text().splitlines():
        if line and not line.startswith("#"):
            file, err, fds, session, after, desc = line.split("\t")
            rows.append((file, err, fds, session, after, desc))
    return rows


def load_case(name: str) -> bytes:
    text = re.sub(r"#[^\n]*", "", (CORPUS / name).read_text())
    return bytes.fromhex("".join(text.split()))


CASES = load_manifest()


def test_manifest_covers_every_file_and_is_large_enough() -> None:
    files = {p.name for p in CORPUS.glob("*.hex")}
    assert files == {row[0] for row in CASES}
    assert len(CASES) >= 50


def make_fds(spec: str) -> list[int]:
    if spec == "-":
        return []
    kind, count = spec.split(":")
    fds = []
    for _ in range(int(count)):
        if kind == "memfd":
            fd = os.memfd_create("corpus", os.MFD_CLOEXEC)
            os.ftruncate(fd, 1 << 16)
        else:
            assert kind == "eventfd", spec
            fd = os.eventfd(0, os.EFD_CLOEXEC)
        fds.append(fd)
    return fds


def recv_exact(sock: socket.socket, n: int, timeout: float = 5.0) -> bytes:
    buf = b""
    while len(buf) < n:
        ready, _, _ = select.select([sock], [], [], timeout)
        assert ready, f"no answer within {timeout} s ({len(buf)}/{n} bytes)"
        chunk = sock.recv(n - len(buf))
        assert chunk, "connection closed before the answer"
        buf += chunk
    return buf


def silent(sock: socket.socket, timeout: float = 0.2) -> bool:
    ready, _, _ = select.select([sock], [], [], timeout)
    return not ready


@pytest.mark.parametrize(("file", "err", "fds", "session", "after", "desc"), CASES,
                         ids=[row[0][:-4] for row in CASES])
def test_corpus_case(file: str, err: str, fds: str, session: str, after: str, desc: str) -> None:
    data = load_case(file)
    msg_id, command, _size, _flags, _error = HDR.unpack_from(data)
    s: Session = make_session()
    try:
        client = s.client
        if session == "negotiated":
            client.negotiate()
            client.dma_map(0x100000, 0x10000)
        state_before = s.core.state
        ours = make_fds(fds)
        theirs = [os.dup(fd) for fd in ours]  # what the server receives is its own copy
        sock = client.sock
        sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                               struct.pack(f"{len(ours)}i", *ours))] if ours else [])
        for fd in ours:
            os.close(fd)
        if err == "-":
            assert silent(sock), f"{file}: the server answered a message that wants no reply"
        else:
            head = recv_exact(sock, 16)
            r_id, r_cmd, r_size, r_flags, r_err = HDR.unpack(head)
            recv_exact(sock, r_size - 16) if r_size > 16 else b""
            assert (r_id, r_cmd) == (msg_id, command), f"{file}: reply to the wrong request"
            assert r_flags & 0xF == 1 and r_flags & 0x20, f"{file}: not an error reply"
            assert errno.errorcode[r_err] == err, f"{file}: {errno.errorcode[r_err]} != {err}"
        for fd in theirs:  # the server's copies went away with the request or the connection
            os.close(fd)
        if after == "close":
            thread = s._thread
            thread.join(5)  # the server ends a desynchronised connection (pump returns)
            assert not thread.is_alive(), f"{file}: the server kept a desynchronised stream"
            client = s.reconnect()
            client.negotiate()
        else:
            if session == "fresh":
                client.negotiate()
        assert client.device_info().num_regions == 9
        assert client.get_state() == state_before == State.RUNNING
        assert len(client.region_read(2, 0, 4)) == 4
    finally:
        close_session(s)


def test_corpus_fds_are_closed_by_the_server() -> None:
    """Server-side view of the fd cases: no fd it was given survives a refused request."""
    from tests.hardening.helpers import Driver, fd_closed

    for file, err, fds, session, _after, _desc in CASES:
        if fds == "-" or session != "negotiated":
            continue
        with Driver() as d:
            d.send(bytes.fromhex("".join(re.sub(r"#[^\n]*", "",
                                                "01000300 28000000 00000000 00000000 "
                                                "20000000 03000000 00000000 00000000 "
                                                "00001000 00000000 00000100 00000000").split())))
            given = make_fds(fds)
            answer = d.send(load_case(file), given)
            assert answer.errno is not None and errno.errorcode[answer.errno] == err, file
            assert all(fd_closed(fd) for fd in given), f"{file}: an fd stayed open"
