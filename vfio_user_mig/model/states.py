"""Migration device states and capability flags (PROTOCOL.md section 3 and 5).

The numeric values are the Linux kernel's ``enum vfio_device_mig_state`` and the
``VFIO_MIGRATION_*`` flags of ``include/uapi/linux/vfio.h``; vfio-user reuses them on the wire
(``VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE`` carries a ``State`` as u32,
``VFIO_DEVICE_FEATURE_MIGRATION`` carries ``MigrationCaps`` as u64).
"""

from __future__ import annotations

import enum


class State(enum.IntEnum):
    """A device migration state; values are the kernel's ``VFIO_DEVICE_STATE_*``."""

    ERROR = 0
    STOP = 1
    RUNNING = 2
    STOP_COPY = 3
    RESUMING = 4
    RUNNING_P2P = 5
    PRE_COPY = 6
    PRE_COPY_P2P = 7


class MigrationCaps(enum.IntFlag):
    """Migration capability flags a device reports (``VFIO_MIGRATION_*``)."""

    STOP_COPY = 1
    P2P = 2
    PRE_COPY = 4


#: The capability set vfio-user devices use: never P2P (PROTOCOL.md section 3).
VFIO_USER_CAPS = MigrationCaps.STOP_COPY | MigrationCaps.PRE_COPY

#: The four valid capability sets (STOP_COPY is mandatory), smallest first.
ALL_CAPS: tuple[MigrationCaps, ...] = (
    MigrationCaps.STOP_COPY,
    MigrationCaps.STOP_COPY | MigrationCaps.P2P,
    MigrationCaps.STOP_COPY | MigrationCaps.PRE_COPY,
    MigrationCaps.STOP_COPY | MigrationCaps.P2P | MigrationCaps.PRE_COPY,
)
