"""Mutants of the migration state machine: arcs, complex transitions, MIG_DEVICE_STATE replies,
capabilities and DEVICE_RESET (PROTOCOL.md sections 3 and 5)."""

from __future__ import annotations

import contextlib
import errno as _errno
from typing import Any

from tests.check.mutation.catalogue import mutant
from tests.check.mutation.patches import (
    EINVAL,
    force_state,
    is_feature,
    is_ok_reply_to,
    is_state_set,
    rewrite_out,
    set_gate,
    with_header,
    wrap_feature,
    wrap_handler,
)
from vfio_user_mig import wire
from vfio_user_mig.model import MigrationCaps, State, transition_path
from vfio_user_mig.simulator.server.hosting import HostedDevice
from vfio_user_mig.simulator.server.types import Refusal
from vfio_user_mig.wire import Command, FeatureIndex, FeatureOp


def _refuse_arc(hosted: HostedDevice, src: State, dst: State) -> None:
    core = hosted.core

    def fn(real: Any, msg: Any, fds: list[int]) -> Any:
        if is_state_set(msg) and core.state == src and int(msg.data.device_state) == dst:
            raise Refusal(EINVAL, f"{src.name} -> {dst.name} refused", echo=True)
        return real(msg, fds)

    wrap_feature(core, fn)


@mutant("legal_arc_refused", "the legal arc PRE_COPY -> STOP_COPY is refused with EINVAL",
        "fsm", "errno")
def _legal_arc_refused(hosted: HostedDevice) -> None:
    _refuse_arc(hosted, State.PRE_COPY, State.STOP_COPY)


@mutant("resuming_to_stop_refused", "a complete stream cannot leave RESUMING for STOP",
        "fsm", "errno")
def _resuming_to_stop_refused(hosted: HostedDevice) -> None:
    _refuse_arc(hosted, State.RESUMING, State.STOP)


@mutant("complex_stops_at_first_step", "a complex transition stops after its first arc and "
        "still replies success (RUNNING -> STOP_COPY ends in STOP)", "fsm", "state")
def _complex_stops_at_first_step(hosted: HostedDevice) -> None:
    fsm = hosted.core.fsm
    real = fsm.set_state

    def set_state(target: State | int) -> Any:
        path = transition_path(fsm.state, target, fsm.caps)
        return real(path[1] if len(path) > 2 else target)

    fsm.set_state = set_state  # type: ignore[method-assign]


@mutant("illegal_arc_accepted", "STOP_COPY -> PRE_COPY (no path in the model) is accepted and "
        "the server moves there", "fsm", "errno")
def _illegal_arc_accepted(hosted: HostedDevice) -> None:
    core = hosted.core

    def fn(real: Any, msg: Any, fds: list[int]) -> Any:
        if (is_state_set(msg) and core.state == State.STOP_COPY
                and int(msg.data.device_state) == State.PRE_COPY):
            force_state(core, State.PRE_COPY)
            return wire.DeviceFeatureReply.echo(msg), []
        return real(msg, fds)

    wrap_feature(core, fn)


@mutant("state_8_accepted", "SET to state 8 (past PRE_COPY_P2P) is accepted as a no-op, as a "
        "bound check written with <= lets it through", "fsm", "errno")
def _state_8_accepted(hosted: HostedDevice) -> None:
    def fn(real: Any, msg: Any, fds: list[int]) -> Any:
        if is_state_set(msg) and int(msg.data.device_state) == 8:
            return wire.DeviceFeatureReply.echo(msg), []
        return real(msg, fds)

    wrap_feature(hosted.core, fn)


@mutant("invalid_transition_errno", "an invalid transition is refused with EPERM instead of "
        "EINVAL", "fsm", "errno")
def _invalid_transition_errno(hosted: HostedDevice) -> None:
    def fn(real: Any, msg: Any, fds: list[int]) -> Any:
        try:
            return real(msg, fds)
        except Refusal as exc:
            if is_state_set(msg) and exc.errno == EINVAL:
                raise Refusal(_errno.EPERM, str(exc), echo=True) from None
            raise

    wrap_feature(hosted.core, fn)


@mutant("set_reply_echoes_old_state", "a MIG_DEVICE_STATE SET reply carries the state left, "
        "not the state requested", "fsm", "reply")
def _set_reply_echoes_old_state(hosted: HostedDevice) -> None:
    core = hosted.core

    def fn(real: Any, msg: Any, fds: list[int]) -> Any:
        if not is_state_set(msg):
            return real(msg, fds)
        old = core.state
        _reply, out = real(msg, fds)
        data = wire.MigDeviceState(old, 0)
        return wire.DeviceFeatureReply(msg.feature, msg.ops, data, msg.argsz,
                                       msg_id=msg.msg_id), out

    wrap_feature(core, fn)


@mutant("get_reports_previous_state", "MIG_DEVICE_STATE GET answers the state before the last "
        "SET (a cached value updated one step late)", "fsm", "state")
def _get_reports_previous_state(hosted: HostedDevice) -> None:
    core = hosted.core
    seen = {"previous": core.state}

    def fn(real: Any, msg: Any, fds: list[int]) -> Any:
        if is_state_set(msg):
            before = core.state
            result = real(msg, fds)
            seen["previous"] = before
            return result
        if is_feature(msg, FeatureIndex.MIG_DEVICE_STATE, FeatureOp.GET):
            return wire.DeviceFeatureReply(msg.feature, msg.ops,
                                           wire.MigDeviceState(seen["previous"], 0),
                                           msg_id=msg.msg_id), []
        return real(msg, fds)

    wrap_feature(core, fn)


@mutant("caps_over_reported", "MIGRATION GET announces P2P, which the device does not do",
        "fsm", "errno")
def _caps_over_reported(hosted: HostedDevice) -> None:
    def fn(real: Any, msg: Any, fds: list[int]) -> Any:
        if is_feature(msg, FeatureIndex.MIGRATION, FeatureOp.GET):
            caps = hosted.device.migration_caps | MigrationCaps.P2P
            return wire.DeviceFeatureReply(msg.feature, msg.ops, wire.MigrationInfo(caps),
                                           msg_id=msg.msg_id), []
        return real(msg, fds)

    wrap_feature(hosted.core, fn)


@mutant("probe_set_changes_state", "PROBE|SET of MIG_DEVICE_STATE performs the SET (a probe "
        "with a side effect)", "feature", "state")
def _probe_set_changes_state(hosted: HostedDevice) -> None:
    core = hosted.core

    def fn(real: Any, msg: Any, fds: list[int]) -> Any:
        if (int(msg.feature) == FeatureIndex.MIG_DEVICE_STATE and msg.ops & FeatureOp.PROBE
                and msg.ops & FeatureOp.SET and msg.data is not None):
            data = msg.data
            target = (int(data.device_state) if isinstance(data, wire.MigDeviceState)
                      else int.from_bytes(bytes(data)[:4], "little"))
            with contextlib.suppress(Exception):  # the probe's answer stays the echo
                core.fsm.set_state(target)
        return real(msg, fds)

    wrap_feature(core, fn)


# ----- DEVICE_RESET ---------------------------------------------------------------------------

@mutant("reset_lands_in_stop", "DEVICE_RESET leaves the device in STOP (neither RUNNING nor the "
        "state it was in)", "reset", "state")
def _reset_lands_in_stop(hosted: HostedDevice) -> None:
    fsm = hosted.core.fsm
    real = fsm.reset

    def reset() -> None:
        real()
        force_state(hosted.core, State.STOP)

    fsm.reset = reset  # type: ignore[method-assign]


@mutant("reset_keeps_error", "DEVICE_RESET from ERROR keeps the device in ERROR",
        ("reset", "migdata"), "state")
def _reset_keeps_error(hosted: HostedDevice) -> None:
    fsm = hosted.core.fsm
    real = fsm.reset

    def reset() -> None:
        was = fsm.state
        real()
        if was == State.ERROR:
            force_state(hosted.core, State.ERROR)

    fsm.reset = reset  # type: ignore[method-assign]


@mutant("reset_refused_in_running", "DEVICE_RESET is refused (EINVAL) in RUNNING", "reset",
        "errno")
def _reset_refused_in_running(hosted: HostedDevice) -> None:
    set_gate(hosted.core, State.RUNNING, Command.DEVICE_RESET, EINVAL)


@mutant("reset_allowed_in_stop_copy", "DEVICE_RESET is executed in STOP_COPY, where the "
        "reference server refuses it", "reset", "errno")
def _reset_allowed_in_stop_copy(hosted: HostedDevice) -> None:
    set_gate(hosted.core, State.STOP_COPY, Command.DEVICE_RESET, None)


@mutant("reset_reply_with_payload", "the DEVICE_RESET reply carries 8 stray bytes", "reset",
        "reply")
def _reset_reply_with_payload(hosted: HostedDevice) -> None:
    def fn(raw: bytes) -> bytes:
        if is_ok_reply_to(raw, Command.DEVICE_RESET):
            return with_header(raw, msg_size=len(raw) + 8) + bytes(8)
        return raw

    rewrite_out(hosted.core, fn)


# ----- found by exploration -------------------------------------------------------------------

@mutant("logging_stop_ignored_in_precopy", "DMA_LOGGING_STOP is acknowledged but ignored while "
        "the device is in PRE_COPY (only exploration mixes logging with migration states)",
        "dma", "errno", random=(110, 5))
def _logging_stop_ignored_in_precopy(hosted: HostedDevice) -> None:
    core = hosted.core
    log = hosted.device.dirty_log
    real = log.stop

    def stop() -> None:
        if core.state != State.PRE_COPY:
            real()

    log.stop = stop  # type: ignore[method-assign]


@mutant("region_write_aborts_precopy", "a REGION_WRITE while in PRE_COPY abandons the pre-copy: "
        "the device falls back to RUNNING", "gating", "errno")
def _region_write_aborts_precopy(hosted: HostedDevice) -> None:
    core = hosted.core

    def fn(real: Any, msg: Any, fds: list[int]) -> Any:
        result = real(msg, fds)
        if core.state == State.PRE_COPY:
            core.fsm.set_state(State.RUNNING)
        return result

    wrap_handler(core, Command.REGION_WRITE, fn)
