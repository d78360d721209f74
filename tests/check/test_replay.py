"""check --replay: reproducers (explore files, finding lists, whole reports) run again; a
planted defect replays as a finding, the fixed server replays clean."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.check.test_explore import LONG, plant_stop_defect
from vfio_user_mig.check.explore import learn_world, run_ops, write_reproducer
from vfio_user_mig.check.replay import ReplayError, load_reproducers, replay
from vfio_user_mig.check.session import Checker
from vfio_user_mig.check.target import SocketTarget


def test_load_forms() -> None:
    step = {"command": "VERSION", "bytes": "01000100100000000000000000000000",
            "expect": {"reply": "any"}}
    assert len(load_reproducers([step])) == 1
    assert load_reproducers({"steps": [step], "finding": {"title": "t"}})[0][0] == "t"
    report = {"findings": [{"title": "a", "reproducer": [step]},
                           {"title": "b", "reproducer": [step, step]}]}
    assert [(t, len(s)) for t, s in load_reproducers(report)] == [("a", 1), ("b", 2)]
    with pytest.raises(ReplayError):
        load_reproducers({"nothing": 1})


def test_defect_replays_and_fixed_server_replays_clean(
        served: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    plant_stop_defect(monkeypatch)
    checker = Checker(SocketTarget(served))
    sub = run_ops(checker, learn_world(checker), LONG, "long")
    finding = next(f for f in sub.report.findings if f.title == "DMA_LOGGING_STOP in RUNNING")
    path = write_reproducer(tmp_path, 0, 0, LONG, finding)

    again = Checker(SocketTarget(served))
    replay(again, path)
    assert again.report.findings
    assert again.report.findings[0].observed.startswith("error EIO")
    assert again.report.extra["replay"]["still_failing"] == 1

    monkeypatch.undo()  # the fix
    fixed = Checker(SocketTarget(served))
    whole = tmp_path / "report.json"
    whole.write_text(json.dumps({"findings": [finding.to_json()]}))
    replay(fixed, whole)
    assert fixed.report.findings == []
    assert fixed.report.checks == len(finding.reproducer) == fixed.report.passed
