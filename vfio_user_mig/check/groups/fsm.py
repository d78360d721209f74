"""Group ``fsm``: every (current, target) pair of the device's FSM, and each state's effect on
the wire.

For each supported current state and each target (the supported states and ERROR), one
sequence brings the device to the current state as a VMM would (:meth:`Sequence.goto`), checks
what the wire offers there, then sends the SET and checks the reply and the state reached
against the model (:func:`vfio_user_mig.model.transition_path`; PROTOCOL.md section 5):

* MIG_DATA_READ is valid only in the saving group (:func:`~vfio_user_mig.protocol.gating.
  readable_states`); there the stream is read to its end (a short read, then size 0 reads);
  elsewhere it is refused with EINVAL (PROTOCOL.md section 4);
* MIG_DATA_WRITE is valid only in RESUMING (:data:`~vfio_user_mig.protocol.gating.
  WRITABLE_STATES`), where the stream saved from STOP_COPY is written; elsewhere EINVAL.

STOP_COPY is visited first so that RESUMING has a stream to load. Leaving RESUMING without a
saved stream may legitimately fail (``may_fail``: the last state reached or ERROR).
"""

from __future__ import annotations

from vfio_user_mig.check.findings import Kind
from vfio_user_mig.check.groups.common import (
    EINVAL,
    chunk_size,
    is_saving,
    leave_clean,
    mig_read,
    mig_write,
    read_stream_checked,
)
from vfio_user_mig.check.requests import CLIENT_MINOR
from vfio_user_mig.check.session import Checker, Sequence
from vfio_user_mig.check.steps import Expect, refused
from vfio_user_mig.model import State
from vfio_user_mig.protocol.gating import WRITABLE_STATES, gate
from vfio_user_mig.wire import Command

_READ_RULE = "PROTOCOL.md section 4: MIG_DATA_READ only in the saving group (EINVAL otherwise)"
_WRITE_RULE = "PROTOCOL.md section 4: MIG_DATA_WRITE only in RESUMING (EINVAL otherwise)"


def _order(states: list[State]) -> list[State]:
    """Current states in visiting order: STOP_COPY first (it saves the stream RESUMING loads),
    RESUMING last."""
    def key(s: State) -> tuple[int, int]:
        return (0 if s == State.STOP_COPY else 2 if s == State.RESUMING else 1, int(s))
    return sorted((s for s in states if s != State.ERROR), key=key)


def wire_effects(seq: Sequence, state: State) -> None:
    """What the wire offers in ``state`` (module docstring); leaves the state as it was, with a
    saving state's data read to its end and RESUMING loaded with the saved stream."""
    checker = seq.checker
    caps = seq.caps
    assert caps is not None
    read_errno = gate(state, Command.MIG_DATA_READ, caps)
    write_errno = gate(state, Command.MIG_DATA_WRITE, caps)
    chunk = chunk_size(checker)
    if read_errno is None and is_saving(seq, state):
        stream = read_stream_checked(seq, chunk, f"{state.name} stream")
        if state == State.STOP_COPY and stream is not None and checker.saved_stream is None:
            checker.saved_stream = stream
    else:
        seq.check(f"MIG_DATA_READ refused in {state.name}", mig_read(seq, 4096),
                  refused(read_errno or EINVAL, rule=_READ_RULE))
    if state in WRITABLE_STATES and write_errno is None:
        stream = checker.saved_stream
        if stream is not None:
            for at in range(0, len(stream), chunk):
                seq.check(f"MIG_DATA_WRITE of the saved stream in {state.name}",
                          mig_write(seq, stream[at:at + chunk]),
                          Expect("ok", rule="PROTOCOL.md section 4: MIG_DATA_WRITE in RESUMING"))
    elif state != State.RESUMING:
        seq.check(f"MIG_DATA_WRITE refused in {state.name}", mig_write(seq, bytes(16)),
                  refused(write_errno or EINVAL, rule=_WRITE_RULE))


#: Requests for states that do not exist: the kernel's enum ends at 7 (PRE_COPY_P2P), and
#: 8 is the value libvfio-user's bound check lets through (PROTOCOL.md section 5).
INVALID_TARGETS = (8, 9, 0xFFFF_FFFF)


def _targets(checker: Checker, cur: State, targets: list[int]) -> None:
    """Every target from ``cur``, as few sequences as possible: after each SET the device is
    brought back to ``cur`` along the model's path; a sequence that cannot go on (a hang, a
    crash, a state the model did not predict) is replaced by a fresh one for the targets
    left, so one failure costs one target."""
    pending = list(targets)
    while pending:
        with checker.sequence("fsm", f"{cur.name} -> *") as seq:
            if seq.caps is None:
                return
            effects_done = False
            while pending:
                target = pending.pop(0)
                entered = seq.state != cur
                seq.goto(cur)
                if not effects_done or (cur == State.RESUMING and entered):
                    wire_effects(seq, cur)  # RESUMING: each entry needs its stream again
                    effects_done = True
                may_fail = cur == State.RESUMING and checker.saved_stream is None
                if not seq.set_state(target, may_fail=may_fail):
                    break
            leave_clean(seq)


def run(checker: Checker) -> None:
    """The ``fsm`` group (module docstring)."""
    states: list[State] = []
    with checker.sequence("fsm", "capabilities") as seq:
        states = seq.supported_states()
        if not seq.dead:
            major, minor = checker.facts.version
            seq.verify((major, minor) <= (0, CLIENT_MINOR) and major == 0, Kind.REPLY,
                       "VERSION reply: a version no higher than the one asked for",
                       f"0.{CLIENT_MINOR} or below", f"{major}.{minor}",
                       "vfio-user.rst \"Version\": the server answers a version it supports "
                       "no higher than the client's; PROTOCOL.md section 2 (minor = min(client "
                       "minor, 2), major 0)")
    if not states:
        return
    targets = [int(s) for s in sorted(states)] + list(INVALID_TARGETS)
    for cur in _order(states):
        _targets(checker, cur, targets)
