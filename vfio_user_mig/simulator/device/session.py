"""A save session: the records one device emits from entering the saving group to leaving it.

PRE_COPY source: HEADER, then passes over device memory; each pass sends the pages the shadow
tracker reports (every page on the first pass, afterwards the pages that changed); a pass that
finds nothing pauses the stream (the read is short: caught up for now) and the next read starts
a new pass. STOP_COPY source: HEADER if not sent yet, one last pass, REGS, END whose digest is
computed over the shadow's page-CRC table (exactly the memory content sent, see
:meth:`.ShadowTracker.memory_digest`) and the REGS payload, so it is the digest of the state
the destination will restore.

HEADER and the first send of every block are *staged*: laid out in the tracker's staging
buffer exactly as the stream bytes (see :mod:`.shadow`), the encoder only writing each record
header in place, so a read of the first pass is a zero-copy view of it. A block sent again
goes out as (prefix + page CRCs, view of the second shadow) parts, copied once into the bytes
a read returns. Each pass starts with a BARRIER: a read that spans a pass boundary first
copies what it gathered, since the new pass may re-take (rewrite in the second shadow) pages
that read still references; staging bytes are never rewritten.
"""

from __future__ import annotations

import mmap
from collections.abc import Callable, Iterator

from vfio_user_mig.simulator.device.shadow import ShadowTracker, StagedRun
from vfio_user_mig.simulator.device.stream import (
    BARRIER,
    END_PAYLOAD,
    MAX_RUN_PAGES,
    RECORD_HEADER,
    RecordItem,
    RecordType,
    Staged,
    StreamGeometry,
    header_payload,
    pages_parts,
)
from vfio_user_mig.simulator.device.stream_encoder import StreamEncoder

#: Digest of a state given the fingerprint of its memory content
#: (:func:`~.stream.memory_fingerprint`) and its REGS payload.
DigestFn = Callable[[bytes, bytes], bytes]


class SaveSession:
    """Produces the save stream of one device lazily; see the module docstring."""

    def __init__(
        self,
        memory: mmap.mmap,
        geometry: StreamGeometry,
        regs: Callable[[], bytes],
        digest: DigestFn,
        *,
        precopy: bool,
    ) -> None:
        self._geo = geometry
        self._regs = regs
        self._digest = digest
        self._header_sent = False
        self._header_payload = header_payload(geometry)
        self.tracker = ShadowTracker(
            memory, geometry.page_size, RECORD_HEADER.size + len(self._header_payload)
        )
        self.encoder = StreamEncoder(
            self._precopy() if precopy else self._final(), self.tracker.staging
        )

    def stop_copy(self) -> None:
        """PRE_COPY -> STOP_COPY: finish the stream after the record in flight."""
        self.encoder.switch(self._final())

    def read(self, max_size: int) -> bytes:
        """The next bytes of the stream."""
        return self.encoder.read(max_size)

    def _header(self) -> Iterator[RecordItem]:
        if not self._header_sent:
            self._header_sent = True
            payload = self._header_payload
            at = RECORD_HEADER.size
            self.tracker.staging[at : at + len(payload)] = payload
            yield RecordType.HEADER, Staged(0, len(payload))

    def _pass(self) -> Iterator[RecordItem]:
        # A pass may re-take pages whose shadow views the read in progress still holds.
        yield BARRIER
        ps = self._geo.page_size
        tracker = self.tracker
        for run in tracker.runs(MAX_RUN_PAGES):
            if isinstance(run, StagedRun):
                yield RecordType.PAGES, Staged(run.offset, run.length)
                continue
            first, data = run
            crcs = tracker.crcs(first, len(data) // ps)
            yield RecordType.PAGES, pages_parts(first, data, ps, crcs)

    def _precopy(self) -> Iterator[RecordItem]:
        yield from self._header()
        while True:
            found = False
            for item in self._pass():
                found = found or item is not BARRIER
                yield item
            if not found:
                yield None

    def _final(self) -> Iterator[RecordItem]:
        yield from self._header()
        yield from self._pass()
        regs = self._regs()
        yield RecordType.REGS, regs
        yield RecordType.END, END_PAYLOAD.pack(self._digest(self.tracker.memory_digest(), regs))
