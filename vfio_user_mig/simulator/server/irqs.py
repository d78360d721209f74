"""Interrupt delivery: the eventfds a client configures with SET_IRQS (vfio-user.rst
"VFIO_USER_DEVICE_SET_IRQS"), signalled when the device triggers a vector.

The table owns the fds it holds: replacing, disabling or clearing closes them, so a
disconnect never leaks a descriptor.
"""

from __future__ import annotations

import errno as _errno
import os

from vfio_user_mig.simulator.device.base import IrqFlag, IrqSpec
from vfio_user_mig.simulator.device.errors import DeviceError
from vfio_user_mig.wire.constants import IrqSetFlag

_ONE = (1).to_bytes(8, "little")


def validate_set_irqs(
    irqs: tuple[IrqSpec, ...], flags: int, index: int, start: int, count: int, nfds: int
) -> None:
    """Refuse (DeviceError EINVAL) a DEVICE_SET_IRQS the kernel's VFIO would refuse.

    ``flags`` already has exactly one DATA and one ACTION bit and nothing else (the codec,
    ``check_irq_set_flags``). In order, as ``vfio_set_irqs_validate_and_prepare`` and
    libvfio-user's ``device_set_irqs_validate`` check them:

    1. ``index`` must exist;
    2. ``start`` must be below the index's count and ``start + count`` within it (so count 0
       on an index with no vectors is refused too);
    3. count 0 is only ACTION_TRIGGER with DATA_NONE ("disable the index");
    4. MASK and UNMASK need an index reporting ``VFIO_IRQ_INFO_MASKABLE`` (uapi
       ``struct vfio_irq_info``);
    5. fds come only with DATA_EVENTFD, and then exactly ``count`` of them (none = disable).
    """
    if not 0 <= index < len(irqs):
        raise DeviceError(f"SET_IRQS index {index}: no such interrupt index", _errno.EINVAL)
    limit = irqs[index].count
    if start >= limit or start + count > limit:
        raise DeviceError(
            f"SET_IRQS index {index}: start {start} count {count} outside its {limit} vectors",
            _errno.EINVAL,
        )
    data = flags & (IrqSetFlag.DATA_NONE | IrqSetFlag.DATA_BOOL | IrqSetFlag.DATA_EVENTFD)
    action = flags & (IrqSetFlag.ACTION_MASK | IrqSetFlag.ACTION_UNMASK | IrqSetFlag.ACTION_TRIGGER)
    if count == 0 and (action != IrqSetFlag.ACTION_TRIGGER or data != IrqSetFlag.DATA_NONE):
        raise DeviceError("SET_IRQS count 0 is only TRIGGER with DATA_NONE", _errno.EINVAL)
    if action != IrqSetFlag.ACTION_TRIGGER and not irqs[index].flags & IrqFlag.MASKABLE:
        raise DeviceError(f"SET_IRQS index {index} is not maskable", _errno.EINVAL)
    if nfds and data != IrqSetFlag.DATA_EVENTFD:
        raise DeviceError(f"SET_IRQS flags {flags:#x} take no fds", _errno.EINVAL)
    if nfds and nfds != count:
        raise DeviceError(f"SET_IRQS count {count} but {nfds} fds", _errno.EINVAL)


class EventfdTable:
    """``(irq index, subindex) -> eventfd`` with the device's IRQ table as bounds.

    Implements the device's ``IrqSink``: :meth:`trigger` writes 1 to the eventfd (an
    unconfigured vector is dropped, as on hardware). ``fired`` counts delivered interrupts.
    """

    def __init__(self, irqs: tuple[IrqSpec, ...]) -> None:
        self._irqs = irqs
        self._fds: dict[tuple[int, int], int] = {}
        self.fired: dict[tuple[int, int], int] = {}

    def _check(self, index: int, start: int, count: int) -> None:
        if not 0 <= index < len(self._irqs):
            raise DeviceError(f"SET_IRQS index {index}: no such interrupt index", _errno.EINVAL)
        limit = self._irqs[index].count
        if start + count > limit:
            raise DeviceError(
                f"SET_IRQS index {index}: vectors {start}..{start + count - 1} exceed the "
                f"{limit} it has",
                _errno.EINVAL,
            )

    def set_eventfds(self, index: int, start: int, fds: list[int]) -> None:
        """Install ``fds`` for vectors ``start..``; a negative fd disables that vector.
        On error nothing changes and the caller still owns ``fds``."""
        self._check(index, start, len(fds))
        for i, fd in enumerate(fds):
            self._replace((index, start + i), fd if fd >= 0 else None)

    def trigger_range(self, index: int, start: int, values: bytes) -> None:
        """ACTION_TRIGGER with DATA_NONE (``values`` all 1) or DATA_BOOL: signal the eventfd
        of each vector ``start + i`` whose byte is non-zero (loopback triggering, as the
        kernel and libvfio-user do)."""
        for i, value in enumerate(values):
            if value:
                self.trigger(index, start + i)

    def disable(self, index: int, start: int, count: int) -> None:
        """DATA_NONE with count 0 on ACTION_TRIGGER: disable (start, count) or the whole index."""
        self._check(index, start, count)
        subs = range(start, start + count) if count else range(self._irqs[index].count)
        for sub in subs:
            self._replace((index, sub), None)

    def _replace(self, key: tuple[int, int], fd: int | None) -> None:
        old = self._fds.pop(key, None)
        if old is not None and old != fd:
            os.close(old)
        if fd is not None:
            self._fds[key] = fd

    def trigger(self, index: int, subindex: int) -> None:
        """Signal vector (index, subindex) if it has an eventfd."""
        fd = self._fds.get((index, subindex))
        if fd is None:
            return
        try:
            os.write(fd, _ONE)
        except OSError:
            return
        self.fired[(index, subindex)] = self.fired.get((index, subindex), 0) + 1

    def configured(self) -> dict[tuple[int, int], int]:
        """A copy of the current table."""
        return dict(self._fds)

    def clear(self) -> None:
        """Close every eventfd (disconnect or reset)."""
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


__all__ = ["EventfdTable", "validate_set_irqs"]
