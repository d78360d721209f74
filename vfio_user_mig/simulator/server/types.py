"""Types shared by the server modules: the limits (:class:`ServerConfig`), the outcome of one
processed message (:class:`Handled`) and the failure a handler raises to answer with an errno
(:class:`Refusal`). Nothing here depends on the server's state, so the session, the
handlers, the dispatcher and the migration-data channel all import it from below.
"""

from __future__ import annotations

from dataclasses import dataclass

from vfio_user_mig import wire
from vfio_user_mig.wire.constants import Command
from vfio_user_mig.wire.record import Record, record

#: Highest protocol minor version spoken (libvfio-user speaks 0.2).
SERVER_MINOR = 2

#: The largest IOVA + 1 (DMA_MAP ranges must end at or below it).
IOVA_LIMIT = 1 << 64

#: The commands a migration-data channel carries (and the main socket then refuses).
CHANNEL_COMMANDS = frozenset({Command.MIG_DATA_READ, Command.MIG_DATA_WRITE})


#: Server-initiated DMA message ids live in 0x8000..0xFFFF; one op never uses more than half of
#: them, so no two chunks in flight can share an id.
MAX_DMA_CHUNKS_PER_OP = 0x4000

@dataclass
class ServerConfig:
    """Limits and behaviour switches; defaults follow libvfio-user (PROTOCOL.md section 2).

    Limits (docs/SECURITY.md has the table; each is refused one past it):

    * ``max_data_xfer_size``: largest REGION_READ/WRITE count and MIG_DATA_READ/WRITE chunk
      (EINVAL); also sets :attr:`max_msg_size` (E2BIG at framing, then the connection closes).
    * ``max_msg_fds``: fds accepted with one message (EINVAL, all of them closed).
    * ``max_dma_maps``: DMA regions mapped at once (ENOSPC).
    * ``max_bitmap_size``: bytes of one DMA_LOGGING_REPORT bitmap (E2BIG); never more than
      the client's own ``max_data_xfer_size``, so the reply always fits what it accepts.
    * ``max_logging_ranges``: ranges in one DMA_LOGGING_START (E2BIG, the kernel's
      ``LOG_MAX_RANGES``).
    * ``max_region_caps``: capabilities in a region-info chain the server sends, counting each
      sparse-mmap area (EIO: the device is misconfigured; the chain is never sent).
    * ``max_version_json``: bytes of the client's VERSION capabilities JSON (E2BIG).
    * ``min_client_xfer_size``: smallest ``max_data_xfer_size`` a client may announce (EINVAL),
      so that one device DMA op never turns into thousands of DMA_READ/WRITE messages.
    * ``require_sealed_dma_fds``: refuse (EPERM) DMA_MAP fds that the client could still
      shrink (no ``F_SEAL_SHRINK``). Not needed for safety: DMA_MAP memory is reached with
      pread/pwrite, never mmap, so a client truncating its file after DMA_MAP only makes the
      DMA ops past the new end fault. Off by default (libvfio-user and QEMU do not seal).

    ``experimental_mig_data_size``: answer DEVICE_FEATURE MIG_DATA_SIZE (9) GET with the
    device's ``pending_bytes()`` (an extension, not in the spec nor libvfio-user: the kernel's
    ``VFIO_DEVICE_FEATURE_MIG_DATA_SIZE``; docs/wire-compat.md). Off by default: EINVAL, like
    any unknown feature; also EINVAL when the device has no ``pending_bytes``.

    ``experimental_mig_data_socket``: agree to a client's ``x-mig-data-socket`` VERSION
    capability (:mod:`.mig_channel`): a second socket that carries MIG_DATA_READ/WRITE only.
    Off by default: the capability is ignored, as by any server that does not know it.
    """

    max_data_xfer_size: int = wire.DEFAULT_MAX_DATA_XFER_SIZE
    max_msg_fds: int = 8
    max_dma_maps: int = 65535
    migration_pgsize: int = 4096
    strict_spec: bool = False
    keep_mig_state_on_reset: bool = False
    max_bitmap_size: int = wire.DEFAULT_MAX_DATA_XFER_SIZE
    max_logging_ranges: int = 256
    max_region_caps: int = 16
    max_version_json: int = 4096
    min_client_xfer_size: int = 512
    require_sealed_dma_fds: bool = False
    experimental_mig_data_size: bool = False
    experimental_mig_data_socket: bool = False

    @property
    def max_msg_size(self) -> int:
        """Largest message accepted: the data limit plus the largest fixed part."""
        return self.max_data_xfer_size + wire.HEADER_SIZE + 16


@record
class Handled(Record):
    """One processed message: what it was and how it ended (``errno`` None = success)."""

    command: int
    msg_id: int
    is_reply: bool
    errno: int | None
    detail: str = ""


class Refusal(Exception):
    """A handler's refusal: reply with ``errno``; ``echo`` the request payload when set, else
    send ``payload`` (when not None) as the error reply's payload."""

    def __init__(
        self, errno: int, detail: str, echo: bool = False, payload: bytes | None = None
    ) -> None:
        super().__init__(detail)
        self.errno = errno
        self.echo = echo
        self.payload = payload


__all__ = [
    "CHANNEL_COMMANDS",
    "IOVA_LIMIT",
    "MAX_DMA_CHUNKS_PER_OP",
    "SERVER_MINOR",
    "Handled",
    "Refusal",
    "ServerConfig",
]
