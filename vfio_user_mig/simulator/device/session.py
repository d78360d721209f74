"""A save session: the records one device emits from entering the saving group to leaving it.

PRE_COPY source: HEADER, then passes over device memory; each pass sends the pages the shadow
tracker reports (every page on the first pass, afterwards the pages that changed); a pass that
finds nothing pauses the stream (the read is short: caught up for now) and the next read starts
a new pass. STOP_COPY source: HEADER if not sent yet, one last pass, REGS, END whose digest is
computed over the shadow (exactly the memory content sent) and the REGS payload, so it is the
digest of the state the destination will restore.

PAGES payloads are (prefix, view of the shadow) parts: the pages are copied once from device
memory into the shadow and once from the shadow into the bytes a read returns. Each pass
starts with a BARRIER: a read that spans a pass boundary first copies what it gathered, since
the new pass may re-take (rewrite in the shadow) pages that read still references.
"""

from __future__ import annotations

import mmap
from collections.abc import Callable, Iterator

from vfio_user_mig.simulator.device.shadow import ShadowTracker
from vfio_user_mig.simulator.device.stream import (
    BARRIER,
    END_PAYLOAD,
    MAX_RUN_PAGES,
    RecordItem,
    RecordType,
    StreamEncoder,
    StreamGeometry,
    header_payload,
    pages_parts,
)

#: Digest of a state given the SHA-256 of its memory content and its REGS payload.
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
        self.tracker = ShadowTracker(memory, geometry.page_size)
        self.encoder = StreamEncoder(self._precopy() if precopy else self._final())

    def stop_copy(self) -> None:
        """PRE_COPY -> STOP_COPY: finish the stream after the record in flight."""
        self.encoder.switch(self._final())

    def read(self, max_size: int) -> bytes:
        """The next bytes of the stream."""
        return self.encoder.read(max_size)

    def _header(self) -> Iterator[RecordItem]:
        if not self._header_sent:
            self._header_sent = True
            yield RecordType.HEADER, header_payload(self._geo)

    def _pass(self) -> Iterator[RecordItem]:
        # A pass may re-take pages whose shadow views the read in progress still holds.
        yield BARRIER
        ps = self._geo.page_size
        for first, data in self.tracker.runs(MAX_RUN_PAGES):
            yield RecordType.PAGES, pages_parts(first, data, ps)

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
