"""Receiving migration-stream bytes in place: the part of :class:`~.stream_decoder.StreamDecoder`
that lets a caller receive page data straight into the memory of the sink being restored (an
:class:`~.stream_decoder.InPlaceSink`: for ``migdev`` device memory), with no copy.

:meth:`InPlaceReceive.recv_buffers` gives the buffers the next stream bytes may be received
into, in order (``recvmsg_into`` scatter), and :meth:`InPlaceReceive.received` accounts for the
bytes that came:

* the page data of the PAGES record in progress, once its checked span (record CRC over
  prefix and page fingerprints, bounds) passed: a view of the sink's memory from the record's
  next byte on, over pages never loaded before (a page split across receives is completed in
  place; a page loaded before keeps the :meth:`~.stream_decoder.StreamDecoder.feed` path: its
  copy is checked before the new one replaces it);
* then, guessing that the stream goes on as a save pass sends it (PAGES records of the
  following whole blocks of :data:`~.stream.MAX_RUN_PAGES` pages, never loaded), for each such
  record a piece of the decoder's own buffer for its header and checked span and a view of its
  pages. What lands in a piece is fed (checked as any bytes); what lands in a guessed view is
  taken in place only if the record the piece carried is exactly the guessed one (checked
  span passed, same first page and count), and otherwise copied out and fed. A wrong guess
  costs that copy and leaves bytes in pages no copy was loaded into yet: they hold no restored
  state (a page counts as restored only once a copy of it was wholly loaded) and are
  overwritten when the page's copy comes (every page must come before END) or cleared when the
  stream is refused.

Bytes received in place are checked exactly as fed ones: every copy of a page against its
fingerprint by the end of the stream (:mod:`.stream_decoder`).
"""

from __future__ import annotations

from collections.abc import Callable

from vfio_user_mig.simulator.device.stream import (
    MAX_RUN_PAGES,
    PAGES_PREFIX,
    RECORD_HEADER,
    RecordType,
    StreamError,
    StreamGeometry,
    pages_checked_span,
)

_LONGEST_SPAN = pages_checked_span(MAX_RUN_PAGES)
#: Records guessed ahead at most (the decoder's buffer for their headers and checked spans).
MAX_GUESSED = 8
_SPAN_ROOM = RECORD_HEADER.size + _LONGEST_SPAN
#: One planned receive buffer: (view, kind, first page, count); kind None: page data of the
#: record in progress; "span": a guessed record's header and checked span (fed); "pages": the
#: guessed record's page data.
Planned = tuple[memoryview, str | None, int, int]


class InPlaceReceive:
    """Receiving in place, for :class:`~.stream_decoder.StreamDecoder` (which defines the
    state and the methods declared here); see the module docstring."""

    _geo: StreamGeometry
    _buf: bytearray
    _head: tuple[RecordType, int, int] | None
    _run: tuple[int, int, bytes, int] | None
    _part: int
    _covered: bytearray
    _error: StreamError | None
    _view_of: Callable[[int, int], memoryview] | None
    _last: RecordType | None
    _next_page: int
    _plan: list[Planned]
    _scratch: memoryview | None

    def feed(self, data: bytes | memoryview) -> None:
        raise NotImplementedError

    def _mark(self, page: int, n: int, table: bytes, index: int) -> None:
        raise NotImplementedError

    def _end_run(self) -> None:
        raise NotImplementedError

    def recv_buffers(self, max_size: int) -> list[memoryview]:
        """The buffers the next stream bytes (at most ``max_size`` in all) may be received
        into, in order (module docstring); [] when the next bytes must be fed (a header, a
        checked span, a page sent before). Receive into them, then call :meth:`received`."""
        plan: list[Planned] = []
        self._plan = plan
        view_of = self._view_of
        if self._error is not None or view_of is None or max_size <= 0:
            return []
        room = max_size
        if self._run is not None:
            first, count, _table, done = self._run
            page, end = first + done, first + count
            stop = self._covered.find(1, page, end)
            stop = end if stop < 0 else stop
            if stop == page:
                return []
            view = view_of(page, stop - page)
            if self._buf:  # the start of the page, buffered: it goes where the rest will come
                self._part = len(self._buf)
                view[: self._part] = self._buf
                self._buf = bytearray()
            view = view[self._part : self._part + room]
            plan.append((view, None, page, 0))
            room -= len(view)
            if stop < end:
                return [view]
            page = end
        elif self._head is None and not self._buf and self._last in _GUESS_AFTER:
            page = self._next_page
        else:
            return []
        if self._scratch is None:
            self._scratch = memoryview(bytearray(MAX_GUESSED * _SPAN_ROOM))
        at = 0
        n_pages = self._geo.n_pages
        while room > 0 and page < n_pages and at < len(self._scratch):
            count = min(MAX_RUN_PAGES - page % MAX_RUN_PAGES, n_pages - page)
            if self._covered.find(1, page, page + count) >= 0:
                break
            span = RECORD_HEADER.size + pages_checked_span(count)
            piece = self._scratch[at : at + min(span, room)]
            at += span
            plan.append((piece, "span", page, count))
            room -= len(piece)
            if room <= 0:
                break
            view = view_of(page, count)[:room]
            plan.append((view, "pages", page, count))
            room -= len(view)
            page += count
        return [entry[0] for entry in plan]

    def received(self, n: int) -> None:
        """``n`` bytes were received into the last :meth:`recv_buffers` (in order)."""
        if self._error is not None:
            raise self._error
        plan, self._plan = self._plan, []
        sizes = []
        for view, *_ in plan:
            sizes.append(min(n, len(view)))
            n -= sizes[-1]
        for i, (view, kind, page, count) in enumerate(plan):
            m = sizes[i]
            if not m:
                break
            if kind == "span" and not (m == len(view) and _is_guessed(view, page, count,
                                                                     self._geo.page_size)):
                # Not the record guessed (or cut short): feeding it could load pages where
                # later bytes came in; copy them all out first and feed them in order.
                self.feed(b"".join(bytes(v[:k]) for (v, *_), k in zip(plan[i:], sizes[i:],
                                                                        strict=True)))
                return
            if kind == "span":
                self.feed(view)  # exactly the guessed header and checked span: loads nothing
            elif kind is None or self._guessed(page, count):
                self._in_place(m)
            else:  # the checked span was refused: the decoder refuses these bytes too
                self.feed(bytes(view[:m]))

    def _guessed(self, page: int, count: int) -> bool:
        run = self._run
        return (self._error is None and run is not None and run[0] == page and run[1] == count
                and run[3] == 0 and not self._part and not self._buf)

    def feed_size(self) -> int:
        """How many bytes to feed before :meth:`recv_buffers` may have buffers again (the
        rest of a record header and of the checked span that may follow, of another record, or
        of a page sent before); at least 1. More is fine (the excess is fed), fewer costs
        receives."""
        have = len(self._buf)
        head = self._head
        if head is None:  # a record header, and the checked span of a whole run if PAGES
            want = _SPAN_ROOM
        elif head[0] is not RecordType.PAGES:
            want = head[1]
        elif self._run is not None:
            want = self._geo.page_size
        elif have < PAGES_PREFIX.size:
            want = min(_LONGEST_SPAN, head[1])
        else:
            count = PAGES_PREFIX.unpack_from(self._buf)[1]
            want = min(pages_checked_span(count), head[1])
        return max(1, want - have)

    def _in_place(self, n: int) -> None:
        """Account for ``n`` page bytes now in the sink's memory at the run's position: the
        pages they complete are loaded (their fingerprints recorded, as a fed copy's)."""
        assert self._run is not None
        first, count, table, done = self._run
        whole, self._part = divmod(self._part + n, self._geo.page_size)
        if whole:
            self._mark(first + done, whole, table, done)
            done += whole
        self._run = (first, count, table, done)
        if done == count:
            self._end_run()

    def _continue_page(self, data: memoryview) -> memoryview:
        """The rest of a page begun in place, from ``data`` into the sink's memory."""
        assert self._run is not None and self._view_of is not None
        first, _count, _table, done = self._run
        part = self._part
        take = min(self._geo.page_size - part, len(data))
        self._view_of(first + done, 1)[part : part + take] = data[:take]
        self._in_place(take)
        return data[take:]


def _is_guessed(piece: memoryview, page: int, count: int, page_size: int) -> bool:
    """``piece`` (a record header and checked span) claims to be the PAGES record of
    ``count`` pages from ``page`` (its checks are the decoder's, when it is fed)."""
    _magic, _version, rtype, _seq, length, _crc = RECORD_HEADER.unpack_from(piece)
    return (rtype == RecordType.PAGES
            and length == pages_checked_span(count) + count * page_size
            and PAGES_PREFIX.unpack_from(piece, RECORD_HEADER.size) == (page, count))


_GUESS_AFTER = frozenset({RecordType.HEADER, RecordType.PAGES})

__all__ = ["MAX_GUESSED", "InPlaceReceive", "Planned"]
