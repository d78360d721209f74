"""check --against: the same messages to two servers; our server against itself differs in
nothing, against a deliberately different one the differences are found and classified."""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterator

import pytest

from vfio_user_mig.check.conn import Reply
from vfio_user_mig.check.differential import CLASSES, Outcome, classify, run_differential
from vfio_user_mig.check.target import SocketTarget
from vfio_user_mig.simulator.device.errors import DeviceError
from vfio_user_mig.simulator.server.hosting import HostedDevice, host_device
from vfio_user_mig.simulator.server.io import UnixServer


@pytest.fixture
def two() -> Iterator[tuple[str, str, str, HostedDevice]]:
    """Three of our servers in this process: the one the oracle runs against (its messages are
    then sent to the other two, which thus share one history) and the two compared; the last
    one's device is returned to be altered."""
    hosted = [host_device("migdev", mem_size=64 << 10) for _ in range(3)]
    with tempfile.TemporaryDirectory() as tmp:
        paths = [os.path.join(tmp, f"{i}.sock") for i in range(3)]
        servers = [UnixServer(h.core, p).start() for h, p in zip(hosted, paths, strict=True)]
        try:
            yield paths[0], paths[1], paths[2], hosted[2]
        finally:
            for server, h in zip(servers, hosted, strict=True):
                server.stop()
                h.close()


def _reply(flags: int = 1, error: int = 0, payload: bytes = b"") -> Outcome:
    return Outcome("reply", Reply(1, 16, 16 + len(payload), flags, error, payload))


def test_classify() -> None:
    assert classify(_reply(), _reply()) is None
    assert classify(_reply(), Outcome("crash")) == CLASSES[0]
    assert classify(_reply(), _reply(0x21, 22)) == "one refuses, the other accepts"
    assert classify(_reply(0x21, 22), _reply(0x21, 95)) == "errno differs"
    assert classify(_reply(payload=b"ab"), _reply(payload=b"abc")) == "payload length differs"
    assert classify(_reply(payload=b"ab"), _reply(payload=b"ac")) == "payload differs"


def test_our_server_against_itself(two: tuple[str, str, str, HostedDevice]) -> None:
    gen, pa, pb, _b = two
    report = run_differential(SocketTarget(pa), SocketTarget(pb), 6, 11,
                              generator=SocketTarget(gen))
    diff = report.extra["differential"]
    assert diff["differences"] == 0, diff["items"][:3]
    assert report.checks > 50 and report.passed == report.checks


def test_a_different_server(two: tuple[str, str, str, HostedDevice]) -> None:
    gen, pa, pb, b = two

    def refuse() -> None:
        raise DeviceError("deliberately different", errno.EIO)

    b.device.dirty_log.stop = refuse  # type: ignore[method-assign]
    report = run_differential(SocketTarget(pa), SocketTarget(pb), 4, 11,
                              generator=SocketTarget(gen))
    diff = report.extra["differential"]
    assert diff["unexplained"] >= 4  # every sequence starts with a DMA_LOGGING_STOP
    first = [d for d in diff["items"] if d["first"]]
    assert first and all(d["command"] == "DEVICE_FEATURE" for d in first)
    assert first[0]["class"] == "one refuses, the other accepts"
    assert first[0]["reference"]["errno"] == "EIO" and first[0]["reproducer"]
    assert report.passed < report.checks


def test_a_state_difference_explains_what_follows() -> None:
    """A MIG_DEVICE_STATE GET whose replies differ (here after DEVICE_RESET: our device is
    RUNNING, libvfio-user's still PRE_COPY) means the two devices diverged: a later
    MIG_DATA_READ that one refuses and the other answers is explained as a consequence, and
    the GET itself by the reset rule even after a MIG_DATA_WRITE (a shape seen against
    libvfio-user's sample)."""
    from vfio_user_mig import wire
    from vfio_user_mig.check.differential import compare
    from vfio_user_mig.check.steps import Step
    from vfio_user_mig.model import State

    def feature(msg_id: int, feature: wire.FeatureIndex, op: wire.FeatureOp,
                data: object = None) -> Step:
        return Step(wire.encode(wire.DeviceFeature(msg_id=msg_id, feature=feature, ops=op,
                                                   data=data)))

    def state(s: State) -> bytes:
        return (16).to_bytes(4, "little") + (0x10002).to_bytes(4, "little") + int(s).to_bytes(
            4, "little") + bytes(4)

    steps = [
        feature(1, wire.FeatureIndex.MIG_DEVICE_STATE, wire.FeatureOp.SET,
                wire.MigDeviceState(device_state=State.PRE_COPY)),
        Step(wire.encode(wire.MigDataWrite(msg_id=2, data=b"\0" * 8))),
        Step(wire.encode(wire.DeviceReset(msg_id=3))),
        feature(4, wire.FeatureIndex.MIG_DEVICE_STATE, wire.FeatureOp.GET),
        Step(wire.encode(wire.MigDataRead(msg_id=5, size=8))),
    ]
    einval = _reply(0x21, errno.EINVAL)
    ours = [_reply(), einval, _reply(), _reply(payload=state(State.RUNNING)), einval]
    theirs = [_reply(), einval, _reply(), _reply(payload=state(State.PRE_COPY)),
              _reply(payload=bytes(16))]
    _, diffs = compare(steps, ours, theirs, 0)
    assert [(d["step"], d["explained"]) for d in diffs] == [(3, "reset-state"), (4, "diverged")]


def test_every_rule_has_its_row_in_wire_compat() -> None:
    """docs/wire-compat.md lists exactly the rules the comparison applies, in its
    ``check --against`` section, so every explained difference points at a written row."""
    import re
    from pathlib import Path

    from vfio_user_mig.check.differential import RULES

    text = (Path(__file__).resolve().parents[2] / "docs" / "wire-compat.md").read_text()
    section = text.split("## Differences between two conforming servers", 1)[1].split("\n## ")[0]
    rows = re.findall(r"^\| `([a-z-]+)` \|", section, flags=re.M)
    assert rows == [r.name for r in RULES]
