"""Which commands a vfio-user server accepts in each migration state (PROTOCOL.md sections 2
and 4), derived from the FSM graph plus two declared facts of the reference server.

* A stopped device (STOP) accepts only region access, DEVICE_FEATURE and MIG_DATA_READ; a
  device in STOP_COPY only DEVICE_FEATURE and MIG_DATA_READ (libvfio-user's
  ``should_exec_command``). Every other command gets EINVAL in those states, except VERSION,
  which is negotiated per connection before any command (so a client can reconnect to a
  stopped device).
* MIG_DATA_READ is valid only in the saving group (graph attribute ``saving``), MIG_DATA_WRITE
  only in RESUMING; otherwise EINVAL (PROTOCOL.md section 4).

All other (state, command) cells are accepted by the gate (the command may still fail for its
own reasons, e.g. a bad region index). The server consults :func:`gate`; the proofs check the
whole :func:`legality_table` against a live server.

It lives at the protocol level, above :mod:`vfio_user_mig.model` and :mod:`vfio_user_mig.wire`:
the rule needs the FSM graph and the wire command numbers, and the model imports nothing of the
package.
"""

from __future__ import annotations

import errno as _errno
import functools

from vfio_user_mig.model.graph import fsm_states, saving_states
from vfio_user_mig.model.states import VFIO_USER_CAPS, MigrationCaps, State
from vfio_user_mig.wire.constants import Command

#: States in which the reference server restricts the commands it executes, and what it allows.
RESTRICTED: dict[State, frozenset[Command]] = {
    State.STOP: frozenset({Command.REGION_READ, Command.REGION_WRITE, Command.DEVICE_FEATURE,
                           Command.MIG_DATA_READ}),
    State.STOP_COPY: frozenset({Command.DEVICE_FEATURE, Command.MIG_DATA_READ}),
}

#: The only state in which migration data may be written.
WRITABLE_STATES = frozenset({State.RESUMING})

#: Commands a client sends (DMA_READ/DMA_WRITE go server -> client and are never accepted).
CLIENT_COMMANDS: tuple[Command, ...] = tuple(
    c for c in Command if c not in (Command.DMA_READ, Command.DMA_WRITE)
)


@functools.cache
def _readable(caps: int) -> frozenset[State]:
    return frozenset(fsm_states(caps)) & saving_states()


def readable_states(caps: MigrationCaps | int = VFIO_USER_CAPS) -> frozenset[State]:
    """States in which MIG_DATA_READ is valid: the saving group of the graph (cached)."""
    return _readable(int(caps))


def gate(state: State, command: Command | int,
         caps: MigrationCaps | int = VFIO_USER_CAPS) -> int | None:
    """``None`` when the server may execute ``command`` in ``state``, else the errno to reply.

    Server-to-client commands (DMA_READ, DMA_WRITE) sent by a client get EINVAL in every state.
    """
    if command in (Command.DMA_READ, Command.DMA_WRITE):
        return _errno.EINVAL
    if command == Command.VERSION:
        return None  # connection-level: negotiated before any state applies (reconnects)
    allowed = RESTRICTED.get(state)
    if allowed is not None and command not in allowed:
        return _errno.EINVAL
    if command == Command.MIG_DATA_READ and state not in readable_states(caps):
        return _errno.EINVAL
    if command == Command.MIG_DATA_WRITE and state not in WRITABLE_STATES:
        return _errno.EINVAL
    return None


def legality_table(
    caps: MigrationCaps | int = VFIO_USER_CAPS,
) -> dict[tuple[State, Command], int | None]:
    """The total table (supported state or ERROR) x client command -> None or errno."""
    return dict(_legality(int(caps)))


@functools.cache
def _legality(caps: int) -> tuple[tuple[tuple[State, Command], int | None], ...]:
    return tuple(((s, c), gate(s, c, caps)) for s in fsm_states(caps) for c in CLIENT_COMMANDS)


def gate_table(caps: MigrationCaps | int = VFIO_USER_CAPS) -> dict[tuple[int, int], int | None]:
    """:func:`legality_table` keyed by plain ints, for an O(1) lookup per request; commands
    outside it (server-to-client ones) are refused with EINVAL by :func:`gate`. A new dict
    each call (a server may change its own), copied from one built per :func:`_legality`
    table (so clearing that cache rebuilds this one too)."""
    legality = _legality(int(caps))
    built = _INT_TABLES.get(int(caps))
    if built is None or built[0] is not legality:
        built = (legality, {(int(s), int(c)): v for (s, c), v in legality})
        _INT_TABLES[int(caps)] = built
    return dict(built[1])


#: caps -> (the :func:`_legality` table it was built from, its int-keyed dict)
_INT_TABLES: dict[int, tuple[object, dict[tuple[int, int], int | None]]] = {}


__all__ = [
    "CLIENT_COMMANDS",
    "RESTRICTED",
    "WRITABLE_STATES",
    "gate",
    "gate_table",
    "legality_table",
    "readable_states",
]
