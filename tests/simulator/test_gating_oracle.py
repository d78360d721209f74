"""An independent oracle for command gating: which client command is legal in which migration
state, written by hand from the rules (not computed from :mod:`vfio_user_mig.protocol.gating`).

Sources: PROTOCOL.md section 2 (commands, their direction, the reference server's refusals in
STOP and STOP_COPY) and section 4 (MIG_DATA_READ/WRITE validity), and libvfio-user's rules
(``should_exec_command`` with ``cmd_allowed_when_stopped_and_copying``, the region-access check
refusing STOP_COPY, ``handle_mig_data_read``/``handle_mig_data_write``). Every refusal there is
EINVAL. The table covers the vfio-user states (capabilities STOP_COPY|PRE_COPY) and ERROR.

The oracle is checked (a) cell by cell against ``gating.legality_table`` (and ``gating.gate``
for the two server-to-client commands), (b) against a live server over a real socket, one
fresh device per cell, and (c) on mutants: a gate that lets REGION_WRITE or DMA_MAP through in
STOP_COPY must make (a) and (b) report that cell.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from vfio_user_mig import wire
from vfio_user_mig.model import VFIO_USER_CAPS, State
from vfio_user_mig.protocol import gating
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

# ----- the rules, each cited -----------------------------------------------------------------
#: Runs in the state: no rule restricts it. libvfio-user's should_exec_command restricts only
#: STOP and STOP_COPY, so every command passes the gate in ERROR, RUNNING, RESUMING, PRE_COPY.
OPEN = "open: should_exec_command restricts only STOP and STOP_COPY"
#: PROTOCOL.md section 2 (the reference server in STOP): only REGION_READ/WRITE, DEVICE_FEATURE
#: and MIG_DATA_READ pass (cmd_allowed_when_stopped_and_copying); anything else gets EINVAL.
STOP_LIST = "stopped: only REGION_READ/WRITE, DEVICE_FEATURE, MIG_DATA_READ run in STOP"
#: The same allow-list in STOP_COPY (device_is_stopped_and_copying branch).
STOP_COPY_LIST = "stop-and-copy: only the stopped allow-list runs in STOP_COPY"
#: PROTOCOL.md section 2 "(and no region access in STOP_COPY)": libvfio-user's region access
#: check refuses any REGION_READ/WRITE while the device is in STOP_COPY, EINVAL.
NO_REGION_IN_STOP_COPY = "no region access in STOP_COPY (region access check)"
#: PROTOCOL.md section 4: MIG_DATA_READ valid only in PRE_COPY or STOP_COPY
#: (handle_mig_data_read: bad migration state to read data, EINVAL).
MIG_READ = "MIG_DATA_READ only in PRE_COPY/STOP_COPY (section 4)"
#: PROTOCOL.md section 4: MIG_DATA_WRITE valid only in RESUMING (handle_mig_data_write: bad
#: migration state to write data, EINVAL); in STOP and STOP_COPY the allow-list refuses first.
MIG_WRITE = "MIG_DATA_WRITE only in RESUMING (section 4)"
#: VERSION is the per-connection negotiation, the first message of every connection: it is
#: answered whatever state the device is in (libvfio-user negotiates while attaching, before
#: should_exec_command sees any command), so a client can reconnect to a stopped device.
VERSION_RULE = "VERSION: first message of a connection, any state"
#: PROTOCOL.md section 2: DMA_READ and DMA_WRITE go server -> client; sent by a client they
#: are refused with EINVAL in every state (libvfio-user: "bad command").
SERVER_TO_CLIENT = "server-to-client command (section 2)"

OK: int | None = None
EINVAL = errno.EINVAL
Cell = tuple[int | None, str]

#: Column order of :data:`ORACLE` rows.
STATES = (State.ERROR, State.STOP, State.RUNNING, State.STOP_COPY, State.RESUMING,
          State.PRE_COPY)

_RESTRICTED_ROW: tuple[Cell, ...] = (
    (OK, OPEN), (EINVAL, STOP_LIST), (OK, OPEN), (EINVAL, STOP_COPY_LIST), (OK, OPEN),
    (OK, OPEN))
_REGION_ROW: tuple[Cell, ...] = (
    (OK, OPEN), (OK, STOP_LIST), (OK, OPEN), (EINVAL, NO_REGION_IN_STOP_COPY), (OK, OPEN),
    (OK, OPEN))

#: command -> one cell per state of :data:`STATES`: (None = accepted, or the errno; the rule).
ORACLE: dict[Command, tuple[Cell, ...]] = {
    Command.VERSION: ((OK, VERSION_RULE),) * 6,
    Command.DMA_MAP: _RESTRICTED_ROW,
    Command.DMA_UNMAP: _RESTRICTED_ROW,
    Command.DEVICE_GET_INFO: _RESTRICTED_ROW,
    Command.DEVICE_GET_REGION_INFO: _RESTRICTED_ROW,
    Command.DEVICE_GET_REGION_IO_FDS: _RESTRICTED_ROW,
    Command.DEVICE_GET_IRQ_INFO: _RESTRICTED_ROW,
    Command.DEVICE_SET_IRQS: _RESTRICTED_ROW,
    Command.REGION_READ: _REGION_ROW,
    Command.REGION_WRITE: _REGION_ROW,
    Command.DEVICE_RESET: _RESTRICTED_ROW,
    # Not in the stopped allow-list (libvfio-user at the pinned commit does not implement it
    # at all: "bad command" in every state; that is a missing feature, not a gate).
    Command.REGION_WRITE_MULTI: _RESTRICTED_ROW,
    Command.DEVICE_FEATURE: (
        (OK, OPEN), (OK, STOP_LIST), (OK, OPEN), (OK, STOP_COPY_LIST), (OK, OPEN), (OK, OPEN)),
    Command.MIG_DATA_READ: (
        (EINVAL, MIG_READ), (EINVAL, MIG_READ), (EINVAL, MIG_READ), (OK, MIG_READ),
        (EINVAL, MIG_READ), (OK, MIG_READ)),
    Command.MIG_DATA_WRITE: (
        (EINVAL, MIG_WRITE), (EINVAL, STOP_LIST), (EINVAL, MIG_WRITE), (EINVAL, STOP_COPY_LIST),
        (OK, MIG_WRITE), (EINVAL, MIG_WRITE)),
    Command.DMA_READ: ((EINVAL, SERVER_TO_CLIENT),) * 6,
    Command.DMA_WRITE: ((EINVAL, SERVER_TO_CLIENT),) * 6,
}

CELLS = [(s, c) for c in ORACLE for s in STATES]
CLIENT_CELLS = [(s, c) for s, c in CELLS if c not in (Command.DMA_READ, Command.DMA_WRITE)]


def expected(state: State, command: Command) -> int | None:
    """The oracle's answer for one cell."""
    return ORACLE[command][STATES.index(state)][0]


def _name(value: int | None) -> str:
    return "accepted" if value is None else errno.errorcode.get(value, str(value))


def test_oracle_is_total_and_every_cell_cites_a_rule() -> None:
    assert set(ORACLE) == set(Command)
    assert len(set(STATES)) == 6
    for command, row in ORACLE.items():
        assert len(row) == len(STATES), command
        for value, rule in row:
            assert value in (None, errno.EINVAL) and rule, (command, value, rule)


# ----- (a) against the model's table ----------------------------------------------------------
def model_disagreements() -> list[str]:
    """Cells where ``gating.legality_table`` (or ``gating.gate`` for the server-to-client
    commands, which the client table leaves out) differs from the oracle."""
    table = gating.legality_table(VFIO_USER_CAPS)
    out: list[str] = []
    states = {s for s, _ in table}
    if states != set(STATES):
        out.append(f"table states {sorted(s.name for s in states)} != oracle states")
    for state, command in CELLS:
        if (state, command) in table:
            got = table[(state, command)]
        elif command in (Command.DMA_READ, Command.DMA_WRITE):
            got = gating.gate(state, command, VFIO_USER_CAPS)
        else:
            out.append(f"{state.name} x {command.name}: missing from the table")
            continue
        want = expected(state, command)
        if got != want:
            rule = ORACLE[command][STATES.index(state)][1]
            out.append(f"{state.name} x {command.name}: model {_name(got)}, oracle "
                       f"{_name(want)} ({rule})")
    return out


def test_model_table_agrees_with_the_oracle() -> None:
    assert model_disagreements() == []
    assert len(gating.legality_table(VFIO_USER_CAPS)) == len(CLIENT_CELLS) == 90


# ----- (b) against a live server ----------------------------------------------------------------
MEM = 64 * 1024
BAR2 = 2


def probe_message(command: Command) -> Any:
    """One well-formed request of ``command`` that the migdev server executes successfully
    whenever the gate lets it through (so "accepted" is observable as a success reply)."""
    messages: dict[Command, Any] = {
        Command.VERSION: wire.Version(major=0, minor=2, capabilities=wire.Capabilities.make()),
        Command.DMA_MAP: wire.DmaMap(addr=0x200000, size=4096),
        Command.DMA_UNMAP: wire.DmaUnmap(addr=0, size=0, flags=int(DmaUnmapFlag.ALL)),
        Command.DEVICE_GET_INFO: wire.DeviceGetInfo(),
        Command.DEVICE_GET_REGION_INFO: wire.RegionInfo(index=BAR2),
        Command.DEVICE_GET_REGION_IO_FDS: wire.RegionIoFds(index=0),
        Command.DEVICE_GET_IRQ_INFO: wire.IrqInfo(index=0),
        # count 0 with DATA_NONE|ACTION_TRIGGER: "disable every interrupt of the index".
        Command.DEVICE_SET_IRQS: wire.IrqSet(
            flags=int(IrqSetFlag.DATA_NONE | IrqSetFlag.ACTION_TRIGGER), index=0, start=0,
            count=0),
        Command.REGION_READ: wire.RegionRead(offset=8, region=BAR2, count=8),
        Command.REGION_WRITE: wire.RegionWrite(offset=8, region=BAR2, count=4, data=b"gate"),
        Command.DEVICE_RESET: wire.DeviceReset(),
        Command.REGION_WRITE_MULTI: wire.RegionWriteMulti(
            writes=(wire.MultiWrite.of(16, BAR2, b"mult"),)),
        Command.DEVICE_FEATURE: wire.DeviceFeature(feature=FeatureIndex.MIG_DEVICE_STATE,
                                                   ops=FeatureOp.GET),
        Command.MIG_DATA_READ: wire.MigDataRead(size=16),
        # A zero-length write: nothing for the restore decoder to reject.
        Command.MIG_DATA_WRITE: wire.MigDataWrite(data=b""),
        Command.DMA_READ: wire.DmaRead(addr=0, count=4),
        Command.DMA_WRITE: wire.DmaWrite(addr=0, count=4, data=b"abcd"),
    }
    return messages[command]


@contextmanager
def connected(core: ServerCore) -> Iterator[Client]:
    """A client on a real socketpair served by ``core`` (the device outlives it)."""
    server_sock, client_sock = socket.socketpair()
    thread, stop = serve_socketpair(core, server_sock)
    client = Client(client_sock, timeout=5.0)
    try:
        yield client
    finally:
        client.close()
        thread.join(5)
        stop.set()
        server_sock.close()


def enter(client: Client, state: State) -> None:
    """Drive a fresh (RUNNING) migdev to ``state`` with the client's own requests. ERROR is
    reached the way a real device gets there: RESUMING -> STOP with no stream written fails
    its arc action and leaves the device in ERROR (PROTOCOL.md section 5)."""
    if state is State.ERROR:
        client.set_state(State.RESUMING)
        with pytest.raises(VfioUserError) as refused:
            client.set_state(State.STOP)
        assert refused.value.errno == errno.EINVAL
    elif state is not State.RUNNING:
        client.set_state(state)
    assert client.get_state() is state


def live_answer(state: State, command: Command) -> int | None:
    """What a fresh server answers to the probe of ``command`` with its device in ``state``
    (None: success). VERSION is sent as the first message of a second connection. A refused
    command must also leave the migration state unchanged."""
    hosted = host_device("migdev", mem_size=MEM, caps=VFIO_USER_CAPS)
    try:
        with connected(hosted.core) as client:
            client.negotiate()
            enter(client, state)
            if command is not Command.VERSION:
                return _send(client, state, command)
        with connected(hosted.core) as client:
            return _send(client, state, command)
    finally:
        hosted.close()


def _send(client: Client, state: State, command: Command) -> int | None:
    try:
        client.request(probe_message(command))
    except VfioUserError as exc:
        if command is not Command.VERSION:
            assert client.get_state() is state, f"refused {command.name} moved the device"
        return exc.errno
    return None


def live_disagreements(cells: list[tuple[State, Command]]) -> list[str]:
    """Cells where the live server's answer differs from the oracle."""
    out = []
    for state, command in cells:
        got, want = live_answer(state, command), expected(state, command)
        if got != want:
            rule = ORACLE[command][STATES.index(state)][1]
            out.append(f"{state.name} x {command.name}: server {_name(got)}, oracle "
                       f"{_name(want)} ({rule})")
    return out


@pytest.mark.parametrize("state", STATES, ids=lambda s: s.name)
def test_live_server_agrees_with_the_oracle(state: State) -> None:
    assert live_disagreements([(state, c) for c in ORACLE]) == []


# ----- (c) mutants -------------------------------------------------------------------------------
@contextmanager
def gate_mutant(monkeypatch: pytest.MonkeyPatch, state: State,
                command: Command) -> Iterator[None]:
    """The gate of the model and of every server made meanwhile lets ``command`` through in
    ``state`` (the cached table is rebuilt on entry and on exit)."""
    allowed = gating.RESTRICTED[state] | {command}
    with monkeypatch.context() as patch:
        patch.setitem(gating.RESTRICTED, state, allowed)
        gating._legality.cache_clear()
        try:
            yield
        finally:
            gating._legality.cache_clear()
    gating._legality.cache_clear()


@pytest.mark.parametrize("command", [Command.REGION_WRITE, Command.DMA_MAP],
                         ids=lambda c: c.name)
def test_oracle_detects_a_gate_that_opens_stop_copy(
        monkeypatch: pytest.MonkeyPatch, command: Command) -> None:
    cell = (State.STOP_COPY, command)
    assert live_disagreements([cell]) == [] and model_disagreements() == []
    with gate_mutant(monkeypatch, *cell):
        assert gating.gate(*cell) is None  # the mutant is in place
        model = model_disagreements()
        live = live_disagreements([cell])
    rule = ORACLE[command][STATES.index(State.STOP_COPY)][1]
    assert model == [f"STOP_COPY x {command.name}: model accepted, oracle EINVAL ({rule})"]
    assert live == [f"STOP_COPY x {command.name}: server accepted, oracle EINVAL ({rule})"]
    assert model_disagreements() == []  # and the real gate is back
