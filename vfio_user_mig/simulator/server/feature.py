"""Server handlers for DEVICE_FEATURE (migration info, MIG_DEVICE_STATE, dirty logging, the
experimental MIG_DATA_SIZE) and for MIG_DATA_READ/MIG_DATA_WRITE (PROTOCOL.md sections 3 and 4;
docs/wire-compat.md for the extension).
"""

from __future__ import annotations

import dataclasses
import errno as _errno
from collections.abc import Callable
from typing import Any

from vfio_user_mig import wire
from vfio_user_mig.model import InvalidTransition
from vfio_user_mig.simulator.device.errors import DeviceError
from vfio_user_mig.simulator.server.state import ServerState
from vfio_user_mig.simulator.server.types import (
    Refusal,
)
from vfio_user_mig.wire.constants import (
    FEATURE_OPS,
    U64_MAX,
    FeatureIndex,
    FeatureOp,
)
from vfio_user_mig.wire.layouts import (
    DEVICE_FEATURE,
    FEATURE_LOGGING_REPORT,
)
from vfio_user_mig.wire.msg_feature import MigDataSize

#: :data:`FEATURE_OPS` as plain ints (feature index -> operation bits), and the bits asked.
_ALLOWED_OPS = {int(f): int(o) for f, o in FEATURE_OPS.items()}
_GET, _SET, _PROBE = int(FeatureOp.GET), int(FeatureOp.SET), int(FeatureOp.PROBE)
_MIG_DATA_SIZE = int(FeatureIndex.MIG_DATA_SIZE)
#: The handler method of each feature (by name: bound per server).
_HANDLERS = {
    int(FeatureIndex.MIGRATION): "_feat_migration",
    int(FeatureIndex.MIG_DEVICE_STATE): "_feat_state",
    int(FeatureIndex.DMA_LOGGING_START): "_feat_log_start",
    int(FeatureIndex.DMA_LOGGING_STOP): "_feat_log_stop",
    int(FeatureIndex.DMA_LOGGING_REPORT): "_feat_log_report",
    _MIG_DATA_SIZE: "_feat_mig_data_size",
}


class FeatureHandlers(ServerState):
    """DEVICE_FEATURE and migration data."""

    def _feature(self, msg: wire.DeviceFeature, fds: list[int]) -> tuple[Any, list[int]]:
        ops = int(msg.ops)
        feature = int(msg.feature)
        allowed = _ALLOWED_OPS.get(feature)
        if feature == _MIG_DATA_SIZE and self._mig_data_size_fn() is not None:
            allowed = _GET
        if allowed is None:  # libvfio-user: device_feature_flags_supported() == 0 -> EINVAL
            raise Refusal(_errno.EINVAL, f"device feature {feature} unsupported")
        if ops & (_GET | _SET) & ~allowed:
            raise Refusal(_errno.EINVAL, f"feature {feature}: operation not supported")
        if ops & _PROBE:  # PROTOCOL.md section 3: the reply echoes the request
            return wire.DeviceFeatureReply.echo(msg), []
        data = getattr(self, _HANDLERS[feature])(msg)
        if ops & _SET:
            # PROTOCOL.md section 3: a SET reply echoes the request, except that
            # DMA_LOGGING_START's carries the page size selected (vfio-user.rst: "the same as
            # the request, unless the page size was changed"): the handler returns the data.
            return wire.DeviceFeatureReply(
                msg.feature, msg.ops, data, msg.argsz, msg_id=msg.msg_id
            ), []
        reply = wire.DeviceFeatureReply(
            feature=msg.feature, ops=msg.ops, data=data, msg_id=msg.msg_id
        )
        # ``argsz`` is the largest reply the client takes (vfio-user.rst "argsz"): a GET whose
        # reply does not fit is refused with EINVAL (libvfio-user's
        # handle_migration_device_feature_get). These GETs have no side effect, so checking
        # after building the reply is safe; DMA_LOGGING_REPORT (read-and-clear) checks first.
        if (reply.argsz or 0) > (msg.argsz or 0):
            raise Refusal(
                _errno.EINVAL, f"feature {feature} GET: argsz {msg.argsz} < reply {reply.argsz}"
            )
        return reply, []

    def _feat_migration(self, msg: wire.DeviceFeature) -> Any:
        return wire.MigrationInfo(self.device.migration_caps)

    def _feat_state(self, msg: wire.DeviceFeature) -> Any:
        if int(msg.ops) & _GET:
            return wire.MigDeviceState(self.state, 0)
        data = msg.data
        if not isinstance(data, wire.MigDeviceState):
            raise Refusal(_errno.EINVAL, "MIG_DEVICE_STATE SET without a state", echo=True)
        try:
            result = self.fsm.set_state(int(data.device_state))
        except InvalidTransition as exc:
            raise Refusal(exc.errno, str(exc), echo=True) from None
        if result.error is not None:
            raise Refusal(result.error.errno, str(result.error), echo=True)
        return data

    def _mig_data_size_fn(self) -> Callable[[], int] | None:
        """The device's ``pending_bytes`` when MIG_DATA_SIZE is enabled and it has one."""
        if not self.config.experimental_mig_data_size:
            return None
        fn = getattr(self.device, "pending_bytes", None)
        return fn if callable(fn) else None

    def _feat_mig_data_size(self, msg: wire.DeviceFeature) -> Any:
        fn = self._mig_data_size_fn()
        if fn is None:  # not reached: _feature checked it
            raise Refusal(_errno.EINVAL, "MIG_DATA_SIZE unsupported")
        try:
            size = int(fn())
        except DeviceError as exc:
            raise Refusal(exc.errno, str(exc)) from None
        return MigDataSize(min(max(size, 0), U64_MAX))

    def _feat_log_start(self, msg: wire.DeviceFeature) -> Any:
        data = msg.data
        if not isinstance(data, wire.DmaLoggingControl):
            raise Refusal(_errno.EINVAL, "DMA_LOGGING_START without control data", echo=True)
        if len(data.ranges) > self.config.max_logging_ranges:
            raise Refusal(
                _errno.E2BIG,
                f"DMA_LOGGING_START {len(data.ranges)} ranges > {self.config.max_logging_ranges}",
                echo=True,
            )
        try:
            selected = self.device.dirty_log.start(
                data.page_size, [(r.iova, r.length) for r in data.ranges]
            )
        except DeviceError as exc:
            raise Refusal(exc.errno, str(exc), echo=True) from None
        # page_size is a hint; the reply carries the size selected (dirtylog.select_page_size)
        return dataclasses.replace(data, page_size=selected)

    def _feat_log_stop(self, msg: wire.DeviceFeature) -> Any:
        try:
            self.device.dirty_log.stop()
        except DeviceError as exc:
            raise Refusal(exc.errno, str(exc), echo=True) from None
        return msg.data

    def _feat_log_report(self, msg: wire.DeviceFeature) -> Any:
        data = msg.data
        if not isinstance(data, wire.DmaLoggingReport):
            raise Refusal(_errno.EINVAL, "DMA_LOGGING_REPORT without a range")
        page_size = data.page_size
        if page_size <= 0 or page_size & (page_size - 1):
            raise Refusal(_errno.EINVAL, f"DMA_LOGGING_REPORT page_size {page_size:#x}")
        if data.length < page_size:  # libvfio-user's get_bitmap_size()
            raise Refusal(
                _errno.EINVAL, f"DMA_LOGGING_REPORT length {data.length:#x} < page_size"
            )
        size = wire.bitmap_len(data.length, page_size)
        need = DEVICE_FEATURE.size + FEATURE_LOGGING_REPORT.size + size
        if (msg.argsz or 0) < need:  # argsz: the largest reply taken (vfio-user.rst)
            raise Refusal(_errno.EINVAL, f"DMA_LOGGING_REPORT argsz {msg.argsz} < {need}")
        limit = min(self.config.max_bitmap_size, self._client_limit())
        if size > limit:  # checked before anything is allocated or cleared
            raise Refusal(_errno.E2BIG, f"DMA_LOGGING_REPORT bitmap {size} bytes > {limit}")
        if not self.dma.covers(data.iova, data.length):  # libvfio-user: dma_addr_to_sgl
            raise Refusal(
                _errno.ENOENT,
                f"DMA_LOGGING_REPORT {data.iova:#x}+{data.length:#x} is not all DMA-mapped",
            )
        try:
            pages = self.device.dirty_log.report(data.iova, data.length, data.page_size)
            bitmap = wire.DirtyBitmap.from_pages(data.iova, data.length, data.page_size, pages)
        except (DeviceError, ValueError) as exc:
            raise Refusal(getattr(exc, "errno", _errno.EINVAL), str(exc)) from None
        return wire.DmaLoggingReportData(data.iova, data.length, data.page_size, bitmap.to_bytes())

    # ----- handlers: migration data ------------------------------------------------------------
    def _mig_data_read(self, msg: wire.MigDataRead, fds: list[int]) -> tuple[Any, list[int]]:
        # The reply goes to the client: its max_data_xfer_size bounds it (PROTOCOL.md section
        # 4, libvfio-user's handle_mig_data_read); ours bounds what we buffer (SECURITY.md).
        limit = min(self.config.max_data_xfer_size, self._client_limit())
        if msg.size > limit:
            raise Refusal(_errno.EINVAL, f"MIG_DATA_READ size {msg.size} > {limit}")
        if msg.size == 0:  # nothing asked, nothing read (libvfio-user: a 0-byte read_data)
            return wire.MigDataReadReply(b"", None, msg_id=msg.msg_id), []
        data: bytes | memoryview | wire.Gather
        try:  # parts sent by scatter-gather, never joined
            parts = self.device.mig_data_read_parts(msg.size)
            data = parts[0] if len(parts) == 1 else wire.Gather(parts)
        except DeviceError as exc:
            raise Refusal(exc.errno, str(exc)) from None
        requested = msg.size if self._pad_mig_data else None
        return wire.MigDataReadReply(data, requested, msg_id=msg.msg_id), []

    def _mig_data_write(self, msg: wire.MigDataWrite, fds: list[int]) -> tuple[Any, list[int]]:
        limit = self.config.max_data_xfer_size
        if len(msg.data) > limit:
            raise Refusal(_errno.EINVAL, f"MIG_DATA_WRITE size {len(msg.data)} > {limit}")
        try:
            self.device.mig_data_write(msg.data)  # a view into the message's own buffer
        except DeviceError as exc:
            raise Refusal(exc.errno, str(exc)) from None
        return wire.MigDataWriteReply(msg_id=msg.msg_id), []

__all__ = ["FeatureHandlers"]
