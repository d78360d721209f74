"""Every wire constant of vfio-user, in one place.

Command numbers (PROTOCOL.md section 2; vfio-user.rst "Commands"), header flag bits (PROTOCOL.md
section 1; vfio-user.rst "Header"), the flag bits of each payload, and the DEVICE_FEATURE
indexes and operations (PROTOCOL.md section 3; vfio-user.rst "VFIO_USER_DEVICE_FEATURE").
Nothing else in :mod:`vfio_user_mig.wire` spells a number that has a name here.
"""

from __future__ import annotations

import enum


class Command(enum.IntEnum):
    """The ``command`` field of the header (u16). 14 was migration v1's DIRTY_PAGES: rejected."""

    VERSION = 1
    DMA_MAP = 2
    DMA_UNMAP = 3
    DEVICE_GET_INFO = 4
    DEVICE_GET_REGION_INFO = 5
    DEVICE_GET_REGION_IO_FDS = 6
    DEVICE_GET_IRQ_INFO = 7
    DEVICE_SET_IRQS = 8
    REGION_READ = 9
    REGION_WRITE = 10
    DMA_READ = 11
    DMA_WRITE = 12
    DEVICE_RESET = 13
    REGION_WRITE_MULTI = 15
    DEVICE_FEATURE = 16
    MIG_DATA_READ = 17
    MIG_DATA_WRITE = 18


#: The command number that is reserved (migration v1 DIRTY_PAGES) and always rejected.
RESERVED_COMMAND = 14


class MsgType(enum.IntEnum):
    """Header flags bits 0-3."""

    COMMAND = 0
    REPLY = 1


class HeaderFlag(enum.IntFlag):
    """Header ``flags`` bits (besides the type nibble)."""

    TYPE_MASK = 0x0F
    NO_REPLY = 0x10
    ERROR = 0x20


#: Every header flag bit that has a meaning; anything else is rejected.
HEADER_KNOWN_FLAGS = int(HeaderFlag.TYPE_MASK | HeaderFlag.NO_REPLY | HeaderFlag.ERROR)

#: Size of the message header in bytes.
HEADER_SIZE = 16

#: Default ``max_data_xfer_size`` (vfio-user.rst "Version"; libvfio-user
#: ``VFIO_USER_DEFAULT_MAX_DATA_XFER_SIZE``).
DEFAULT_MAX_DATA_XFER_SIZE = 1024 * 1024

#: Default largest whole message ``decode`` and ``Framer`` accept: a REGION_WRITE carrying
#: ``DEFAULT_MAX_DATA_XFER_SIZE`` bytes (header 16 + fixed part 16 + data), as libvfio-user's
#: ``SERVER_MAX_MSG_SIZE``.
DEFAULT_MAX_MSG_SIZE = DEFAULT_MAX_DATA_XFER_SIZE + HEADER_SIZE + 16


class DmaMapFlag(enum.IntFlag):
    """DMA_MAP ``flags``: bits 0-1 from the spec, bits 2-3 are libvfio-user additions."""

    READ = 1 << 0
    WRITE = 1 << 1
    MMAP = 1 << 2
    FILE_IO = 1 << 3


class DmaUnmapFlag(enum.IntFlag):
    """DMA_UNMAP ``flags`` (kernel ``VFIO_DMA_UNMAP_FLAG_*``, honoured by libvfio-user)."""

    GET_DIRTY_BITMAP = 1 << 0
    ALL = 1 << 1


class DeviceInfoFlag(enum.IntFlag):
    """DEVICE_GET_INFO ``flags`` (``VFIO_DEVICE_FLAGS_*``)."""

    RESET = 1 << 0
    PCI = 1 << 1


class RegionInfoFlag(enum.IntFlag):
    """DEVICE_GET_REGION_INFO ``flags`` (``VFIO_REGION_INFO_FLAG_*``)."""

    READ = 1 << 0
    WRITE = 1 << 1
    MMAP = 1 << 2
    CAPS = 1 << 3


class RegionCapId(enum.IntEnum):
    """Region info capability ids (``VFIO_REGION_INFO_CAP_*``)."""

    SPARSE_MMAP = 1
    TYPE = 2


class IoFdType(enum.IntEnum):
    """GET_REGION_IO_FDS sub-region ``type`` (``VFIO_USER_IO_FD_TYPE_*``)."""

    IOEVENTFD = 0
    IOREGIONFD = 1
    IOEVENTFD_SHADOW = 2


class IrqInfoFlag(enum.IntFlag):
    """DEVICE_GET_IRQ_INFO ``flags`` (``VFIO_IRQ_INFO_*``)."""

    EVENTFD = 1 << 0
    MASKABLE = 1 << 1
    AUTOMASKED = 1 << 2
    NORESIZE = 1 << 3


class IrqSetFlag(enum.IntFlag):
    """DEVICE_SET_IRQS ``flags`` (``VFIO_IRQ_SET_*``): one DATA bit and one ACTION bit."""

    DATA_NONE = 1 << 0
    DATA_BOOL = 1 << 1
    DATA_EVENTFD = 1 << 2
    ACTION_MASK = 1 << 3
    ACTION_UNMASK = 1 << 4
    ACTION_TRIGGER = 1 << 5


# Plain ints: ``~`` on an IntFlag complements within the flag's members only.
IRQ_SET_DATA_MASK = int(IrqSetFlag.DATA_NONE | IrqSetFlag.DATA_BOOL | IrqSetFlag.DATA_EVENTFD)
IRQ_SET_ACTION_MASK = int(
    IrqSetFlag.ACTION_MASK | IrqSetFlag.ACTION_UNMASK | IrqSetFlag.ACTION_TRIGGER
)


class FeatureIndex(enum.IntEnum):
    """DEVICE_FEATURE feature index, ``flags`` bits 0-15 (PROTOCOL.md section 3)."""

    MIGRATION = 1
    MIG_DEVICE_STATE = 2
    DMA_LOGGING_START = 6
    DMA_LOGGING_STOP = 7
    DMA_LOGGING_REPORT = 8
    MIG_DATA_SIZE = 9
    """Experimental (not in vfio-user.rst nor libvfio-user): the kernel's
    ``VFIO_DEVICE_FEATURE_MIG_DATA_SIZE``, GET only (docs/wire-compat.md)."""


class FeatureOp(enum.IntFlag):
    """DEVICE_FEATURE operation bits 16-18."""

    GET = 1 << 16
    SET = 1 << 17
    PROBE = 1 << 18


#: The operations each feature supports: the feature table of PROTOCOL.md section 3
#: (vfio-user.rst "VFIO_USER_DEVICE_FEATURE"). PROBE is valid with every feature listed; the
#: experimental MIG_DATA_SIZE (GET) is added by a server that offers it.
FEATURE_OPS: dict[int, FeatureOp] = {
    FeatureIndex.MIGRATION: FeatureOp.GET,
    FeatureIndex.MIG_DEVICE_STATE: FeatureOp.GET | FeatureOp.SET,
    FeatureIndex.DMA_LOGGING_START: FeatureOp.SET,
    FeatureIndex.DMA_LOGGING_STOP: FeatureOp.SET,
    FeatureIndex.DMA_LOGGING_REPORT: FeatureOp.GET,
}

#: ``flags`` bits 0-15 hold the feature index.
FEATURE_INDEX_MASK = 0xFFFF
FEATURE_OP_MASK = int(FeatureOp.GET | FeatureOp.SET | FeatureOp.PROBE)

#: Bit widths of the unsigned field kinds used by the layout tables.
U16_MAX = 0xFFFF
U32_MAX = 0xFFFF_FFFF
U64_MAX = 0xFFFF_FFFF_FFFF_FFFF
