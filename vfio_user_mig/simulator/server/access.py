"""Server handlers for region and interrupt access: GET_REGION_INFO (with its capability
chain), GET_REGION_IO_FDS, GET_IRQ_INFO, SET_IRQS and REGION_READ/WRITE/WRITE_MULTI, checked
in libvfio-user's order before the device is asked (vfio-user.rst, docs/wire-compat.md).
"""

from __future__ import annotations

import errno as _errno
from typing import Any

from vfio_user_mig import wire
from vfio_user_mig.simulator.device.base import RegionFlag
from vfio_user_mig.simulator.device.errors import DeviceError
from vfio_user_mig.simulator.server.irqs import validate_set_irqs
from vfio_user_mig.simulator.server.state import ServerState
from vfio_user_mig.simulator.server.types import (
    Refusal,
)
from vfio_user_mig.wire.constants import (
    IrqSetFlag,
    RegionInfoFlag,
)
from vfio_user_mig.wire.layouts import (
    REGION_ACCESS,
    REGION_INFO,
)


def _access_echo(offset: int, region: int, count: int, data_bytes: int) -> bytes:
    """The payload of libvfio-user's error reply when the device refused a REGION_READ or
    REGION_WRITE that passed validation: {offset, region, count} and ``data_bytes`` zeros
    (its ``handle_region_access`` builds the reply before the access). Like any error payload
    it is dropped with ``strict_spec`` (docs/wire-compat.md row 2)."""
    return REGION_ACCESS.pack(offset, region, count) + bytes(data_bytes)




class AccessHandlers(ServerState):
    """Region info, region access and IRQ commands."""

    def _region_info(self, msg: wire.RegionInfo, fds: list[int]) -> tuple[Any, list[int]]:
        spec = self._region(msg.index)
        if msg.argsz < REGION_INFO.size:
            raise Refusal(_errno.EINVAL, f"GET_REGION_INFO argsz {msg.argsz} too small")
        caps: list[Any] = []
        if spec.sparse_mmap:
            for off, size in spec.sparse_mmap:
                if off < 0 or size <= 0 or off + size > spec.size:
                    raise Refusal(
                        _errno.EIO, f"region {spec.index}: sparse area {off:#x}+{size:#x} outside"
                    )
            caps.append(
                wire.SparseMmapCap(tuple(wire.SparseArea(o, s) for o, s in spec.sparse_mmap))
            )
        if spec.type_subtype is not None:
            caps.append(wire.TypeCap(*spec.type_subtype))
        chain = len(caps) + max(len(spec.sparse_mmap or ()) - 1, 0)
        if chain > self.config.max_region_caps:
            raise Refusal(
                _errno.EIO,
                f"region {spec.index}: capability chain of {chain} > {self.config.max_region_caps}",
            )
        reply = wire.RegionInfoReply(
            index=spec.index, flags=int(spec.flags), size=spec.size, offset=0,
            msg_id=msg.msg_id,
        )
        if caps:
            full = wire.RegionInfoReply(
                index=spec.index, flags=int(spec.flags | RegionInfoFlag.CAPS), size=spec.size,
                offset=0, caps=tuple(caps), msg_id=msg.msg_id,
            )
            full_size = full.argsz or 0
            if msg.argsz >= full_size:
                reply = full
            else:  # too small for the chain: the needed argsz, no caps, min(argsz, full) bytes
                reply = wire.RegionInfoReply(
                    index=spec.index, flags=int(spec.flags), size=spec.size, offset=0,
                    argsz=full_size, truncated_to=msg.argsz, msg_id=msg.msg_id,
                )
        # As libvfio-user: the fd travels with the capability chain only (when it fits); a
        # client asking with a too-small argsz may have no room for SCM_RIGHTS.
        fds_out = [spec.fd] if spec.fd is not None and reply.flags & RegionInfoFlag.CAPS else []
        return reply, fds_out

    def _region_io_fds(self, msg: wire.RegionIoFds, fds: list[int]) -> tuple[Any, list[int]]:
        # libvfio-user's handle_device_get_region_io_fds order: flags and count must be 0
        # (vfio-user.rst), the index must exist, the region must have an access flag, argsz
        # must hold the 16-byte reply and stay within max_data_xfer_size.
        if msg.flags or msg.count:
            raise Refusal(_errno.EINVAL, "GET_REGION_IO_FDS flags and count must be 0")
        spec = self._region(msg.index)
        if not spec.flags & (RegionFlag.READ | RegionFlag.WRITE | RegionFlag.MMAP):
            raise Refusal(_errno.EINVAL, f"region {msg.index} has no access flags")
        if msg.argsz > self.config.max_data_xfer_size:
            raise Refusal(_errno.EINVAL, f"GET_REGION_IO_FDS argsz {msg.argsz} too large")
        return wire.RegionIoFdsReply(index=msg.index, msg_id=msg.msg_id), []

    def _irq_info(self, msg: wire.IrqInfo, fds: list[int]) -> tuple[Any, list[int]]:
        if not 0 <= msg.index < len(self.device.irqs):
            raise Refusal(_errno.EINVAL, f"irq index {msg.index} does not exist")
        spec = self.device.irqs[msg.index]
        return wire.IrqInfoReply(
            index=spec.index, flags=int(spec.flags), count=spec.count, msg_id=msg.msg_id
        ), []

    def _set_irqs(self, msg: wire.IrqSet, fds: list[int]) -> tuple[Any, list[int]]:
        """vfio-user.rst "VFIO_USER_DEVICE_SET_IRQS", validated as the kernel's VFIO does
        (:func:`validate_set_irqs`). TRIGGER: eventfds install, no fds or count 0 with
        DATA_NONE disable (libvfio-user), DATA_NONE/BOOL signal; MASK/UNMASK on a maskable
        index are accepted and have no effect here."""
        flags = IrqSetFlag(msg.flags)
        try:
            validate_set_irqs(
                self.device.irqs, msg.flags, msg.index, msg.start, msg.count, len(fds)
            )
            if not flags & IrqSetFlag.ACTION_TRIGGER:
                pass
            elif flags & IrqSetFlag.DATA_EVENTFD and fds:
                self.irqs.set_eventfds(msg.index, msg.start, list(fds))
                fds.clear()
            elif flags & IrqSetFlag.DATA_EVENTFD or msg.count == 0:
                self.irqs.disable(msg.index, msg.start, msg.count)
            elif flags & IrqSetFlag.DATA_BOOL:
                self.irqs.trigger_range(msg.index, msg.start, bytes(msg.data))
            else:
                self.irqs.trigger_range(msg.index, msg.start, b"\x01" * msg.count)
        except DeviceError as exc:
            raise Refusal(exc.errno, str(exc)) from None
        return wire.IrqSetReply(msg_id=msg.msg_id), []

    def _check_count(self, count: int, what: str) -> None:
        if count > self.config.max_data_xfer_size:
            raise Refusal(
                _errno.EINVAL,
                f"{what} count {count} > max_data_xfer_size {self.config.max_data_xfer_size}",
            )

    def _check_access(self, region: int, offset: int, count: int, what: str) -> bool:
        """libvfio-user's ``is_valid_region_access`` order: count limit, region index, bounds
        (offset + count, saturating, within the region size); True when ``count`` is 0, which
        is then answered without asking the device, on every region alike."""
        self._check_count(count, what)
        spec = self._region(region)
        if offset + count > spec.size:
            raise Refusal(
                _errno.EINVAL,
                f"{what} {offset:#x}+{count:#x} past the end of region {region} "
                f"({spec.size:#x} bytes)",
            )
        return count == 0

    def _empty_access_reply(self, msg: Any, cls: Any) -> Any:
        """A count-0 access: libvfio-user's header-only reply; strict_spec echoes the 16
        bytes (docs/wire-compat.md row 5)."""
        if self.config.strict_spec:
            return cls(offset=msg.offset, region=msg.region, count=0, msg_id=msg.msg_id)
        return cls(offset=0, region=0, count=0, bare=True, msg_id=msg.msg_id)

    def _region_read(self, msg: wire.RegionRead, fds: list[int]) -> tuple[Any, list[int]]:
        if self._check_access(msg.region, msg.offset, msg.count, "REGION_READ"):
            return self._empty_access_reply(msg, wire.RegionReadReply), []
        data = self._device_read(msg.region, msg.offset, msg.count)
        return wire.RegionReadReply(
            offset=msg.offset, region=msg.region, count=msg.count, data=data, msg_id=msg.msg_id
        ), []

    def _device_read(self, region: int, offset: int, count: int) -> bytes:
        """The device's answer to a validated REGION_READ; a refusal carries libvfio-user's
        reply payload (the reply it had prepared, zero data). Shared by :meth:`_region_read`
        and the server core's REGION_READ fast path."""
        try:
            return self.device.region_read(region, offset, count, self._now)
        except DeviceError as exc:
            echo = _access_echo(offset, region, count, count)
            raise Refusal(exc.errno, str(exc), payload=echo) from None

    def _region_write(self, msg: wire.RegionWrite, fds: list[int]) -> tuple[Any, list[int]]:
        if self._check_access(msg.region, msg.offset, msg.count, "REGION_WRITE"):
            return self._empty_access_reply(msg, wire.RegionWriteReply), []
        try:
            self.device.region_write(msg.region, msg.offset, bytes(msg.data), self._now)
        except DeviceError as exc:  # libvfio-user: the reply it had prepared
            echo = _access_echo(msg.offset, msg.region, msg.count, 0)
            raise Refusal(exc.errno, str(exc), payload=echo) from None
        return wire.RegionWriteReply(
            offset=msg.offset, region=msg.region, count=msg.count, msg_id=msg.msg_id
        ), []

    def _region_write_multi(
        self, msg: wire.RegionWriteMulti, fds: list[int]
    ) -> tuple[Any, list[int]]:
        done = 0
        for item in msg.writes:
            try:
                self.device.region_write(item.region, item.offset, item.value, self._now)
            except DeviceError as exc:
                raise Refusal(exc.errno, f"write {done}: {exc}") from None
            done += 1
        return wire.RegionWriteMultiReply(wr_cnt=done, msg_id=msg.msg_id), []

__all__ = ["AccessHandlers"]
