"""Checks on effects, not only on status: each one against a server with one planted defect
(our server in this process, its handler, device or outgoing bytes patched for the test only)
reports it, and our clean server passes it (the clean runs: ``test_clean_server_*`` here and
``test_groups.test_every_group_passes_against_our_server``)."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import re
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from vfio_user_mig import wire
from vfio_user_mig.check.explore import learn_world, run_ops
from vfio_user_mig.check.findings import Finding, Kind
from vfio_user_mig.check.groups import run_suite
from vfio_user_mig.check.oracle import Op
from vfio_user_mig.check.profiles import get_profile
from vfio_user_mig.check.session import Checker
from vfio_user_mig.check.target import SocketTarget
from vfio_user_mig.model import State
from vfio_user_mig.simulator.device.base import Device
from vfio_user_mig.simulator.device.migdev import MigDev
from vfio_user_mig.simulator.device.stream import StreamError
from vfio_user_mig.simulator.server.hosting import HostedDevice, host_device
from vfio_user_mig.simulator.server.io import UnixServer
from vfio_user_mig.simulator.server.state import DeviceActions
from vfio_user_mig.simulator.server.types import Handled, Refusal, ServerConfig
from vfio_user_mig.wire import Command, FeatureIndex, FeatureOp

_HDR = struct.Struct("<HHIII")


@dataclasses.dataclass
class Served:
    hosted: HostedDevice
    path: str


def _serve(tmp_path: Path, device: str = "migdev",
           config: ServerConfig | None = None) -> Iterator[Served]:
    hosted = host_device(device, mem_size=256 << 10, config=config)
    path = str(tmp_path / "s.sock")
    server = UnixServer(hosted.core, path).start()
    try:
        yield Served(hosted, path)
    finally:
        server.stop()
        hosted.close()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    yield from _serve(tmp_path)


_REPR = re.compile(r"<\w+(\.\w+)+(\|\w+)*: -?\d+>")
_SOURCE = re.compile(r"PROTOCOL\.md|vfio-user\.rst|kernel|vfio\.h|docs/wire-compat\.md")


def readable(found: list[Finding]) -> list[Finding]:
    """Every finding's text is free of Python reprs and its rule cites the spec, the kernel or
    the documented differences (checked on every planted defect's findings)."""
    for f in found:
        for text in (f.title, f.expected, f.observed, f.spec):
            assert not _REPR.search(text), text
        assert _SOURCE.search(f.spec), (f.title, f.spec)
    return found


def findings(served: Served, *groups: str, profile: str | None = None) -> list[Finding]:
    checker = Checker(SocketTarget(served.path), timeout=1.0,
                      profile=get_profile(profile) if profile else None)
    run_suite(checker, set(groups))
    return readable(checker.report.findings)


def titles(found: list[Finding]) -> dict[str, Kind]:
    return {f.title: f.kind for f in found}


def patch_handler(monkeypatch: pytest.MonkeyPatch, served: Served, command: Command,
                  wrap: Callable[[Callable[..., Any], Any, list[int]], Any]) -> None:
    real = served.hosted.core._handlers[command]
    monkeypatch.setitem(served.hosted.core._handlers, command,
                        lambda msg, fds: wrap(real, msg, fds))


def rewrite_replies(monkeypatch: pytest.MonkeyPatch, served: Served,
                    edit: Callable[[int, bytearray], bytearray | None]) -> None:
    """Every message the server sends passes through ``edit(command, message)`` (``None``:
    unchanged); msg_size is set to the new length."""
    core = served.hosted.core
    real = core.data_to_send

    def patched() -> list[tuple[list[bytes | memoryview], list[int]]]:
        out = []
        for parts, fds in real():
            data = bytearray(b"".join(bytes(p) for p in parts))
            command = _HDR.unpack_from(data)[1] if len(data) >= 16 else 0
            new = edit(command, data) if len(data) >= 16 else None
            if new is not None:
                struct.pack_into("<I", new, 4, len(new))
                data = new
            out.append(([bytes(data)], fds))
        return out

    monkeypatch.setattr(core, "data_to_send", patched)


# -- MIG_DEVICE_STATE: the state after a refused SET -------------------------------------------

def test_refused_set_that_moved_the_device_is_found(served: Served,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """SET RUNNING -> STOP_COPY carried out, then answered EIO: the device is in a state the
    failed path cannot leave it in (only RUNNING, STOP or ERROR)."""
    core = served.hosted.core

    def wrap(real: Callable[..., Any], msg: Any, fds: list[int]) -> Any:
        before = core.state
        out = real(msg, fds)
        if (msg.feature == FeatureIndex.MIG_DEVICE_STATE and msg.ops == FeatureOp.SET
                and before == State.RUNNING and core.state == State.STOP_COPY):
            raise Refusal(errno.EIO, "planted: reports failure after moving")
        return out

    patch_handler(monkeypatch, served, Command.DEVICE_FEATURE, wrap)
    found = titles(findings(served, "fsm"))
    assert found.get("SET RUNNING -> STOP_COPY: state reached") == Kind.STATE


# -- DEVICE_RESET --------------------------------------------------------------------------------

def keep_state_on_reset(monkeypatch: pytest.MonkeyPatch, served: Served) -> None:
    """The planted defect: DEVICE_RESET outside RUNNING answers and does nothing (the device
    and its migration state are kept)."""
    core = served.hosted.core

    def wrap(real: Callable[..., Any], msg: Any, fds: list[int]) -> Any:
        if core.state != State.RUNNING:
            return wire.DeviceResetReply(msg_id=msg.msg_id), []
        return real(msg, fds)

    patch_handler(monkeypatch, served, Command.DEVICE_RESET, wrap)


def test_reset_keeping_the_migration_state_is_found(served: Served,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    keep_state_on_reset(monkeypatch, served)
    found = titles(findings(served, "reset"))
    assert found.get("state after DEVICE_RESET in PRE_COPY") == Kind.STATE
    assert found.get("state after DEVICE_RESET in RESUMING") == Kind.STATE


def test_reset_in_error_keeping_error_is_found(served: Served,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    core = served.hosted.core

    def wrap(real: Callable[..., Any], msg: Any, fds: list[int]) -> Any:
        if core.state == State.ERROR:  # planted: a reset that does nothing in ERROR
            return wire.DeviceResetReply(msg_id=msg.msg_id), []
        return real(msg, fds)

    patch_handler(monkeypatch, served, Command.DEVICE_RESET, wrap)
    found = titles(findings(served, "migdata"))
    assert found.get("state after DEVICE_RESET in ERROR (after a truncated stream)") == Kind.STATE


def test_reset_in_error_leaves_running_on_our_server(served: Served) -> None:
    checker = Checker(SocketTarget(served.path), timeout=1.0)
    run_suite(checker, {"migdata"})
    assert checker.report.findings == []
    # the damaged streams put migdev in ERROR, so the reset from ERROR was checked
    assert checker.report.coverage.requests[("ERROR", "DEVICE_RESET")] >= 1


def test_logging_kept_across_reset_is_an_advisory(served: Served,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    checker = Checker(SocketTarget(served.path), timeout=1.0)
    run_suite(checker, {"reset"})
    assert checker.report.advisories == [] and checker.report.findings == []
    monkeypatch.setattr(DeviceActions, "on_reset",
                        lambda self: self.device.reset(keep_mig_state=self.keep_mig_state))
    checker = Checker(SocketTarget(served.path), timeout=1.0)
    run_suite(checker, {"reset"})
    assert [a["title"] for a in checker.report.advisories] == ["DMA logging survives DEVICE_RESET"]


def test_random_exploration_wants_running_after_reset(served: Served,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    keep_state_on_reset(monkeypatch, served)
    checker = Checker(SocketTarget(served.path), timeout=1.0)
    world = learn_world(checker)
    sub = run_ops(checker, world, [Op("set", int(State.PRE_COPY)), Op("reset")], "reset")
    found = titles(sub.report.findings)
    assert found.get("DEVICE_RESET in PRE_COPY: state reached") == Kind.STATE


# -- MIG_DATA_READ bounds and RESUMING ---------------------------------------------------------

def test_read_reply_longer_than_argsz_is_found(served: Served,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """libvfio-user's answer to a 1024-byte read carrying 8 bytes after its struct: a
    1040-byte payload for argsz 1032 (planted on every full 1024-byte read)."""
    def pad(command: int, data: bytearray) -> bytearray | None:
        if command == Command.MIG_DATA_READ and len(data) == 16 + 8 + 1024:
            return data + bytes(8)
        return None

    rewrite_replies(monkeypatch, served, pad)
    found = titles(findings(served, "migdata"))
    assert found.get("MIG_DATA_READ reply longer than the request's argsz allows") == Kind.REPLY


def test_stream_ended_early_by_odd_reads_is_found(served: Served,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A device that answers whole KiBs only: a read of 1 MiB - 3 bytes gets 1 MiB - 1 KiB, a
    short read before the data is out."""
    real = MigDev.mig_data_read

    def whole_kib(self: MigDev, max_size: int) -> bytes:
        return real(self, max_size - max_size % 1024 if max_size > 1024 else max_size)

    monkeypatch.setattr(MigDev, "mig_data_read", whole_kib)
    # the server reads through mig_data_read_parts: the base device's, one part of ours
    monkeypatch.setattr(MigDev, "mig_data_read_parts", Device.mig_data_read_parts)
    found = titles(findings(served, "migdata"))
    assert found.get("the STOP_COPY stream read in other read sizes is the same stream") == \
        Kind.DATA


def _load_anything(monkeypatch: pytest.MonkeyPatch) -> None:
    """The planted device loads whatever it is given: no stream error ever reaches the FSM."""
    feed = MigDev.mig_data_write
    arc = MigDev.on_arc

    def write(self: MigDev, data: bytes | memoryview) -> None:
        with contextlib.suppress(StreamError):
            feed(self, data)

    def on_arc(self: MigDev, src: State, dst: State) -> None:
        if src is State.RESUMING and self._state is State.RESUMING:
            self._restore = None
            self._state = State(dst)
            return
        arc(self, src, dst)

    monkeypatch.setattr(MigDev, "mig_data_write", write)
    monkeypatch.setattr(MigDev, "on_arc", on_arc)


def test_damaged_streams_loaded_are_found(served: Served,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    _load_anything(monkeypatch)
    found = titles(findings(served, "migdata"))
    for damage in ("truncated", "corrupted", "reordered", "foreign"):
        assert found.get(f"a {damage} migration stream is loaded without an error") == Kind.DATA


def test_damaged_streams_of_a_raw_format_are_advisories(tmp_path: Path) -> None:
    """``--profile lvu-sample`` declares the sample's raw stream: content damage it loads is an
    advisory; truncation stays a finding (our lvu-sample refuses it)."""
    for served in _serve(tmp_path, "lvu-sample"):
        checker = Checker(SocketTarget(served.path), timeout=1.0,
                          profile=get_profile("lvu-sample"))
        run_suite(checker, {"migdata"})
        assert checker.report.findings == []
        assert {a["title"] for a in checker.report.advisories} >= {
            "a corrupted migration stream is loaded without an error",
            "a foreign migration stream is loaded without an error"}


# -- reply payloads, region info, VERSION ------------------------------------------------------

def test_reply_payload_size_is_checked(served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    def grow(command: int, data: bytearray) -> bytearray | None:
        if command in (Command.DMA_MAP, Command.MIG_DATA_WRITE) and len(data) == 16:
            return data + bytes(8)  # planted: 8 bytes where the spec gives none
        return None

    rewrite_replies(monkeypatch, served, grow)
    found = titles(findings(served, "gating"))
    assert found.get("DMA_MAP executed in RUNNING") == Kind.REPLY
    assert found.get("MIG_DATA_WRITE executed in RESUMING") == Kind.REPLY


def test_region_info_without_its_fd_is_found(served: Served,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    def no_fd(real: Callable[..., Any], msg: Any, fds: list[int]) -> Any:
        reply, _device_fds = real(msg, fds)  # the device's own fds: it keeps them
        return reply, []  # planted: the mappable region's fd is not sent

    patch_handler(monkeypatch, served, Command.DEVICE_GET_REGION_INFO, no_fd)
    found = findings(served, "gating")
    bad = [f for f in found if f.title.endswith("reply at a large argsz")]
    assert bad and all(f.kind == Kind.REPLY and "fds with a region flagged MMAP" in f.observed
                       for f in bad)


def test_region_info_chain_outside_the_reply_is_found(served: Served,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    def far(command: int, data: bytearray) -> bytearray | None:
        if command == Command.DEVICE_GET_REGION_INFO and len(data) >= 48 and \
                struct.unpack_from("<I", data, 16 + 12)[0]:
            struct.pack_into("<I", data, 16 + 12, len(data))  # planted: cap past the end
            return data
        return None

    rewrite_replies(monkeypatch, served, far)
    found = findings(served, "gating")
    assert any(f.title.endswith("reply at a large argsz") and "outside" in f.observed
               for f in found)


def test_version_above_the_one_asked_is_found(served: Served,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    def newer(command: int, data: bytearray) -> bytearray | None:
        if command == Command.VERSION and len(data) >= 20:
            struct.pack_into("<H", data, 18, 3)  # planted: minor 3 for a client asking 0.2
            return data
        return None

    rewrite_replies(monkeypatch, served, newer)
    found = titles(findings(served, "fsm"))
    assert found.get("VERSION reply: a version no higher than the one asked for") == Kind.REPLY


# -- header: message ids, no-reply -----------------------------------------------------------

def test_message_id_cut_to_8_bits_is_found(served: Served,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    def cut(command: int, data: bytearray) -> bytearray | None:
        data[1] = 0  # planted: the reply keeps the low byte of msg_id
        return data

    rewrite_replies(monkeypatch, served, cut)
    found = titles(findings(served, "malformed"))
    assert found.get("message id above 255 echoed") == Kind.REPLY


def test_no_reply_request_answered_is_found(served: Served,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    core = served.hosted.core
    real = core._dispatch

    def answer_all(msg: Any, fds: list[int], now: float, end: Any) -> Handled:
        return real(dataclasses.replace(msg, no_reply=False), fds, now, end)

    monkeypatch.setattr(core, "_dispatch", answer_all)
    found = titles(findings(served, "malformed"))
    assert found.get("a request with the no-reply flag is answered") == Kind.REPLY


def test_no_reply_request_not_executed_is_found(served: Served,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    core = served.hosted.core
    real = core._dispatch

    def drop(msg: Any, fds: list[int], now: float, end: Any) -> Handled:
        if msg.no_reply:  # planted: a request nobody waits for is not carried out
            return Handled(msg.command, msg.msg_id, False, None)
        return real(msg, fds, now, end)

    monkeypatch.setattr(core, "_dispatch", drop)
    found = titles(findings(served, "malformed"))
    assert found.get("a DMA_MAP with the no-reply flag is executed") == Kind.ERRNO


# -- PROBE, titles -----------------------------------------------------------------------------

def test_probe_that_executes_its_set_is_found(served: Served,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    def execute(real: Callable[..., Any], msg: Any, fds: list[int]) -> Any:
        out = real(msg, fds)
        if msg.ops == FeatureOp.PROBE | FeatureOp.SET and \
                msg.feature == FeatureIndex.MIG_DEVICE_STATE:
            state = struct.unpack_from("<I", bytes(msg.data) if isinstance(
                msg.data, bytes | bytearray | memoryview) else struct.pack(
                "<I", msg.data.device_state))[0]
            real(wire.DeviceFeature(FeatureIndex.MIG_DEVICE_STATE, FeatureOp.SET,
                                    wire.MigDeviceState(state), msg_id=msg.msg_id), [])
        return out

    patch_handler(monkeypatch, served, Command.DEVICE_FEATURE, execute)
    found = titles(findings(served, "feature"))
    assert found.get("PROBE|SET MIG_DEVICE_STATE changes the state") == Kind.STATE


def test_finding_text_has_no_python_reprs(served: Served,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Every refusal of a DEVICE_FEATURE request turned into a success: many findings whose
    titles and rules name features and operations, none as a Python repr."""
    def accept(real: Callable[..., Any], msg: Any, fds: list[int]) -> Any:
        try:
            return real(msg, fds)
        except Refusal:
            return wire.DeviceFeatureReply(feature=msg.feature, ops=msg.ops, data=None,
                                           argsz=8, msg_id=msg.msg_id), []

    patch_handler(monkeypatch, served, Command.DEVICE_FEATURE, accept)
    found = findings(served, "feature")  # readable() checks every finding's text
    assert len(found) >= 5


def test_clean_server_passes_the_effect_checks(served: Served) -> None:
    found = findings(served, "fsm", "gating", "feature", "migdata", "reset", "malformed")
    assert found == []


def test_read_reply_filling_a_larger_argsz_is_found(served: Served,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A reply padded to the request's argsz (4104 bytes for a 64-byte read): larger than
    the size asked."""
    def fill(command: int, data: bytearray) -> bytearray | None:
        if command == Command.MIG_DATA_READ and len(data) == 16 + 8 + 64:
            return data + bytes(4096 - 64)
        return None

    rewrite_replies(monkeypatch, served, fill)
    found = titles(findings(served, "migdata"))
    assert found.get("MIG_DATA_READ with a larger argsz") == Kind.REPLY


def test_echo_with_a_wrong_field_is_found(served: Served,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    def wrong_count(command: int, data: bytearray) -> bytearray | None:
        if command == Command.REGION_WRITE and len(data) == 32:
            struct.pack_into("<I", data, 16 + 12, 0)  # planted: count 0 in the echo
            return data
        return None

    rewrite_replies(monkeypatch, served, wrong_count)
    found = titles(findings(served, "gating"))
    assert found.get("REGION_WRITE reply echoes the request") == Kind.REPLY
