"""Group ``dma``: DMA_MAP/DMA_UNMAP validity and DMA dirty page logging.

Maps (PROTOCOL.md section 2; vfio-user.rst "VFIO_USER_DMA_MAP"/"UNMAP"): fd-backed and
fd-less maps succeed; overlapping, zero-sized maps and unknown flag bits are refused (EINVAL;
the kernel answers EEXIST for an overlap); an unmap must name exactly a mapped region (ENOENT
as libvfio-user, EINVAL accepted as the kernel); UNMAP ALL needs addr = size = 0; a successful
unmap echoes its 24 bytes.

Logging (PROTOCOL.md section 3, DMA_LOGGING_*): REPORT is refused before START and after STOP;
a second START while logging is accepted (libvfio-user, same page size) or refused (EBUSY or
EINVAL) but logging stays on; REPORT of an unmapped range is refused; REPORT replies carry a
bitmap of ceil(ceil(length / page_size) / 64) * 8 bytes and argsz = the reply size, at page
sizes equal to, larger and smaller than the logging page size, over a 64 MiB map (16384 pages
of 4 KiB); a REPORT whose argsz cannot hold the bitmap is refused. START's page_size is a
hint: the reply carries the selected size (a power of two; 512 and 0x3000 are hints, 0 is
EINVAL) and a range not aligned to it is EINVAL (the kernel); DMA_UNMAP with GET_DIRTY_BITMAP
returns the bitmap while logging, EINVAL while not (docs/wire-compat.md row 7). Maps with
neither READ nor WRITE (the kernel) or with both of libvfio-user's MMAP and FILE_IO are EINVAL.
With a profile: dirty logging completeness (:mod:`.dma_dirty`).
"""

from __future__ import annotations

import errno as _errno

from vfio_user_mig import wire
from vfio_user_mig.check.findings import Kind
from vfio_user_mig.check.groups.common import (
    EINVAL,
    IOVA_BASE,
    enc,
    log_report,
    log_start,
    log_stop,
)
from vfio_user_mig.check.groups.dma_dirty import (
    START_RULE,
    UNMAP_RULE,
    report,
    run_profile,
    run_smaller,
    start,
    start_reply_page_size,
    unmap_bitmap,
    unmap_bitmap_request,
)
from vfio_user_mig.check.session import Checker, Sequence
from vfio_user_mig.check.steps import Expect, refused

_S2 = "PROTOCOL.md section 2 (DMA_MAP/DMA_UNMAP)"
_S3 = "PROTOCOL.md section 3 (DMA logging)"
_PAGE = 4096
#: The logging page size: twice the smallest page the kernel reports (4 KiB), so that a
#: report page size smaller than the logging one is one every implementation takes.
_LOG_PAGE = 2 * _PAGE
_BIG = 64 << 20
_MAP_EINVAL = (_errno.EINVAL, _errno.EEXIST)
_UNMAP_MISSING = (_errno.ENOENT, _errno.EINVAL)


def _maps(seq: Sequence) -> None:
    a = IOVA_BASE
    seq.check("DMA_MAP with an fd", enc(seq, wire.DmaMap(a, 0x10000)),
              Expect("ok", payload_len=0, rule=_S2), fds=("memfd:65536",))
    seq.check("DMA_MAP overlapping the end of a map refused",
              enc(seq, wire.DmaMap(a + 0x8000, 0x10000)),
              refused(*_MAP_EINVAL, rule=f"{_S2}: maps do not overlap (kernel EEXIST)"),
              fds=("memfd:65536",))
    seq.check("DMA_MAP containing a map refused", enc(seq, wire.DmaMap(a - 0x1000, 0x20000)),
              refused(*_MAP_EINVAL, rule=f"{_S2}: maps do not overlap (kernel EEXIST)"))
    seq.check("DMA_MAP of size 0 refused", enc(seq, wire.DmaMap(a + 0x100000, 0)),
              refused(EINVAL, rule=f"{_S2}: an empty map is invalid (kernel EINVAL)"))
    seq.check("DMA_MAP with unknown flag bits refused",
              enc(seq, wire.DmaMap(a + 0x200000, 0x1000, flags=0x3 | 0x10)),
              refused(EINVAL, rule=f"{_S2}: flags bits 0-3 only (docs/wire-compat.md 6)"))
    seq.check("DMA_MAP with neither READ nor WRITE refused",
              enc(seq, wire.DmaMap(a + 0x700000, 0x1000, flags=0)),
              refused(EINVAL, rule=f"{_S2}: kernel vfio_dma_do_map refuses a map with no "
                      "access (EINVAL)"))
    seq.check("DMA_MAP with both MMAP and FILE_IO refused",
              enc(seq, wire.DmaMap(a + 0x800000, 0x1000, flags=0x3 | 0x4 | 0x8)),
              refused(EINVAL, rule=f"{_S2}: libvfio-user's access modes are exclusive "
                      "(handle_dma_map EINVAL; docs/wire-compat.md 6)"), fds=("memfd:4096",))
    seq.check("DMA_MAP with the MMAP flag and no fd refused",
              enc(seq, wire.DmaMap(a + 0x300000, 0x1000, flags=0x3 | 0x4)),
              refused(EINVAL, rule=f"{_S2}: libvfio-user's MMAP flag needs an fd"))
    seq.check("DMA_MAP without an fd", enc(seq, wire.DmaMap(a + 0x400000, 0x1000)),
              Expect("ok", payload_len=0, rule=f"{_S2}: fd-less maps are accessed by message"))
    reply = seq.check("DMA_MAP at an unaligned address (accepted or EINVAL)",
                      enc(seq, wire.DmaMap(a + 0x500800, 0x1000)),
                      Expect("any", rule=f"{_S2}: the spec sets no alignment; the kernel "
                             "refuses (EINVAL), libvfio-user accepts fd-less maps"))
    if reply is not None and reply.is_error:
        seq.verify(reply.errno == EINVAL, Kind.ERRNO, "unaligned DMA_MAP refused with EINVAL",
                   "EINVAL", str(reply.errno), _S2)
    seq.check("DMA_UNMAP of an address never mapped refused",
              enc(seq, wire.DmaUnmap(a + 0x600000, 0x1000)),
              refused(*_UNMAP_MISSING, rule=f"{_S2}: unmap names a mapped region (libvfio-user "
                      "ENOENT)"))
    seq.check("DMA_UNMAP of part of a map refused", enc(seq, wire.DmaUnmap(a, 0x8000)),
              refused(*_UNMAP_MISSING, rule=f"{_S2}: unmap names a whole mapped region"))
    seq.check("DMA_UNMAP with unknown flags refused", enc(seq, wire.DmaUnmap(a, 0x10000, 4)),
              refused(EINVAL, rule=f"{_S2}: flags 0, 1, 2 only (docs/wire-compat.md 7)"))
    seq.check("DMA_UNMAP ALL with a range refused",
              enc(seq, wire.DmaUnmap(a, 0x10000, int(wire.DmaUnmapFlag.ALL))),
              refused(EINVAL, rule=f"{_S2}: UNMAP ALL needs addr = size = 0"))
    req = enc(seq, wire.DmaUnmap(a, 0x10000))
    seq.check("DMA_UNMAP of a whole map echoes the request", req,
              Expect("ok", payload=req[16:40], rule=f"{_S2}: the reply echoes the 24 bytes"))
    seq.check("DMA_UNMAP of a map already unmapped refused", enc(seq, wire.DmaUnmap(a, 0x10000)),
              refused(*_UNMAP_MISSING, rule=f"{_S2}: nothing is mapped there any more"))
    req = enc(seq, wire.DmaUnmap(0, 0, int(wire.DmaUnmapFlag.ALL)))
    seq.check("DMA_UNMAP ALL", req, Expect("ok", payload_len=24, rule=_S2))
    seq.check("DMA_UNMAP after UNMAP ALL refused", enc(seq, wire.DmaUnmap(a + 0x400000, 0x1000)),
              refused(*_UNMAP_MISSING, rule=f"{_S2}: UNMAP ALL removed every map"))


def _logging(seq: Sequence) -> None:
    a = IOVA_BASE
    seq.check("DMA_MAP 64 MiB with an fd", enc(seq, wire.DmaMap(a, _BIG)),
              Expect("ok", rule=_S2), fds=(f"memfd:{_BIG}",))
    seq.check("DMA_LOGGING_REPORT before START refused", log_report(seq, a, _BIG, _PAGE),
              refused(EINVAL, rule=f"{_S3}: nothing is logged before START (libvfio-user "
                      "EINVAL)"))
    reply = seq.check("DMA_LOGGING_STOP when not logging", log_stop(seq),
                      Expect("any", rule=f"{_S3}: accepted (libvfio-user, kernel) or EINVAL"))
    if reply is not None and reply.is_error:
        seq.verify(reply.errno == EINVAL, Kind.ERRNO, "STOP when not logging: EINVAL if refused",
                   "success or EINVAL", str(reply.errno), _S3)
    _hints(seq)
    reply = seq.check("DMA_LOGGING_START with a range not aligned to page_size refused",
                      log_start(seq, _PAGE, ((a + 0x800, 0x1000),)),
                      refused(EINVAL, rule=f"{_S3}: kernel vfio_ioctl_device_feature_logging_"
                              "start (IS_ALIGNED iova and length, else EINVAL)"))
    if reply is not None and not reply.is_error:  # accepted: stop it for what follows
        seq.check("DMA_LOGGING_STOP", log_stop(seq), Expect("ok", rule=_S3))
    lps = start(seq, _LOG_PAGE, (), "DMA_LOGGING_START") or _LOG_PAGE
    reply = seq.check("second DMA_LOGGING_START while logging", log_start(seq, _LOG_PAGE),
                      Expect("any", rule=f"{_S3}: accepted or refused; logging stays on"))
    if reply is not None and reply.is_error:
        seq.verify(reply.errno in (_errno.EBUSY, EINVAL), Kind.ERRNO,
                   "second START refused with EBUSY or EINVAL", "EBUSY or EINVAL",
                   str(reply.errno), _S3)
    for page_size in (lps, 2 * lps, 16 * lps):
        report(seq, a, _BIG, page_size,
               f"DMA_LOGGING_REPORT of 64 MiB at page size {page_size}")
    report(seq, a + _BIG // 4, _BIG // 2, lps, "DMA_LOGGING_REPORT of part of a map")
    seq.check("DMA_LOGGING_REPORT whose argsz cannot hold the bitmap refused",
              log_report(seq, a, _BIG, _PAGE, argsz=32 + 8),
              refused(EINVAL, rule=f"{_S3}; section 3: argsz is the largest reply"))
    seq.check("DMA_LOGGING_REPORT of an unmapped range refused",
              log_report(seq, a + 2 * _BIG, 0x10000, _PAGE),
              Expect("error", rule=f"{_S3}: the range must be mapped"))
    seq.check("DMA_LOGGING_REPORT with a page size not a power of two refused",
              log_report(seq, a, _BIG, 3000),
              refused(EINVAL, rule=f"{_S3}: page_size is a power of two"))
    _unmap_with_bitmap(seq, lps)
    req = log_stop(seq)
    seq.check("DMA_LOGGING_STOP echoes the request", req,
              Expect("ok", payload=req[16:], rule=f"{_S3}; section 3: SET replies echo"))
    seq.check("DMA_LOGGING_REPORT after STOP refused", log_report(seq, a, _BIG, _PAGE),
              refused(EINVAL, rule=f"{_S3}: nothing is logged after STOP"))
    seq.check("DMA_UNMAP with GET_DIRTY_BITMAP while not logging refused",
              unmap_bitmap_request(seq, a, _BIG, _PAGE),
              refused(EINVAL, rule=f"{UNMAP_RULE}; libvfio-user: EINVAL when logging is off"))
    _smaller_reports(seq, a)


def _smaller_reports(seq: Sequence, a: int) -> None:
    """Reports at page sizes below the logging page, last (libvfio-user never answers one of
    more than 192 pages: D1 of docs/conformance/libvfio-user.md)."""
    lps = start(seq, _LOG_PAGE, (), "DMA_LOGGING_START again")
    if lps is None:
        return
    if lps > _PAGE:
        report(seq, a, _BIG, _PAGE, f"DMA_LOGGING_REPORT of 64 MiB at page size {_PAGE}")
    reply = seq.check("DMA_LOGGING_REPORT at page size 512 (below the kernel's 4 KiB)",
                      log_report(seq, a, _BIG, 512),
                      Expect("any", rule=f"{_S3}: the spec is silent; libvfio-user extends the "
                             "bitmap, the kernel refuses page sizes below 4 KiB (EINVAL)"))
    if reply is not None and reply.is_error:
        seq.verify(reply.errno == EINVAL, Kind.ERRNO, "REPORT below 4 KiB pages: EINVAL if "
                   "refused", "success or EINVAL", str(reply.errno), _S3)
    seq.check("DMA_LOGGING_STOP", log_stop(seq), Expect("ok", rule=_S3))


def _hints(seq: Sequence) -> None:
    """START page_size is a hint (dma_dirty docstring): 512 and 0x3000 select a power of two
    (0x3000 may be refused with EINVAL: the kernel's alignment check presumes a power of two);
    0 hints nothing (EINVAL, libvfio-user)."""
    seq.check("DMA_LOGGING_START with page_size 0 refused", log_start(seq, 0),
              refused(EINVAL, rule=f"{_S3}: 0 hints no page size (libvfio-user EINVAL)"))
    if start(seq, 512, (), "DMA_LOGGING_START with a page size hint of 512") is not None:
        seq.check("DMA_LOGGING_STOP", log_stop(seq), Expect("ok", rule=_S3))
    req = log_start(seq, 0x3000)
    title = "DMA_LOGGING_START with a page size hint of 0x3000 (not a power of two)"
    reply = seq.check(title, req, Expect("any", rule=f"{START_RULE}; or EINVAL"))
    if reply is None:
        return
    if reply.is_error:
        seq.verify(reply.errno == EINVAL, Kind.ERRNO, f"{title}: EINVAL if refused",
                   "success or EINVAL", str(reply.errno), _S3)
        return
    start_reply_page_size(seq, req, reply, title)
    seq.check("DMA_LOGGING_STOP", log_stop(seq), Expect("ok", rule=_S3))


def _unmap_with_bitmap(seq: Sequence, lps: int) -> None:
    """While logging: DMA_UNMAP with GET_DIRTY_BITMAP of a mapped region returns its bitmap
    and unmaps it (docs/wire-compat.md row 7)."""
    iova = IOVA_BASE + 4 * _BIG
    seq.check("DMA_MAP 1 MiB with an fd", enc(seq, wire.DmaMap(iova, 1 << 20)),
              Expect("ok", rule=_S2), fds=(f"memfd:{1 << 20}",))
    if unmap_bitmap(seq, iova, 1 << 20, lps, "DMA_UNMAP with GET_DIRTY_BITMAP while "
                    "logging") is not None:
        seq.check("DMA_UNMAP after DMA_UNMAP with GET_DIRTY_BITMAP refused",
                  enc(seq, wire.DmaUnmap(iova, 1 << 20)),
                  refused(*_UNMAP_MISSING, rule=f"{UNMAP_RULE}: the region is unmapped"))


def run(checker: Checker) -> None:
    """The ``dma`` group (module docstring)."""
    with checker.sequence("dma", "DMA_MAP and DMA_UNMAP") as seq:
        _maps(seq)
    with checker.sequence("dma", "DMA dirty page logging") as seq:
        _logging(seq)
    if checker.profile is not None:
        with checker.sequence("dma", f"dirty pages written by {checker.profile.name}") as seq:
            run_profile(seq)
        with checker.sequence("dma", f"dirty pages written by {checker.profile.name}, "
                              "reported at half the logging page") as seq:
            run_smaller(seq)
