"""Build a served device: the device, its eventfd table and a :class:`ServerCore`, wired.

The device needs an interrupt sink when it is built and the eventfd table needs the device's
IRQ table, so a :class:`ForwardIrqSink` is given first and pointed at the table afterwards.
Every place that hosts a device (CLI ``serve``, tests, probes, benchmarks, the migration
driver) builds it here.
"""

from __future__ import annotations

from vfio_user_mig.model.states import VFIO_USER_CAPS, MigrationCaps
from vfio_user_mig.simulator.device import DEVICES, Device
from vfio_user_mig.simulator.server.core import ServerCore
from vfio_user_mig.simulator.server.irqs import EventfdTable
from vfio_user_mig.simulator.server.types import ServerConfig
from vfio_user_mig.wire.record import Record, record


class ForwardIrqSink:
    """An ``IrqSink`` forwarding to ``target`` once it is set (interrupts before are lost)."""

    def __init__(self) -> None:
        self.target: EventfdTable | None = None

    def trigger(self, index: int, subindex: int) -> None:
        """Forward the interrupt."""
        if self.target is not None:
            self.target.trigger(index, subindex)


@record
class HostedDevice(Record):
    """A device with the server core that serves it."""

    device: Device
    core: ServerCore

    def close(self) -> None:
        """Release the core's client resources and the device."""
        self.core.close()
        self.device.close()


def host_device(
    name: str = "migdev",
    *,
    mem_size: int = 16 << 20,
    caps: MigrationCaps = VFIO_USER_CAPS,
    config: ServerConfig | None = None,
) -> HostedDevice:
    """Build device ``name`` (a key of ``DEVICES``) and a server core for it."""
    try:
        factory = DEVICES[name]
    except KeyError:
        raise ValueError(f"unknown device {name!r} (one of {', '.join(DEVICES)})") from None
    sink = ForwardIrqSink()
    device = factory(mem_size=mem_size, irq_sink=sink, caps=caps)
    irqs = EventfdTable(device.irqs)
    sink.target = irqs
    return HostedDevice(device, ServerCore(device, config or ServerConfig(), irqs))


__all__ = ["ForwardIrqSink", "HostedDevice", "host_device"]
