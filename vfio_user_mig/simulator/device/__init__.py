"""Emulated vfio-user devices (sans-IO) and the registry the CLI picks them from.

Public names: the :class:`Device` interface and its tables (:mod:`.base`), the error a device
refuses with (:mod:`.errors`), DMA jobs and the client's DMA space (:mod:`.dma`), dirty logging
(:mod:`.dirtylog`), the migration stream (format :mod:`.stream`, :mod:`.stream_encoder`,
:mod:`.stream_decoder`), the ``migdev`` device (:mod:`.migdev`, built on :mod:`.migdev_base`,
:mod:`.migdev_dma`, :mod:`.migdev_regions`) and ``lvu-sample`` (:mod:`.lvu_sample`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Protocol

from vfio_user_mig.model.states import VFIO_USER_CAPS, MigrationCaps
from vfio_user_mig.simulator.device.base import (
    PCI_NUM_REGIONS,
    Device,
    IrqFlag,
    IrqIndex,
    IrqSink,
    IrqSpec,
    NullIrqSink,
    PciRegion,
    RegionFlag,
    RegionSpec,
)
from vfio_user_mig.simulator.device.dirtylog import DirtyLog
from vfio_user_mig.simulator.device.dma import (
    DmaFault,
    DmaJob,
    DmaKind,
    DmaMapError,
    DmaMapping,
    DmaMode,
    DmaOp,
    DmaResolver,
    DmaSpace,
    Route,
    run_job,
)
from vfio_user_mig.simulator.device.errors import DeviceError
from vfio_user_mig.simulator.device.migdev import MigDev
from vfio_user_mig.simulator.device.migdev_base import DEFAULT_MEM_SIZE
from vfio_user_mig.simulator.device.stream import RecordType, StreamError, StreamGeometry

if TYPE_CHECKING:
    from vfio_user_mig.simulator.device.lvu_sample import LvuSample
    from vfio_user_mig.simulator.device.stream_decoder import StreamDecoder
    from vfio_user_mig.simulator.device.stream_encoder import StreamEncoder

#: Names imported on first use (``serve`` starts without them).
_LAZY = {
    "LvuSample": "vfio_user_mig.simulator.device.lvu_sample",
    "StreamDecoder": "vfio_user_mig.simulator.device.stream_decoder",
    "StreamEncoder": "vfio_user_mig.simulator.device.stream_encoder",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class DeviceFactory(Protocol):
    """Builds a device; ``mem_size`` is the device memory size in bytes, ``caps`` the
    migration capabilities it reports (a profile may ignore either when fixed)."""

    def __call__(
        self, *, mem_size: int, irq_sink: IrqSink, caps: MigrationCaps = VFIO_USER_CAPS
    ) -> Device: ...


def _migdev(
    *, mem_size: int = DEFAULT_MEM_SIZE, irq_sink: IrqSink, caps: MigrationCaps = VFIO_USER_CAPS
) -> Device:
    return MigDev(mem_size=mem_size, irq_sink=irq_sink, caps=caps)


def _lvu_sample(
    *, mem_size: int, irq_sink: IrqSink, caps: MigrationCaps = VFIO_USER_CAPS
) -> Device:
    from vfio_user_mig.simulator.device.lvu_sample import make_lvu_sample

    return make_lvu_sample(mem_size=mem_size, irq_sink=irq_sink, caps=caps)


#: Device profiles by name (the CLI's ``--device``).
DEVICES: dict[str, DeviceFactory] = {"migdev": _migdev, "lvu-sample": _lvu_sample}

__all__ = [
    "DEFAULT_MEM_SIZE",
    "DEVICES",
    "PCI_NUM_REGIONS",
    "Device",
    "DeviceError",
    "DeviceFactory",
    "DirtyLog",
    "DmaFault",
    "DmaJob",
    "DmaKind",
    "DmaMapError",
    "DmaMapping",
    "DmaMode",
    "DmaOp",
    "DmaResolver",
    "DmaSpace",
    "IrqFlag",
    "IrqIndex",
    "IrqSink",
    "IrqSpec",
    "LvuSample",
    "MigDev",
    "NullIrqSink",
    "PciRegion",
    "RecordType",
    "RegionFlag",
    "RegionSpec",
    "Route",
    "StreamDecoder",
    "StreamEncoder",
    "StreamError",
    "StreamGeometry",
    "run_job",
]
