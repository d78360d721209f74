"""The deterministic groups against our own server (in-process, real sockets): no findings,
and each group can fail against a deliberately wrong server."""

from __future__ import annotations

import errno

import pytest

from vfio_user_mig.check.findings import Kind
from vfio_user_mig.check.groups import GROUPS, run_suite
from vfio_user_mig.check.session import Checker
from vfio_user_mig.check.target import SocketTarget
from vfio_user_mig.model import State
from vfio_user_mig.simulator.server.hosting import HostedDevice, host_device
from vfio_user_mig.simulator.server.io import UnixServer
from vfio_user_mig.wire import Command, FeatureOp

#: The lvu-sample device mirrors libvfio-user's sample: its stream is raw bytes with no
#: integrity check, so a bit flip or bytes no device saved load silently -- true findings about
#: that device without ``--profile lvu-sample`` (which declares the raw format: advisories).
KNOWN = {"lvu-sample": {f"a {damage} migration stream is loaded without an error"
                        for damage in ("corrupted", "reordered", "foreign")}}




@pytest.mark.parametrize("served_device", ["migdev", "lvu-sample"], indirect=True)
def test_every_group_passes_against_our_server(served_device: tuple[HostedDevice, str]) -> None:
    hosted, path = served_device
    name = "lvu-sample" if "Lvu" in type(hosted.device).__name__ else "migdev"
    checker = Checker(SocketTarget(path))
    peer = host_device(name, mem_size=1 << 20)  # the round trip's destination
    peer_server = UnixServer(peer.core, path + ".peer").start()
    checker.peer = SocketTarget(path + ".peer")
    try:
        run_suite(checker)
    finally:
        peer_server.stop()
        peer.close()
    titles = {f.title for f in checker.report.findings} - KNOWN.get(name, set())
    assert titles == set()
    assert checker.report.checks >= 500
    assert set(checker.report.coverage.groups) >= set(GROUPS)


def test_unknown_group_is_refused(served_device: tuple[HostedDevice, str]) -> None:
    with pytest.raises(ValueError, match="unknown group"):
        run_suite(Checker(SocketTarget(served_device[1])), {"nope"})


def _kinds(path: str, group: str) -> dict[str, Kind]:
    checker = Checker(SocketTarget(path), timeout=1.0)
    run_suite(checker, {group})
    return {f.title: f.kind for f in checker.report.findings}


def test_gating_opened_in_stop_copy_is_found(served_device: tuple[HostedDevice, str]) -> None:
    hosted, path = served_device
    hosted.core._gates[(State.STOP_COPY, Command.DEVICE_GET_INFO)] = None
    found = _kinds(path, "gating")
    assert found.get("DEVICE_GET_INFO refused in STOP_COPY") == Kind.ERRNO


def test_probe_not_echoed_is_found(served_device: tuple[HostedDevice, str],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    hosted, path = served_device
    real = hosted.core._handlers[Command.DEVICE_FEATURE]

    def no_echo(msg, fds):  # type: ignore[no-untyped-def]
        reply, out = real(msg, fds)
        if msg.ops & FeatureOp.PROBE:
            reply = type(reply)(feature=msg.feature, ops=msg.ops, data=None,
                                argsz=msg.argsz + 8, msg_id=msg.msg_id)
        return reply, out

    monkeypatch.setitem(hosted.core._handlers, Command.DEVICE_FEATURE, no_echo)
    found = _kinds(path, "feature")
    assert any(t.startswith("PROBE") and k == Kind.REPLY for t, k in found.items())


def test_bad_state_is_found(served_device: tuple[HostedDevice, str]) -> None:
    hosted, path = served_device
    fsm = hosted.core.fsm
    real = fsm.set_state

    def lazy(target: int):  # type: ignore[no-untyped-def]
        if target == State.STOP_COPY:
            target = int(State.STOP)
        return real(target)

    fsm.set_state = lazy  # type: ignore[method-assign]
    found = _kinds(path, "fsm")
    assert Kind.STATE in found.values()


def test_wrong_errno_on_unmap_is_found(served_device: tuple[HostedDevice, str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    hosted, path = served_device
    from vfio_user_mig.simulator.device.dma import DmaMapError

    def refuse(iova: int, size: int) -> None:
        raise DmaMapError("refused", errno.EPERM)

    monkeypatch.setattr(hosted.core.dma, "unmap", refuse)
    found = _kinds(path, "dma")
    assert found.get("DMA_UNMAP of a whole map echoes the request") == Kind.ERRNO


#: A wrong gate per group: (state, command) refused with EPERM where the rule executes it.
WRONG_GATES = {
    "migdata": (State.STOP_COPY, Command.MIG_DATA_READ),
    "reset": (State.RUNNING, Command.DEVICE_RESET),
    "disconnect": (State.STOP, Command.VERSION),
    "malformed": (State.RUNNING, Command.DEVICE_FEATURE),
}


@pytest.mark.parametrize("group", sorted(WRONG_GATES))
def test_other_groups_fail_against_a_wrong_gate(served_device: tuple[HostedDevice, str],
                                                group: str) -> None:
    hosted, path = served_device
    hosted.core._gates[WRONG_GATES[group]] = errno.EPERM
    checker = Checker(SocketTarget(path), timeout=1.0)
    run_suite(checker, {group})
    assert checker.report.findings
