"""Valid client messages used as fuzz seeds (atheris corpus and hypothesis mutations).

Each seed is one whole encoded message a client may send to the server; together they reach
every handler of :class:`~vfio_user_mig.simulator.server.core.ServerCore`.
"""

from __future__ import annotations

from vfio_user_mig import wire
from vfio_user_mig.model import State
from vfio_user_mig.wire import FeatureIndex, FeatureOp, IrqSetFlag

#: The VERSION a well-behaved client sends first.
VERSION = wire.encode(
    wire.Version(0, 2, wire.Capabilities.make(max_msg_fds=8, max_data_xfer_size=1 << 20))
)


def _feature(index: int, ops: int, data: object = None, msg_id: int = 0) -> bytes:
    return wire.encode(wire.DeviceFeature(index, FeatureOp(ops), data, msg_id=msg_id))  # type: ignore[arg-type]


def seed_messages() -> list[bytes]:
    """One encoded message per interesting request (msg ids 1..n)."""
    msgs: list[wire.Message] = [
        wire.DeviceGetInfo(msg_id=1),
        wire.RegionInfo(2, msg_id=2),
        wire.RegionInfo(2, argsz=4096, msg_id=3),
        wire.RegionIoFds(0, msg_id=4),
        wire.IrqInfo(0, msg_id=5),
        wire.IrqSet(int(IrqSetFlag.DATA_NONE | IrqSetFlag.ACTION_TRIGGER), 0, 0, 0, msg_id=6),
        wire.RegionRead(0, 0, 4, msg_id=7),
        wire.RegionRead(0, 2, 64, msg_id=8),
        wire.RegionWrite(0x10, 2, 8, b"ABCDEFGH", msg_id=9),
        wire.RegionWrite(4, 7, 2, b"\x06\x00", msg_id=10),
        wire.DmaMap(0, 0x10000, msg_id=11),
        wire.DmaUnmap(0, 0x10000, msg_id=12),
        wire.DmaUnmap(0, 0, flags=int(wire.DmaUnmapFlag.ALL), msg_id=13),
        wire.DeviceReset(msg_id=14),
        wire.RegionWriteMulti((wire.MultiWrite(0x10, 2, 4, b"WXYZ\0\0\0\0"),), msg_id=15),
        wire.MigDataRead(4096, msg_id=16),
        wire.MigDataWrite(b"\0" * 32, msg_id=17),
    ]
    out = [wire.encode(m) for m in msgs]
    out += [
        _feature(FeatureIndex.MIGRATION, FeatureOp.GET, msg_id=20),
        _feature(FeatureIndex.MIG_DEVICE_STATE, FeatureOp.GET, msg_id=21),
        _feature(FeatureIndex.MIG_DEVICE_STATE, FeatureOp.SET,
                 wire.MigDeviceState(State.STOP), msg_id=22),
        _feature(FeatureIndex.MIG_DEVICE_STATE, FeatureOp.SET,
                 wire.MigDeviceState(State.PRE_COPY), msg_id=23),
        _feature(FeatureIndex.MIG_DEVICE_STATE, FeatureOp.SET,
                 wire.MigDeviceState(State.RUNNING), msg_id=24),
        _feature(FeatureIndex.DMA_LOGGING_START, FeatureOp.SET,
                 wire.DmaLoggingControl(4096, (wire.DmaRange(0, 1 << 20),)), msg_id=25),
        _feature(FeatureIndex.DMA_LOGGING_REPORT, FeatureOp.GET,
                 wire.DmaLoggingReport(0, 1 << 20, 4096), msg_id=26),
        _feature(FeatureIndex.DMA_LOGGING_STOP, FeatureOp.SET,
                 wire.DmaLoggingControl(4096), msg_id=27),
        _feature(FeatureIndex.MIG_DEVICE_STATE, FeatureOp.PROBE | FeatureOp.SET, msg_id=28),
    ]
    return out
