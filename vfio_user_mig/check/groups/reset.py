"""Group ``reset``: DEVICE_RESET from every state the device supports.

Where the gate refuses DEVICE_RESET (:func:`vfio_user_mig.protocol.gating.legality_table`: STOP
and STOP_COPY in the reference server) the reply must be that errno and the state unchanged.
Elsewhere the reset must succeed with an empty reply and the device must be either in RUNNING
(vfio-user.rst and the kernel: a reset device runs; PROTOCOL.md section 5: a device in ERROR
returns to RUNNING) or still in the state it was in (libvfio-user since 2026 leaves the
migration state alone on reset); both rules are accepted, and the expectation names them.
After the reset the device must still follow the model: it is moved back to RUNNING.
"""

from __future__ import annotations

from vfio_user_mig.check.findings import Kind
from vfio_user_mig.check.requests import raw_message
from vfio_user_mig.check.session import Checker
from vfio_user_mig.check.steps import Expect, refused
from vfio_user_mig.model import State
from vfio_user_mig.protocol.gating import legality_table
from vfio_user_mig.wire import Command

_RULE = ("PROTOCOL.md section 5: after DEVICE_RESET the device runs (spec, kernel) or keeps "
         "its migration state (libvfio-user since 2026)")


def _one(checker: Checker, state: State) -> None:
    with checker.sequence("reset", f"DEVICE_RESET in {state.name}") as seq:
        if seq.caps is None:
            return
        seq.goto(state)
        gate = legality_table(seq.caps)[(state, Command.DEVICE_RESET)]
        data = raw_message(seq.next_id(), Command.DEVICE_RESET, b"")
        if gate is not None:
            seq.check(f"DEVICE_RESET refused in {state.name}", data,
                      refused(gate, rule="PROTOCOL.md section 2: the reference server executes "
                              f"no DEVICE_RESET in {state.name}"))
            allowed = {state}
        else:
            seq.check(f"DEVICE_RESET in {state.name}", data,
                      Expect("ok", payload_len=0, rule="vfio-user.rst: DEVICE_RESET reply has "
                             "no payload"))
            allowed = {State.RUNNING, state}
        observed = seq.get_state()
        if observed is None:
            return
        names = " or ".join(sorted(s.name for s in allowed))
        seq.verify(observed in allowed, Kind.STATE, f"state after DEVICE_RESET in {state.name}",
                   names, observed.name, _RULE, ["DEVICE_RESET"])
        if observed not in allowed:
            return
        seq.state = observed
        seq.goto(State.RUNNING)


def run(checker: Checker) -> None:
    """The ``reset`` group (module docstring)."""
    states: list[State] = []
    with checker.sequence("reset", "capabilities") as seq:
        states = seq.supported_states()
    for state in states:
        if state != State.ERROR:
            _one(checker, state)
