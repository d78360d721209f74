"""DEVICE_FEATURE (16) with typed feature payloads (PROTOCOL.md section 3;
vfio-user.rst "VFIO_USER_DEVICE_FEATURE").

Payload {argsz u32, flags u32, data}: flags bits 0-15 are the feature index, bit 16 GET, 17 SET,
18 PROBE; GET and SET are exclusive unless PROBE is set; at least one must be set; bits 19-31
are invalid. The ``data`` type follows from (feature, operation, direction):

============================  =====  ==========================  =============================
feature                       op     request data                reply data
============================  =====  ==========================  =============================
MIGRATION (1)                 GET    none                        :class:`MigrationInfo`
MIG_DEVICE_STATE (2)          GET    none                        :class:`MigDeviceState`
MIG_DEVICE_STATE (2)          SET    :class:`MigDeviceState`     same (echo)
DMA_LOGGING_START/STOP (6/7)  SET    :class:`DmaLoggingControl`  same (echo)
DMA_LOGGING_REPORT (8)        GET    :class:`DmaLoggingReport`   :class:`DmaLoggingReportData`
MIG_DATA_SIZE (9) [#exp]_     GET    none                        :class:`MigDataSize`
any                           PROBE  raw (normally none)         raw (echo)
============================  =====  ==========================  =============================

.. [#exp] Experimental: not in vfio-user.rst nor libvfio-user; the kernel's
   ``VFIO_DEVICE_FEATURE_MIG_DATA_SIZE`` carried over DEVICE_FEATURE (docs/wire-compat.md).

Anything else (unknown feature, an op the feature lacks, or extra bytes on a data-less GET)
is carried as raw bytes, so the server can answer it with an error reply itself.
"""

from __future__ import annotations

from typing import Final

from vfio_user_mig.model.states import MigrationCaps, State
from vfio_user_mig.wire.bitmap import DirtyBitmap, bitmap_len, page_count, tail_is_clear
from vfio_user_mig.wire.constants import (
    FEATURE_INDEX_MASK,
    FEATURE_OP_MASK,
    HEADER_SIZE,
    Command,
    FeatureIndex,
    FeatureOp,
)
from vfio_user_mig.wire.errors import WireError, invalid
from vfio_user_mig.wire.layouts import (
    DEVICE_FEATURE,
    FEATURE_LOGGING_CONTROL,
    FEATURE_LOGGING_REPORT,
    FEATURE_MIG_DATA_SIZE,
    FEATURE_MIG_STATE,
    FEATURE_MIGRATION,
    LOGGING_RANGE,
)
from vfio_user_mig.wire.msg_base import (
    NO_REPLY,
    Data,
    Message,
    Parts,
    Reply,
    Request,
    expect_min,
    hstruct,
    register,
)
from vfio_user_mig.wire.record import Record, record

_H_FEATURE = hstruct(DEVICE_FEATURE)
_NAME = "DEVICE_FEATURE"


@record
class MigrationInfo(Record):
    """MIGRATION GET reply data {flags u64}: the device's migration capabilities."""

    flags: MigrationCaps

    def _pack(self) -> bytes:
        return FEATURE_MIGRATION.pack(int(self.flags))

    @classmethod
    def _unpack(cls, data: memoryview) -> MigrationInfo:
        _size("MIGRATION", data, FEATURE_MIGRATION.size)
        return cls(MigrationCaps(FEATURE_MIGRATION.unpack_from(data)[0]))


@record
class MigDeviceState(Record):
    """MIG_DEVICE_STATE data {device_state u32, data_fd u32}.

    ``device_state`` is a :class:`State` when 0-7, else the raw number (so a server can refuse
    e.g. 8 itself; libvfio-user lets 8 through, PROTOCOL.md section 5). ``data_fd`` is unused
    in vfio-user; clients send 0 or 0xFFFFFFFF (-1), kept as the unsigned u32. ``extra``: bytes
    after the struct, within ``argsz`` (the kernel's ``vfio_check_feature`` takes an ``argsz``
    above the struct's size, and libvfio-user echoes them in the SET reply), kept so that the
    echo and decode-then-encode are byte-identical.
    """

    device_state: State | int
    data_fd: int = 0
    extra: bytes = b""

    def _pack(self) -> bytes:
        return FEATURE_MIG_STATE.pack(int(self.device_state), self.data_fd) + self.extra

    @classmethod
    def _unpack(cls, data: memoryview) -> MigDeviceState:
        if len(data) < FEATURE_MIG_STATE.size:
            _size("MIG_DEVICE_STATE", data, FEATURE_MIG_STATE.size)
        state, fd = FEATURE_MIG_STATE.unpack_from(data)
        return cls(State(state) if state <= State.PRE_COPY_P2P else state, fd,
                   bytes(data[FEATURE_MIG_STATE.size:]))


@record
class MigDataSize(Record):
    """MIG_DATA_SIZE GET reply data {stop_copy_length u64} (experimental, the kernel's
    ``struct vfio_device_feature_mig_data_size``): bytes the device estimates it still has to
    send if switched to STOP_COPY now."""

    stop_copy_length: int

    def _pack(self) -> bytes:
        return FEATURE_MIG_DATA_SIZE.pack(self.stop_copy_length)

    @classmethod
    def _unpack(cls, data: memoryview) -> MigDataSize:
        _size("MIG_DATA_SIZE", data, FEATURE_MIG_DATA_SIZE.size)
        return cls(FEATURE_MIG_DATA_SIZE.unpack_from(data)[0])


@record
class DmaRange(Record):
    """One IOVA range {iova u64, length u64} of DMA_LOGGING_START/STOP."""

    iova: int
    length: int


@record
class DmaLoggingControl(Record):
    """DMA_LOGGING_START/STOP data {page_size u64, num_ranges u32, reserved u32, ranges[]}.

    ``num_ranges`` on the wire is ``len(ranges)``; 0 means "log everything" in the spec (the
    kernel rejects it, libvfio-user ignores ranges altogether).
    """

    page_size: int
    ranges: tuple[DmaRange, ...] = ()
    reserved: int = 0

    def _pack(self) -> bytes:
        head = FEATURE_LOGGING_CONTROL.pack(self.page_size, len(self.ranges), self.reserved)
        return head + b"".join(LOGGING_RANGE.pack(r.iova, r.length) for r in self.ranges)

    @classmethod
    def _unpack(cls, data: memoryview) -> DmaLoggingControl:
        if len(data) < FEATURE_LOGGING_CONTROL.size:
            _size("DMA_LOGGING", data, FEATURE_LOGGING_CONTROL.size)
        page_size, num, reserved = FEATURE_LOGGING_CONTROL.unpack_from(data)
        rest = len(data) - FEATURE_LOGGING_CONTROL.size
        if num * LOGGING_RANGE.size != rest:
            raise invalid(f"{_NAME}.data.num_ranges", f"{num} ranges do not fill {rest} bytes")
        base = FEATURE_LOGGING_CONTROL.size
        ranges = tuple(
            DmaRange(*LOGGING_RANGE.unpack_from(data, base + i * LOGGING_RANGE.size))
            for i in range(num)
        )
        return cls(page_size, ranges, reserved)


@record
class DmaLoggingReport(Record):
    """DMA_LOGGING_REPORT GET request data {iova u64, length u64, page_size u64}."""

    iova: int
    length: int
    page_size: int

    def _pack(self) -> bytes:
        return FEATURE_LOGGING_REPORT.pack(self.iova, self.length, self.page_size)

    @classmethod
    def _unpack(cls, data: memoryview) -> DmaLoggingReport:
        _size("DMA_LOGGING_REPORT", data, FEATURE_LOGGING_REPORT.size)
        return cls(*FEATURE_LOGGING_REPORT.unpack_from(data))

    def bitmap_size(self) -> int:
        """Bytes of bitmap the reply carries (:func:`bitmap_len`)."""
        return bitmap_len(self.length, self.page_size)


@record
class DmaLoggingReportData(Record):
    """DMA_LOGGING_REPORT GET reply data: the request's 24 bytes + the bitmap (offset 24)."""

    iova: int
    length: int
    page_size: int
    bitmap: Data

    def _pack(self) -> bytes:
        head = FEATURE_LOGGING_REPORT.pack(self.iova, self.length, self.page_size)
        return head + bytes(self.bitmap)

    @classmethod
    def _unpack(cls, data: memoryview) -> DmaLoggingReportData:
        expect_min(f"{_NAME}.data", data, FEATURE_LOGGING_REPORT.size)
        iova, length, page_size = FEATURE_LOGGING_REPORT.unpack_from(data)
        bitmap = data[FEATURE_LOGGING_REPORT.size :]
        try:
            size = bitmap_len(length, page_size)
        except WireError as exc:
            raise invalid(f"{_NAME}.data.page_size", exc.detail) from None
        if len(bitmap) != size:
            raise invalid(f"{_NAME}.data.bitmap", f"{len(bitmap)} bytes, expected {size}")
        if not tail_is_clear(bitmap, page_count(length, page_size)):
            raise invalid(f"{_NAME}.data.bitmap", "bits set beyond the requested range")
        return cls(iova, length, page_size, bitmap)

    @classmethod
    def of(cls, bitmap: DirtyBitmap) -> DmaLoggingReportData:
        return cls(bitmap.iova, bitmap.length, bitmap.page_size, bitmap.to_bytes())

    def dirty_bitmap(self) -> DirtyBitmap:
        """The bitmap as a :class:`DirtyBitmap` (a copy)."""
        return DirtyBitmap(self.iova, self.length, self.page_size, self.bitmap)


FeaturePayload = (
    MigrationInfo
    | MigDeviceState
    | DmaLoggingControl
    | DmaLoggingReport
    | DmaLoggingReportData
    | MigDataSize
)
#: ``None`` (no data), a typed payload, or raw bytes.
FeatureData = FeaturePayload | bytes | memoryview | None

_GET = int(FeatureOp.GET)
_SET = int(FeatureOp.SET)
_PROBE = int(FeatureOp.PROBE)
_NO_OPS = FeatureOp(0)

#: (feature, op, is_reply) -> typed payload class; see the module docstring.
PAYLOAD_TYPES: Final[dict[tuple[int, int, bool], type[FeaturePayload]]] = {
    (FeatureIndex.MIGRATION, _GET, True): MigrationInfo,
    (FeatureIndex.MIG_DEVICE_STATE, _GET, True): MigDeviceState,
    (FeatureIndex.MIG_DEVICE_STATE, _SET, False): MigDeviceState,
    (FeatureIndex.MIG_DEVICE_STATE, _SET, True): MigDeviceState,
    (FeatureIndex.DMA_LOGGING_START, _SET, False): DmaLoggingControl,
    (FeatureIndex.DMA_LOGGING_START, _SET, True): DmaLoggingControl,
    (FeatureIndex.DMA_LOGGING_STOP, _SET, False): DmaLoggingControl,
    (FeatureIndex.DMA_LOGGING_STOP, _SET, True): DmaLoggingControl,
    (FeatureIndex.DMA_LOGGING_REPORT, _GET, False): DmaLoggingReport,
    (FeatureIndex.DMA_LOGGING_REPORT, _GET, True): DmaLoggingReportData,
    (FeatureIndex.MIG_DATA_SIZE, _GET, True): MigDataSize,
}

#: Reply data size a GET needs, for the request's default ``argsz``.
_GET_REPLY_SIZE: Final[dict[int, int]] = {
    FeatureIndex.MIGRATION: FEATURE_MIGRATION.size,
    FeatureIndex.MIG_DEVICE_STATE: FEATURE_MIG_STATE.size,
    FeatureIndex.MIG_DATA_SIZE: FEATURE_MIG_DATA_SIZE.size,
}


def _size(what: str, data: memoryview, size: int) -> None:
    if len(data) != size:
        raise invalid(f"{_NAME}.data", f"{what} data is {len(data)} bytes, expected {size}")


def _feature(index: int) -> FeatureIndex | int:
    try:
        return FeatureIndex(index)
    except ValueError:
        return index


def check_feature_flags(flags: int) -> None:
    """Reject unknown bits, no operation, and GET+SET without PROBE (EINVAL)."""
    ops = flags & ~FEATURE_INDEX_MASK
    if ops & ~FEATURE_OP_MASK:
        raise invalid(f"{_NAME}.flags", f"unknown bits {ops & ~FEATURE_OP_MASK:#x}")
    if not ops:
        raise invalid(f"{_NAME}.flags", "no GET, SET or PROBE")
    if ops & _GET and ops & _SET and not ops & _PROBE:
        raise invalid(f"{_NAME}.flags", "GET and SET together without PROBE")


def _typed_key(feature: int, ops: int, reply: bool) -> tuple[int, int, bool] | None:
    if ops & _PROBE:
        return None
    return (feature, ops, reply)


def _pack_data(data: FeatureData) -> Data:
    if data is None:
        return b""
    if isinstance(data, bytes | memoryview):
        return data
    return data._pack()


def _check_type(feature: int, ops: int, reply: bool, data: FeatureData) -> None:
    if data is None or isinstance(data, bytes | memoryview):
        return
    key = _typed_key(feature, ops, reply)
    expected = PAYLOAD_TYPES.get(key) if key else None
    if type(data) is not expected:
        raise invalid(
            f"{_NAME}.data",
            f"{type(data).__name__} does not fit feature {feature} ops {ops:#x}",
        )


def _parse_data(feature: int, ops: int, reply: bool, data: memoryview) -> FeatureData:
    key = _typed_key(feature, ops, reply)
    typ = PAYLOAD_TYPES.get(key) if key else None
    if typ is None:
        return data if len(data) else None
    if feature == FeatureIndex.DMA_LOGGING_STOP and not len(data):
        return None  # the kernel's DMA_LOGGING_STOP takes no data; libvfio-user accepts none
    return typ._unpack(data)


def _encode(msg: DeviceFeature | DeviceFeatureReply) -> Parts:
    flags = int(msg.feature) | int(msg.ops)
    check_feature_flags(flags)
    if int(msg.feature) & ~FEATURE_INDEX_MASK:
        raise invalid(f"{_NAME}.feature", f"{msg.feature} is not 16 bits")
    _check_type(int(msg.feature), int(msg.ops), msg.IS_REPLY, msg.data)
    data = _pack_data(msg.data)
    size = HEADER_SIZE + DEVICE_FEATURE.size + len(data)
    head = _H_FEATURE.pack(msg.msg_id, msg.COMMAND, size, msg._flags(), 0, msg.argsz, flags)
    return [head, data] if len(data) else [head]


def _decode_fields(
    payload: memoryview, reply: bool
) -> tuple[FeatureIndex | int, FeatureOp, FeatureData, int]:
    name = f"{_NAME}.reply" if reply else _NAME
    expect_min(name, payload, DEVICE_FEATURE.size)
    argsz, flags = DEVICE_FEATURE.unpack_from(payload)
    check_feature_flags(flags)
    feature = flags & FEATURE_INDEX_MASK
    ops = flags & ~FEATURE_INDEX_MASK
    n = len(payload)
    if reply:
        if ops == _GET and argsz != n:
            raise invalid(f"{name}.argsz", f"{argsz} != reply payload size {n}")
    elif ops == _GET:
        if argsz < DEVICE_FEATURE.size:
            raise invalid(f"{name}.argsz", f"{argsz} < {DEVICE_FEATURE.size}")
    elif argsz < n:
        raise invalid(f"{name}.argsz", f"{argsz} < payload size {n}: the reply echoes it")
    data = _parse_data(feature, ops, reply, payload[DEVICE_FEATURE.size :])
    return _feature(feature), FeatureOp(ops), data, argsz


def _default_argsz(feature: int, ops: int, reply: bool, data: FeatureData) -> int:
    n = DEVICE_FEATURE.size + len(_pack_data(data))
    if reply or ops != _GET:
        return n
    if isinstance(data, DmaLoggingReport):
        return n + data.bitmap_size()
    return n + _GET_REPLY_SIZE.get(feature, 0)


@register(Command.DEVICE_FEATURE)
@record
class DeviceFeature(Request):
    """DEVICE_FEATURE request: ``feature`` (index) + ``ops`` (GET/SET/PROBE) + ``data``.

    ``argsz`` (max reply size) defaults to what the reply needs: 8 + data for SET/PROBE, 8 + the
    feature's reply data for GET (16 for MIGRATION, MIG_DEVICE_STATE and MIG_DATA_SIZE, 32 +
    bitmap for DMA_LOGGING_REPORT).
    """

    feature: FeatureIndex | int
    ops: FeatureOp
    data: FeatureData = None
    argsz: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.data, bytes | memoryview) and not len(self.data):
            object.__setattr__(self, "data", None)
        if self.argsz is None:
            object.__setattr__(
                self,
                "argsz",
                _default_argsz(int(self.feature), int(self.ops), False, self.data),
            )

    @classmethod
    def get_request(
        cls, feature: FeatureIndex | int, data: FeatureData = None, *, msg_id: int = 0
    ) -> DeviceFeature:
        """A GET (``data`` only for DMA_LOGGING_REPORT)."""
        return cls(feature, FeatureOp.GET, data, msg_id=msg_id)

    @classmethod
    def set_request(
        cls, feature: FeatureIndex | int, data: FeatureData, *, msg_id: int = 0
    ) -> DeviceFeature:
        """A SET carrying ``data``."""
        return cls(feature, FeatureOp.SET, data, msg_id=msg_id)

    @classmethod
    def probe_request(
        cls, feature: FeatureIndex | int, ops: FeatureOp = _NO_OPS, *, msg_id: int = 0
    ) -> DeviceFeature:
        """A PROBE, optionally with the GET and/or SET bits to probe for."""
        return cls(feature, FeatureOp.PROBE | ops, None, msg_id=msg_id)

    @classmethod
    def set_state(
        cls, state: State | int, data_fd: int = 0, *, msg_id: int = 0
    ) -> DeviceFeature:
        """SET MIG_DEVICE_STATE (libvfio-user's client sends argsz 16, data_fd 0)."""
        return cls.set_request(
            FeatureIndex.MIG_DEVICE_STATE, MigDeviceState(state, data_fd), msg_id=msg_id
        )

    def _encode(self, strict: bool) -> Parts:
        return _encode(self)

    @classmethod
    def _decode(cls, msg_id: int, flags: int, payload: memoryview) -> Message:
        feature, ops, data, argsz = _decode_fields(payload, False)
        return cls(feature, ops, data, argsz, msg_id=msg_id, no_reply=bool(flags & NO_REPLY))


@register(Command.DEVICE_FEATURE)
@record
class DeviceFeatureReply(Reply):
    """DEVICE_FEATURE reply. SET and PROBE replies echo the request (including its argsz);
    GET replies carry the data with ``argsz`` = reply payload size (the default)."""

    feature: FeatureIndex | int
    ops: FeatureOp
    data: FeatureData = None
    argsz: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.data, bytes | memoryview) and not len(self.data):
            object.__setattr__(self, "data", None)
        if self.argsz is None:
            object.__setattr__(
                self, "argsz", _default_argsz(int(self.feature), int(self.ops), True, self.data)
            )

    @classmethod
    def echo(cls, request: DeviceFeature) -> DeviceFeatureReply:
        """The reply to a SET or PROBE: the request payload echoed, same msg_id."""
        return cls(
            request.feature, request.ops, request.data, request.argsz, msg_id=request.msg_id
        )

    def _encode(self, strict: bool) -> Parts:
        return _encode(self)

    @classmethod
    def _decode(cls, msg_id: int, flags: int, payload: memoryview) -> Message:
        feature, ops, data, argsz = _decode_fields(payload, True)
        return cls(feature, ops, data, argsz, msg_id=msg_id)
