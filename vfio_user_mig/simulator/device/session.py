"""A save session: the records one device emits from entering the saving group to leaving it.

PRE_COPY source: HEADER, then passes over device memory; each pass sends the pages the
fingerprint tracker reports (every page on the first pass, afterwards the pages that changed);
a pass that finds nothing pauses the stream (the read is short: caught up for now) and the
next read starts a new pass. STOP_COPY source: HEADER if not sent yet, one last pass, REGS,
END whose digest is computed over the tracker's table of sent fingerprints (exactly the memory
content sent, see :meth:`.FingerprintTracker.memory_digest`) and the REGS payload, so it is
the digest of the state the destination will restore.

PRE_COPY runs are copied once out of device memory (the device runs: memory may change while
the bytes wait to be sent) and fingerprinted after the copy; STOP_COPY runs are read-only views
of device memory (the device is stopped), sent without a copy: :meth:`SaveSession.read_parts`
hands a read's parts to the server for one scatter-gather ``sendmsg`` (see :mod:`.tracker`).
"""

from __future__ import annotations

import mmap
from collections.abc import Callable, Iterator

from vfio_user_mig.simulator.device.stream import (
    END_PAYLOAD,
    MAX_RUN_PAGES,
    Chunk,
    RecordItem,
    RecordType,
    StreamGeometry,
    header_payload,
    pages_parts,
)
from vfio_user_mig.simulator.device.stream_encoder import StreamEncoder
from vfio_user_mig.simulator.device.tracker import FingerprintTracker

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
        self.tracker = FingerprintTracker(memory, geometry.page_size)
        self.encoder = StreamEncoder(self._precopy() if precopy else self._final())

    def stop_copy(self) -> None:
        """PRE_COPY -> STOP_COPY: finish the stream after the record in flight."""
        self.encoder.switch(self._final())

    def close(self) -> None:
        """The session ends: no more reads; its view of device memory is released."""
        self.encoder.switch(iter(()))
        self.encoder.drop()
        self.tracker.release()

    def read(self, max_size: int) -> bytes:
        """The next bytes of the stream, as one buffer."""
        return self.encoder.read(max_size)

    def read_parts(self, max_size: int) -> list[Chunk]:
        """The next bytes of the stream as parts (views of device memory among them in
        STOP_COPY), to be sent before the device's memory changes."""
        return self.encoder.read_parts(max_size)

    def _header(self) -> Iterator[RecordItem]:
        if not self._header_sent:
            self._header_sent = True
            yield RecordType.HEADER, header_payload(self._geo)

    def _pass(self, *, live: bool) -> Iterator[RecordItem]:
        ps = self._geo.page_size
        for first, data, fps in self.tracker.runs(MAX_RUN_PAGES, live=live):
            yield RecordType.PAGES, pages_parts(first, data, ps, fps)

    def _precopy(self) -> Iterator[RecordItem]:
        yield from self._header()
        while True:
            found = False
            for item in self._pass(live=False):
                found = True
                yield item
            if not found:
                yield None

    def _final(self) -> Iterator[RecordItem]:
        yield from self._header()
        yield from self._pass(live=True)
        regs = self._regs()
        yield RecordType.REGS, regs
        yield RecordType.END, END_PAYLOAD.pack(self._digest(self.tracker.memory_digest(), regs))
