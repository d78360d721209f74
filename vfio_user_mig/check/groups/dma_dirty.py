"""Dirty logging checks of the ``dma`` group: the START reply (page size selected), REPORT
form, and, with a device profile, completeness (PROTOCOL.md section 3; vfio-user.rst
"VFIO_DEVICE_FEATURE_DMA_LOGGING_START/STOP/REPORT"; the kernel's ``vfio.h``).

Rules held (each finding cites its own):

* START: ``page_size`` is a hint; the reply is the request except for ``page_size``, which is
  the size the device selected ("On output the device will return the page size it
  selected"), a power of two; reports then use the selected size.
* completeness (with a profile; the profile's device writes the first and last byte of its
  ranges, across a page boundary and past report page 256 where it can):
  START with ``num_ranges`` 0 logs every write, a map added after START included; at every
  report page size ratio to the selected logging page (equal, 4x larger, half) every page
  written is reported and a second REPORT is clean (read-and-clear); pages written between
  STOP and a new START (with the two ranges named) are not reported (STOP stops logging);
  pages written again in PRE_COPY (when the device has it) are reported again; DMA_UNMAP with
  GET_DIRTY_BITMAP returns the pages written in the region it unmaps (docs/wire-compat.md
  row 7; libvfio-user's ``handle_dma_unmap``).
"""

from __future__ import annotations

import struct

from vfio_user_mig import wire
from vfio_user_mig.check.conn import Reply
from vfio_user_mig.check.findings import Kind
from vfio_user_mig.check.groups.common import enc, log_report, log_start, log_stop
from vfio_user_mig.check.session import Sequence
from vfio_user_mig.check.steps import Expect, refused
from vfio_user_mig.model import MigrationCaps, State

S2 = "PROTOCOL.md section 2 (DMA_MAP/DMA_UNMAP)"
S3 = "PROTOCOL.md section 3 (DMA logging)"
START_RULE = (f"{S3}; vfio-user.rst DMA_LOGGING_START: the reply is the request, except the "
              "page size the device selected (a power of two)")
UNMAP_RULE = (f"{S2}; docs/wire-compat.md row 7 (libvfio-user's handle_dma_unmap): GET_DIRTY_"
              "BITMAP returns the region's dirty pages as it unmaps it")
#: The START hint of the completeness checks: twice the kernel's smallest report page (4 KiB),
#: so that a report page half the logging page is one every implementation takes.
HINT = 2 * 4096
_MIN_REPORT = 4096


def is_pow2(n: int) -> bool:
    return n > 0 and not n & (n - 1)


def start(seq: Sequence, hint: int, ranges: tuple[tuple[int, int], ...], title: str) -> int | None:
    """DMA_LOGGING_START: check the reply (module docstring) and return the page size selected
    (the hint when the reply cannot say), ``None`` when refused."""
    req = log_start(seq, hint, ranges)
    reply = seq.check(title, req, Expect("ok", payload_len=len(req) - 16, rule=START_RULE))
    if reply is None or reply.is_error:
        return None
    return start_reply_page_size(seq, req, reply, title)


def start_reply_page_size(seq: Sequence, req: bytes, reply: Reply, title: str) -> int:
    """The page size a successful START reply selected, verified as :func:`start` says."""
    got = bytes(reply.payload)
    if len(got) != len(req) - 16 or len(got) < 16:
        return int(struct.unpack_from("<Q", req, 24)[0])  # the length was already a finding
    selected = struct.unpack_from("<Q", got, 8)[0]
    echoed = got[:8] == req[16:24] and got[16:] == req[32:]
    seq.verify(echoed and is_pow2(selected), Kind.REPLY,
               f"{title}: reply echoes the request with a power-of-two page size",
               f"{req[16:24].hex()} <selected page size> {req[32:].hex()}",
               f"{got[:8].hex()} page_size {selected:#x} {got[16:].hex()}", START_RULE)
    return int(selected) if is_pow2(selected) else int(struct.unpack_from("<Q", req, 24)[0])


def report(seq: Sequence, iova: int, length: int, page_size: int, title: str) -> bytes | None:
    """REPORT and check its form; the bitmap, or ``None`` when refused."""
    bitmap_len = wire.bitmap_len(length, page_size)
    reply = seq.check(title, log_report(seq, iova, length, page_size),
                      Expect("ok", payload_len=8 + 24 + bitmap_len,
                             rule=f"{S3}: bitmap of ceil(ceil(length/page_size)/64)*8 = "
                             f"{bitmap_len} bytes after the 24-byte range"))
    if reply is None or reply.is_error or len(reply.payload) < 32:
        return None
    argsz, = struct.unpack_from("<I", reply.payload)
    body = struct.unpack_from("<QQQ", reply.payload, 8)
    seq.verify(argsz == len(reply.payload) and body == (iova, length, page_size), Kind.REPLY,
               f"{title}: argsz and range echoed",
               f"argsz {len(reply.payload)}, range {(iova, length, page_size)}",
               f"argsz {argsz}, range {body}", f"{S3}; section 3: GET argsz = reply size")
    return bytes(reply.payload[32:])


def unmap_bitmap_request(seq: Sequence, iova: int, size: int, pgsize: int) -> bytes:
    nbytes = wire.bitmap_len(size, pgsize)
    return enc(seq, wire.DmaUnmap(iova, size, int(wire.DmaUnmapFlag.GET_DIRTY_BITMAP),
                                  argsz=24 + 16 + nbytes,
                                  bitmap=wire.UnmapBitmap(pgsize, nbytes)))


def unmap_bitmap(seq: Sequence, iova: int, size: int, pgsize: int, title: str) -> bytes | None:
    """DMA_UNMAP with GET_DIRTY_BITMAP of a mapped region while logging: the reply is the
    request's 40 bytes and the bitmap; returns the bitmap (``None`` when refused)."""
    req = unmap_bitmap_request(seq, iova, size, pgsize)
    nbytes = wire.bitmap_len(size, pgsize)
    reply = seq.check(title, req, Expect("ok", payload_len=40 + nbytes, rule=UNMAP_RULE))
    if reply is None or reply.is_error or len(reply.payload) != 40 + nbytes:
        return None
    seq.verify(bytes(reply.payload[:40]) == req[16:56], Kind.REPLY,
               f"{title}: the 24-byte request and bitmap header echoed",
               req[16:56].hex(), bytes(reply.payload[:40]).hex(), UNMAP_RULE)
    return bytes(reply.payload[40:])


def _pages(written: set[int], iova: int, size: int, ps: int) -> list[int]:
    return sorted({(w - iova) // ps for w in written if iova <= w < iova + size})


def _set(bitmap: bytes, page: int) -> bool:
    return page // 8 < len(bitmap) and bool(bitmap[page // 8] >> (page % 8) & 1)


def _verify_dirty(seq: Sequence, bitmap: bytes, want: list[int], title: str, rule: str) -> None:
    missing = [n for n in want if not _set(bitmap, n)]
    seq.verify(not missing, Kind.DATA, title, f"pages {want[:10]} dirty",
               f"pages {missing[:10]} of {len(want)} not dirty", rule)


def _verify_clean(seq: Sequence, bitmap: bytes, title: str, rule: str) -> None:
    dirty = [n for n in range(len(bitmap) * 8) if _set(bitmap, n)]
    seq.verify(not dirty, Kind.DATA, title, "no page dirty", f"pages {dirty[:10]} dirty", rule)


def _round(seq: Sequence, maps: list[tuple[int, int]], written: set[int], ps: int,
           label: str) -> None:
    """REPORT each map: every page written is dirty; a second REPORT is clean."""
    for iova, size in maps:
        where = f"map {iova:#x}+{size:#x}, report page {ps:#x} ({label})"
        bitmap = report(seq, iova, size, ps, f"REPORT of {where}")
        if bitmap is None:
            continue
        _verify_dirty(seq, bitmap, _pages(written, iova, size, ps),
                      f"every page written is reported dirty: {where}",
                      f"{S3}: page n is bit n % 64 of u64 word n // 64; every DMA write in "
                      "the logged range is logged")
        again = report(seq, iova, size, ps, f"second REPORT of {where}")
        if again is not None:
            _verify_clean(seq, again, f"a REPORT clears what it returned: {where}",
                          f"{S3}: DMA_LOGGING_REPORT is read-and-clear (kernel "
                          "log_read_and_clear; libvfio-user)")


def _setup(seq: Sequence) -> tuple[int, list[tuple[int, int]]] | None:
    """Map the profile's ranges, the last one after a START with num_ranges 0, and prepare
    the device; the selected logging page size and the fd-backed maps (``None``: refused)."""
    profile = seq.checker.profile
    assert profile is not None
    maps = profile.dma_maps
    for iova, size, with_fd in maps[:-1]:
        seq.check(f"profile DMA_MAP {iova:#x}", enc(seq, wire.DmaMap(iova, size)),
                  Expect("ok", rule=S2), fds=(f"memfd:{size}",) if with_fd else ())
    lps = start(seq, HINT, (), "DMA_LOGGING_START with num_ranges 0 (log every write)")
    if lps is None:
        return None
    iova, size, with_fd = maps[-1]
    seq.check(f"DMA_MAP {iova:#x} after DMA_LOGGING_START", enc(seq, wire.DmaMap(iova, size)),
              Expect("ok", rule=S2), fds=(f"memfd:{size}",) if with_fd else ())
    profile.prepare(seq)
    return lps, [(iova, size) for iova, size, with_fd in maps if with_fd]


def run_smaller(seq: Sequence) -> None:
    """Completeness at a report page half the logging page (a sequence of its own: a server
    that never answers such a report, as libvfio-user's ``dirty_page_get_extend``, must not
    hide the other checks)."""
    setup = _setup(seq)
    if setup is None:
        return
    lps, fd_maps = setup
    if lps // 2 < _MIN_REPORT:
        return
    profile = seq.checker.profile
    assert profile is not None
    _round(seq, fd_maps, profile.stimulate(seq), lps // 2, "half the logging page")
    _end(seq)


def _end(seq: Sequence) -> None:
    """Logging off and the device settled again (a server that keeps its device between
    connections then starts the next sequence as it started this one)."""
    seq.check("DMA_LOGGING_STOP", log_stop(seq), Expect("ok", rule=S3))
    profile = seq.checker.profile
    assert profile is not None
    profile.settle(seq)


def run_profile(seq: Sequence) -> None:
    """Dirty logging completeness with the checker's profile (module docstring); the report
    page half the logging page is :func:`run_smaller`'s."""
    profile = seq.checker.profile
    assert profile is not None
    setup = _setup(seq)
    if setup is None:
        return
    lps, fd_maps = setup
    for label, ps in (("equal to the logging page", lps), ("4x the logging page", 4 * lps)):
        written = profile.stimulate(seq)
        if ps == lps:
            label += "; num_ranges 0, a map added after START included"
        _round(seq, fd_maps, written, ps, label)
    # LOGGING_STOP stops logging: what is written until the next START is not reported.
    seq.check("DMA_LOGGING_STOP", log_stop(seq), Expect("ok", rule=S3))
    profile.stimulate(seq)
    lps = start(seq, HINT, tuple(fd_maps), "DMA_LOGGING_START with the profile's ranges") or lps
    for iova, size in fd_maps:
        where = f"map {iova:#x}+{size:#x}"
        bitmap = report(seq, iova, size, lps, f"REPORT of {where} after STOP and a new START")
        if bitmap is not None:
            _verify_clean(seq, bitmap, f"writes while logging was stopped are not reported: "
                          f"{where}", f"{S3}: STOP ends logging; START logs the writes after "
                          "it (kernel vfio.h: log_start, log_stop)")
    # Written again (in PRE_COPY when the device has it): reported again; the last map is
    # unmapped with GET_DIRTY_BITMAP, which must return its pages.
    caps = seq.caps
    pre = caps is not None and bool(caps & MigrationCaps.PRE_COPY) and seq.state is State.RUNNING

    def to_precopy() -> None:
        seq.set_state(State.PRE_COPY)

    written = profile.stimulate(seq, to_precopy if pre else None)
    label = "written again in PRE_COPY" if pre else "written again"
    _round(seq, fd_maps[:-1], written, lps, label)
    if fd_maps:
        iova, size = fd_maps[-1]
        title = f"DMA_UNMAP {iova:#x}+{size:#x} with GET_DIRTY_BITMAP ({label})"
        bitmap = unmap_bitmap(seq, iova, size, lps, title)
        if bitmap is not None:
            _verify_dirty(seq, bitmap, _pages(written, iova, size, lps),
                          f"{title}: every page written is in the bitmap", UNMAP_RULE)
            seq.check(f"DMA_UNMAP {iova:#x} after DMA_UNMAP with GET_DIRTY_BITMAP refused",
                      enc(seq, wire.DmaUnmap(iova, size)),
                      refused(rule=f"{UNMAP_RULE}: the region is unmapped"))
    _end(seq)


__all__ = ["HINT", "S2", "S3", "is_pow2", "report", "run_profile", "run_smaller", "start",
           "start_reply_page_size", "unmap_bitmap", "unmap_bitmap_request"]
