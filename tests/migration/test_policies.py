"""Sans-IO parts: switchover policies, clocks, the trace summary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vfio_user_mig.simulator.migration.clock import RealClock, SimClock
from vfio_user_mig.simulator.migration.policies import (
    DirtyRatePolicy,
    IterationCapPolicy,
    QemuPolicy,
    RoundStats,
    make_policy,
)
from vfio_user_mig.simulator.migration.trace import Trace, load, summarize

MiB = 1 << 20


def stats(
    round_: int, pending: int, bandwidth: float = 100 * MiB, dirty: float = 0.0
) -> RoundStats:
    return RoundStats(round_, 10 * MiB, 0.1, pending, bandwidth, dirty, round_ * 0.1)


def test_qemu_rule_switches_when_pending_fits_in_downtime() -> None:
    p = QemuPolicy(downtime_limit=0.3, max_rounds=5)
    assert p.decide(stats(1, 31 * MiB)).action == "continue"  # 100 MiB/s x 0.3 s = 30 MiB
    assert p.decide(stats(2, 30 * MiB)).switch
    assert p.decide(stats(5, 31 * MiB)).action == "give_up"


def test_iteration_cap_never_gives_up() -> None:
    p = IterationCapPolicy(3)
    assert [p.decide(stats(r, 10**12)).action for r in (1, 2, 3)] == [
        "continue", "continue", "switchover"]
    with pytest.raises(ValueError):
        IterationCapPolicy(0)


def test_dirty_rate_policy_gives_up_when_the_guest_outruns_the_link() -> None:
    p = DirtyRatePolicy(downtime_limit=0.3, patience=2)
    hot = [p.decide(stats(r, 80 * MiB, dirty=120 * MiB)).action for r in (1, 2)]
    assert hot == ["continue", "give_up"]
    cool = DirtyRatePolicy(downtime_limit=0.3)
    assert cool.decide(stats(1, 20 * MiB, dirty=5 * MiB)).switch


def test_dirty_rate_policy_gives_up_when_pending_stalls() -> None:
    p = DirtyRatePolicy(downtime_limit=0.01, patience=1, give_up_ratio=10.0)
    actions = [p.decide(stats(r, 50 * MiB, dirty=1 * MiB)).action for r in range(1, 5)]
    assert actions[-1] == "give_up" and "continue" in actions


def test_make_policy() -> None:
    assert make_policy("qemu").name == "qemu"
    assert make_policy("iterations", iterations=2).name == "iterations"
    assert make_policy("dirty-rate").name == "dirty-rate"
    with pytest.raises(ValueError):
        make_policy("nope")


def test_sim_clock_advances_by_bytes_over_bandwidth() -> None:
    c = SimClock(bandwidth=1000.0, latency=0.5)
    c.transfer(2000)
    assert c.now() == pytest.approx(2.5)
    c.advance(1.0)
    assert c.now() == pytest.approx(3.5) and c.simulated
    with pytest.raises(ValueError):
        SimClock(0)


def test_real_clock_paces_transfers() -> None:
    c = RealClock(bandwidth=1 << 20)
    t0 = c.now()
    c.transfer(50 << 10)  # ~49 ms at 1 MiB/s
    assert c.now() - t0 >= 0.04 and not c.simulated


def test_summary_is_computed_from_the_trace_file(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    t = Trace(path)
    t.emit(0.0, "start", caps="X", policy="qemu")
    t.emit(0.0, "state", side="src", **{"from": "RUNNING"}, to="PRE_COPY",
           arcs=["RUNNING", "PRE_COPY"], ok=True, errno=None, reached="PRE_COPY")
    t.emit(0.1, "chunk", phase="precopy", round=1, bytes=100)
    t.emit(0.2, "ram", phase="precopy", round=1, pages=1, bytes=4096)
    t.emit(0.2, "round", round=1, bytes=4196, device_bytes=100, ram_bytes=4096, seconds=0.2,
           pending=0, decision="switchover")
    t.emit(0.2, "state", side="src", **{"from": "PRE_COPY"}, to="STOP",
           arcs=["PRE_COPY", "STOP_COPY", "STOP"], ok=False, errno=5, reached="STOP_COPY")
    t.emit(0.3, "downtime", start=0.2, end=0.3, ms=100.0)
    t.emit(0.3, "verify", src_digest="a", dst_digest="a", device_ok=True, ram_ok=True)
    t.emit(0.4, "end", outcome="verified", ok=True)
    t.close()
    lines = path.read_text().splitlines()
    assert all(json.loads(line)["ev"] for line in lines) and len(lines) == 9
    s = summarize(load(path))
    assert s["verified"] and s["total_ms"] == pytest.approx(400.0)
    assert s["downtime_ms"] == 100.0 and s["precopy_rounds"] == 1
    assert s["bytes_transferred"] == 4196
    assert s["source_path"] == ["RUNNING", "PRE_COPY", "STOP_COPY"]
    assert s == t.summary()


def test_trace_without_chunk_events_keeps_totals() -> None:
    t = Trace(keep_chunks=False)
    for _ in range(1000):
        t.emit(0.0, "chunk", phase="stopcopy", round=0, bytes=10)
    assert t.events == [] and t.summary()["stream_bytes"] == 10_000
