"""Group ``reset``: DEVICE_RESET from every state the device supports, and its effects.

Where the gate refuses DEVICE_RESET (:func:`vfio_user_mig.protocol.gating.legality_table`: STOP
and STOP_COPY in the reference server) the reply must be that errno and the state unchanged.
Elsewhere the reset must succeed with an empty reply and leave the device in RUNNING: the
kernel's migration uAPI (``vfio.h``, ``enum vfio_device_mig_state``, "any -> ERROR": "To recover
from ERROR VFIO_DEVICE_RESET must be used to return the device_state back to RUNNING"; the
kernel drivers' reset handlers, e.g. ``mlx5vf_reset_done``, set ``mig_state`` to RUNNING) and
PROTOCOL.md section 5. libvfio-user since 2026 leaves the migration state alone on reset: that
is reported (a departure from the kernel rule), not accepted. DEVICE_RESET in ERROR is checked
by the ``migdata`` group, where a damaged stream leaves a device in ERROR.

The states are visited on one server while each reset leaves the device where it should
(:func:`~vfio_user_mig.check.groups.common.chained`); after one that does not, the states left
get a fresh server.

Effects checked besides the state: in RUNNING, a device that was logging DMA before the reset
and still answers a DMA_LOGGING_REPORT after it is an *advisory* (a reset returns the device to
its power-on state, where no logging runs, but neither the spec nor the kernel says so in
words).
"""

from __future__ import annotations

import contextlib
import struct

from vfio_user_mig import wire
from vfio_user_mig.check.findings import Kind
from vfio_user_mig.check.groups.common import (
    IOVA_BASE,
    chained,
    enc,
    log_report,
    log_start,
    supported_states,
)
from vfio_user_mig.check.requests import feature_request, raw_message
from vfio_user_mig.check.session import Checker, Sequence
from vfio_user_mig.check.steps import ANY, Expect, describe_reply, refused
from vfio_user_mig.model import State
from vfio_user_mig.protocol.gating import legality_table
from vfio_user_mig.wire import Command, FeatureIndex, FeatureOp

RULE = ("kernel vfio.h (enum vfio_device_mig_state, any -> ERROR: VFIO_DEVICE_RESET returns "
        "the device_state to RUNNING; drivers' reset handlers set RUNNING); PROTOCOL.md "
        "section 5")
_PAGE = 4096
#: MIG_DEVICE_STATE GET reply {argsz, flags, device_state, data_fd} (PROTOCOL.md section 3).
_GET_REPLY = struct.Struct("<IIII")


def check_reset(seq: Sequence, state: State, where: str = "") -> State | None:
    """DEVICE_RESET in ``state`` (the device is there): the reply (gated or empty), then the
    state by GET (RUNNING, or unchanged when gated). Returns the state read (``None``:
    unreadable); ``seq.state`` follows it."""
    assert seq.caps is not None
    gate = legality_table(seq.caps)[(state, Command.DEVICE_RESET)]
    data = raw_message(seq.next_id(), Command.DEVICE_RESET, b"")
    label = f"DEVICE_RESET in {state.name}{where}"
    if gate is not None:
        seq.check(f"{label} refused", data,
                  refused(gate, rule="PROTOCOL.md section 2: the reference server executes "
                          f"no DEVICE_RESET in {state.name}"))
        allowed = state
    else:
        seq.check(label, data, Expect("ok", payload_len=0, rule="vfio-user.rst: "
                                      "VFIO_USER_DEVICE_RESET, the reply has no payload"))
        allowed = State.RUNNING
    rule = RULE if gate is None else "PROTOCOL.md section 2: a refused request has no effect"
    # the GET's recorded expectation is the exact reply, so that --replay shows the state too
    flags = int(FeatureIndex.MIG_DEVICE_STATE | FeatureOp.GET)
    reply = seq.exchange(feature_request(seq.next_id(), FeatureIndex.MIG_DEVICE_STATE,
                                         FeatureOp.GET, argsz=_GET_REPLY.size),
                         expect=Expect("ok", payload=_GET_REPLY.pack(_GET_REPLY.size, flags,
                                                                     allowed, 0), rule=rule))
    observed = None
    if reply is not None and not reply.is_error and len(reply.payload) >= _GET_REPLY.size:
        with contextlib.suppress(ValueError):
            observed = State(_GET_REPLY.unpack_from(reply.payload)[2])
    seq.verify(observed == allowed, Kind.STATE, f"state after {label}", allowed.name,
               observed.name if observed is not None else describe_reply(reply), rule,
               ["DEVICE_RESET"])
    seq.state = observed
    return observed


def _logging_survives(seq: Sequence) -> None:
    """In RUNNING: map a page, start logging it, reset, then ask for a report (module
    docstring: an advisory when it is answered)."""
    iova = IOVA_BASE + 0x70_0000
    seq.exchange(enc(seq, wire.DmaMap(iova, _PAGE)), fds=(f"memfd:{_PAGE}",), expect=ANY)
    started = seq.exchange(log_start(seq, _PAGE, ((iova, _PAGE),)), expect=ANY)
    if started is None or started.is_error:
        return
    if check_reset(seq, State.RUNNING, " while logging") != State.RUNNING:
        return
    report = seq.exchange(log_report(seq, iova, _PAGE, _PAGE), expect=ANY)
    if report is not None and not report.is_error:
        seq.advise("DMA logging survives DEVICE_RESET",
                   "DMA_LOGGING_REPORT succeeds after DEVICE_RESET although logging was "
                   "started before it: a reset returns the device to its power-on state, where "
                   "no logging runs (the spec and the kernel uAPI do not say so in words)")


def _one(seq: Sequence, state: State) -> bool:
    """DEVICE_RESET in ``state``; False unless the device is where the reset should have
    left it (the next states then get a fresh server, not this one's leftovers)."""
    assert seq.caps is not None
    seq.goto(state)
    observed = check_reset(seq, state)
    if observed is None:
        return False
    if state == State.RUNNING and observed == State.RUNNING:
        _logging_survives(seq)
    gated = legality_table(seq.caps)[(state, Command.DEVICE_RESET)] is not None
    return observed == (state if gated else State.RUNNING)


def run(checker: Checker) -> None:
    """The ``reset`` group (module docstring): every state on one server while it goes."""
    states = [s for s in supported_states(checker, "reset") if s != State.ERROR]
    chained(checker, "reset", "DEVICE_RESET in each state", states, _one)
