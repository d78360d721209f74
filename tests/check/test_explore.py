"""Random exploration: deterministic draws, the oracle is clean on our server, catches a planted
defect, and shrinking keeps only the operations that matter (check --random)."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest

from vfio_user_mig.check.explore import (
    _still_fails,
    draw_ops,
    learn_world,
    run_ops,
    run_random,
    shrink,
)
from vfio_user_mig.check.oracle import Op
from vfio_user_mig.check.session import Checker
from vfio_user_mig.check.target import SocketTarget
from vfio_user_mig.simulator.device.dirtylog import DirtyLog
from vfio_user_mig.simulator.device.errors import DeviceError


def plant_stop_defect(monkeypatch: pytest.MonkeyPatch) -> None:
    """The planted defect: DMA_LOGGING_STOP fails (EIO) while logging is on."""
    original = DirtyLog.stop

    def broken(self: DirtyLog) -> None:
        if self.active:
            raise DeviceError("planted defect", errno.EIO)
        original(self)

    monkeypatch.setattr(DirtyLog, "stop", broken)


LONG = [Op("set", 3), Op("read", 4), Op("set", 1), Op("map", 1, 1), Op("log_start"),
        Op("region_read", 1), Op("get"), Op("probe", 1, 1), Op("set", 2), Op("info"),
        Op("log_report", 1), Op("caps"), Op("log_stop"), Op("set", 6), Op("read", 2)]


def test_same_seed_same_ops() -> None:
    assert draw_ops(7, 3) == draw_ops(7, 3)
    assert draw_ops(7, 3) != draw_ops(8, 3)
    assert [draw_ops(1, i) for i in range(5)] != [draw_ops(1, 0)] * 5


def test_shrink_keeps_what_matters() -> None:
    def fails(ops: list[Op]) -> bool:
        kinds = [o.kind for o in ops]
        return "log_start" in kinds and "log_stop" in kinds[kinds.index("log_start"):]

    assert shrink(LONG, fails) == [Op("log_start"), Op("log_stop")]


def test_oracle_clean_on_our_server(served: str, tmp_path: Path) -> None:
    checker = Checker(SocketTarget(served))
    run_random(checker, 12, 5, tmp_path)
    report = checker.report
    assert [f.title for f in report.findings] == []
    assert report.checks > 100 and report.passed == report.checks
    assert len(report.coverage.cells) > 15 and report.coverage.arcs
    assert report.extra["random"]["saved_stream_bytes"] > 0
    assert not list(tmp_path.iterdir())


def test_planted_defect_is_caught_and_shrunk(served: str, monkeypatch: pytest.MonkeyPatch
                                             ) -> None:
    plant_stop_defect(monkeypatch)
    checker = Checker(SocketTarget(served))
    world = learn_world(checker)
    sub = run_ops(checker, world, LONG, "long")
    keys = {f.key() for f in sub.report.findings}
    key = ("errno", "DMA_LOGGING_STOP in RUNNING")
    assert key in keys
    found = {"best": sub.report.findings[0]}
    small = shrink(LONG, _still_fails(checker, world, key, "long", found))
    assert small == [Op("log_start"), Op("log_stop")]
    assert found["best"].key() == key
    assert len(found["best"].reproducer) < len(sub.report.findings[0].reproducer)


def test_run_random_writes_minimal_reproducers(served: str, monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    plant_stop_defect(monkeypatch)
    checker = Checker(SocketTarget(served))
    run_random(checker, 25, 3, tmp_path)
    titles = {f.title for f in checker.report.findings}
    assert any(t.startswith("DMA_LOGGING_STOP in ") for t in titles)
    docs = [json.loads(p.read_text()) for p in sorted(tmp_path.iterdir())]
    stops = [d for d in docs if d["finding"]["title"].startswith("DMA_LOGGING_STOP in ")]
    assert stops and all(d["seed"] == 3 and d["steps"] for d in docs)
    minimal = [[o["op"] for o in d["ops"]] for d in stops]
    assert any(k[0] == "log_start" and k[-1] == "log_stop" and len(k) <= 3 for k in minimal
               if k), minimal
    assert all("expect" in s for d in docs for s in d["steps"])


@pytest.mark.parametrize(("selected", "clean"), [(0x10000, True), (0x3000, False)])
def test_oracle_takes_the_page_size_a_device_selects(
        served: str, monkeypatch: pytest.MonkeyPatch, selected: int, clean: bool) -> None:
    """DMA_LOGGING_START's page size is a hint (vfio-user.rst DMA_LOGGING_START): a device
    that can only log 64 KiB pages selects that and is right; one that selects 0x3000 (not a
    power of two) is wrong."""
    from vfio_user_mig.simulator.device import dirtylog

    monkeypatch.setattr(dirtylog, "select_page_size", lambda hint: selected)
    checker = Checker(SocketTarget(served))
    world = learn_world(checker)
    sub = run_ops(checker, world, [Op("map", 1, 1), Op("log_start"), Op("log_report", 1),
                                   Op("log_stop")], "hint")
    starts = [f for f in sub.report.findings if "DMA_LOGGING_START" in f.title]
    assert (starts == []) is clean, [f.title for f in sub.report.findings]
