"""The transport study: real migrations with a vCPU probe, main socket vs the
experimental migration-data socket; every run verifies, probes are classified by the source's
phase, the tables and the conclusion come from the numbers, the figures from the data (title,
labelled axes with units, legend), and the CLI writes what it reports."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from vfio_user_mig.cli import main
from vfio_user_mig.studies.output import write_transport_study
from vfio_user_mig.studies.transport import KIB, MIB, Grid, Run, run_grid
from vfio_user_mig.studies.transport_figures import (
    draw_latency,
    draw_latency_cdf,
    draw_throughput_downtime,
)
from vfio_user_mig.studies.transport_results import (
    Cell,
    aggregate,
    chunk_label,
    conclusion,
    percentile,
    summary_markdown,
)

GRID = Grid(chunks=(16 * KIB, MIB), device_mem=4 * MIB, repeats=1, idle_probes=20,
            probe_interval=0.0002)


@pytest.fixture(scope="module")
def runs() -> list[Run]:
    return run_grid(GRID)


@pytest.fixture(scope="module")
def cells(runs: list[Run]) -> list[Cell]:
    return aggregate(runs)


def test_every_run_migrates_and_verifies(runs: list[Run]) -> None:
    assert len(runs) == len(GRID.specs()) == 2 * 2 * 2
    for run in runs:
        assert run.verified and run.outcome == "verified", run.spec
        assert run.stream_bytes > GRID.device_mem  # the whole device memory moved
        assert run.stream_s is not None and run.stream_s > 0
        assert run.throughput_mbs is not None and run.throughput_mbs > 0
        assert run.downtime_ms is not None and run.total_ms is not None
        assert run.total_ms >= run.downtime_ms > 0


def test_probes_are_classified_by_phase(runs: list[Run]) -> None:
    for run in runs:
        phases = [p for p, _lat, _e in run.samples]
        assert phases.count("idle") == GRID.idle_probes
        transfer = run.spec.profile  # pre_copy: PRE_COPY window; stop_copy: STOP_COPY
        if run.spec.chunk == 16 * KIB:  # 256 chunks: long enough for probes in any load
            assert transfer in phases, run.spec
        for phase, latency, errno in run.samples:
            assert latency > 0
            # Region access is refused in STOP_COPY (EINVAL) and served otherwise (a probe
            # sent while the SET to STOP is in flight may already be served).
            assert errno is None or (errno == 22 and phase == "stop_copy"), (phase, errno)
        if run.spec.profile == "stop_copy":
            assert any(e == 22 for p, _l, e in run.samples if p == "stop_copy")


def test_cells_aggregate_the_runs(runs: list[Run], cells: list[Cell]) -> None:
    for c in cells:
        lat = [lat for r in runs if (r.spec.transport, r.spec.profile, r.spec.chunk)
               == (c.transport, c.profile, c.chunk) for p, lat, _e in r.samples if p == c.phase]
        assert c.probes == len(lat) > 0
        assert c.p50_us == percentile(lat, 50) and c.max_us == max(lat)
        assert c.p50_us <= c.p90_us <= c.p99_us <= c.max_us  # type: ignore[operator]
        assert c.runs == 1 and c.verified == 1
    keys = {(c.transport, c.profile, c.chunk) for c in cells}
    assert len(keys) == 8


def test_percentile_is_nearest_rank() -> None:
    assert percentile([], 50) is None
    assert percentile([5.0], 99) == 5.0
    values = [float(i) for i in range(1, 101)]
    assert percentile(values, 50) == 50.0 and percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0


def test_summary_and_conclusion_quote_the_numbers(cells: list[Cell]) -> None:
    text = summary_markdown(cells)
    assert "| pre_copy | 16 KiB | main | pre_copy |" in text
    assert "| stop_copy | 16 KiB | separate | stop_copy |" in text
    paragraphs = conclusion(cells)
    assert len(paragraphs) == 4
    for paragraph, profile in zip(paragraphs, ("pre_copy", "stop_copy"), strict=False):
        # The largest chunk size with transfer probes on both transports is compared.
        size = max(c.chunk for c in cells if c.profile == profile and c.phase == profile
                   and c.transport == "main"
                   and any(o.transport == "separate" and o.chunk == c.chunk
                           and o.profile == profile and o.phase == profile for o in cells))
        main = next(c for c in cells if (c.transport, c.profile, c.chunk, c.phase)
                    == ("main", profile, size, profile))
        assert f"with {chunk_label(size)} chunks" in paragraph
        assert f"p99 {main.p99_us:,.0f} µs on the main socket" in paragraph
        assert paragraph[0].isupper() and ("PRE_COPY" in paragraph or "STOP_COPY" in paragraph)
    assert "Conclusion" in text and paragraphs[0] in text
    assert "nothing to compare" in conclusion([c for c in cells if c.phase == "idle"])[0]


def _check_axes(ax: Any, ylabel_unit: str) -> None:
    assert ax.get_title()
    assert "chunk size" in ax.get_xlabel() or "µs" in ax.get_xlabel()
    assert ylabel_unit in ax.get_ylabel() or "fraction" in ax.get_ylabel()
    legend = ax.get_legend()
    assert legend is not None and all(t.get_text() for t in legend.get_texts())
    assert any(len(line.get_xdata()) > 0 for line in ax.get_lines())


def test_latency_figure_is_drawn_from_the_cells(cells: list[Cell], closing: list[Any]) -> None:
    fig = draw_latency(cells)
    closing.append(fig)
    assert len(fig.axes) == 2
    for ax, phase in zip(fig.axes, ("pre_copy", "stop_copy"), strict=True):
        _check_axes(ax, "(µs)")
        expected = sorted(c.p50_us for c in cells  # type: ignore[type-var]
                          if c.phase == phase and c.profile == phase and c.transport == "main")
        lines = {line.get_label(): line for line in ax.get_lines()}
        assert sorted(lines["main socket: p50"].get_ydata()) == expected
    with pytest.raises(ValueError):
        draw_latency([c for c in cells if c.phase == "idle"])


def test_cdf_and_throughput_figures(runs: list[Run], cells: list[Cell],
                                    closing: list[Any]) -> None:
    fig = draw_latency_cdf(runs, chunk=16 * KIB)
    closing.append(fig)
    ax = fig.axes[0]
    _check_axes(ax, "fraction")
    assert "16 KiB" in ax.get_title()
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    for transport, label in (("main", "main socket"), ("separate", "separate migration-data "
                                                                    "socket")):
        n = sum(1 for r in runs if r.spec.transport == transport and r.spec.chunk == 16 * KIB
                and r.spec.profile == "pre_copy" for p, _l, _e in r.samples if p == "pre_copy")
        assert f"{label} (n={n})" in labels
    fig = draw_throughput_downtime(cells)
    closing.append(fig)
    left, right = fig.axes
    _check_axes(left, "MiB/s")
    _check_axes(right, "(ms)")
    assert len(left.get_lines()) == 4  # transports x profiles


def test_write_study_and_cli(runs: list[Run], tmp_path: Path, capsys: Any) -> None:
    paths = write_transport_study(runs, tmp_path / "out")
    with open(paths["csv"]) as f:
        rows = list(csv.DictReader(f))
    assert rows and {"transport", "chunk", "phase", "p99_us", "throughput_mbs"} <= set(rows[0])
    with open(paths["samples"]) as f:
        assert sum(1 for _ in f) - 1 == sum(len(r.samples) for r in runs)
    assert len(paths["figures"]) == 3 and all(Path(p).stat().st_size > 0
                                              for p in paths["figures"])
    out = tmp_path / "cli"
    import vfio_user_mig.studies.transport as transport

    saved = transport.QUICK_GRID
    transport.QUICK_GRID = replace(GRID, chunks=(MIB,), profiles=("pre_copy",))
    try:
        rc = main(["study", "transport", "--quick", "-o", str(out), "--json", "--no-figures"])
    finally:
        transport.QUICK_GRID = saved
    payload = json.loads(capsys.readouterr().out)
    assert rc == 0 and payload["runs"] == 2 and payload["verified"] == 2
    assert Path(payload["csv"]).exists() and Path(payload["summary"]).exists()
    assert payload["figures"] == [] and payload["conclusion"]
