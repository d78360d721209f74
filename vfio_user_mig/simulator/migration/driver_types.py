"""What the migration driver (:mod:`.driver`) is given and gives back: its configuration,
the two sides, the result, the errors, the hook types, and the wire-level region digest used
for servers without a back door.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vfio_user_mig.model import State
from vfio_user_mig.simulator.client.api import Client
from vfio_user_mig.simulator.client.io import VfioUserError
from vfio_user_mig.simulator.migration.guest import GuestRam

#: Called after every MIG_DEVICE_STATE SET: (side, from, requested, errno or None, reached).
StateObserver = Callable[[str, State, int, "int | None", "State | None"], None]
#: Transforms the n-th relayed chunk (fault injection); None drops it.
RelayFilter = Callable[[int, bytes], "bytes | None"]
#: Returns the device digest of one side (None when not available).
DigestFn = Callable[[], "str | None"]


class MigrationError(Exception):
    """A migration step failed; ``where`` names it, ``errno`` is the server's or the OS's."""

    def __init__(self, where: str, errno: int, message: str) -> None:
        super().__init__(f"{where}: {message}")
        self.where = where
        self.errno = errno


class NotConverged(MigrationError):
    """The switchover policy gave up."""


@dataclass
class DriverConfig:
    """Knobs of the driver."""

    chunk: int = 1 << 20
    """MIG_DATA_READ size (capped by both peers' max_data_xfer_size)."""
    ram_run_pages: int = 256
    """Most guest pages sent as one transfer."""
    use_precopy: bool = True
    """Use PRE_COPY when the device offers it."""
    deadline: float | None = None
    """Wall-clock seconds after which the migration is abandoned (None: no limit)."""
    round_device_budget: int | None = None
    """Most device bytes read in one pre-copy round (None: max(guest RAM, 64 chunks)). A
    device dirtied as fast as it is read never says "caught up"; the round must end anyway."""
    read_depth: int = 2
    """MIG_DATA_READs kept in flight on the source (1: serial)."""
    write_window: int = 1
    """MIG_DATA_WRITEs sent and not yet acknowledged while the next chunk is read (0: each
    write waits for its reply before the next read)."""
    log_page_hint: int | None = None
    """The DMA_LOGGING_START ``page_size`` hint (None: the guest page size). The driver
    reports at the page size the device selected (the START reply) and maps it to guest
    pages."""
    size_query: bool = False
    """Ask the source device for its pending bytes (experimental MIG_DATA_SIZE, the kernel's
    ``VFIO_DEVICE_FEATURE_MIG_DATA_SIZE``) after every pre-copy round and use the answer
    instead of the estimate; when the server refuses (ENOTSUP) the estimate is kept."""


@dataclass
class Side:
    """One server as the driver tracks it."""

    name: str
    client: Client
    guest: GuestRam
    digest: DigestFn
    state: State | None = None
    alive: bool = True
    #: False for a server without a back door (the driver reads its state over the wire).
    hosted: bool = True
    #: Readable region sizes of a server without a back door (its digest is read back over
    #: the wire), asked while its device runs: a stopped device refuses
    #: DEVICE_GET_REGION_INFO (protocol.gating; PROTOCOL.md section 2).
    region_sizes: dict[int, int] | None = None


@dataclass
class MigrationResult:
    """The outcome; ``summary`` is computed from the trace."""

    ok: bool
    outcome: str
    summary: dict[str, Any]
    error: MigrationError | None = None
    committed: bool = False
    stats: dict[str, Any] = field(default_factory=dict)
    trace_events: list[dict[str, Any]] = field(default_factory=list)
    """The trace's events kept in memory (chunk events only with ``keep_chunks``)."""


def region_sizes(client: Client, regions: tuple[int, ...] = (1, 2, 3, 4, 5)) -> dict[int, int]:
    """Sizes of the readable regions among ``regions`` (DEVICE_GET_REGION_INFO; ask while the
    device runs: STOP and STOP_COPY refuse it, protocol.gating)."""
    sizes = {}
    for index in regions:
        try:
            info, fds = client.region_info(index)
        except VfioUserError:
            continue
        for fd in fds:
            os.close(fd)
        if info.size and info.flags & 1:
            sizes[index] = info.size
    return sizes


def region_digest(client: Client, regions: tuple[int, ...] = (1, 2, 3, 4, 5),
                  block: int = 1 << 20, sizes: dict[int, int] | None = None) -> str:
    """Digest of readable BAR1..BAR5 content read over the wire (for servers without a back
    door; BAR0 usually holds volatile registers and is skipped). ``sizes``: the regions'
    sizes asked earlier (:func:`region_sizes`), as a stopped device does not answer
    DEVICE_GET_REGION_INFO."""
    if sizes is None:
        sizes = region_sizes(client, regions)
    h = hashlib.sha256()
    for index, size in sorted(sizes.items()):
        h.update(index.to_bytes(4, "little"))
        for off in range(0, size, block):
            h.update(client.region_read(index, off, min(block, size - off)))
    return h.hexdigest()


__all__ = [
    "DigestFn",
    "DriverConfig",
    "MigrationError",
    "MigrationResult",
    "NotConverged",
    "RelayFilter",
    "Side",
    "StateObserver",
    "region_digest",
    "region_sizes",
]
