"""Byte-exact, sans-IO codecs for every vfio-user message (PROTOCOL.md sections 1-4).

Public API (see each module's docstring for its contract and spec section):

* :func:`decode` / :func:`encode` / :func:`encode_parts` (:mod:`.codec`): one whole message
  <-> bytes; ``decode`` then ``encode`` is byte-identical for anything accepted.
* :class:`Framer` (:mod:`.framer`): stream + fds in, whole messages + fds out.
* :class:`Header`, :class:`Command` and the flag enums (:mod:`.constants`).
* Message classes, one request and one reply per command (:data:`REGISTRY`), plus
  :class:`ErrorReply` and :func:`error_reply`.
* :class:`Capabilities` (VERSION JSON), :class:`DirtyBitmap` / :func:`bitmap_len`.
* :class:`WireError` (``ValueError`` with ``.errno``): the only exception ``decode`` raises.

No sockets here: callers do the I/O. ``strict_spec=True`` on encode sends what the spec text
says where libvfio-user differs; the default sends what libvfio-user sends
(docs/wire-compat.md lists every difference).
"""

from vfio_user_mig.wire.bitmap import DirtyBitmap, bitmap_len, page_count
from vfio_user_mig.wire.capabilities import Capabilities
from vfio_user_mig.wire.codec import (
    check_header,
    decode,
    decode_header,
    encode,
    encode_parts,
    error_reply,
)
from vfio_user_mig.wire.constants import (
    DEFAULT_MAX_DATA_XFER_SIZE,
    DEFAULT_MAX_MSG_SIZE,
    HEADER_SIZE,
    Command,
    DeviceInfoFlag,
    DmaMapFlag,
    DmaUnmapFlag,
    FeatureIndex,
    FeatureOp,
    HeaderFlag,
    IoFdType,
    IrqInfoFlag,
    IrqSetFlag,
    MsgType,
    RegionCapId,
    RegionInfoFlag,
)
from vfio_user_mig.wire.errors import WireError
from vfio_user_mig.wire.framer import Framer
from vfio_user_mig.wire.header import Header
from vfio_user_mig.wire.msg_access import (
    DmaRead,
    DmaReadReply,
    DmaWrite,
    DmaWriteReply,
    MultiWrite,
    RegionRead,
    RegionReadReply,
    RegionWrite,
    RegionWriteMulti,
    RegionWriteMultiReply,
    RegionWriteReply,
)
from vfio_user_mig.wire.msg_base import REGISTRY, ErrorReply, Message, Reply, Request
from vfio_user_mig.wire.msg_feature import (
    DeviceFeature,
    DeviceFeatureReply,
    DmaLoggingControl,
    DmaLoggingReport,
    DmaLoggingReportData,
    DmaRange,
    FeatureData,
    MigDeviceState,
    MigrationInfo,
)
from vfio_user_mig.wire.msg_irq import IrqInfo, IrqInfoReply, IrqSet, IrqSetReply
from vfio_user_mig.wire.msg_migration import (
    Gather,
    MigDataRead,
    MigDataReadReply,
    MigDataWrite,
    MigDataWriteReply,
)
from vfio_user_mig.wire.msg_region import (
    RegionInfo,
    RegionInfoReply,
    RegionIoFds,
    RegionIoFdsReply,
    SubRegionIoFd,
)
from vfio_user_mig.wire.msg_setup import (
    DeviceGetInfo,
    DeviceGetInfoReply,
    DeviceReset,
    DeviceResetReply,
    DmaMap,
    DmaMapReply,
    DmaUnmap,
    DmaUnmapReply,
    UnmapBitmap,
    Version,
    VersionReply,
)
from vfio_user_mig.wire.region_caps import RawCap, RegionCap, SparseArea, SparseMmapCap, TypeCap

__all__ = [
    "DEFAULT_MAX_DATA_XFER_SIZE",
    "DEFAULT_MAX_MSG_SIZE",
    "HEADER_SIZE",
    "REGISTRY",
    "Capabilities",
    "Command",
    "DeviceFeature",
    "DeviceFeatureReply",
    "DeviceGetInfo",
    "DeviceGetInfoReply",
    "DeviceInfoFlag",
    "DeviceReset",
    "DeviceResetReply",
    "DirtyBitmap",
    "DmaLoggingControl",
    "DmaLoggingReport",
    "DmaLoggingReportData",
    "DmaMap",
    "DmaMapFlag",
    "DmaMapReply",
    "DmaRange",
    "DmaRead",
    "DmaReadReply",
    "DmaUnmap",
    "DmaUnmapFlag",
    "DmaUnmapReply",
    "DmaWrite",
    "DmaWriteReply",
    "ErrorReply",
    "FeatureData",
    "FeatureIndex",
    "FeatureOp",
    "Framer",
    "Gather",
    "Header",
    "HeaderFlag",
    "IoFdType",
    "IrqInfo",
    "IrqInfoFlag",
    "IrqInfoReply",
    "IrqSet",
    "IrqSetFlag",
    "IrqSetReply",
    "Message",
    "MigDataRead",
    "MigDataReadReply",
    "MigDataWrite",
    "MigDataWriteReply",
    "MigDeviceState",
    "MigrationInfo",
    "MsgType",
    "MultiWrite",
    "RawCap",
    "RegionCap",
    "RegionCapId",
    "RegionInfo",
    "RegionInfoFlag",
    "RegionInfoReply",
    "RegionIoFds",
    "RegionIoFdsReply",
    "RegionRead",
    "RegionReadReply",
    "RegionWrite",
    "RegionWriteMulti",
    "RegionWriteMultiReply",
    "RegionWriteReply",
    "Reply",
    "Request",
    "SparseArea",
    "SparseMmapCap",
    "SubRegionIoFd",
    "TypeCap",
    "UnmapBitmap",
    "Version",
    "VersionReply",
    "WireError",
    "bitmap_len",
    "check_header",
    "decode",
    "decode_header",
    "encode",
    "encode_parts",
    "error_reply",
    "page_count",
]
