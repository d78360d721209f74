"""Mutants of the wire side: gating, DEVICE_FEATURE, framing and malformed messages, reply
headers, hangs and closes, and what a server does when its client leaves (PROTOCOL.md sections
1 to 3; vfio-user.rst "Header", "Version", "Connection drop")."""

from __future__ import annotations

import errno as _errno
from typing import Any

from tests.check.mutation.catalogue import mutant
from tests.check.mutation.patches import (
    EINVAL,
    answer_refused,
    header,
    is_feature,
    is_ok_reply_to,
    is_reply_to,
    replace,
    rewrite_out,
    set_gate,
    success_header,
    with_header,
    wrap_dispatch,
    wrap_feature,
    wrap_handler,
    wrap_send_error,
)
from vfio_user_mig import wire
from vfio_user_mig.model import State
from vfio_user_mig.simulator.server.hosting import HostedDevice
from vfio_user_mig.wire import Command, FeatureIndex, FeatureOp

# ----- gating ---------------------------------------------------------------------------------


@mutant("gate_dma_map_in_stop_copy", "DMA_MAP is executed in STOP_COPY (a gated command let "
        "through)", "gating", "errno")
def _gate_dma_map_in_stop_copy(hosted: HostedDevice) -> None:
    set_gate(hosted.core, State.STOP_COPY, Command.DMA_MAP, None)


@mutant("gate_region_read_in_stop_copy", "REGION_READ is executed in STOP_COPY", "gating",
        "errno")
def _gate_region_read_in_stop_copy(hosted: HostedDevice) -> None:
    set_gate(hosted.core, State.STOP_COPY, Command.REGION_READ, None)


@mutant("gate_set_irqs_refused_in_running", "DEVICE_SET_IRQS is refused in RUNNING (a legal "
        "command refused)", "gating", "errno")
def _gate_set_irqs_refused_in_running(hosted: HostedDevice) -> None:
    set_gate(hosted.core, State.RUNNING, Command.DEVICE_SET_IRQS, EINVAL)


@mutant("gate_errno_ebusy", "every gated command is refused with EBUSY instead of EINVAL",
        "gating", "errno")
def _gate_errno_ebusy(hosted: HostedDevice) -> None:
    gates = hosted.core._gates
    for cell, errno in list(gates.items()):
        if errno is not None:
            gates[cell] = _errno.EBUSY


# ----- indexes and offsets past the device's counts and a region's end -------------------------


@mutant("set_irqs_past_the_count_accepted", "DEVICE_SET_IRQS of an index past the device's "
        "interrupt count succeeds", "gating", "errno")
def _set_irqs_past_the_count_accepted(hosted: HostedDevice) -> None:
    answer_refused(hosted.core, Command.DEVICE_SET_IRQS,
                   lambda msg: wire.IrqSetReply(msg_id=msg.msg_id))


@mutant("region_read_past_the_end_zeros", "REGION_READ starting at a region's end is answered "
        "with zeros", "gating", "errno")
def _region_read_past_the_end_zeros(hosted: HostedDevice) -> None:
    answer_refused(hosted.core, Command.REGION_READ, lambda msg: wire.RegionReadReply(
        msg.offset, msg.region, msg.count, bytes(msg.count), msg_id=msg.msg_id))


@mutant("irq_info_past_the_count_answered", "DEVICE_GET_IRQ_INFO of an index past the "
        "interrupt count answers a zero count", "gating", "errno")
def _irq_info_past_the_count_answered(hosted: HostedDevice) -> None:
    answer_refused(hosted.core, Command.DEVICE_GET_IRQ_INFO, lambda msg: wire.IrqInfoReply(
        index=msg.index, flags=0, count=0, msg_id=msg.msg_id))


@mutant("mig_write_ignored_in_stop", "MIG_DATA_WRITE in STOP is accepted and dropped",
        ("fsm", "gating"), "errno")
def _mig_write_ignored_in_stop(hosted: HostedDevice) -> None:
    core = hosted.core
    set_gate(core, State.STOP, Command.MIG_DATA_WRITE, None)

    def fn(real: Any, msg: Any, fds: list[int]) -> Any:
        if core.state == State.STOP:
            return wire.MigDataWriteReply(msg_id=msg.msg_id), []
        return real(msg, fds)

    wrap_handler(core, Command.MIG_DATA_WRITE, fn)


@mutant("mig_read_empty_in_running", "MIG_DATA_READ in RUNNING answers an empty read instead "
        "of EINVAL", "fsm", "errno")
def _mig_read_empty_in_running(hosted: HostedDevice) -> None:
    core = hosted.core
    set_gate(core, State.RUNNING, Command.MIG_DATA_READ, None)

    def fn(real: Any, msg: Any, fds: list[int]) -> Any:
        if core.state == State.RUNNING:
            return wire.MigDataReadReply(b"", msg.size, msg_id=msg.msg_id), []
        return real(msg, fds)

    wrap_handler(core, Command.MIG_DATA_READ, fn)


# ----- DEVICE_FEATURE -------------------------------------------------------------------------


@mutant("probe_not_echoed", "a PROBE reply carries no data instead of echoing the request",
        "feature", "reply")
def _probe_not_echoed(hosted: HostedDevice) -> None:
    def fn(real: Any, msg: Any, fds: list[int]) -> Any:
        reply, out = real(msg, fds)
        if msg.ops & FeatureOp.PROBE:
            reply = wire.DeviceFeatureReply(msg.feature, msg.ops, None, msg.argsz,
                                            msg_id=msg.msg_id)
        return reply, out

    wrap_feature(hosted.core, fn)


@mutant("get_small_argsz_accepted", "a GET whose argsz cannot hold the reply is answered in "
        "full", "feature", "errno")
def _get_small_argsz_accepted(hosted: HostedDevice) -> None:
    def fn(real: Any, msg: Any, fds: list[int]) -> Any:
        if msg.ops & FeatureOp.GET and not msg.ops & FeatureOp.PROBE:
            return real(replace(msg, argsz=1 << 16), fds)
        return real(msg, fds)

    wrap_feature(hosted.core, fn)


@mutant("get_reply_argsz_echoed", "a GET reply's argsz is the request's, not the reply's size",
        "feature", "reply")
def _get_reply_argsz_echoed(hosted: HostedDevice) -> None:
    def fn(real: Any, msg: Any, fds: list[int]) -> Any:
        reply, out = real(msg, fds)
        if msg.ops & FeatureOp.GET and not msg.ops & FeatureOp.PROBE:
            reply = replace(reply, argsz=msg.argsz + 8)
        return reply, out

    wrap_feature(hosted.core, fn)


@mutant("set_migration_accepted", "SET of the read-only MIGRATION feature is accepted",
        "feature", "errno")
def _set_migration_accepted(hosted: HostedDevice) -> None:
    def fn(real: Any, msg: Any, fds: list[int]) -> Any:
        if is_feature(msg, FeatureIndex.MIGRATION, FeatureOp.SET):
            return wire.DeviceFeatureReply.echo(msg), []
        return real(msg, fds)

    wrap_feature(hosted.core, fn)


@mutant("unknown_feature_accepted", "an unknown feature index is answered with success",
        "feature", "errno")
def _unknown_feature_accepted(hosted: HostedDevice) -> None:
    known = {int(f) for f in FeatureIndex}

    def fn(real: Any, msg: Any, fds: list[int]) -> Any:
        if int(msg.feature) not in known:
            return wire.DeviceFeatureReply.echo(msg), []
        return real(msg, fds)

    wrap_feature(hosted.core, fn)


# ----- framing and malformed messages ---------------------------------------------------------


@mutant("refused_message_answered_ok", "a message the codec refuses (truncated payload, msg_size "
        "too short for its fixed part, unknown command) is answered with success",
        "malformed", "errno")
def _refused_message_answered_ok(hosted: HostedDevice) -> None:
    def fn(real: Any, request: Any, errno: int, echo: Any, no_reply: bool, out: Any) -> None:
        if isinstance(request, wire.Header):
            if not no_reply:
                out.append(([success_header(request)], []))
            return
        real(request, errno, echo, no_reply, out)

    wrap_send_error(hosted.core, fn)


@mutant("unknown_command_answered_ok", "an unknown or reserved command is answered with success",
        "malformed", "errno")
def _unknown_command_answered_ok(hosted: HostedDevice) -> None:
    known = set(wire.Command._value2member_map_)

    def fn(real: Any, request: Any, errno: int, echo: Any, no_reply: bool, out: Any) -> None:
        if int(request.command) not in known:
            out.append(([success_header(request)], []))
            return
        real(request, errno, echo, no_reply, out)

    wrap_send_error(hosted.core, fn)


@mutant("unknown_command_unanswered", "an unknown or reserved command gets no reply at all",
        "malformed", "hang", timeout=0.3)
def _unknown_command_unanswered(hosted: HostedDevice) -> None:
    known = set(wire.Command._value2member_map_)

    def fn(real: Any, request: Any, errno: int, echo: Any, no_reply: bool, out: Any) -> None:
        if int(request.command) in known:
            real(request, errno, echo, no_reply, out)

    wrap_send_error(hosted.core, fn)


@mutant("no_reply_flag_ignored", "a request with the no-reply flag is answered", "malformed",
        "reply")
def _no_reply_flag_ignored(hosted: HostedDevice) -> None:
    def fn(real: Any, msg: Any, fds: list[int], now: float, end: Any) -> Any:
        if msg.no_reply:
            msg = replace(msg, no_reply=False)
        return real(msg, fds, now, end)

    wrap_dispatch(hosted.core, fn)


# ----- reply headers, hangs and closes --------------------------------------------------------


@mutant("msg_id_truncated_to_8_bits", "replies carry the low 8 bits of the request's msg_id",
        "malformed", "reply", timeout=0.3)
def _msg_id_truncated_to_8_bits(hosted: HostedDevice) -> None:
    def fn(raw: bytes) -> bytes:
        if header(raw)[3] & 0xF == int(wire.MsgType.REPLY):
            return with_header(raw, msg_id=header(raw)[0] & 0xFF)
        return raw

    rewrite_out(hosted.core, fn)


@mutant("wrong_msg_id_on_irq_info", "the DEVICE_GET_IRQ_INFO reply in RUNNING carries the "
        "next msg_id", "gating", "reply", timeout=0.3)
def _wrong_msg_id_on_irq_info(hosted: HostedDevice) -> None:
    core = hosted.core

    def fn(raw: bytes) -> bytes:
        if is_reply_to(raw, Command.DEVICE_GET_IRQ_INFO) and core.state == State.RUNNING:
            return with_header(raw, msg_id=(header(raw)[0] + 1) & 0xFFFF)
        return raw

    rewrite_out(hosted.core, fn)


@mutant("hang_on_get_info", "DEVICE_GET_INFO in RUNNING is never answered", "gating", "hang",
        timeout=0.3)
def _hang_on_get_info(hosted: HostedDevice) -> None:
    core = hosted.core
    rewrite_out(core, lambda raw: None if (is_reply_to(raw, Command.DEVICE_GET_INFO)
                                           and core.state == State.RUNNING) else raw)


@mutant("close_on_set_irqs", "the server closes the connection on DEVICE_SET_IRQS", "gating",
        "close")
def _close_on_set_irqs(hosted: HostedDevice) -> None:
    def fn(real: Any, msg: Any, fds: list[int], now: float, end: Any) -> Any:
        if msg.command == Command.DEVICE_SET_IRQS:
            raise ConnectionResetError("planted: the server drops the client")
        return real(msg, fds, now, end)

    wrap_dispatch(hosted.core, fn)


@mutant("version_answers_higher", "VERSION answers a minor version above the one asked for",
        "fsm", "reply")
def _version_answers_higher(hosted: HostedDevice) -> None:
    def fn(real: Any, msg: Any, fds: list[int]) -> Any:
        reply, out = real(msg, fds)
        return replace(reply, minor=msg.minor + 1), out

    wrap_handler(hosted.core, Command.VERSION, fn)


@mutant("region_info_fd_missing", "GET_REGION_INFO announces an mmap-able area with its "
        "capability chain but sends no fd", "gating", "reply")
def _region_info_fd_missing(hosted: HostedDevice) -> None:
    def fn(real: Any, msg: Any, fds: list[int]) -> Any:
        reply, _out = real(msg, fds)
        return reply, []  # the device's own fd: not ours to close

    wrap_handler(hosted.core, Command.DEVICE_GET_REGION_INFO, fn)


@mutant("dma_unmap_reply_zeroed", "a successful DMA_UNMAP reply has its range zeroed",
        "dma", "reply")
def _dma_unmap_reply_zeroed(hosted: HostedDevice) -> None:
    def fn(raw: bytes) -> bytes:
        if is_ok_reply_to(raw, Command.DMA_UNMAP) and len(raw) >= 40:
            return raw[:24] + bytes(16) + raw[40:]
        return raw

    rewrite_out(hosted.core, fn)


# ----- the client leaves ----------------------------------------------------------------------


@mutant("crash_on_disconnect_in_stop_copy", "the server dies when its client leaves in "
        "STOP_COPY", "disconnect", "crash")
def _crash_on_disconnect_in_stop_copy(hosted: HostedDevice) -> None:
    core = hosted.core
    real = core.connection_lost

    def connection_lost() -> None:
        if core.state == State.STOP_COPY:
            raise RuntimeError("planted: cleanup of a saving device fails")
        real()

    core.connection_lost = connection_lost  # type: ignore[method-assign]


@mutant("reconnect_version_refused", "after a client leaves outside RUNNING the server still "
        "counts VERSION as negotiated and refuses the next client's", "disconnect", "errno",
        reconnect=True)
def _reconnect_version_refused(hosted: HostedDevice) -> None:
    core = hosted.core
    real = core.connection_lost

    def connection_lost() -> None:
        keep = core.state != State.RUNNING
        real()
        core.negotiated = keep

    core.connection_lost = connection_lost  # type: ignore[method-assign]


@mutant("dma_maps_kept_after_the_client_leaves", "the DMA regions of a client that left stay "
        "mapped (a new client cannot map the same range)", "disconnect", "errno", reconnect=True)
def _dma_maps_kept_after_the_client_leaves(hosted: HostedDevice) -> None:
    dma = hosted.core.dma
    dma.unmap_all = lambda: ()  # type: ignore[method-assign]
