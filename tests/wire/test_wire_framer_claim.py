"""Framer claims (wire/framer.py): a large message arriving in pieces may be taken by a sink
after its head; its bytes go to the sink in order, never into a framer buffer, and the
messages around it come out as without the claim, whatever the split."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from vfio_user_mig.wire import DeviceReset, Framer, Message, MigDataWrite, RegionWrite, encode
from vfio_user_mig.wire.framer import PayloadSink

HEAD = 24  # header + struct vfio_user_mig_data
BIG = MigDataWrite(bytes(range(256)) * 400, msg_id=2)  # 102400 data bytes
MESSAGES = [RegionWrite(0, 0, 4, b"abcd", msg_id=1), BIG, DeviceReset(msg_id=3),
            MigDataWrite(b"small", msg_id=4)]
STREAM = b"".join(encode(m) for m in MESSAGES)


class Sink:
    """Takes a claimed message's bytes: through ``write`` or into its buffers."""

    def __init__(self, head: bytes, pieces: int) -> None:
        self.head = head
        self.got = bytearray()
        self.pieces = pieces
        self._bufs: list[memoryview] = []

    def write(self, data: memoryview) -> None:
        self.got += data

    def buffers(self, n: int) -> list[memoryview]:
        sizes = [max(1, n // self.pieces)] * (self.pieces - 1)
        sizes.append(n - sum(sizes))
        self._bufs = [memoryview(bytearray(k)) for k in sizes if k > 0]
        return self._bufs

    def received(self, n: int) -> None:
        for b in self._bufs:
            k = min(n, len(b))
            self.got += b[:k]
            n -= k

    def message(self) -> Message:
        return DeviceReset(msg_id=0xC1A1)


def _framer(claims: list[Sink], accept: bool = True) -> Framer:
    def claim(head: memoryview, fds: list[int]) -> PayloadSink | None:
        if not accept:
            return None
        sink = Sink(bytes(head), 3)
        claims.append(sink)
        return sink

    return Framer(max_size=1 << 20, claim=claim, claim_head=HEAD, claim_min=1 << 16)


def _run(framer: Framer, cuts: list[int], direct: bool) -> list[Message]:
    out: list[Message] = []
    prev = 0
    for cut in [*sorted(cuts), len(STREAM)]:
        if cut <= prev:
            continue
        piece = memoryview(STREAM)[prev:cut]
        while piece:
            if direct and framer.claimed is not None:
                bufs = framer.recv_buffers(len(piece))
                n = 0
                for b in bufs:
                    k = min(len(b), len(piece) - n)
                    b[:k] = piece[n : n + k]
                    n += k
                framer.commit(n)
            else:
                framer.feed(piece)
                n = len(piece)
            piece = piece[n:]
        out.extend(m for m, _ in framer.messages())
        prev = cut
    return out


@settings(max_examples=80, deadline=None)
@given(cuts=st.lists(st.integers(1, len(STREAM) - 1), min_size=1, max_size=6),
       direct=st.booleans())
def test_a_claimed_message_is_routed_and_the_others_unchanged(cuts: list[int],
                                                              direct: bool) -> None:
    claims: list[Sink] = []
    out = _run(_framer(claims), cuts, direct)
    at = len(encode(MESSAGES[0]))
    in_pieces = any(at < c < at + len(encode(BIG)) for c in cuts)
    assert bool(claims) == in_pieces
    if claims:
        (sink,) = claims
        assert sink.head == encode(BIG)[:HEAD]
        assert bytes(sink.got) == encode(BIG)[HEAD:]
        assert out == [MESSAGES[0], DeviceReset(msg_id=0xC1A1), *MESSAGES[2:]]
    else:  # the message came whole in one feed: framed as any other
        assert out == MESSAGES


def test_a_declined_claim_frames_the_message() -> None:
    claims: list[Sink] = []
    for cut in (30, len(encode(MESSAGES[0])) + HEAD, len(encode(MESSAGES[0])) + 5000):
        assert _run(_framer(claims, accept=False), [cut], False) == MESSAGES
        assert _run(_framer(claims, accept=False), [cut], True) == MESSAGES


def test_a_claim_holds_no_bytes_and_reports_what_is_left() -> None:
    claims: list[Sink] = []
    framer = _framer(claims)
    first = len(encode(MESSAGES[0]))
    framer.feed(STREAM[: first + HEAD + 10])
    assert claims and framer.claimed is claims[0] and not framer.at_boundary
    assert framer.needed == len(encode(BIG)) - HEAD - 10
    assert framer.pending == 1  # the message before it, not the claimed one
    framer.feed(STREAM[first + HEAD + 10 : first + len(encode(BIG))])
    assert framer.claimed is None and framer.at_boundary and framer.pending == 2
