"""The state of one server session: the hosted device, its FSM, the client's DMA space, what
VERSION negotiated, the migration-data channel and the device DMA op in flight.

:class:`ServerState` owns that state and its lifetime (connection loss, close); the command
handlers (:mod:`.setup`, :mod:`.access`, :mod:`.feature`), the
device-initiated DMA (:mod:`.dma`) and the dispatcher (:mod:`.core`) are built on
it. A connection drop unmaps the client's memory and closes every fd it gave while the device
and its migration state are kept for a reconnect (vfio-user.rst "Connection drop").
"""

from __future__ import annotations

import contextlib
import errno as _errno
from dataclasses import dataclass, field
from typing import Any

from vfio_user_mig import wire
from vfio_user_mig.model import DeviceFSM, State
from vfio_user_mig.model.paths import path_table
from vfio_user_mig.simulator.device.base import Device
from vfio_user_mig.simulator.device.dma import DmaFault, DmaJob, DmaMapping, DmaOp, DmaSpace
from vfio_user_mig.simulator.device.errors import DeviceError
from vfio_user_mig.simulator.server.irqs import EventfdTable
from vfio_user_mig.simulator.server.mig_channel import MigDataChannel, NewChannel
from vfio_user_mig.simulator.server.socket_end import SocketEnd
from vfio_user_mig.simulator.server.types import Handled, Refusal, ServerConfig


@dataclass
class PendingOp:
    """A DMA op carried out by messages: the chunk requests still unanswered."""

    op: DmaOp
    waiting: dict[int, tuple[int, int]] = field(default_factory=dict)  # msg_id -> (off, len)
    buffer: bytearray = field(default_factory=bytearray)
    fault: DmaFault | None = None


class DeviceActions:
    """Adapts a :class:`Device` to the executor's ``ArcActions``."""

    def __init__(self, device: Device, keep_mig_state: bool) -> None:
        self.device = device
        self.keep_mig_state = keep_mig_state

    def on_arc(self, src: State, dst: State) -> None:
        self.device.on_arc(src, dst)

    def on_reset(self) -> None:
        self.device.reset(keep_mig_state=self.keep_mig_state)
        # a reset device is at its power-on state, where no DMA logging runs
        self.device.dirty_log.stop()


class ServerState(SocketEnd):
    """Session state of one server hosting one device (see module docstring)."""

    def __init__(
        self, device: Device, config: ServerConfig | None = None, irqs: EventfdTable | None = None
    ) -> None:
        self.device = device
        self.config = config or ServerConfig()
        super().__init__(self.config.max_msg_size, not self.config.strict_spec)
        self.irqs = irqs if irqs is not None else EventfdTable(device.irqs)
        path_table(device.migration_caps)  # precompute every complex path once, not on SET
        self.fsm = DeviceFSM(
            device.migration_caps,
            DeviceActions(device, self.config.keep_mig_state_on_reset),
            initial=device.mig_state,
        )
        self.dma = DmaSpace()
        self.client_caps: wire.Capabilities | None = None
        self.negotiated = False
        self._job: DmaJob | None = None
        self._pending: PendingOp | None = None
        self._next_id = 0x8000
        self._now = 0.0
        #: Pad short MIG_DATA_READ replies to the size asked for (libvfio-user's behaviour)
        #: unless the client said it takes them unpadded (``x-mig-data-unpadded``).
        self._pad_mig_data = True
        #: The open migration-data channel (experimental), and one made by VERSION that the
        #: IO layer has not taken yet (:meth:`take_new_channel`).
        self.mig_channel: MigDataChannel | None = None
        self._new_channel: NewChannel | None = None
        self.stats: dict[str, int] = {"requests": 0, "errors": 0, "dma_messages": 0,
                                      "mig_writes_in_place": 0}
        #: One line per handler exception turned into an EIO reply (a bug in this server or in
        #: the device, never the client's fault): empty in a correct run. Fuzz oracles and
        #: tests assert it stays empty; it is never cleared by the core.

    @property
    def state(self) -> State:
        """The device's migration state."""
        return self.fsm.state

    def next_event_on(self, end: SocketEnd, now: float) -> Handled | None:
        """Process one message received on ``end``: the dispatcher
        (:class:`~.core.ServerCore`) implements it."""
        raise NotImplementedError

    def take_new_channel(self) -> NewChannel | None:
        """The migration-data channel VERSION just agreed to, for the IO layer to serve (once):
        the server's socket, its :class:`MigDataChannel`, and the client's end, which the IO
        layer closes once the VERSION reply carrying it was sent."""
        new, self._new_channel = self._new_channel, None
        return new

    def connection_lost(self) -> None:
        """Client gone: abort its DMA, unmap its memory, stop the dirty logging it started
        (its ranges named maps that are gone, and no client is left to read a report), close
        its fds and its migration-data channel; keep the device."""
        self._job = None
        self._pending = None
        for mapping in self.dma.unmap_all():
            self._release(mapping)
        with contextlib.suppress(DeviceError):  # a device that cannot stop keeps logging
            self.device.dirty_log.stop()
        self.irqs.clear()
        self._reset_socket_state()
        self.negotiated = False
        self.client_caps = None
        self._pad_mig_data = True
        self._drop_channel()

    def _drop_channel(self) -> None:
        new, self._new_channel = self._new_channel, None
        if new is not None:
            new.close()
        self.mig_channel = None

    def channel_closed(self, channel: MigDataChannel) -> None:
        """The IO layer saw ``channel``'s socket close: migration data goes back to the main
        socket."""
        if self.mig_channel is channel:
            self.mig_channel = None

    def close(self) -> None:
        """Release everything (the device itself is closed by its owner)."""
        self.connection_lost()

    # ----- helpers shared by the handler families ----------------------------------------------
    def _client_limit(self) -> int:
        """The client's ``max_data_xfer_size`` (the default until VERSION)."""
        caps = self.client_caps
        return caps.max_data_xfer_size if caps is not None else wire.DEFAULT_MAX_DATA_XFER_SIZE

    def _region(self, index: int) -> Any:
        if not 0 <= index < len(self.device.regions):
            raise Refusal(_errno.EINVAL, f"region {index} does not exist")
        return self.device.regions[index]

    @staticmethod
    def _release(mapping: DmaMapping) -> None:
        """Close the mapping's fd (an unmapped or disconnected region keeps no fd open)."""
        with contextlib.suppress(OSError):
            mapping.release()


__all__ = ["DeviceActions", "PendingOp", "ServerState"]
