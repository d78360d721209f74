"""The pre-copy convergence study: the quick grid runs through the real simulator,
every cell is reported (non-convergence explicitly), the figures are drawn from the data with
titles, labelled axes and colour bars, and the CLI writes the files it reports."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from vfio_user_mig.cli import main
from vfio_user_mig.studies.convergence import (
    COLUMNS,
    MIB,
    QUICK_GRID,
    Cell,
    CellSpec,
    run_cell,
    run_grid,
    summary_markdown,
)
from vfio_user_mig.studies.figures import draw_heatmaps, draw_policy_comparison
from vfio_user_mig.studies.output import write_convergence_study


@pytest.fixture(scope="module")
def cells() -> list[Cell]:
    return run_grid(QUICK_GRID, workers=2)


def _cell(cells: list[Cell], **match: Any) -> Cell:
    found = [c for c in cells if all(getattr(c, k) == v for k, v in match.items())]
    assert len(found) == 1, match
    return found[0]


def test_quick_grid_covers_every_cell(cells: list[Cell]) -> None:
    assert len(cells) == QUICK_GRID.size == len(QUICK_GRID.specs())
    keys = {(c.policy, c.device_mem, c.downtime_limit_ms, c.bandwidth, c.dirty_rate)
            for c in cells}
    assert len(keys) == QUICK_GRID.size
    assert all(c.outcome in ("verified", "not_converged") for c in cells)
    for c in cells:
        if c.converged:
            assert c.downtime_ms is not None and c.downtime_ms > 0
            assert c.total_ms > c.downtime_ms and c.bytes > 0 and c.rounds >= 1
            assert c.over_limit == (c.downtime_ms > c.downtime_limit_ms)
        else:
            assert c.downtime_ms is None and c.over_limit is None


def test_dirty_rate_above_bandwidth_does_not_converge(cells: list[Cell]) -> None:
    # 32 MiB/s dirtied over a 16 MiB/s link: every round leaves as much pending as it sent.
    for policy in QUICK_GRID.policies:
        hot = _cell(cells, policy=policy, bandwidth=16 * MIB, dirty_rate=32 * MIB)
        assert hot.outcome == "not_converged" and not hot.converged
        assert "not converge" in hot.reason or "cannot converge" in hot.reason
        cool = _cell(cells, policy=policy, bandwidth=64 * MIB, dirty_rate=4 * MIB)
        assert cool.outcome == "verified" and cool.over_limit is False
    assert _cell(cells, policy="qemu", bandwidth=16 * MIB,
                 dirty_rate=32 * MIB).rounds == QUICK_GRID.max_rounds


def test_faster_link_is_faster() -> None:
    base = CellSpec("qemu", 1 * MIB, 0.05, 16 * MIB, 4 * MIB, max_rounds=5)
    slow = run_cell(base)
    from dataclasses import replace

    fast = run_cell(replace(base, bandwidth=64 * MIB))
    assert slow.converged and fast.converged
    assert fast.total_ms < slow.total_ms


def test_csv_and_summary(cells: list[Cell], tmp_path: Path) -> None:
    paths = write_convergence_study(cells, tmp_path, figures=False)
    with open(paths["csv"]) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == QUICK_GRID.size
    assert tuple(rows[0]) == COLUMNS
    assert sum(r["outcome"] == "not_converged" for r in rows) == sum(
        not c.converged for c in cells)
    for r in rows:
        if r["outcome"] == "not_converged":
            assert r["downtime_ms"] == "" and r["converged"] == "False"
    md = Path(paths["summary"]).read_text()
    assert md == summary_markdown(cells)
    assert md.count("did not converge (") == sum(not c.converged for c in cells)
    assert "| 16 MiB/s | 32 MiB/s | did not converge (5 rounds) |" in md
    assert "## Switchover policies" in md


def test_heatmaps_from_data(cells: list[Cell], closing: list[Any]) -> None:
    for metric, word in (("total_ms", "total time"), ("downtime_ms", "downtime")):
        fig = draw_heatmaps(cells, metric, policy="qemu", device_mem=MIB)
        closing.append(fig)
        assert word in fig.get_suptitle() and "qemu" in fig.get_suptitle()
        panels = [ax for ax in fig.axes if ax.get_images()]
        assert len(panels) == len(QUICK_GRID.downtime_limits)
        colorbars = [ax for ax in fig.axes if not ax.get_images()]
        assert len(colorbars) == 1 and "ms" in colorbars[0].get_ylabel()
        assert word in colorbars[0].get_ylabel()
        assert fig.legends and "did not converge" in [
            t.get_text() for t in fig.legends[0].get_texts()]
        ax = panels[0]
        assert ax.get_title() == "downtime limit 50 ms"
        assert ax.get_xlabel() == "bandwidth (MiB/s)"
        assert ax.get_ylabel() == "guest dirty rate (MiB/s)"
        texts = [t.get_text() for t in ax.texts]
        mine = [c for c in cells if c.policy == "qemu"]
        assert texts.count("did not\nconverge") == sum(not c.converged for c in mine)
        expected = sorted(f"{getattr(c, metric):.0f}" for c in mine if c.converged)
        assert sorted(t for t in texts if "\n" not in t) == expected
    with pytest.raises(ValueError):
        draw_heatmaps(cells, "rounds")


def test_policy_comparison_from_data(cells: list[Cell], closing: list[Any]) -> None:
    fig = draw_policy_comparison(cells)
    closing.append(fig)
    ax = fig.axes[0]
    assert "Switchover policies" in ax.get_title()
    assert ax.get_xlabel() == "switchover policy" and "cells" in ax.get_ylabel()
    legend = ax.get_legend()
    assert legend is not None and "did not converge" in [t.get_text() for t in legend.get_texts()]
    heights = [p.get_height() for p in ax.patches]
    assert sum(heights) == len(cells)


def test_cli_json(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = tmp_path / "study"
    code = main(["study", "convergence", "-o", str(out), "--quick", "--json"])
    payload = json.loads(capsys.readouterr().out)
    assert code == 0
    assert payload["cells"] == QUICK_GRID.size
    assert 0 < payload["converged"] < payload["cells"]
    assert payload["converged"] + payload["not_converged"] + payload["failed"] == payload["cells"]
    assert Path(payload["csv"]).is_file() and Path(payload["summary"]).is_file()
    assert len(payload["figures"]) == 2 * len(QUICK_GRID.policies) + 1
    assert all(Path(p).is_file() and Path(p).stat().st_size > 0 for p in payload["figures"])


# ----- the experimental size query (MIG_DATA_SIZE) ------------------------------------------
#: A device state (16 MiB) four times what one pre-copy round reads (max(guest RAM 4 MiB,
#: 64 chunks of 64 KiB) = 4 MiB): after round 1 the driver's estimate of the pending device
#: bytes is what the round read (4 MiB), while 12 MiB are still unsent.
BIG_STATE = CellSpec("qemu", 16 * MIB, 0.2, 32 * MIB, 4 * MIB, max_rounds=8, chunk=64 << 10)


def test_size_query_fixes_a_wrong_estimate() -> None:
    from dataclasses import replace

    estimated = run_cell(BIG_STATE)
    queried = run_cell(replace(BIG_STATE, size_query=True))
    assert (estimated.policy, estimated.size_query) == ("qemu", False)
    assert (queried.policy, queried.size_query) == ("qemu+size-query", True)
    assert estimated.converged and queried.converged
    # Without the query: switchover after round 1 with ~12 MiB left: ~400 ms > 200 ms.
    assert estimated.rounds == 1 and estimated.over_limit is True
    assert estimated.stopcopy_bytes > 12 * MIB
    # With it: more rounds until what is left fits, downtime within the limit.
    assert queried.rounds > 1 and queried.over_limit is False
    assert queried.downtime_ms is not None and queried.downtime_ms < 200
    assert "device-reported" in queried.reason


def test_size_query_dimension_and_summary() -> None:
    from dataclasses import replace

    grid = replace(QUICK_GRID, bandwidths=(64 * MIB,), dirty_rates=(4 * MIB,),
                   policies=("qemu", "dirty-rate"), size_query_policies=("qemu",))
    specs = grid.specs()
    assert grid.size == len(specs) == 3
    assert [(s.policy, s.size_query) for s in specs] == [
        ("qemu", False), ("qemu", True), ("dirty-rate", False)]
    cells = run_grid(grid)
    assert [c.policy for c in cells] == ["qemu", "qemu+size-query", "dirty-rate"]
    assert "size_query" in COLUMNS
    md = summary_markdown(cells)
    assert "## Size query (experimental MIG_DATA_SIZE)" in md
    assert "| qemu | no | 1 | 0 | 0.0% |" in md and "| qemu | yes | 1 | 0 | 0.0% |" in md
    assert "Size query" not in summary_markdown(cells[:1] + cells[2:])
