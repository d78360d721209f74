"""Device stimulus profiles: how the checker makes a known device act by itself.

Some rules only show when the device acts on its own, e.g. dirty page logging must report every
page the device wrote into guest memory (PROTOCOL.md section 3, DMA_LOGGING_REPORT). A profile
knows one device model and how to make it write guest memory through the checker's DMA
mappings. ``check --profile NAME`` selects one; without a profile those checks are skipped.

Contract of a :class:`Profile`:

* :attr:`Profile.dma_maps`: the DMA regions (iova, size, with an fd) the device needs mapped
  before :meth:`Profile.stimulate`;
* :meth:`Profile.prepare`: called once per sequence after VERSION and the move to RUNNING;
* :meth:`Profile.stimulate`: makes the device write guest memory while RUNNING, waits until it
  has, and returns the IOVAs written (any address in each page written).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from vfio_user_mig.check.session import Sequence


class Profile(Protocol):
    """A device the checker can stimulate (module docstring)."""

    name: str
    dma_maps: tuple[tuple[int, int, bool], ...]

    def prepare(self, seq: Sequence) -> None: ...

    def stimulate(self, seq: Sequence) -> set[int]: ...


#: Profiles by name (filled in below by each profile's module).
PROFILES: dict[str, type] = {}
