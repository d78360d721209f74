"""The referee's scenarios: how the device behaves in each named, seeded run.

Each :class:`Scenario` is a correct device plus at most one misbehaviour a device may show
(PROTOCOL.md sections 4 and 5; vfio-user.rst "VFIO_USER_MIG_DATA_READ"):

=================  ===========================================================================
name               what the referee does
=================  ===========================================================================
clean              nothing unusual: a migration as source and as destination
arc-fails          the source's first arc into STOP_COPY fails and leaves the device in ERROR
resume-refused     the destination refuses RESUMING -> STOP as an incomplete stream is refused
                   (EINVAL, device to ERROR)
no-converge        the device keeps dirtying: its memory on every pre-copy read (more
                   pre-copy data), mapped guest pages on every pre-copy read, every dirty
                   report and every state change while running (its last writes)
short-reads        MIG_DATA_READ replies are not padded (argsz = 8 + actual); the stream's last
                   chunk is short
dma-stop-copy      during STOP_COPY the referee sends DMA_READ and DMA_WRITE requests and
                   holds its MIG_DATA_READ reply until the client answers them
disconnect         the source drops the connection in the middle of the STOP_COPY stream
=================  ===========================================================================

The seed picks the details (the errno of a failing arc, after how many chunks the connection
drops, which pages and bytes get dirtied), so a run is repeatable. What a *client* must do in
each is the checker's business (:mod:`vfio_user_mig.check.client.scenarios`).
"""

from __future__ import annotations

import errno as _errno
import random
from collections.abc import Callable
from dataclasses import dataclass

from vfio_user_mig.model import State
from vfio_user_mig.model.errors import ArcActionError
from vfio_user_mig.simulator.device.base import Device, RegionFlag
from vfio_user_mig.simulator.device.errors import DeviceError


@dataclass(frozen=True)
class Misbehaviour:
    """The knobs a scenario turns (module docstring), resolved from its seed."""

    #: (role, from state or None for any, target state, errno): the first arc from ``from``
    #: into ``target`` on ``role`` fails, device to ERROR.
    fail_arc: tuple[str, State | None, State, int] | None = None
    keep_dirtying: bool = False
    unpadded: bool = False
    dma_in_stop_copy: bool = False
    #: Drop the source connection at this STOP_COPY MIG_DATA_READ (1-based; 0 never).
    disconnect_at_read: int = 0


@dataclass(frozen=True)
class Scenario:
    name: str
    summary: str
    make: Callable[[random.Random], Misbehaviour]


def _errno_of(rng: random.Random) -> int:
    return rng.choice((_errno.EIO, _errno.EINVAL, _errno.ENOMEM))


SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    Scenario("clean", "a correct device, as source and as destination",
             lambda rng: Misbehaviour()),
    Scenario("arc-fails", "the source's first arc into STOP_COPY fails, device to ERROR",
             lambda rng: Misbehaviour(fail_arc=("src", None, State.STOP_COPY, _errno_of(rng)))),
    Scenario("resume-refused", "the destination refuses RESUMING -> STOP (incomplete stream)",
             lambda rng: Misbehaviour(fail_arc=("dst", State.RESUMING, State.STOP, _errno.EINVAL))),
    Scenario("no-converge", "the device keeps dirtying its memory and guest pages",
             lambda rng: Misbehaviour(keep_dirtying=True)),
    Scenario("short-reads", "unpadded MIG_DATA_READ replies, a short last chunk",
             lambda rng: Misbehaviour(unpadded=True)),
    Scenario("dma-stop-copy", "server DMA_READ/DMA_WRITE while the client reads STOP_COPY data",
             lambda rng: Misbehaviour(dma_in_stop_copy=True)),
    Scenario("disconnect", "the source drops the connection in the middle of STOP_COPY",
             lambda rng: Misbehaviour(disconnect_at_read=rng.randint(1, 3))),
)}


def misbehaviour(name: str, seed: int) -> Misbehaviour:
    """The knobs of scenario ``name`` for ``seed`` (ValueError for an unknown name)."""
    try:
        scenario = SCENARIOS[name]
    except KeyError:
        raise ValueError(f"unknown scenario {name!r} (one of {', '.join(SCENARIOS)})") from None
    return scenario.make(random.Random(f"{name}/{seed}"))


def arm_arc_failure(device: Device, source: State | None, target: State,
                    errno: int) -> Callable[[], bool]:
    """Make the device's first arc from ``source`` (any when None) into ``target`` fail with
    ``errno``, device to ERROR (ArcActionError ``broken``: the walker moves it to ERROR,
    PROTOCOL.md section 5).

    The device's own action is replaced on this instance only; a device that can inject the
    failure itself (``inject_arc_failure``: it also clears its state) is asked to. Returns a
    function telling whether the failure fired.
    """
    original = device.on_arc
    fired: list[bool] = []

    def on_arc(src: State, dst: State) -> None:
        if dst != target or (source is not None and src != source) or fired:
            original(src, dst)
            return
        fired.append(True)
        inject = getattr(device, "inject_arc_failure", None)
        if inject is not None:
            inject(src, dst, errno=errno, broken=True)
            original(src, dst)  # raises the injected, broken failure
        if hasattr(device, "_state"):  # a bookkeeping device believes what it is told
            device._state = State.ERROR
        raise ArcActionError(f"{src.name} -> {dst.name}: refused by the scenario", errno,
                             broken=True)

    device.on_arc = on_arc  # type: ignore[method-assign]
    return lambda: bool(fired)


def dirty_device(device: Device, rng: random.Random, size: int = 4096) -> None:
    """Write ``size`` random bytes at a random place of the device's largest writable,
    migrating region (its memory): more pre-copy data the device must send again."""
    regions = [r for r in device.regions
               if r.size >= 4096 and r.flags & RegionFlag.WRITE and r.index != 7]
    if not regions:
        return
    region = max(regions, key=lambda r: r.size)
    size = min(size, region.size) // 8 * 8
    offset = rng.randrange(0, region.size - size + 1, 8)
    try:
        device.region_write(region.index, offset, rng.randbytes(size), 0.0)
    except DeviceError:  # a region backed by less memory than its size (lvu-sample's BAR1)
        device.region_write(region.index, 0, rng.randbytes(min(size, 4096)), 0.0)


__all__ = ["SCENARIOS", "Misbehaviour", "Scenario", "arm_arc_failure", "dirty_device",
           "misbehaviour"]
