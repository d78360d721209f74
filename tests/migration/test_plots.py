"""The migration figures of :mod:`vfio_user_mig.simulator.migration.plots`: a title,
labelled axes with units, a legend, and artists drawn from the trace (bars per round and per
state walked, the downtime span)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pytest

from vfio_user_mig.cli import main
from vfio_user_mig.simulator.migration.driver_types import MigrationResult
from vfio_user_mig.simulator.migration.plots import (
    draw_rounds,
    draw_timeline,
    save_migration_figure,
    state_segments,
)
from vfio_user_mig.simulator.migration.session import MigrateOptions, migrate
from vfio_user_mig.simulator.migration.trace import Event, load, summarize

KiB, MiB = 1 << 10, 1 << 20


def small(**kw: Any) -> MigrateOptions:
    base: dict[str, Any] = dict(device_mem=128 * KiB, guest_mem=256 * KiB, dirty_rate=2 * MiB,
                                bandwidth=8 * MiB, chunk=16 * KiB, timeout=5.0, deadline=20.0)
    base.update(kw)
    return MigrateOptions(**base)


@pytest.fixture(scope="module")
def run3(tmp_path_factory: pytest.TempPathFactory) -> tuple[MigrationResult, list[Event]]:
    """Three pre-copy rounds, then switchover; the trace file and the in-memory events."""
    path = tmp_path_factory.mktemp("plots") / "t.jsonl"
    r = migrate(small(policy="iterations", iterations=3, trace=str(path)))
    assert r.ok
    return r, load(path)


@pytest.fixture
def new_ax() -> Iterator[Any]:
    fig, ax = plt.subplots()
    yield ax
    plt.close(fig)


def _legend_labels(ax: Any) -> list[str]:
    legend = ax.get_legend()
    assert legend is not None
    return [t.get_text() for t in legend.get_texts()]


def _x_extent(patch: Any) -> tuple[float, float]:
    xs = patch.get_patch_transform().transform(patch.get_path().vertices)[:, 0]
    return float(xs.min()), float(xs.max())


def _pixels_vary(fig: Any) -> bool:
    fig.canvas.draw()
    return bool(np.asarray(fig.canvas.buffer_rgba()).std() > 0)


@pytest.mark.parametrize("source", ["file", "memory"])
def test_timeline_is_drawn_from_the_trace(run3: tuple[MigrationResult, list[Event]],
                                          source: str) -> None:
    result, loaded = run3
    events = loaded if source == "file" else result.trace_events
    s = summarize(events)
    fig = draw_timeline(events)
    try:
        ax = fig.axes[0]
        assert ax.get_title().startswith("Migration timeline: verified")
        assert f"downtime {s['downtime_ms']:.1f} ms" in ax.get_title()
        assert ax.get_xlabel() == "time (ms)"
        assert ax.get_ylabel()
        assert [t.get_text() for t in ax.get_yticklabels()] == ["source", "destination"]
        labels = _legend_labels(ax)
        assert set(s["source_path"]) | set(s["destination_path"]) <= set(labels)
        assert "state SET (arcs walked)" in labels and "end of a pre-copy round" in labels
        # One bar per state walked, per lane, in order; lanes start at 0 and are contiguous.
        src_bars, dst_bars = ax.containers
        for bars, path, side in ((src_bars, s["source_path"], "src"),
                                 (dst_bars, s["destination_path"], "dst")):
            assert len(bars) == len(path)
            segments, lost = state_segments(events, side)
            assert lost is None and [seg.state for seg in segments] == path
            lefts = [b.get_x() for b in bars]
            rights = [b.get_x() + b.get_width() for b in bars]
            assert lefts[0] == 0.0 and lefts[1:] == pytest.approx(rights[:-1])
            assert rights[-1] > s["total_ms"]
        # The downtime span is the summary's downtime, from the source's STOP_COPY bar on.
        (span,) = [p for p in ax.patches if p.get_label().startswith("downtime")]
        lo, hi = _x_extent(span)
        assert hi - lo == pytest.approx(s["downtime_ms"], abs=1e-3)
        stop_copy = src_bars[s["source_path"].index("STOP_COPY")]
        assert stop_copy.get_x() == pytest.approx(lo, abs=1e-3)
        assert f"downtime {s['downtime_ms']:.1f} ms" in labels
        assert _pixels_vary(fig)
    finally:
        plt.close(fig)


def test_rounds_are_drawn_from_the_trace(run3: tuple[MigrationResult, list[Event]]) -> None:
    _, events = run3
    s = summarize(events)
    rounds = s["rounds"]
    assert len(rounds) == 3
    fig = draw_rounds(events)
    try:
        ax, twin = fig.axes
        assert "3 round(s)" in ax.get_title() and "switchover after round 3" in ax.get_title()
        assert ax.get_xlabel() == "pre-copy round"
        unit = ax.get_ylabel().removeprefix("bytes sent (").removesuffix(")")
        assert unit in ("B", "KiB", "MiB", "GiB")
        size = {"B": 1, "KiB": KiB, "MiB": MiB, "GiB": 1 << 30}[unit]
        assert twin.get_ylabel().startswith("dirty pages sent")
        labels = _legend_labels(ax)
        for want in ("device stream", "guest RAM", "stop-copy (downtime)",
                     "switchover after round 3", "dirty pages, vCPU log",
                     "dirty pages, device DMA log"):
            assert want in labels
        # Stacked bars: one per round (device, then RAM on top), then the stop-copy column.
        device, ram, stop_device, stop_ram = ax.containers
        assert len(device) == len(ram) == len(rounds)
        for d, g, r in zip(device, ram, rounds, strict=True):
            assert d.get_height() * size == pytest.approx(r["device_bytes"])
            assert g.get_height() * size == pytest.approx(r["ram_bytes"])
            assert g.get_y() == pytest.approx(d.get_height())
        stop = (stop_device[0].get_height() + stop_ram[0].get_height()) * size
        assert stop == pytest.approx(s["stopcopy_bytes"])
        assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2", "3", "stop-copy"]
        # The switchover mark sits after the last round; the dirty lines hold the trace's counts.
        (mark,) = [ln for ln in ax.lines if ln.get_label() == "switchover after round 3"]
        assert list(mark.get_xdata()) == [3.5, 3.5]
        dirty = [e for e in events if e["ev"] == "dirty"]
        vcpu, dma = twin.lines
        assert list(vcpu.get_ydata()) == [e["guest"] for e in dirty]
        assert list(dma.get_ydata()) == [e["dma"] for e in dirty]
        assert list(vcpu.get_xdata()) == [1, 2, 3, 4]
        assert _pixels_vary(fig)
    finally:
        plt.close(fig)


def test_drawing_on_given_axes(run3: tuple[MigrationResult, list[Event]], new_ax: Any) -> None:
    _, events = run3
    assert draw_timeline(events, new_ax) is new_ax.figure
    assert draw_rounds(events, new_ax.figure.add_subplot(2, 1, 2)) is new_ax.figure


def test_without_chunk_events_rounds_still_draw(
        run3: tuple[MigrationResult, list[Event]]) -> None:
    _, events = run3
    kept = [e for e in events if e["ev"] not in ("chunk", "ram")]  # keep_chunks=False
    fig = draw_rounds(kept)
    try:
        device, ram, *_ = fig.axes[0].containers
        assert len(device) == len(ram) == 3
    finally:
        plt.close(fig)


def test_not_converged_migration() -> None:
    r = migrate(small(dirty_rate=64 * MiB, bandwidth=4 * MiB, downtime_limit=0.001,
                      max_rounds=3))
    assert r.outcome == "not_converged"
    s = r.summary
    fig = draw_timeline(r.trace_events)
    try:
        ax = fig.axes[0]
        assert "not_converged" in ax.get_title() and "downtime -" in ax.get_title()
        labels = _legend_labels(ax)
        assert "error" in labels and not any(lb.startswith("downtime") for lb in labels)
        src_bars, _ = ax.containers
        assert len(src_bars) == len(s["source_path"])
    finally:
        plt.close(fig)
    fig = draw_rounds(r.trace_events)
    try:
        ax = fig.axes[0]
        assert "give_up after round 3" in ax.get_title()
        assert len(ax.containers) == 2  # no stop-copy column
    finally:
        plt.close(fig)


def test_lost_state_is_not_a_state() -> None:
    events: list[Event] = [
        {"t": 0.0, "ev": "start"},
        {"t": 0.0, "ev": "state", "side": "src", "from": "RUNNING", "to": "PRE_COPY",
         "arcs": ["RUNNING", "PRE_COPY"], "ok": True, "errno": None, "reached": "PRE_COPY"},
        {"t": 0.5, "ev": "state", "side": "src", "from": "PRE_COPY", "to": "STOP_COPY",
         "arcs": ["PRE_COPY", "STOP_COPY"], "ok": False, "errno": 104, "reached": None},
        {"t": 1.0, "ev": "end", "outcome": "failed", "ok": False},
    ]
    segments, lost = state_segments(events, "src")
    assert [seg.state for seg in segments] == summarize(events)["source_path"]
    assert lost == 500.0 and segments[-1].end == 500.0
    fig = draw_timeline(events)
    plt.close(fig)


@pytest.mark.parametrize("suffix", [".png", ".svg"])
def test_save_migration_figure(run3: tuple[MigrationResult, list[Event]], tmp_path: Path,
                               suffix: str) -> None:
    out = save_migration_figure(run3[1], tmp_path / f"m{suffix}")
    data = out.read_bytes()
    assert data.startswith(b"\x89PNG") if suffix == ".png" else b"<svg" in data[:2000]


def test_cli_migrate_plot(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    small_args = ("--device-mem", "64K", "--guest-mem", "256K", "--dirty-rate", "1M",
                  "--bandwidth", "8M", "--chunk", "16K")
    out = tmp_path / "out.png"
    code = main(["migrate", *small_args, "--plot", str(out), "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 0 and data["plot"] == str(out)
    assert out.stat().st_size > 0 and out.read_bytes().startswith(b"\x89PNG")
    svg = tmp_path / "out.svg"
    code = main(["migrate", *small_args, "--plot", str(svg)])
    assert code == 0 and f"plot: {svg}" in capsys.readouterr().out
    assert svg.stat().st_size > 0
    code = main(["migrate", *small_args, "--json"])
    assert code == 0 and "plot" not in json.loads(capsys.readouterr().out)
