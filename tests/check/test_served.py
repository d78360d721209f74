"""The in-process targets (:mod:`vfio_user_mig.check.served`): our server passes the whole
suite through them, each sequence gets a fresh device (or, for the socket flavour, the same
one), a server that dies on an internal error is reported as a crash, and nothing is left
running after :meth:`close`."""

from __future__ import annotations

import threading

import pytest

from vfio_user_mig.check.findings import Kind
from vfio_user_mig.check.groups import GROUPS, run_suite
from vfio_user_mig.check.requests import version_request
from vfio_user_mig.check.served import ServedSocketTarget, ServedTarget, default_factory
from vfio_user_mig.check.session import Checker
from vfio_user_mig.model import State
from vfio_user_mig.simulator.server.hosting import HostedDevice

#: lvu-sample mirrors libvfio-user's sample: its stream has no integrity check, so a damaged
#: stream of the right length is loaded -- a true finding about that device.
KNOWN = {"lvu-sample": ("stream is loaded without an error",)}


@pytest.mark.parametrize("device", ["migdev", "lvu-sample"])
def test_our_server_passes_the_suite_in_process(device: str) -> None:
    target = ServedTarget(device)
    checker = Checker(target)
    run_suite(checker)
    target.close()
    known = KNOWN.get(device, ())
    assert [f.title for f in checker.report.findings
            if not any(k in f.title for k in known)] == []
    assert checker.report.checks >= 500
    assert set(checker.report.coverage.groups) >= set(GROUPS)
    # one connection per sequence (the round trip's destination runs on the twin)
    assert target.started <= sum(checker.report.coverage.groups.values()) <= target.started + 1


def test_each_sequence_gets_a_fresh_device() -> None:
    built: list[HostedDevice] = []
    make = default_factory("migdev")

    def factory() -> HostedDevice:
        built.append(make())
        return built[-1]

    target = ServedTarget(factory=factory)
    checker = Checker(target)
    with checker.sequence("t", "to STOP") as seq:
        seq.goto(State.STOP)
    with checker.sequence("t", "again") as seq:
        assert seq.get_state() == State.RUNNING
    target.close()
    assert len(built) == 2 and built[0] is not built[1]
    assert checker.report.findings == []


def test_the_socket_flavour_keeps_the_device_across_connections() -> None:
    target = ServedSocketTarget("migdev")
    checker = Checker(target)
    try:
        with checker.sequence("t", "to STOP", setup=True) as seq:
            seq.goto(State.STOP)
        with checker.sequence("t", "reconnect", setup=False) as seq:
            seq.exchange(version_request(seq.next_id()))
            assert seq.get_state() == State.STOP
    finally:
        target.close()
    assert not target.server._thread or not target.server._thread.is_alive()


def test_a_server_ending_on_an_internal_error_is_a_crash() -> None:
    def factory() -> HostedDevice:
        hosted = default_factory("migdev")()
        real = hosted.core.connection_lost

        def connection_lost() -> None:
            real()
            raise RuntimeError("cleanup fails")

        def dispatch(*args: object) -> object:
            raise MemoryError("planted")  # not an error the pump turns into a reply

        hosted.core.connection_lost = connection_lost  # type: ignore[method-assign]
        hosted.core._dispatch = dispatch  # type: ignore[method-assign]
        return hosted

    target = ServedTarget(factory=factory)
    checker = Checker(target, timeout=1.0)
    with checker.sequence("t", "dies"):
        pass
    target.close()
    kinds = {f.kind for f in checker.report.findings}
    assert kinds == {Kind.CRASH}
    assert "internal error" in checker.report.findings[0].observed


def test_no_serving_thread_outlives_close() -> None:
    before = {t.ident for t in threading.enumerate()}
    target = ServedTarget("migdev")
    run_suite(Checker(target), {"fsm"})
    target.close()
    left = [t for t in threading.enumerate()
            if t.ident not in before and t.name == "vfio-user-served"]
    assert left == []
