"""MIG_DATA_WRITE received in place: the data of a large MIG_DATA_WRITE goes to the device as
it arrives, its page data straight from the socket into device memory (one copy, where
framing the whole message first costs a buffer per message, a copy into it and a copy out).

The core's framer (:class:`~vfio_user_mig.wire.framer.Framer`, its *claim*) offers the core
each MIG_DATA_WRITE request that arrives in pieces once its header and ``struct
vfio_user_mig_data`` are in (PROTOCOL.md section 4). The core claims it only when
:meth:`~.core.ServerCore.next_event` would hand it to the device whole: every earlier message
processed, the request valid (the codec's rules: ``size`` is the data's length, ``argsz >= 8
+ size``; a plain command that wants a reply; no fds), VERSION negotiated, no migration-data
channel open (the main socket carries the stream; its pump is then the only thread using the
device), MIG_DATA_WRITE allowed in the current state (:mod:`protocol.gating`), ``size`` within
``max_data_xfer_size``, and a device that takes its stream in place (``migdev``:
:meth:`~..device.migdev.MigDev.mig_data_write_buffers`). Anything else is framed and dispatched
as before. A claimed request is answered when its last byte is in, exactly as the dispatched
one: success, or the errno of the device's first refusal (a refused stream poisons the
device's decoder on either path, so the bytes after the refusal are dropped unread by it).

:class:`InPlaceWrite` is the framer's sink for one claimed request: bytes received in the pump's
buffer are passed to ``mig_data_write``; where the device offers a view of its memory
(``mig_data_write_buffers``: the page data of PAGES records, pages never loaded before, see
:mod:`..device.stream_inplace`) the pump receives into them, other bytes into a scratch
buffer. The
device's checks are those of the fed path (the stream decoder's; every page copy is checked
against its fingerprint by the end of the stream, :mod:`..device.stream_decoder`).

Two cases differ from dispatching the whole message, since the device has taken bytes the
framed path would not have given it yet: the connection drops before a claimed request was
answered (inside it: the rest never comes), or fds arrive with its bytes after its head (the
request is refused, EINVAL, as any MIG_DATA_WRITE with fds). The device's restore is then refused
(``mig_data_write_abort``): RESUMING -> STOP fails with EINVAL and the device goes to ERROR, as
for any stream that is not whole. (Framed, such a request was dropped or refused unseen, and a
client could have sent it again.)
"""

from __future__ import annotations

import contextlib
from typing import Protocol

from vfio_user_mig import wire

#: Bytes of the scratch buffer a claimed request's non-page bytes are received into.
SCRATCH = 256 * 1024
ABORT_LOST = "connection lost inside a MIG_DATA_WRITE: the stream was cut"
ABORT_FDS = "MIG_DATA_WRITE refused (file descriptors): the stream was cut"


class InPlaceDevice(Protocol):
    """What :class:`InPlaceWrite` needs of the device (``migdev`` has it)."""

    def mig_data_write(self, data: bytes | memoryview) -> None: ...

    def mig_data_write_buffers(self, max_size: int) -> list[memoryview]: ...

    def mig_data_write_feed_size(self) -> int: ...

    def mig_data_write_received(self, n: int) -> None: ...

    def mig_data_write_abort(self, reason: str) -> None: ...


class InPlaceWrite:
    """The framer's sink for one claimed MIG_DATA_WRITE (see module docstring); ``failure``
    is the first exception the device raised (the request's answer), ``request`` the message
    the framer hands back once the data is all in (its data already delivered: empty)."""

    def __init__(self, device: InPlaceDevice, request: wire.MigDataWrite,
                 scratch: memoryview) -> None:
        self.request = request
        self.failure: Exception | None = None
        self._device = device
        self._scratch = scratch
        self._direct = False

    def write(self, data: memoryview) -> None:
        if self.failure is None:
            try:
                self._device.mig_data_write(data)
            except Exception as exc:  # answered at the end, as the dispatched request
                self.failure = exc

    def buffers(self, n: int) -> list[memoryview]:
        self._direct = False
        if self.failure is None:
            try:
                views = self._device.mig_data_write_buffers(n)
                if not views:  # no more than the device takes before it may have buffers
                    n = min(n, self._device.mig_data_write_feed_size())
            except Exception as exc:
                self.failure = exc
            else:
                if views:
                    self._direct = True
                    return views
        return [self._scratch[:n]]

    def received(self, n: int) -> None:
        if not self._direct:
            self.write(self._scratch[:n])
        elif self.failure is None:
            try:
                self._device.mig_data_write_received(n)
            except Exception as exc:
                self.failure = exc

    def message(self) -> wire.MigDataWrite:
        return self.request

    def abort(self, reason: str) -> None:
        """The request will not be answered as a whole (module docstring)."""
        with contextlib.suppress(Exception):
            self._device.mig_data_write_abort(reason)


__all__ = ["ABORT_FDS", "ABORT_LOST", "SCRATCH", "InPlaceDevice", "InPlaceWrite"]
