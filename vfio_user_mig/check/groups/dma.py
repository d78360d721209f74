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
of 4 KiB); a REPORT whose argsz cannot hold the bitmap is refused. With a profile, every page
the device wrote is reported dirty at the three page sizes.
"""

from __future__ import annotations

import errno as _errno
import struct

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


def _report(seq: Sequence, iova: int, length: int, page_size: int, title: str) -> bytes | None:
    """REPORT and check its form; the bitmap, or ``None`` when refused."""
    bitmap_len = wire.bitmap_len(length, page_size)
    reply = seq.check(title, log_report(seq, iova, length, page_size),
                      Expect("ok", payload_len=8 + 24 + bitmap_len,
                             rule=f"{_S3}: bitmap of ceil(ceil(length/page_size)/64)*8 = "
                             f"{bitmap_len} bytes after the 24-byte range"))
    if reply is None or reply.is_error or len(reply.payload) < 32:
        return None
    argsz, = struct.unpack_from("<I", reply.payload)
    body = struct.unpack_from("<QQQ", reply.payload, 8)
    seq.verify(argsz == len(reply.payload) and body == (iova, length, page_size), Kind.REPLY,
               f"{title}: argsz and range echoed",
               f"argsz {len(reply.payload)}, range {(iova, length, page_size)}",
               f"argsz {argsz}, range {body}", f"{_S3}; section 3: GET argsz = reply size")
    return reply.payload[32:]


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
    req = log_start(seq, _LOG_PAGE)
    seq.check("DMA_LOGGING_START echoes the request", req,
              Expect("ok", payload=req[16:], rule=f"{_S3}; section 3: SET replies echo"))
    reply = seq.check("second DMA_LOGGING_START while logging", log_start(seq, _LOG_PAGE),
                      Expect("any", rule=f"{_S3}: accepted or refused; logging stays on"))
    if reply is not None and reply.is_error:
        seq.verify(reply.errno in (_errno.EBUSY, EINVAL), Kind.ERRNO,
                   "second START refused with EBUSY or EINVAL", "EBUSY or EINVAL",
                   str(reply.errno), _S3)
    for page_size in (_LOG_PAGE, 2 * _LOG_PAGE, 16 * _LOG_PAGE, _PAGE):
        _report(seq, a, _BIG, page_size,
                f"DMA_LOGGING_REPORT of 64 MiB at page size {page_size}")
    reply = seq.check("DMA_LOGGING_REPORT at page size 512 (below the kernel's 4 KiB)",
                      log_report(seq, a, _BIG, 512),
                      Expect("any", rule=f"{_S3}: the spec is silent; libvfio-user extends the "
                             "bitmap, the kernel refuses page sizes below 4 KiB (EINVAL)"))
    if reply is not None and reply.is_error:
        seq.verify(reply.errno == EINVAL, Kind.ERRNO, "REPORT below 4 KiB pages: EINVAL if "
                   "refused", "success or EINVAL", str(reply.errno), _S3)
    _report(seq, a + _BIG // 4, _BIG // 2, _PAGE, "DMA_LOGGING_REPORT of part of a map")
    seq.check("DMA_LOGGING_REPORT whose argsz cannot hold the bitmap refused",
              log_report(seq, a, _BIG, _PAGE, argsz=32 + 8),
              refused(EINVAL, rule=f"{_S3}; section 3: argsz is the largest reply"))
    seq.check("DMA_LOGGING_REPORT of an unmapped range refused",
              log_report(seq, a + 2 * _BIG, 0x10000, _PAGE),
              Expect("error", rule=f"{_S3}: the range must be mapped"))
    seq.check("DMA_LOGGING_REPORT with a page size not a power of two refused",
              log_report(seq, a, _BIG, 3000),
              refused(EINVAL, rule=f"{_S3}: page_size is a power of two"))
    req = log_stop(seq)
    seq.check("DMA_LOGGING_STOP echoes the request", req,
              Expect("ok", payload=req[16:], rule=f"{_S3}; section 3: SET replies echo"))
    seq.check("DMA_LOGGING_REPORT after STOP refused", log_report(seq, a, _BIG, _PAGE),
              refused(EINVAL, rule=f"{_S3}: nothing is logged after STOP"))


def _dirty(seq: Sequence) -> None:
    """With a profile: every page the device wrote is reported dirty (module docstring)."""
    profile = seq.checker.profile
    assert profile is not None
    for iova, size, with_fd in profile.dma_maps:
        seq.check(f"profile DMA_MAP {iova:#x}", enc(seq, wire.DmaMap(iova, size)),
                  Expect("ok", rule=_S2), fds=(f"memfd:{size}",) if with_fd else ())
    profile.prepare(seq)
    seq.check("DMA_LOGGING_START", log_start(seq, _LOG_PAGE), Expect("ok", rule=_S3))
    for page_size in (_LOG_PAGE, 4 * _LOG_PAGE, _PAGE):
        written = profile.stimulate(seq)
        for iova, size, with_fd in profile.dma_maps:
            if not with_fd:
                continue  # written by DMA messages: the client's to track, not the server's
            bitmap = _report(seq, iova, size, page_size,
                             f"REPORT of profile map {iova:#x} at page size {page_size}")
            if bitmap is None:
                continue
            want = sorted({(w - iova) // page_size for w in written if iova <= w < iova + size})
            missing = [n for n in want if not bitmap[n // 8] >> (n % 8) & 1]
            seq.verify(not missing, Kind.DATA,
                       f"every page the device wrote is reported dirty (page size {page_size})",
                       f"pages {want[:8]} dirty", f"pages {missing[:8]} not dirty",
                       f"{_S3}: page n is bit n % 64 of u64 word n // 64")


def run(checker: Checker) -> None:
    """The ``dma`` group (module docstring)."""
    with checker.sequence("dma", "DMA_MAP and DMA_UNMAP") as seq:
        _maps(seq)
    with checker.sequence("dma", "DMA dirty page logging") as seq:
        _logging(seq)
    if checker.profile is not None:
        with checker.sequence("dma", f"dirty pages written by {checker.profile.name}") as seq:
            _dirty(seq)
