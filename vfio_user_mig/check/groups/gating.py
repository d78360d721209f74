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

In RUNNING the row also checks bounds (:func:`_bounds`): DEVICE_GET_REGION_INFO of the region
one past the count DEVICE_GET_INFO gives, DEVICE_GET_IRQ_INFO and DEVICE_SET_IRQS of the
interrupt index one past its count, and REGION_READ/REGION_WRITE starting at the end of a
region, each refused with EINVAL (kernel and libvfio-user alike).
"""

from __future__ import annotations

from collections.abc import Callable

from vfio_user_mig import wire
from vfio_user_mig.check.findings import Kind
from vfio_user_mig.check.groups.common import (
    EINVAL,
    IOVA_BASE,
    Region,
    enc,
    ensure_saved_stream,
    find_region,
    mig_read,
    mig_write,
    supported_states,
)
from vfio_user_mig.check.requests import raw_message
from vfio_user_mig.check.session import Checker, Sequence
from vfio_user_mig.check.steps import ANY, Expect, refused
from vfio_user_mig.model import State
from vfio_user_mig.protocol.gating import CLIENT_COMMANDS, legality_table
from vfio_user_mig.wire import Command, FeatureIndex, FeatureOp, layouts

_RULE = "PROTOCOL.md sections 2 and 4 (protocol.gating.legality_table)"
_MAP_SIZE = 0x1000

#: Commands sent last: DMA_UNMAP undoes the DMA_MAP sent before it, DEVICE_RESET may move the
#: device (reset group).
_LAST = (Command.DMA_UNMAP, Command.DEVICE_RESET)

#: The payload length of the success reply to each request :func:`_requests` builds, where the
#: spec fixes it (PROTOCOL.md sections 2-4; vfio-user.rst, each command's "Reply"): DMA_MAP,
#: DEVICE_SET_IRQS, DEVICE_RESET and MIG_DATA_WRITE carry none; DMA_UNMAP echoes its 24 bytes;
#: REGION_READ is the 16-byte echo and the 8 bytes read, REGION_WRITE the echo; GET_INFO and
#: GET_IRQ_INFO are the 16-byte structs; MIGRATION GET is {argsz, flags, u64 flags}.
REPLY_LEN: dict[Command, int] = {
    Command.DMA_MAP: 0, Command.DMA_UNMAP: 24, Command.DEVICE_GET_INFO: 16,
    Command.DEVICE_GET_IRQ_INFO: 16, Command.DEVICE_SET_IRQS: 0, Command.REGION_READ: 16 + 8,
    Command.REGION_WRITE: 16, Command.DEVICE_RESET: 0, Command.DEVICE_FEATURE: 16,
    Command.MIG_DATA_WRITE: 0,
}

#: Replies that begin with the request's first bytes (PROTOCOL.md section 2): DMA_UNMAP echoes
#: its 24 bytes, REGION_READ and REGION_WRITE their 16-byte {offset, region, count}.
ECHO: dict[Command, int] = {Command.DMA_UNMAP: 24, Command.REGION_READ: 16,
                            Command.REGION_WRITE: 16}

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


_REGION_RULE = ("vfio-user.rst \"VFIO_USER_DEVICE_GET_REGION_INFO\": the reply is "
                "min(argsz, the size it needs) bytes with that size in argsz, the capability "
                "chain inside it, and a file descriptor exactly when the region is mappable "
                "(VFIO_REGION_INFO_FLAG_MMAP); PROTOCOL.md section 2")
#: The argsz of the region info requests: room for any capability chain the checker expects.
_LARGE_ARGSZ = 4096


def chain_fault(payload: bytes, region_size: int) -> str | None:
    """What is wrong with the capability chain of a GET_REGION_INFO reply ``payload`` (its
    CAPS flag set), or ``None``: offsets inside the payload, strictly increasing (no loop),
    each capability whole, sparse mmap areas inside the region."""
    head = layouts.REGION_INFO.size
    cap = layouts.REGION_INFO.unpack_from(payload)[3]
    seen = 0
    while cap:
        if cap < max(head, seen + 1) or cap + layouts.CAP_HEADER.size > len(payload):
            return f"capability at offset {cap} outside the {len(payload)}-byte reply or " \
                   "not after the previous one"
        cap_id, _version, nxt = layouts.CAP_HEADER.unpack_from(payload, cap)
        body = cap + layouts.CAP_HEADER.size
        if cap_id == wire.RegionCapId.SPARSE_MMAP:
            if body + layouts.CAP_SPARSE_MMAP.size > len(payload):
                return f"sparse mmap capability at {cap} cut short"
            count = layouts.CAP_SPARSE_MMAP.unpack_from(payload, body)[0]
            areas = body + layouts.CAP_SPARSE_MMAP.size
            if areas + count * layouts.SPARSE_AREA.size > len(payload):
                return f"sparse mmap capability at {cap}: {count} areas do not fit"
            for i in range(count):
                off, size = layouts.SPARSE_AREA.unpack_from(
                    payload, areas + i * layouts.SPARSE_AREA.size)
                if off + size > region_size:
                    return f"sparse mmap area {off:#x}+{size:#x} outside the region " \
                           f"({region_size:#x} bytes)"
        seen, cap = cap, nxt
    return None


def _region_infos(seq: Sequence) -> tuple[int, int] | None:
    """Every region's info at a large argsz (:data:`_REGION_RULE`): size and argsz, the
    capability chain, the fds promised. Returns DEVICE_GET_INFO's (regions, irqs)."""
    reply = seq.exchange(enc(seq, wire.DeviceGetInfo()))
    if reply is None or reply.is_error or len(reply.payload) < 16:
        return None
    _argsz, _flags, regions, irqs = layouts.DEVICE_INFO.unpack_from(reply.payload)
    count = min(regions, 16)
    for index in range(count):
        info = seq.check(f"DEVICE_GET_REGION_INFO {index} with argsz {_LARGE_ARGSZ}",
                         enc(seq, wire.RegionInfo(index, argsz=_LARGE_ARGSZ)),
                         Expect("ok", rule=_REGION_RULE))
        if info is None or info.is_error:
            continue
        payload = info.payload
        fds = seq.reply_fds
        fault = None
        if len(payload) < layouts.REGION_INFO.size:
            fault = f"a {len(payload)}-byte payload"
        else:
            argsz, flags, idx, cap, size, _off = layouts.REGION_INFO.unpack_from(payload)
            mmap = bool(flags & wire.RegionInfoFlag.MMAP)
            if argsz != len(payload) or argsz > _LARGE_ARGSZ:
                fault = f"argsz {argsz} for a {len(payload)}-byte payload"
            elif idx != index:
                fault = f"index {idx}"
            elif bool(flags & wire.RegionInfoFlag.CAPS) != bool(cap):
                fault = f"CAPS flag {bool(flags & wire.RegionInfoFlag.CAPS)}, cap_offset {cap}"
            elif cap:
                fault = chain_fault(payload, size)
            if fault is None and size and fds != int(mmap):
                fault = f"{fds} fds with a region {'' if mmap else 'not '}flagged MMAP"
        seq.verify(fault is None, Kind.REPLY,
                   f"DEVICE_GET_REGION_INFO {index} reply at a large argsz",
                   "argsz = the payload size, the index, a well-formed capability chain, one "
                   "fd exactly for a mappable region", fault or "", _REGION_RULE)
    return regions, irqs


#: Kernel ``vfio_pci_core_ioctl`` / ``vfio_set_irqs_validate_and_prepare`` and libvfio-user:
#: an index past the device's count, or an access past a region's end, is EINVAL.
_BOUNDS_RULE = ("vfio-user.rst (DEVICE_GET_REGION_INFO, DEVICE_GET_IRQ_INFO, DEVICE_SET_IRQS, "
                "REGION_READ/WRITE); kernel vfio_pci_core_ioctl, vfio_set_irqs_validate_and_"
                "prepare and vfio_pci_bar_rw: an index past the device's count, or an access "
                "starting at a region's end, is EINVAL")


def _bounds(seq: Sequence, region: Region | None, counts: tuple[int, int]) -> None:
    """Indexes one past the device's ``counts`` (DEVICE_GET_INFO's regions and irqs) and an
    access starting at the end of the region the row uses: each refused with EINVAL
    (:data:`_BOUNDS_RULE`)."""
    regions, irqs = counts
    expect = refused(EINVAL, rule=_BOUNDS_RULE)
    none = int(wire.IrqSetFlag.DATA_NONE | wire.IrqSetFlag.ACTION_TRIGGER)
    cases = [(f"DEVICE_GET_REGION_INFO of region {regions} (of {regions}) refused",
              wire.RegionInfo(regions)),
             (f"DEVICE_GET_IRQ_INFO of index {irqs} (of {irqs}) refused", wire.IrqInfo(irqs)),
             (f"DEVICE_SET_IRQS of index {irqs} (of {irqs}) refused",
              wire.IrqSet(flags=none, index=irqs, start=0, count=0))]
    if region is not None:
        cases += [(f"REGION_READ at the end of region {region.index} refused",
                   wire.RegionRead(region.size, region.index, 4)),
                  (f"REGION_WRITE at the end of region {region.index} refused",
                   wire.RegionWrite(region.size, region.index, 4, bytes(4)))]
    for title, msg in cases:
        seq.check(title, enc(seq, msg), expect)


def _row(checker: Checker, state: State, stream: bytes | None) -> None:
    with checker.sequence("gating", f"commands in {state.name}") as seq:
        if seq.caps is None:
            return
        region = find_region(seq)
        table = legality_table(seq.caps)
        multiple = checker.facts.capabilities.get("write_multiple") is True
        iova = IOVA_BASE + int(state) * 0x10_0000
        builders = _requests(region, iova, stream, multiple)
        if state == State.RUNNING:
            counts = _region_infos(seq)
            if counts is not None:
                _bounds(seq, region, counts)
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
                expect = override or Expect(
                    "ok", payload_len=REPLY_LEN.get(command),
                    rule=f"{_RULE}: {command.name} is executed in {state.name}"
                    + ("; its reply payload is fixed (vfio-user.rst, PROTOCOL.md sections 2-4)"
                       if command in REPLY_LEN else ""))
                expect = expect if override is None else Expect(
                    override.reply, rule=f"{_RULE}: {command.name} is not gated in "
                    f"{state.name} (its own validity is not checked here)")
                verb = "executed"
            reply = seq.check(f"{command.name} {verb} in {state.name}", data, expect, fds=fds)
            echo = ECHO.get(command, 0)
            if echo and gate_errno is None and override is None and reply is not None \
                    and not reply.is_error and len(reply.payload) >= echo:
                seq.verify(reply.payload[:echo] == data[16:16 + echo], Kind.REPLY,
                           f"{command.name} reply echoes the request",
                           data[16:16 + echo].hex(), reply.payload[:echo].hex(),
                           "PROTOCOL.md section 2: the reply begins with the request's "
                           f"{echo} bytes (vfio-user.rst, {command.name} reply)")


def run(checker: Checker) -> None:
    """The ``gating`` group (module docstring)."""
    stream = ensure_saved_stream(checker)
    states = supported_states(checker, "gating")
    for state in states:
        if state != State.ERROR:
            _row(checker, state, stream)

