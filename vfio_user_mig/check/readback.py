"""The profiles' side of the migration round trip (group ``roundtrip``): how the device's state
is changed between pre-copy rounds, read back through its regions, and which part of the
saved stream the destination loads.

The profiles of :mod:`vfio_user_mig.check.profiles` take these as mixins:

* :meth:`disturb` (between pre-copy rounds, the device running): REGION_WRITEs that change
  device state the stream must carry, as a guest would;
* :meth:`read_back` (the source after STOP_COPY -> STOP, the destination after RESUMING ->
  STOP): :class:`~vfio_user_mig.check.session.ReadBack` entries of the state the device
  migrates, compared byte by byte;
* :meth:`resume_stream`: what the destination's RESUMING is fed. The kernel's uapi
  (``vfio.h``, ``VFIO_DEVICE_STATE_PRE_COPY``) makes the PRE_COPY and STOP_COPY data one
  stream, all of it loaded; libvfio-user's sample restarts its stream at each saving state
  and its client loads only the STOP_COPY data (INTEROP.md, "What samples/client does").

``migdev`` (:mod:`vfio_user_mig.simulator.device.regs`): BAR2 (device memory, all of it), the
BAR0 registers that migrate (:data:`~vfio_user_mig.simulator.device.regs.MIGRATING`) and the
config space. ``lvu-sample`` (INTEROP.md, "What samples/server does"): BAR1's 0x3000 bytes and
BAR0's deadline. BAR0 reads return ``floor(unix now) - deadline``, so the deadline is
recovered with the checker's clock, between two reads of it in the same second.
"""

from __future__ import annotations

import struct
import time

from vfio_user_mig import wire
from vfio_user_mig.check.facts import ReadBack
from vfio_user_mig.check.session import Sequence
from vfio_user_mig.check.steps import Expect
from vfio_user_mig.simulator.device.regs import MIGRATING

_RULE = "PROTOCOL.md section 2: REGION_READ/REGION_WRITE"


def region_size(seq: Sequence, index: int) -> int:
    """The size DEVICE_GET_REGION_INFO gives for region ``index`` (0 when refused)."""
    reply = seq.exchange(wire.encode(wire.RegionInfo(index, msg_id=seq.next_id())))
    if reply is None or reply.is_error or len(reply.payload) < 24:
        return 0
    return int(struct.unpack_from("<Q", reply.payload, 16)[0])


def read_region(seq: Sequence, what: str, region: int, offset: int, count: int) -> bytes:
    """``count`` bytes at ``offset`` of ``region`` in REGION_READs of at most both sides'
    max_data_xfer_size; one check per read (a refused or short read ends the data early)."""
    step = max(min(seq.checker.facts.max_data_xfer_size, seq.checker.client_max_xfer), 8)
    out = bytearray()
    while len(out) < count:
        n = min(step, count - len(out))
        at = offset + len(out)
        reply = seq.check(f"round trip: REGION_READ of {what}",
                          wire.encode(wire.RegionRead(offset=at, region=region, count=n,
                                                      msg_id=seq.next_id())),
                          Expect("ok", payload_len=16 + n, rule=_RULE))
        if reply is None or reply.is_error or len(reply.payload) < 16 + n:
            break
        out += reply.payload[16:16 + n]
    return bytes(out)


def write_region(seq: Sequence, what: str, region: int, offset: int, data: bytes) -> None:
    seq.check(f"round trip: REGION_WRITE of {what}",
              wire.encode(wire.RegionWrite(offset=offset, region=region, count=len(data),
                                           data=data, msg_id=seq.next_id())),
              Expect("ok", payload_len=16, rule=_RULE))


def pattern(seed: int, size: int = 64) -> bytes:
    return bytes((seed * 31 + i * 7 + 3) & 0xFF for i in range(size))


class MigDevReadBack:
    """``migdev``'s round trip (module docstring). The sizes of BAR2 and the config space are
    learned while the device runs (DEVICE_GET_REGION_INFO is not served in STOP,
    :mod:`vfio_user_mig.protocol.gating`) and kept for :meth:`read_back`."""

    RB_BAR0, RB_BAR2, RB_CONFIG = 0, 2, 7
    _PAGE = 0x1000

    def _size(self, seq: Sequence, index: int) -> int:
        sizes: dict[int, int] = self.__dict__.setdefault("_rb_sizes", {})
        if not sizes.get(index):
            sizes[index] = region_size(seq, index)
        return sizes[index]

    def disturb(self, seq: Sequence, round_no: int) -> None:
        """A new pattern in one page of BAR2 (a page further each round) and in SCRATCH."""
        self._size(seq, self.RB_CONFIG)
        size = self._size(seq, self.RB_BAR2)
        if size >= self._PAGE:
            at = ((round_no + 1) * 5 * self._PAGE) % size
            write_region(seq, "BAR2 (between pre-copy rounds)", self.RB_BAR2, at,
                         pattern(round_no))
        scratch = next(d for d in MIGRATING if d.reg.name == "SCRATCH")
        write_region(seq, "BAR0 SCRATCH (between pre-copy rounds)", self.RB_BAR0,
                     int(scratch.reg), struct.pack("<Q", 0x5CA7C400 + round_no))

    def read_back(self, seq: Sequence) -> list[ReadBack]:
        out = [ReadBack("BAR2 (device memory)", self.RB_BAR2, 0,
                        read_region(seq, "BAR2", self.RB_BAR2, 0,
                                    self._size(seq, self.RB_BAR2)))]
        for reg in MIGRATING:
            out.append(ReadBack(f"BAR0 register {reg.reg.name}", self.RB_BAR0, int(reg.reg),
                                read_region(seq, f"BAR0 {reg.reg.name}", self.RB_BAR0,
                                            int(reg.reg), reg.size)))
        out.append(ReadBack("config space", self.RB_CONFIG, 0,
                            read_region(seq, "config space", self.RB_CONFIG, 0,
                                        self._size(seq, self.RB_CONFIG))))
        return out

    def resume_stream(self, precopy: bytes, stopcopy: bytes) -> bytes:
        """All of it, PRE_COPY data first (``vfio.h``: one stream)."""
        return precopy + stopcopy


class LvuSampleReadBack:
    """``lvu-sample``'s round trip (module docstring)."""

    RB_BAR0, RB_BAR1 = 0, 1
    BAR1_DATA = 0x3000
    _TIME_T = struct.Struct("<q")

    def disturb(self, seq: Sequence, round_no: int) -> None:
        """A new pattern in BAR1, in another of its three pages each round (as
        samples/client's guest thread writes BAR1 during pre-copy)."""
        at = (round_no % 3) * 0x1000 + 0x100
        write_region(seq, "BAR1 (between pre-copy rounds)", self.RB_BAR1, at,
                     pattern(round_no))

    def _deadline(self, seq: Sequence) -> bytes:
        for _ in range(5):
            before = int(time.time())
            raw = read_region(seq, "BAR0 (the deadline)", self.RB_BAR0, 0, 8)
            if len(raw) < 8:
                return raw
            if int(time.time()) == before:
                return self._TIME_T.pack(before - self._TIME_T.unpack(raw)[0])
        return raw

    def read_back(self, seq: Sequence) -> list[ReadBack]:
        return [ReadBack("BAR1", self.RB_BAR1, 0,
                         read_region(seq, "BAR1", self.RB_BAR1, 0, self.BAR1_DATA)),
                ReadBack("BAR0 deadline", self.RB_BAR0, 0, self._deadline(seq))]

    def resume_stream(self, precopy: bytes, stopcopy: bytes) -> bytes:
        """The STOP_COPY data only: the sample's stream restarts at each saving state."""
        return stopcopy


__all__ = ["LvuSampleReadBack", "MigDevReadBack", "pattern", "read_region", "region_size",
           "write_region"]
