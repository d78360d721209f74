"""A sans-IO driver for :class:`ServerCore` and raw-message builders for the hardening tests."""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from vfio_user_mig import wire
from vfio_user_mig.model import State
from vfio_user_mig.simulator.device.regs import Reg, Status
from vfio_user_mig.simulator.server.core import ServerCore
from vfio_user_mig.simulator.server.hosting import HostedDevice, host_device
from vfio_user_mig.simulator.server.types import Handled, ServerConfig
from vfio_user_mig.wire import FeatureIndex, FeatureOp

HDR = struct.Struct("<HHIII")
BAR0, BAR2, CONFIG = 0, 2, 7


def raw(msg_id: int, cmd: int, payload: bytes = b"", flags: int = 0, err: int = 0,
        size: int | None = None) -> bytes:
    """A message with a header built by hand (``size`` overrides msg_size)."""
    return HDR.pack(msg_id, cmd, 16 + len(payload) if size is None else size, flags, err) + payload


def version(max_data_xfer_size: int = 1 << 20, msg_id: int = 0, **extra: Any) -> bytes:
    caps = wire.Capabilities.make(max_msg_fds=8, max_data_xfer_size=max_data_xfer_size,
                                  extra=extra or None)
    return wire.encode(wire.Version(0, 2, caps, msg_id=msg_id))


def fd_closed(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError as exc:
        return exc.errno == errno.EBADF
    return False


@dataclass
class Answer:
    """The event of one request and the messages the server sent while handling it."""

    event: Handled
    out: list[tuple[bytes, list[int]]] = field(default_factory=list)

    @property
    def errno(self) -> int | None:
        return self.event.errno

    @property
    def reply(self) -> Any:
        """The decoded reply (the only reply-type message sent)."""
        replies = [r for r, _ in self.out if HDR.unpack_from(r)[3] & 0xF == 1]
        assert len(replies) == 1, self.out
        return wire.decode(replies[0], max_size=1 << 24)

    @property
    def reply_errno(self) -> int:
        replies = [r for r, _ in self.out if HDR.unpack_from(r)[3] & 0xF == 1]
        assert len(replies) == 1, self.out
        _id, _cmd, _size, flags, err = HDR.unpack_from(replies[0])
        return err if flags & 0x20 else 0


class Driver:
    """A migdev hosted by a ServerCore, driven without sockets."""

    def __init__(self, config: ServerConfig | None = None, *, mem_size: int = 1 << 16,
                 negotiate: bool = True, client_xfer: int = 1 << 20) -> None:
        self.hosted: HostedDevice = host_device("migdev", mem_size=mem_size, config=config)
        self.core: ServerCore = self.hosted.core
        self.now = 0.0
        self._id = 0
        self.closed = False  # set when the core ended the connection (ConnectionError)
        if negotiate:
            assert self.send(version(client_xfer)).errno is None

    def close(self) -> None:
        self.hosted.close()

    def __enter__(self) -> Driver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def events(self, data: bytes, fds: Sequence[int] = ()) -> list[Answer]:
        """Feed bytes; every event with what was sent while processing it."""
        self.core.receive_data(data, list(fds))
        answers: list[Answer] = []
        while True:
            self.now += 0.001
            try:
                event = self.core.next_event(self.now)
            except ConnectionError:
                self.closed = True
                return answers
            out = [(b"".join(bytes(p) for p in parts), f) for parts, f in self.core.data_to_send()]
            if event is None:
                if answers:
                    answers[-1].out.extend(out)
                return answers
            answers.append(Answer(event, out))

    def send(self, data: bytes, fds: Sequence[int] = ()) -> Answer:
        """Feed one whole message; its answer."""
        answers = self.events(data, fds)
        assert len(answers) == 1, answers
        return answers[0]

    def request(self, msg: wire.Message, fds: Sequence[int] = ()) -> Answer:
        self._id = (self._id + 1) & 0x7FFF
        object.__setattr__(msg, "msg_id", self._id)
        return self.send(wire.encode(msg), fds)

    def ok(self, msg: wire.Message, fds: Sequence[int] = ()) -> Any:
        answer = self.request(msg, fds)
        assert answer.errno is None, answer.event
        return answer.reply

    def feature(self, index: int, ops: int, data: Any = None) -> Answer:
        return self.request(wire.DeviceFeature(index, FeatureOp(ops), data))

    def set_state(self, state: State) -> None:
        answer = self.feature(FeatureIndex.MIG_DEVICE_STATE, FeatureOp.SET,
                              wire.MigDeviceState(state))
        assert answer.errno is None, answer.event

    def reg_write(self, reg: Reg, value: int, size: int = 8) -> None:
        self.ok(wire.RegionWrite(int(reg), BAR0, size, value.to_bytes(size, "little")))

    def reg_read(self, reg: Reg, size: int = 4) -> int:
        return int.from_bytes(bytes(self.ok(wire.RegionRead(int(reg), BAR0, size)).data),
                              "little")

    def start_dma(self, direction: int, iova: int, length: int) -> list[tuple[bytes, list[int]]]:
        """Ring the DMA doorbell; the messages the server sent right after."""
        self.ok(wire.RegionWrite(4, CONFIG, 2, (0x0006).to_bytes(2, "little")))
        self.reg_write(Reg.DMA_DEV_OFFSET, 0)
        self.reg_write(Reg.DMA_IOVA, iova)
        self.reg_write(Reg.DMA_LEN, length)
        self.reg_write(Reg.DMA_DIR, direction, 4)
        self.reg_write(Reg.DMA_MODE, 0, 4)
        return self.request(wire.RegionWrite(int(Reg.DOORBELL), BAR0, 4, b"\1\0\0\0")).out

    def status(self) -> Status:
        return Status(self.reg_read(Reg.STATUS))
