"""Group ``roundtrip``: migrate the device from one instance of the server to a second one, as
a VMM does, and compare the destination's device with the source's.

Two instances: the checker's ``peer`` (``--peer-socket``), else the target's ``twin()``
(with ``--spawn``, a second process of the same command started while the source saves; an
in-process target may offer one). Otherwise (``--socket`` alone, ``--no-prespawn`` servers,
which cannot run twice at once) the group is skipped with an advisory: one server cannot be
its own destination.

Source (PROTOCOL.md sections 3-5): with a profile, the profile maps its DMA regions,
DMA_LOGGING_START (at the server's migration page size), the profile's stimulus (the device
writes guest memory) and ``settle`` again (lvu-sample: a deadline in the future); then, when
the device has PRE_COPY, RUNNING -> PRE_COPY and :data:`ROUNDS` pre-copy rounds: each reads the
stream to its end (:func:`~vfio_user_mig.check.groups.common.read_stream_checked`), the first
is followed by a DMA_LOGGING_REPORT of each fd-backed profile map in which every page the
stimulus wrote must be dirty, and each by the profile's ``disturb`` (device state changed
after it was sent, which the rest of the stream must carry; without PRE_COPY, one
``disturb`` before the switchover). Then STOP_COPY, its stream read
to the end (size 0), STOP, DMA_LOGGING_STOP, and the profile's ``read_back`` of the source.
Without a profile: RUNNING -> STOP_COPY, the stream, STOP (the protocol flow only).

Destination: RESUMING (from RUNNING, along the model's path), MIG_DATA_WRITE of the stream
(with a profile, the part its ``resume_stream`` names; without, the STOP_COPY data), which
must all be accepted; RESUMING -> STOP must succeed (a complete stream from the same server:
``vfio.h``, a device that cannot load it fails the arc); with a profile the destination's
``read_back`` must equal the source's, every difference a ``data`` finding naming the region
and offset; finally STOP -> RUNNING must succeed.

The streams are bounded as every stream the checker reads (:mod:`~vfio_user_mig.check.session`).
"""

from __future__ import annotations

from collections.abc import Callable

from vfio_user_mig import wire
from vfio_user_mig.check.facts import ReadBack
from vfio_user_mig.check.findings import Kind
from vfio_user_mig.check.groups.common import (
    chunk_size,
    leave_clean,
    log_report,
    log_start,
    log_stop,
    mig_write,
    read_stream_checked,
)
from vfio_user_mig.check.session import Checker, Profile, Sequence
from vfio_user_mig.check.steps import Expect
from vfio_user_mig.check.target import Target
from vfio_user_mig.model import MigrationCaps, State

GROUP = "roundtrip"
#: Pre-copy rounds (each followed by device writes): enough to carry changes made after the
#: first round's data went out, few enough to stay fast.
ROUNDS = 2
_S3 = "PROTOCOL.md section 3 (DMA logging)"
_S4 = "PROTOCOL.md section 4"
_RESTORE = ("vfio.h VFIO_DEVICE_STATE_RESUMING: the destination loads the device state the "
            "source saved (PROTOCOL.md section 4)")


def _destination(checker: Checker) -> tuple[Target | None, bool]:
    """The destination instance and whether this group started it (and must close it): the
    checker's ``peer``, else the target's ``twin()`` when it has one (module docstring)."""
    if checker.peer is not None:
        return checker.peer, False
    twin: Callable[[], Target | None] | None = getattr(checker.target, "twin", None)
    peer = twin() if twin is not None else None
    return peer, peer is not None


def run(checker: Checker) -> None:
    """The ``roundtrip`` group (module docstring)."""
    peer, own = _destination(checker)
    if peer is None:
        checker.report.add_advisory(
            "round trip skipped: one server instance",
            "the round trip migrates between two instances of the server running at once; "
            "give --peer-socket PATH (a second instance) or --spawn (without --no-prespawn)",
            GROUP)
        return
    try:
        _round_trip(checker, peer)
    finally:
        if own:
            peer.close()


def _round_trip(checker: Checker, peer: Target) -> None:
    profile = checker.profile
    with checker.sequence(GROUP, "source: save with pre-copy rounds") as src:
        if src.dead or src.caps is None or src.state != State.RUNNING:
            return
        saved = _save(src, profile)
        if saved is None:
            return
        precopy, stopcopy = saved
        expected = profile.read_back(src) if profile is not None else None
        stream = profile.resume_stream(precopy, stopcopy) if profile is not None else stopcopy
        del precopy, stopcopy
        with checker.sequence(GROUP, "destination: restore and compare", target=peer) as dst:
            if dst.dead or dst.caps is None:
                return
            if not dst.verify(dst.caps == src.caps, Kind.STATE,
                              "the two instances report the same migration capabilities",
                              str(src.caps), str(dst.caps), "PROTOCOL.md section 3 (MIGRATION)"):
                return
            _restore(dst, stream, profile, expected)


def _save(src: Sequence, profile: Profile | None) -> tuple[bytes, bytes] | None:
    """The source's part (module docstring): (PRE_COPY data, STOP_COPY data), or ``None``
    when it could not go on (the findings recorded)."""
    assert src.caps is not None
    logging = False
    written: set[int] = set()
    page = src.checker.facts.migration_pgsize or 4096
    if profile is not None:
        profile.prepare(src)
        reply = src.exchange(log_start(src, page), expect=Expect("ok", rule=_S3))
        logging = reply is not None and not reply.is_error
        written = profile.stimulate(src)
        profile.settle(src)
    chunk = chunk_size(src.checker)
    precopy = bytearray()
    if profile is not None and src.caps & MigrationCaps.PRE_COPY:
        if not src.set_state(State.PRE_COPY, title="SET RUNNING -> PRE_COPY (round trip)"):
            return None
        for n in range(ROUNDS):
            data = read_stream_checked(src, chunk, f"round trip: pre-copy round {n + 1}")
            if data is None:
                return None
            precopy += data
            if logging and n == 0:
                _dirty(src, profile, written, page)
            profile.disturb(src, n)
    elif profile is not None:
        profile.disturb(src, 0)  # device writes before a stop-copy-only switchover
    if not src.set_state(State.STOP_COPY, title=f"SET {_name(src)} -> STOP_COPY (round trip)"):
        return None
    stopcopy = read_stream_checked(src, chunk, "round trip: STOP_COPY stream")
    if stopcopy is None:
        return None
    if not src.set_state(State.STOP, title="SET STOP_COPY -> STOP (round trip)"):
        return None
    if logging:
        src.check("DMA_LOGGING_STOP after the migration", log_stop(src),
                  Expect("ok", rule=_S3))
    return bytes(precopy), stopcopy


def _name(seq: Sequence) -> str:
    return seq.state.name if seq.state is not None else "?"


def _dirty(src: Sequence, profile: Profile, written: set[int], page: int) -> None:
    """Every page the stimulus wrote while logging is dirty in the first REPORT."""
    for iova, size, with_fd in profile.dma_maps:
        if not with_fd:
            continue  # written by DMA messages: the client's to track
        need = 8 + 24 + wire.bitmap_len(size, page)
        reply = src.check(f"round trip: DMA_LOGGING_REPORT of {iova:#x} in PRE_COPY",
                          log_report(src, iova, size, page),
                          Expect("ok", payload_len=need, rule=_S3))
        if reply is None or reply.is_error or len(reply.payload) < need:
            continue
        bitmap = reply.payload[32:]
        want = sorted({(w - iova) // page for w in written if iova <= w < iova + size})
        missing = [n for n in want if not bitmap[n // 8] >> (n % 8) & 1]
        src.verify(not missing, Kind.DATA,
                   "round trip: a page the device wrote while logging is reported dirty",
                   f"pages {want[:8]} of {iova:#x} dirty", f"pages {missing[:8]} not dirty",
                   f"{_S3}: page n is bit n % 64 of u64 word n // 64")


def _restore(dst: Sequence, stream: bytes, profile: Profile | None,
             expected: list[ReadBack] | None) -> None:
    if not dst.set_state(State.RESUMING, title=f"SET {_name(dst)} -> RESUMING (round trip)"):
        return
    limit = max(min(dst.checker.facts.max_data_xfer_size, dst.checker.client_max_xfer), 1)
    refused = None
    for at in range(0, len(stream), limit):
        reply = dst.exchange(mig_write(dst, stream[at:at + limit]), expect=Expect("ok", rule=_S4))
        if reply is None or reply.is_error:
            refused = f"the write at byte {at}: " + ("closed" if reply is None
                                                     else f"errno {reply.errno}")
            break
    if not dst.verify(refused is None, Kind.ERRNO,
                      "round trip: the destination accepts the source's stream",
                      f"every MIG_DATA_WRITE of the {len(stream)}-byte stream succeeds",
                      refused or "", f"{_S4}; {_RESTORE}", ["MIG_DATA_WRITE"]):
        leave_clean(dst)
        return
    dst.set_state(State.STOP, title="SET RESUMING -> STOP with the source's stream")
    if dst.state != State.STOP:
        leave_clean(dst)
        return
    if profile is not None and expected is not None:
        _compare(dst, expected, profile.read_back(dst))
    dst.set_state(State.RUNNING, title="SET STOP -> RUNNING after the round trip")


def _compare(dst: Sequence, expected: list[ReadBack], got: list[ReadBack]) -> None:
    """One check per read-back entry: equal bytes, else a ``data`` finding at the first
    difference (region and offset), with how many bytes differ."""
    have = {rb.name: rb for rb in got}
    for want in expected:
        if not dst.verify(bool(want.data), Kind.REPLY,
                          f"round trip: the source's {want.name} can be read back",
                          "its bytes", "nothing (a refused DEVICE_GET_REGION_INFO or "
                          "REGION_READ)", "PROTOCOL.md section 2", ["REGION_READ"]):
            continue
        data = have[want.name].data if want.name in have else b""
        first, count = _difference(want.data, data)
        at = want.offset + first
        dst.verify(first < 0, Kind.DATA,
                   f"after the round trip the destination's {want.name} differs "
                   f"(region {want.region} offset {at:#x})",
                   f"the source's {len(want.data)} bytes",
                   f"{count} byte(s) differ from region {want.region} offset {at:#x} (source "
                   f"{want.data[first:first + 8].hex()}, destination "
                   f"{data[first:first + 8].hex()}); {len(data)} bytes read",
                   _RESTORE, ["REGION_READ"])


def _difference(a: bytes, b: bytes) -> tuple[int, int]:
    """(first differing offset or -1, number of differing bytes, a length difference
    counted as differing bytes)."""
    if a == b:
        return -1, 0
    first = -1
    count = abs(len(a) - len(b))
    step = 4096
    for at in range(0, min(len(a), len(b)), step):
        x, y = a[at:at + step], b[at:at + step]
        if x != y:
            diffs = [i for i in range(len(x)) if x[i] != y[i]]
            if first < 0:
                first = at + diffs[0]
            count += len(diffs)
    return (first if first >= 0 else min(len(a), len(b))), count


__all__ = ["GROUP", "ROUNDS", "run"]
