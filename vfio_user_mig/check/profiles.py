"""Device profiles: what the checker must do to make a device write guest memory through the
checker's DMA mappings. ``check --profile NAME`` selects one; without a profile those checks are
skipped.

Contract of a :class:`Profile`:

* :attr:`Profile.dma_maps`: the DMA regions (iova, size, with an fd) the device needs mapped
  before :meth:`Profile.stimulate`;
* :meth:`Profile.settle`: called by every sequence once the device is RUNNING after VERSION:
  puts the device where its own rules let the FSM run (e.g. a deadline it checks);
* :meth:`Profile.prepare`: called once per sequence after VERSION and the move to RUNNING; maps
  :attr:`Profile.dma_maps` (those the connection has not mapped yet, in order, memfd-backed where
  flagged) and sets the device up (interrupts, bus mastering). DMA logging, if wanted, is the
  caller's to start between :meth:`prepare` and :meth:`stimulate`;
* :meth:`Profile.stimulate`: makes the device write guest memory while RUNNING, waits until it
  has, and returns the IOVAs written (any address in each page written) through the mappings.
  Pages the server writes with DMA_WRITE messages are the client's own to track (the server
  does not log them) and are not returned. ``armed``, when given, is called once the stimulus
  is set going and before its writes are awaited (the dirty-logging checks move the device to
  PRE_COPY there, to have pages written in PRE_COPY).

Profiles: ``migdev`` (our MigDev, its BAR0 DMA engine: :mod:`vfio_user_mig.simulator.device.regs`)
and ``lvu-sample`` (libvfio-user's ``samples/server`` and our ``serve --device lvu-sample``;
INTEROP.md "What samples/server does"). :func:`get_profile` looks one up by name and
:func:`profile_names` lists them. The round trip's methods (``disturb``, ``read_back``,
``resume_stream``) come from :mod:`vfio_user_mig.check.readback`.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable

from vfio_user_mig import wire
from vfio_user_mig.check.readback import LvuSampleReadBack, MigDevReadBack
from vfio_user_mig.check.session import Profile, Sequence


class ProfileError(ValueError):
    """No profile of that name."""


PAGE = 0x1000
_OK_MAP = "PROTOCOL.md section 2: DMA_MAP"


def map_profile_regions(seq: Sequence, maps: tuple[tuple[int, int, bool], ...],
                        name: str) -> None:
    """DMA_MAP each of ``maps`` not mapped on this connection yet, in order (one check each)."""
    from vfio_user_mig.check.steps import Expect

    for iova, size, with_fd in maps:
        if iova in seq.conn.memory.regions:
            continue
        seq.check(f"profile {name}: DMA_MAP {iova:#x}+{size:#x}",
                  wire.encode(wire.DmaMap(addr=iova, size=size, msg_id=seq.next_id())),
                  Expect("ok", payload_len=0, rule=_OK_MAP),
                  fds=(f"memfd:{size}",) if with_fd else ())


def _write(seq: Sequence, name: str, region: int, offset: int, data: bytes) -> None:
    from vfio_user_mig.check.steps import Expect

    seq.check(f"profile {name}: REGION_WRITE {region}@{offset:#x}",
              wire.encode(wire.RegionWrite(offset=offset, region=region, count=len(data),
                                           data=data, msg_id=seq.next_id())),
              Expect("ok", payload_len=16, rule="PROTOCOL.md section 2: REGION_WRITE"))


def _read(seq: Sequence, region: int, offset: int, count: int) -> bytes | None:
    from vfio_user_mig.check.steps import Expect

    reply = seq.exchange(wire.encode(wire.RegionRead(offset=offset, region=region, count=count,
                                                     msg_id=seq.next_id())),
                         expect=Expect("ok", payload_len=16 + count))
    if reply is None or reply.is_error or len(reply.payload) < 16 + count:
        return None
    return bytes(reply.payload[16:16 + count])


class MigDevProfile(MigDevReadBack):
    """``migdev``: the BAR0 DMA engine copies device memory (BAR2) to guest pages.

    maps: two memfd-backed ranges, :attr:`A` (16 MiB: 4096 pages of 4 KiB, 512 of 32 KiB) and
    :attr:`B` (1 MiB). prepare: maps them and turns bus mastering on (config COMMAND).
    stimulate: writes a pattern to BAR2, then one small DMA job per entry of :attr:`WRITES`
    (DMA_DIR TO_CLIENT, DMA_MODE MAPPED_ONLY: through the mapping), polling STATUS until each
    is DONE; returns the first and last IOVA of each write. The writes hit the first and the
    last byte of both ranges, cross a page boundary (pages 63/64 at 4 KiB) and reach past
    report page 256 at every report page size up to 32 KiB (dirty logging completeness,
    PROTOCOL.md section 3). Only the descriptor registers that change are rewritten: three
    REGION_WRITEs and a STATUS read per write."""

    name = "migdev"
    A, A_SIZE = 0x0100_0000, 16 << 20
    B, B_SIZE = 0x0300_0000, 1 << 20
    dma_maps: tuple[tuple[int, int, bool], ...] = ((A, A_SIZE, True), (B, B_SIZE, True))
    #: (iova, length) of each DMA job.
    WRITES: tuple[tuple[int, int], ...] = (
        (A, 8), (A + 64 * PAGE - 8, 16), (A + 257 * PAGE + 0x100, 8),
        (A + 0x90_0000 + 0x10, 8), (A + A_SIZE - 8, 8), (B, 8), (B + B_SIZE - 8, 8))
    #: BAR0 registers (regs.Reg), BAR indexes, config COMMAND bits, job codes.
    BAR0, BAR2, CONFIG = 0, 2, 7
    STATUS, DOORBELL, DEV_OFFSET, DMA_IOVA, DMA_LEN, DMA_DIR, DMA_MODE = (
        0x0C, 0x10, 0x18, 0x20, 0x28, 0x30, 0x34)
    COMMAND_OFF, MEMORY_AND_BUS_MASTER = 0x04, 0x0006
    BUSY, DONE, FAULT, REFUSED, ABORTED = 1, 2, 4, 8, 16
    TO_CLIENT, MAPPED_ONLY = 0, 1
    JOB_TIMEOUT = 5.0

    def settle(self, seq: Sequence) -> None:
        """Nothing: migdev's FSM has no preconditions of its own."""

    def prepare(self, seq: Sequence) -> None:
        map_profile_regions(seq, self.dma_maps, self.name)
        _write(seq, self.name, self.CONFIG, self.COMMAND_OFF,
               struct.pack("<H", self.MEMORY_AND_BUS_MASTER))

    def stimulate(self, seq: Sequence, armed: Callable[[], None] | None = None) -> set[int]:
        from vfio_user_mig.check.findings import Kind

        if armed is not None:
            armed()
        pattern = bytes((i * 7 + 1) & 0xFF for i in range(64))
        _write(seq, self.name, self.BAR2, 0, pattern)
        for reg, value, size in ((self.DEV_OFFSET, 0, 8), (self.DMA_DIR, self.TO_CLIENT, 4),
                                 (self.DMA_MODE, self.MAPPED_ONLY, 4)):
            _write(seq, self.name, self.BAR0, reg, value.to_bytes(size, "little"))
        written: set[int] = set()
        for iova, length in self.WRITES:
            for reg, value in ((self.DMA_IOVA, iova), (self.DMA_LEN, length),
                               (self.DOORBELL, 1)):
                _write(seq, self.name, self.BAR0, reg,
                       value.to_bytes(4 if reg == self.DOORBELL else 8, "little"))
            status = self._wait(seq)
            done = status is not None and bool(status & self.DONE)
            seq.verify(done, Kind.DATA, "profile migdev: the DMA job completes",
                       "STATUS.DONE", f"STATUS {status}", "regs.py: the DMA engine")
            if not done:
                continue
            written |= {iova, iova + length - 1}
            mapped = any(m <= iova < m + n for m, n, _fd in self.dma_maps
                         if m in seq.conn.memory.regions)
            if mapped:
                got = seq.conn.memory.read(iova, length)
                seq.verify(got == pattern[:length], Kind.DATA,
                           "profile migdev: the DMA job writes device memory to the page",
                           pattern[:length].hex(), got.hex(), "regs.py: DMA_DIR TO_CLIENT")
        return written

    def _wait(self, seq: Sequence) -> int | None:
        deadline = time.monotonic() + self.JOB_TIMEOUT
        while time.monotonic() < deadline:
            raw = _read(seq, self.BAR0, self.STATUS, 4)
            if raw is None:
                return None
            status = int.from_bytes(raw, "little")
            if not status & self.BUSY:
                return status
            time.sleep(0.005)
        return None


class LvuSampleProfile(LvuSampleReadBack):
    """``lvu-sample``: libvfio-user's ``samples/server`` (and ours, ``--device lvu-sample``).

    prepare: maps iova 0 (one page, no fd: reached by DMA_WRITE/DMA_READ messages) and
    :attr:`DIRECT` (eight pages, memfd: written directly), in that order (the sample's regions
    0 and 1), and gives INTx one eventfd (DEVICE_SET_IRQS), which the sample needs before its
    timer fires.
    stimulate: writes a ``time_t`` deadline one second ahead to BAR0 offset 0 (RUNNING arms the
    timer); at expiry the server signals INTx, writes :attr:`DIRECT` through its mapping, then
    sends DMA_WRITE and DMA_READ messages for iova 0, which :meth:`Conn.drain` answers.
    Returns ``{DIRECT}`` once the messages have come and stopped. Afterwards BAR0 holds a
    deadline in the past: the sample then refuses SET RUNNING (EINVAL) until BAR0 is rewritten.
    The sample only ever writes the first 4 KiB of its region 1: the spread, last-page and
    two-range parts of the dirty-logging checks are ``migdev``'s. With ``armed`` the timer is
    armed in RUNNING, then ``armed`` runs (the sample arms only in RUNNING; its timer fires in
    PRE_COPY too). Each stimulus takes up to two seconds (the sample's deadline is in whole
    seconds).
    """

    name = "lvu-sample"
    #: The sample's stream is BAR1 and BAR0 as raw bytes, with no integrity check: it cannot
    #: tell a corrupted, reordered or foreign stream of the right length (the migdata group).
    raw_stream = True
    #: The sample's DMA regions 0 and 1 are the first two mapped (registration order; ours
    #: takes them by IOVA, the same here). Region 1 spans 8 pages so that logging page sizes
    #: up to 32 KiB fit in it (libvfio-user refuses LOGGING_START when a mapped region is
    #: smaller than the logging page).
    DIRECT = 0x40000
    dma_maps: tuple[tuple[int, int, bool], ...] = ((0x0, PAGE, False), (DIRECT, 8 * PAGE, True))
    BAR0, INTX = 0, 0
    WAIT = 6.0
    QUIET = 0.3
    #: settle's deadline: far enough never to expire during a check.
    FAR = 24 * 3600

    def settle(self, seq: Sequence) -> None:
        """A BAR0 deadline a day ahead: the sample refuses to enter RUNNING (EINVAL) while its
        deadline is in the past, and the deadline travels in the migration stream."""
        _write(seq, self.name, self.BAR0, 0, struct.pack("<q", int(time.time()) + self.FAR))

    def prepare(self, seq: Sequence) -> None:
        from vfio_user_mig.check.steps import Expect

        map_profile_regions(seq, self.dma_maps, self.name)
        flags = wire.IrqSetFlag.DATA_EVENTFD | wire.IrqSetFlag.ACTION_TRIGGER
        seq.check(f"profile {self.name}: DEVICE_SET_IRQS INTx eventfd",
                  wire.encode(wire.IrqSet(flags=int(flags), index=self.INTX, start=0, count=1,
                                          msg_id=seq.next_id())),
                  Expect("ok", payload_len=0, rule="PROTOCOL.md section 2: DEVICE_SET_IRQS"),
                  fds=("eventfd",))

    def stimulate(self, seq: Sequence, armed: Callable[[], None] | None = None) -> set[int]:
        from vfio_user_mig.check.findings import Kind

        start = len(seq.conn.server_requests)
        _write(seq, self.name, self.BAR0, 0, struct.pack("<q", int(time.time()) + 1))
        if armed is not None:  # the timer is armed (in RUNNING only); it fires in PRE_COPY too
            armed()
        deadline = time.monotonic() + self.WAIT
        reads = 0
        while time.monotonic() < deadline and not seq.conn.closed:
            before = len(seq.conn.server_requests)
            seq.conn.drain(self.QUIET)
            new = seq.conn.server_requests[start:]
            reads = sum(1 for cmd, _a, _c in new if cmd == wire.Command.DMA_READ)
            if reads and len(seq.conn.server_requests) == before:
                break
        seq.verify(reads > 0, Kind.DATA, "profile lvu-sample: the timer's DMA comes",
                   "DMA_WRITE and DMA_READ requests for iova 0 after the BAR0 deadline",
                   f"{len(seq.conn.server_requests) - start} server requests",
                   "INTEROP.md: what samples/server does")
        return {self.DIRECT} if reads else set()


#: Profiles by name.
PROFILES: dict[str, type] = {
    MigDevProfile.name: MigDevProfile,
    LvuSampleProfile.name: LvuSampleProfile,
}


def profile_names() -> list[str]:
    return sorted(PROFILES)


def get_profile(name: str) -> Profile:
    """A fresh profile object by name (:class:`ProfileError` for an unknown name)."""
    try:
        cls = PROFILES[name]
    except KeyError:
        raise ProfileError(f"unknown profile {name!r} (one of {', '.join(profile_names())})"
                           ) from None
    profile: Profile = cls()
    return profile


__all__ = ["PROFILES", "LvuSampleProfile", "MigDevProfile", "Profile", "ProfileError",
           "get_profile", "map_profile_regions", "profile_names"]
