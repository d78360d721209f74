"""The markdown report renders findings by kind with reproducer tables, and coverage."""

from __future__ import annotations

from vfio_user_mig.check.findings import Finding, Kind, Report
from vfio_user_mig.check.markdown import hex_cell, render
from vfio_user_mig.check.requests import raw_message
from vfio_user_mig.check.steps import Step, refused


def _report() -> Report:
    report = Report(server="spawn x", caps={"version": "0.2", "migration": ["STOP_COPY"]},
                    checks=3, passed=2)
    step = Step(raw_message(1, 2, bytes(200)), (), refused(22))
    report.findings.append(Finding(Kind.ERRNO, "DMA_MAP of size 0 refused", ["DMA_MAP"],
                                   "error EINVAL", "success", "PROTOCOL.md section 2",
                                   [step.to_json()], "dma"))
    report.coverage.cells[("RUNNING", "DMA_MAP")] += 2
    report.coverage.arcs[("RUNNING", "STOP")] += 1
    report.coverage.groups["dma"] += 1
    return report


def test_render_has_summary_findings_and_coverage() -> None:
    text = render(_report())
    assert "| checks | 3 |" in text
    assert "### errno (1)" in text
    assert "DMA_MAP of size 0 refused" in text and "PROTOCOL.md section 2" in text
    assert "| 1 | DMA_MAP |" in text and "error EINVAL" in text
    assert "| DMA_MAP | 2 |" in text and "| RUNNING->STOP | 1 |" in text
    assert render(_report().to_json()) == text


def test_long_messages_are_cut_in_the_middle() -> None:
    cell = hex_cell("ab" * 500)
    assert "…(" in cell and len(cell) < 200
    assert hex_cell("abcd") == "`abcd`"


def test_no_findings() -> None:
    report = Report(server="s", caps={})
    assert "No findings." in render(report)
