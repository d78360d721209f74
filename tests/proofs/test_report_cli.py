"""Rendering and the ``prove`` command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vfio_user_mig.cli import main
from vfio_user_mig.model import VFIO_USER_CAPS
from vfio_user_mig.proofs import run_all
from vfio_user_mig.proofs.fsm_theorems import fsm_theorems
from vfio_user_mig.proofs.mutants import KERNEL_UNFIXED
from vfio_user_mig.proofs.report import render_markdown, render_matrix, render_text
from vfio_user_mig.proofs.suite import default_suite, select


def test_text_and_markdown_show_counterexamples() -> None:
    suite = run_all(fsm_theorems(KERNEL_UNFIXED, [VFIO_USER_CAPS]), "kernel-unfixed")
    text = render_text(suite)
    assert "UNEXPECTED" in text and "STOP_COPY -> PRE_COPY" in text
    assert "theorems over enumerated domains:" in text and " cases checked" in text
    assert "[implementation: kernel-unfixed]" in text
    md = render_markdown(suite)
    assert md.startswith("# vfio-user-mig proofs") and "| ❌ |" in md
    assert "- counterexample: `STOP_COPY -> PRE_COPY`" in md


def test_select() -> None:
    theorems = default_suite(protocol=False)
    assert {t.name for t in select(theorems, ["kernel-agreement"])} == {
        t.name for t in theorems if "kernel-agreement" in t.name}
    assert len(select(theorems, ["fsm.*[STOP_COPY]"])) == 12


def test_prove_full_suite_json_and_markdown(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "proofs.md"
    assert main(["prove", "--json", "--markdown", str(out)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] and data["unexpected"] == [] and "total_cases" not in data
    # Each figure once: the session theorems' exploration is reported once, not summed.
    spaces = data["explorations"]
    assert len(spaces) == 2 and [len(e["theorems"]) for e in spaces] == [5, 1]
    assert spaces[0]["states"] > 10_000 and spaces[0]["transitions"] > spaces[0]["states"]
    enumerated = [r for r in data["results"] if r["explored"] is None]
    assert data["enumerated_cases"] == sum(r["cases"] for r in enumerated) > 1500
    assert data["enumerated_theorems"] == len(enumerated) == data["theorems"] - 6
    names = {r["name"]: r for r in data["results"]}
    assert names["session.no-deadlock[non-serving driver]"]["status"] == "fails"
    assert names["session.no-deadlock[non-serving driver]"]["as_expected"]
    assert names["protocol.legality-vs-server[STOP_COPY|PRE_COPY]"]["status"] in (
        "holds", "skipped")
    assert data["seconds"] < 30
    assert "session.no-deadlock[non-serving driver]" in out.read_text()


def test_prove_text_reports_time_and_cases(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["prove", "--fsm-only", "--caps", "stop_copy,pre_copy"]) == 0
    text = capsys.readouterr().out
    assert "0 unexpected outcomes in " in text and " s [implementation: model]" in text
    assert "theorems over enumerated domains:" in text and "exploration" not in text


def test_prove_fails_on_a_mutant(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["prove", "--fsm-only", "--mutant", "off-by-one-bound"]) == 1
    assert "must be refused with EINVAL, but returned 8" in capsys.readouterr().out
    assert main(["prove", "--fsm-only", "--mutant", "kernel-fixed"]) == 0
    capsys.readouterr()
    assert main(["prove", "--mutant", "nonsense"]) == 2


def test_prove_matrix(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["prove", "--matrix", "--json"]) == 0
    matrix = json.loads(capsys.readouterr().out)["matrix"]
    assert matrix["kernel-fixed"] == []
    assert "session.mig-data-gating[leaky-save-session]" in matrix["leaky-save-session"]
    assert "(none)" in render_matrix(matrix)
