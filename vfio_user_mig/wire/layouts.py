"""THE table: the fixed part of every vfio-user payload, declared once.

Each entry transcribes a table of vfio-user.rst (section named in the comment) or a packed
struct of libvfio-user's ``include/vfio-user.h``; offsets are from the end of the 16-byte
header, as in the spec. Variable-length tails (data, arrays, JSON) follow the fixed part and
are described by the message classes in terms of these records only.
"""

from __future__ import annotations

from vfio_user_mig.wire.layout import Layout

# vfio-user.rst "Header"; PROTOCOL.md section 1.
HEADER = Layout(
    "header",
    [
        ("msg_id", 0, 2, "u16"),
        ("command", 2, 2, "u16"),
        ("msg_size", 4, 4, "u32"),
        ("flags", 8, 4, "u32"),
        ("error", 12, 4, "u32"),
    ],
)

# vfio-user.rst "VFIO_USER_VERSION" (JSON text + NUL follows).
VERSION = Layout("VERSION", [("major", 0, 2, "u16"), ("minor", 2, 2, "u16")])

# vfio-user.rst "VFIO_USER_DMA_MAP".
DMA_MAP = Layout(
    "DMA_MAP",
    [
        ("argsz", 0, 4, "u32"),
        ("flags", 4, 4, "u32"),
        ("offset", 8, 8, "u64"),
        ("addr", 16, 8, "u64"),
        ("size", 24, 8, "u64"),
    ],
)

# vfio-user.rst "VFIO_USER_DMA_UNMAP".
DMA_UNMAP = Layout(
    "DMA_UNMAP",
    [
        ("argsz", 0, 4, "u32"),
        ("flags", 4, 4, "u32"),
        ("addr", 8, 8, "u64"),
        ("size", 16, 8, "u64"),
    ],
)

# libvfio-user ``struct vfio_user_bitmap`` after DMA_UNMAP when GET_DIRTY_BITMAP is set.
UNMAP_BITMAP = Layout("DMA_UNMAP.bitmap", [("pgsize", 0, 8, "u64"), ("size", 8, 8, "u64")])

# vfio-user.rst "VFIO_USER_DEVICE_GET_INFO" (request and reply).
DEVICE_INFO = Layout(
    "DEVICE_GET_INFO",
    [
        ("argsz", 0, 4, "u32"),
        ("flags", 4, 4, "u32"),
        ("num_regions", 8, 4, "u32"),
        ("num_irqs", 12, 4, "u32"),
    ],
)

# vfio-user.rst "VFIO_USER_DEVICE_GET_REGION_INFO" (``struct vfio_region_info``).
REGION_INFO = Layout(
    "DEVICE_GET_REGION_INFO",
    [
        ("argsz", 0, 4, "u32"),
        ("flags", 4, 4, "u32"),
        ("index", 8, 4, "u32"),
        ("cap_offset", 12, 4, "u32"),
        ("size", 16, 8, "u64"),
        ("offset", 24, 8, "u64"),
    ],
)

# vfio-user.rst "VFIO cap header format" (``struct vfio_info_cap_header``).
CAP_HEADER = Layout(
    "region_cap", [("id", 0, 2, "u16"), ("version", 2, 2, "u16"), ("next", 4, 4, "u32")]
)

# vfio-user.rst "VFIO region info cap sparse mmap" (after the cap header).
CAP_SPARSE_MMAP = Layout(
    "region_cap.sparse_mmap", [("nr_areas", 0, 4, "u32"), ("reserved", 4, 4, "u32")]
)
SPARSE_AREA = Layout("sparse_mmap.area", [("offset", 0, 8, "u64"), ("size", 8, 8, "u64")])

# ``struct vfio_region_info_cap_type`` (after the cap header).
CAP_TYPE = Layout("region_cap.type", [("type", 0, 4, "u32"), ("subtype", 4, 4, "u32")])

# vfio-user.rst "VFIO_USER_DEVICE_GET_REGION_IO_FDS" (request and reply fixed part).
IO_FDS = Layout(
    "DEVICE_GET_REGION_IO_FDS",
    [
        ("argsz", 0, 4, "u32"),
        ("flags", 4, 4, "u32"),
        ("index", 8, 4, "u32"),
        ("count", 12, 4, "u32"),
    ],
)

# vfio-user.rst "Sub-Region IO FD info format": 40 bytes (``padding``; ``datamatch`` or
# ``user_data`` at 32).
SUB_REGION_SPEC = Layout(
    "io_fds.sub_region(spec)",
    [
        ("offset", 0, 8, "u64"),
        ("size", 8, 8, "u64"),
        ("fd_index", 16, 4, "u32"),
        ("type", 20, 4, "u32"),
        ("flags", 24, 4, "u32"),
        ("padding", 28, 4, "u32"),
        ("datamatch", 32, 8, "u64"),
    ],
)

# libvfio-user ``vfio_user_sub_region_ioeventfd_t``: 48 bytes, the union's size.
SUB_REGION_LIBVFIO = Layout(
    "io_fds.sub_region(libvfio-user)",
    [
        ("offset", 0, 8, "u64"),
        ("size", 8, 8, "u64"),
        ("fd_index", 16, 4, "u32"),
        ("type", 20, 4, "u32"),
        ("flags", 24, 4, "u32"),
        ("shadow_mem_fd_index", 28, 4, "u32"),
        ("shadow_offset", 32, 8, "u64"),
        ("datamatch", 40, 8, "u64"),
    ],
)

# vfio-user.rst "VFIO_USER_DEVICE_GET_IRQ_INFO" (``struct vfio_irq_info``).
IRQ_INFO = Layout(
    "DEVICE_GET_IRQ_INFO",
    [
        ("argsz", 0, 4, "u32"),
        ("flags", 4, 4, "u32"),
        ("index", 8, 4, "u32"),
        ("count", 12, 4, "u32"),
    ],
)

# vfio-user.rst "VFIO_USER_DEVICE_SET_IRQS" (``struct vfio_irq_set``; data follows).
IRQ_SET = Layout(
    "DEVICE_SET_IRQS",
    [
        ("argsz", 0, 4, "u32"),
        ("flags", 4, 4, "u32"),
        ("index", 8, 4, "u32"),
        ("start", 12, 4, "u32"),
        ("count", 16, 4, "u32"),
    ],
)

# vfio-user.rst "VFIO_USER_REGION_READ" / "VFIO_USER_REGION_WRITE" (data follows).
REGION_ACCESS = Layout(
    "REGION_ACCESS",
    [("offset", 0, 8, "u64"), ("region", 8, 4, "u32"), ("count", 12, 4, "u32")],
)

# vfio-user.rst "VFIO_USER_DMA_READ" / "VFIO_USER_DMA_WRITE" (data follows); the DMA_WRITE
# reply of libvfio-user and PROTOCOL.md section 2.
DMA_ACCESS = Layout("DMA_ACCESS", [("addr", 0, 8, "u64"), ("count", 8, 8, "u64")])

# vfio-user.rst "VFIO_USER_DMA_WRITE" reply table as written: count is 4 bytes.
DMA_WRITE_REPLY_SPEC = Layout(
    "DMA_WRITE.reply(spec)", [("addr", 0, 8, "u64"), ("count", 8, 4, "u32")]
)

# vfio-user.rst "VFIO_USER_REGION_WRITE_MULTI": wr_cnt, then wr_cnt entries.
WRITE_MULTI = Layout("REGION_WRITE_MULTI", [("wr_cnt", 0, 8, "u64")])
WRITE_MULTI_ENTRY = Layout(
    "REGION_WRITE_MULTI.wr",
    [
        ("offset", 0, 8, "u64"),
        ("region", 8, 4, "u32"),
        ("count", 12, 4, "u32"),
        ("data", 16, 8, "bytes"),
    ],
)

# vfio-user.rst "VFIO_USER_DEVICE_FEATURE" (data follows).
DEVICE_FEATURE = Layout("DEVICE_FEATURE", [("argsz", 0, 4, "u32"), ("flags", 4, 4, "u32")])

# vfio-user.rst "VFIO_DEVICE_FEATURE_MIGRATION" reply data.
FEATURE_MIGRATION = Layout("feature.MIGRATION", [("flags", 0, 8, "u64")])

# vfio-user.rst "VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE".
FEATURE_MIG_STATE = Layout(
    "feature.MIG_DEVICE_STATE", [("device_state", 0, 4, "u32"), ("data_fd", 4, 4, "u32")]
)

# Experimental, not in vfio-user.rst: the kernel's ``struct vfio_device_feature_mig_data_size``
# (VFIO_DEVICE_FEATURE_MIG_DATA_SIZE GET reply data).
FEATURE_MIG_DATA_SIZE = Layout("feature.MIG_DATA_SIZE", [("stop_copy_length", 0, 8, "u64")])

# vfio-user.rst "VFIO_DEVICE_FEATURE_DMA_LOGGING_START / STOP" (ranges follow).
FEATURE_LOGGING_CONTROL = Layout(
    "feature.DMA_LOGGING_CONTROL",
    [("page_size", 0, 8, "u64"), ("num_ranges", 8, 4, "u32"), ("reserved", 12, 4, "u32")],
)
LOGGING_RANGE = Layout(
    "feature.DMA_LOGGING.range", [("iova", 0, 8, "u64"), ("length", 8, 8, "u64")]
)

# vfio-user.rst "VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT" (bitmap follows in the reply).
FEATURE_LOGGING_REPORT = Layout(
    "feature.DMA_LOGGING_REPORT",
    [("iova", 0, 8, "u64"), ("length", 8, 8, "u64"), ("page_size", 16, 8, "u64")],
)

# vfio-user.rst "VFIO_USER_MIG_DATA_READ" / "VFIO_USER_MIG_DATA_WRITE"
# (``struct vfio_user_mig_data``; data follows).
MIG_DATA = Layout("MIG_DATA", [("argsz", 0, 4, "u32"), ("size", 4, 4, "u32")])

#: Every layout, for documentation and for the tests that check the table against the spec.
ALL_LAYOUTS: tuple[Layout, ...] = (
    HEADER,
    VERSION,
    DMA_MAP,
    DMA_UNMAP,
    UNMAP_BITMAP,
    DEVICE_INFO,
    REGION_INFO,
    CAP_HEADER,
    CAP_SPARSE_MMAP,
    SPARSE_AREA,
    CAP_TYPE,
    IO_FDS,
    SUB_REGION_SPEC,
    SUB_REGION_LIBVFIO,
    IRQ_INFO,
    IRQ_SET,
    REGION_ACCESS,
    DMA_ACCESS,
    DMA_WRITE_REPLY_SPEC,
    WRITE_MULTI,
    WRITE_MULTI_ENTRY,
    DEVICE_FEATURE,
    FEATURE_MIGRATION,
    FEATURE_MIG_STATE,
    FEATURE_MIG_DATA_SIZE,
    FEATURE_LOGGING_CONTROL,
    LOGGING_RANGE,
    FEATURE_LOGGING_REPORT,
    MIG_DATA,
)
