"""Group ``gating``: which commands a server executes in which migration state.

The expectation of every (state, command) cell comes from
:func:`vfio_user_mig.protocol.gating.legality_table` (PROTOCOL.md sections 2 and 4: a stopped or
stop-copying device executes only region access, DEVICE_FEATURE and MIG_DATA_READ; migration
data moves only in the saving group or RESUMING). For each supported state one sequence brings
the device there and sends one well-formed request of each client command, valid when the
gate allows it: an allowed command must succeed, a refused one must get the table's errno.

VERSION is negotiated per connection and cannot be sent twice on one; its cells are checked
by the ``disconnect`` group (a reconnection in each state). ERROR cannot be requested, so its
row is not reached here. REGION_WRITE_MULTI is valid only when the server offered
``write_multiple`` at VERSION (vfio-user.rst "Version"); otherwise only a reply is required
where the gate allows it.
"""

from __future__ import annotations

from collections.abc import Callable

from vfio_user_mig import wire
from vfio_user_mig.check.groups.common import (
    IOVA_BASE,
    Region,
    enc,
    ensure_saved_stream,
    find_region,
    mig_read,
    mig_write,
)
from vfio_user_mig.check.requests import raw_message
from vfio_user_mig.check.session import Checker, Sequence
from vfio_user_mig.check.steps import ANY, Expect, refused
from vfio_user_mig.model import State
from vfio_user_mig.protocol.gating import CLIENT_COMMANDS, legality_table
from vfio_user_mig.wire import Command, FeatureIndex, FeatureOp

_RULE = "PROTOCOL.md sections 2 and 4 (protocol.gating.legality_table)"
_MAP_SIZE = 0x1000

#: Commands sent last: DMA_UNMAP undoes the DMA_MAP sent before it, DEVICE_RESET may move the
#: device (reset group).
_LAST = (Command.DMA_UNMAP, Command.DEVICE_RESET)

Builder = Callable[[Sequence], tuple[bytes, tuple[str, ...], Expect | None]]


def _requests(region: Region | None, iova: int, stream: bytes | None,
              write_multiple: bool) -> dict[Command, Builder]:
    """One well-formed request per client command (and its fds); an ``Expect`` overrides the
    "success" expected where the gate allows the command."""
    reg = region.index if region else 0
    chunk = (stream or b"")[:4096]

    def irq(seq: Sequence) -> tuple[bytes, tuple[str, ...], Expect | None]:
        flags = wire.IrqSetFlag.DATA_NONE | wire.IrqSetFlag.ACTION_TRIGGER
        return enc(seq, wire.IrqSet(flags, 0, 0, 0)), (), None

    table: dict[Command, Builder] = {
        Command.DMA_MAP: lambda s: (enc(s, wire.DmaMap(iova, _MAP_SIZE)),
                                    (f"memfd:{_MAP_SIZE}",), None),
        Command.DMA_UNMAP: lambda s: (enc(s, wire.DmaUnmap(iova, _MAP_SIZE)), (), None),
        Command.DEVICE_GET_INFO: lambda s: (enc(s, wire.DeviceGetInfo()), (), None),
        Command.DEVICE_GET_REGION_INFO: lambda s: (enc(s, wire.RegionInfo(reg)), (), None),
        Command.DEVICE_GET_REGION_IO_FDS: lambda s: (enc(s, wire.RegionIoFds(reg)), (),
                                                     None if region else ANY),
        Command.DEVICE_GET_IRQ_INFO: lambda s: (enc(s, wire.IrqInfo(0)), (), None),
        Command.DEVICE_SET_IRQS: irq,
        Command.REGION_READ: lambda s: (enc(s, wire.RegionRead(0, reg, 8)), (),
                                        None if region else ANY),
        Command.REGION_WRITE: lambda s: (enc(s, wire.RegionWrite(0, reg, 8, bytes(8))), (),
                                         None if region else ANY),
        Command.DEVICE_RESET: lambda s: (raw_message(s.next_id(), Command.DEVICE_RESET, b""),
                                         (), None),
        Command.REGION_WRITE_MULTI: lambda s: (
            enc(s, wire.RegionWriteMulti((wire.MultiWrite(0, reg, 8, bytes(8)),))), (),
            None if write_multiple and region else ANY),
        Command.DEVICE_FEATURE: lambda s: (
            enc(s, wire.DeviceFeature(FeatureIndex.MIGRATION, FeatureOp.GET)), (), None),
        Command.MIG_DATA_READ: lambda s: (mig_read(s, 4096), (), None),
        Command.MIG_DATA_WRITE: lambda s: (mig_write(s, chunk), (), None if chunk else ANY),
    }
    return table


def _row(checker: Checker, state: State, stream: bytes | None) -> None:
    with checker.sequence("gating", f"commands in {state.name}") as seq:
        if seq.caps is None:
            return
        region = find_region(seq)
        table = legality_table(seq.caps)
        multiple = checker.facts.capabilities.get("write_multiple") is True
        iova = IOVA_BASE + int(state) * 0x10_0000
        builders = _requests(region, iova, stream, multiple)
        seq.goto(state)
        commands = [c for c in CLIENT_COMMANDS if c != Command.VERSION and c not in _LAST]
        for command in [*commands, *_LAST]:
            gate_errno = table[(state, command)]
            data, fds, override = builders[command](seq)
            if gate_errno is not None:
                expect = refused(gate_errno, rule=f"{_RULE}: {command.name} is refused in "
                                 f"{state.name}")
                verb = "refused"
            else:
                expect = override or Expect("ok", rule=f"{_RULE}: {command.name} is executed "
                                            f"in {state.name}")
                expect = expect if override is None else Expect(
                    override.reply, rule=f"{_RULE}: {command.name} is not gated in "
                    f"{state.name} (its own validity is not checked here)")
                verb = "executed"
            seq.check(f"{command.name} {verb} in {state.name}", data, expect, fds=fds)


def run(checker: Checker) -> None:
    """The ``gating`` group (module docstring)."""
    stream = ensure_saved_stream(checker)
    states: list[State] = []
    with checker.sequence("gating", "capabilities") as seq:
        states = seq.supported_states()
    for state in states:
        if state != State.ERROR:
            _row(checker, state, stream)

