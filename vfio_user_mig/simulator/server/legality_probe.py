"""Probe a live server for the legality of one (migration state, command) cell.

Each probe runs a fresh :class:`ServerCore` hosting a small ``migdev`` over a real
``socket.socketpair()``, drives the device to the state (ERROR by forcing it), sends one
minimal request of the command that succeeds whenever the command is allowed, and reports the
errno of the reply (``None`` = accepted). The proofs compare it with
:func:`vfio_user_mig.protocol.gating.legality_table` cell by cell.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

from vfio_user_mig import wire
from vfio_user_mig.model import MigrationCaps, State
from vfio_user_mig.simulator.client.api import Client
from vfio_user_mig.simulator.client.io import VfioUserError
from vfio_user_mig.simulator.server.core import ServerCore
from vfio_user_mig.simulator.server.hosting import host_device
from vfio_user_mig.simulator.server.io import serve_socketpair
from vfio_user_mig.wire.constants import (
    Command,
    DmaUnmapFlag,
    FeatureIndex,
    FeatureOp,
    IrqSetFlag,
)

PROBE_MEM = 64 * 1024


def _request(command: Command) -> tuple[Any, list[int]]:
    """A minimal request of ``command`` that succeeds on migdev whenever it is allowed."""
    if command == Command.VERSION:
        return wire.Version(major=0, minor=2, capabilities=wire.Capabilities.make()), []
    table: dict[Command, Any] = {
        Command.DMA_MAP: wire.DmaMap(addr=0x100000, size=4096),
        Command.DMA_UNMAP: wire.DmaUnmap(addr=0, size=0, flags=int(DmaUnmapFlag.ALL)),
        Command.DEVICE_GET_INFO: wire.DeviceGetInfo(),
        Command.DEVICE_GET_REGION_INFO: wire.RegionInfo(index=0),
        Command.DEVICE_GET_REGION_IO_FDS: wire.RegionIoFds(index=0),
        Command.DEVICE_GET_IRQ_INFO: wire.IrqInfo(index=0),
        Command.DEVICE_SET_IRQS: wire.IrqSet(
            flags=int(IrqSetFlag.DATA_NONE | IrqSetFlag.ACTION_TRIGGER), index=0, start=0,
            count=0),
        Command.REGION_READ: wire.RegionRead(offset=0, region=2, count=4),
        Command.REGION_WRITE: wire.RegionWrite(offset=0, region=2, count=4, data=b"abcd"),
        Command.DEVICE_RESET: wire.DeviceReset(),
        Command.REGION_WRITE_MULTI: wire.RegionWriteMulti(
            writes=(wire.MultiWrite.of(0, 2, b"wxyz"),)),
        Command.DEVICE_FEATURE: wire.DeviceFeature(feature=FeatureIndex.MIGRATION,
                                                   ops=FeatureOp.GET),
        Command.MIG_DATA_READ: wire.MigDataRead(size=1),
        Command.MIG_DATA_WRITE: wire.MigDataWrite(data=b""),
        Command.DMA_READ: wire.DmaRead(addr=0, count=4),
        Command.DMA_WRITE: wire.DmaWrite(addr=0, count=4, data=b"abcd"),
    }
    return table[command], []


def _connect(core: ServerCore) -> tuple[Client, Callable[[], None]]:
    server_sock, client_sock = socket.socketpair()
    thread, stop = serve_socketpair(core, server_sock)
    client = Client(client_sock, timeout=10.0)

    def close() -> None:
        client.close()
        thread.join(5)
        stop.set()
        server_sock.close()

    return client, close


def probe_cell(state: State, command: Command, caps: MigrationCaps) -> int | None:
    """Errno the server replies to ``command`` in ``state`` (``None``: accepted).

    VERSION is probed as the first message of a second connection, after the first one put
    the device in ``state`` and disconnected (the device keeps its state across connections).
    """
    hosted = host_device("migdev", mem_size=PROBE_MEM, caps=caps)
    core = hosted.core
    client, close = _connect(core)
    try:
        client.negotiate()
        if state is State.ERROR:
            core.fsm.force_error()
        elif state is not State.RUNNING:
            client.set_state(state)
        if command == Command.VERSION:
            close()
            client, close = _connect(core)
        msg, fds = _request(command)
        try:
            client.request(msg, fds)
        except VfioUserError as exc:
            return exc.errno
        return None
    finally:
        close()
        hosted.close()


def make_probe(caps: MigrationCaps | int) -> Callable[[State, Command], int | None]:
    """A probe for the proofs: ``probe(state, command) -> errno | None``."""
    value = MigrationCaps(int(caps))

    def probe(state: State, command: Command) -> int | None:
        return probe_cell(state, command, value)

    return probe


__all__ = ["make_probe", "probe_cell"]
