"""The experimental MIG_DATA_SIZE feature (DEVICE_FEATURE index 9): the device's pending bytes
over the wire, only when :attr:`ServerConfig.experimental_mig_data_size` is set."""

from __future__ import annotations

import errno
import random
from collections.abc import Iterator

import pytest

from tests.simulator.conftest import Session, close_session, make_session
from vfio_user_mig.model import State
from vfio_user_mig.simulator.client.io import VfioUserError
from vfio_user_mig.simulator.device import MigDev
from vfio_user_mig.simulator.device.stream import PAGES_PREFIX, RECORD_HEADER
from vfio_user_mig.wire.constants import FeatureIndex, FeatureOp

BAR2 = 2
MEM = 1 << 20
CHUNK = 64 << 10


@pytest.fixture
def enabled() -> Iterator[Session]:
    s = make_session(mem_size=MEM)
    s.core.config.experimental_mig_data_size = True
    s.client.negotiate()
    rng = random.Random(7)
    for off in range(0, MEM, CHUNK):
        s.client.region_write(BAR2, off, rng.randbytes(CHUNK))
    yield s
    close_session(s)


def _drain(s: Session) -> int:
    total = 0
    while True:
        data = s.client.mig_data_read(CHUNK)
        total += len(data)
        if len(data) < CHUNK:
            return total


def test_einval_by_default(session: Session) -> None:
    assert session.core.config.experimental_mig_data_size is False
    for ops in (FeatureOp.GET, FeatureOp.PROBE | FeatureOp.GET):
        with pytest.raises(VfioUserError) as exc:
            session.client.feature(FeatureIndex.MIG_DATA_SIZE, ops)
        assert exc.value.errno == errno.EINVAL
    with pytest.raises(VfioUserError) as exc:
        session.client.mig_data_size()
    assert exc.value.errno == errno.EINVAL


def test_einval_without_pending_bytes(enabled: Session) -> None:
    class Plain:  # a device without pending_bytes
        pass

    device = enabled.core.device
    enabled.core.device = Plain()  # type: ignore[assignment]
    try:
        with pytest.raises(VfioUserError) as exc:
            enabled.client.mig_data_size()
        assert exc.value.errno == errno.EINVAL
    finally:
        enabled.core.device = device


def test_probe_and_set(enabled: Session) -> None:
    c = enabled.client
    c.feature(FeatureIndex.MIG_DATA_SIZE, FeatureOp.PROBE | FeatureOp.GET)
    with pytest.raises(VfioUserError) as exc:
        c.feature(FeatureIndex.MIG_DATA_SIZE, FeatureOp.SET, b"\0" * 8)
    assert exc.value.errno == errno.EINVAL


def test_shrinks_as_precopy_reads_progress(enabled: Session) -> None:
    c, dev = enabled.client, enabled.device
    assert isinstance(dev, MigDev)
    whole = c.mig_data_size()  # RUNNING: a whole stream
    pages = MEM // dev.page_size
    assert whole > MEM + pages // 16 * (RECORD_HEADER.size + PAGES_PREFIX.size)
    c.set_state(State.PRE_COPY)
    assert c.mig_data_size() == whole  # nothing sent yet
    seen = [whole]
    for _ in range(4):
        n = len(c.mig_data_read(CHUNK))
        assert n == CHUNK
        now = c.mig_data_size()
        assert now == seen[-1] - n  # exact while nothing changes
        seen.append(now)
    _drain(enabled)
    caught_up = c.mig_data_size()
    assert 0 < caught_up < 1024  # REGS + END only
    # The guest dirties 10 pages: they are pending again.
    for i in range(10):
        c.region_write(BAR2, i * 3 * dev.page_size, b"\xa5" * 8)
    dirty = c.mig_data_size()
    assert dirty >= caught_up + 10 * dev.page_size
    # The answer is what STOP_COPY then sends, byte for byte.
    c.set_state(State.STOP_COPY)
    assert c.mig_data_size() == dirty
    assert _drain(enabled) == dirty
    assert c.mig_data_size() == 0


def test_stop_copy_without_precopy_is_exact(enabled: Session) -> None:
    c = enabled.client
    whole = c.mig_data_size()
    c.set_state(State.STOP)
    c.set_state(State.STOP_COPY)
    assert c.mig_data_size() == whole
    assert _drain(enabled) == whole


# ----- the driver's size query ----------------------------------------------------------------
def _opts(**kw: object) -> object:
    from vfio_user_mig.simulator.migration.session import MigrateOptions

    base: dict[str, object] = dict(device_mem=1 << 20, guest_mem=1 << 20, dirty_rate=4 << 20,
                                   bandwidth=32 << 20, keep_chunk_events=False)
    base.update(kw)
    return MigrateOptions(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize("isolation", ["thread", "process"])
def test_driver_uses_reported_pending_bytes(isolation: str) -> None:
    from vfio_user_mig.simulator.migration.session import migrate

    result = migrate(_opts(size_query=True, isolation=isolation))  # type: ignore[arg-type]
    assert result.ok
    probe = [e for e in result.trace_events if e["ev"] == "size_query"]
    assert len(probe) == 1 and probe[0]["supported"] is True and probe[0]["pending"] > 1 << 20
    rounds = [e for e in result.trace_events if e["ev"] == "round"]
    assert rounds and all("pending_device_reported" in r for r in rounds)
    assert all("pending_device_estimate" in r for r in rounds)
    assert "device-reported" in result.summary["switchover"]
    assert result.summary["params"]["size_query"] is True


def test_driver_default_does_not_ask() -> None:
    from vfio_user_mig.simulator.migration.session import migrate

    result = migrate(_opts())  # type: ignore[arg-type]
    assert result.ok
    assert not [e for e in result.trace_events if e["ev"] == "size_query"]
    rounds = [e for e in result.trace_events if e["ev"] == "round"]
    assert rounds and not any("pending_device_reported" in r for r in rounds)
    assert "size_query" not in result.summary["params"]


def test_driver_falls_back_when_refused() -> None:
    from vfio_user_mig.simulator.migration.session import Hooks, migrate

    def refuse(ready: dict[str, object]) -> None:
        for ep in ready["endpoints"]:  # type: ignore[attr-defined]
            ep.hosted_device.core.config.experimental_mig_data_size = False

    result = migrate(_opts(size_query=True), Hooks(on_ready=refuse))  # type: ignore[arg-type]
    assert result.ok
    probe = [e for e in result.trace_events if e["ev"] == "size_query"]
    assert len(probe) == 1 and probe[0]["supported"] is False
    assert probe[0]["errno"] == errno.EINVAL
    rounds = [e for e in result.trace_events if e["ev"] == "round"]
    assert rounds and not any("pending_device_reported" in r for r in rounds)


def test_cli_flag(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from vfio_user_mig.cli import main

    code = main(["migrate", "--device-mem", "1M", "--guest-mem", "1M", "--dirty-rate", "4M",
                 "--bandwidth", "32M", "--experimental-size-query", "--json"])
    payload = json.loads(capsys.readouterr().out)
    assert code == 0 and payload["verified"]
    assert payload["params"]["size_query"] is True
    assert "device-reported" in payload["switchover"]
