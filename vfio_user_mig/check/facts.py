"""What the checker learns of a server and reads back from it: :class:`ServerFacts` (the
VERSION reply and the MIGRATION feature, PROTOCOL.md sections 2-3) and :class:`ReadBack`
(device state read through a region, compared by the round trip)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vfio_user_mig import wire
from vfio_user_mig.model import MigrationCaps


@dataclass(frozen=True)
class ReadBack:
    """Device state read back through regions: ``data`` read at ``offset`` of region
    ``region``, called ``name`` in findings (the round trip compares source and
    destination)."""

    name: str
    region: int
    offset: int
    data: bytes



@dataclass
class ServerFacts:
    """What the server said about itself (VERSION reply and MIGRATION feature)."""

    version: tuple[int, int] = (0, 0)
    capabilities: dict[str, Any] = field(default_factory=dict)
    caps: MigrationCaps | None = None

    @property
    def max_data_xfer_size(self) -> int:
        value = self.capabilities.get("max_data_xfer_size", wire.DEFAULT_MAX_DATA_XFER_SIZE)
        return int(value) if isinstance(value, int) else wire.DEFAULT_MAX_DATA_XFER_SIZE

    @property
    def migration_pgsize(self) -> int | None:
        mig = self.capabilities.get("migration")
        if isinstance(mig, dict) and isinstance(mig.get("pgsize"), int):
            return int(mig["pgsize"])
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "version": f"{self.version[0]}.{self.version[1]}",
            "capabilities": self.capabilities,
            "migration": (None if self.caps is None
                          else [f.name for f in MigrationCaps if f & self.caps]),
        }


__all__ = ["ReadBack", "ServerFacts"]
