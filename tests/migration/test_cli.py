"""The ``migrate`` and ``simulate`` commands."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vfio_user_mig.cli import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().out


SMALL = ("--device-mem", "64K", "--guest-mem", "256K", "--dirty-rate", "1M", "--bandwidth", "8M",
         "--chunk", "16K")


def test_migrate_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(capsys, "migrate", *SMALL, "--json")
    data = json.loads(out)
    assert code == 0 and data["verified"] is True
    for key in ("total_ms", "downtime_ms", "precopy_rounds", "bytes_transferred"):
        assert key in data
    assert data["source_path"] == ["RUNNING", "PRE_COPY", "STOP_COPY", "STOP"]


def test_migrate_human_output_and_trace(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    trace = tmp_path / "t.jsonl"
    code, out = run(capsys, "migrate", *SMALL, "--caps", "stop_copy", "--policy", "iterations",
                    "--iterations", "2", "--trace", str(trace))
    assert code == 0
    assert "verified: yes" in out and "downtime" in out
    assert "source:      RUNNING -> STOP -> STOP_COPY -> STOP" in out
    assert "destination: RUNNING -> STOP -> RESUMING -> STOP -> RUNNING" in out
    assert trace.read_text().count("\n") > 5


def test_migrate_not_converging_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(capsys, "migrate", "--device-mem", "64K", "--guest-mem", "256K",
                    "--dirty-rate", "64M", "--bandwidth", "4M", "--downtime-limit", "1",
                    "--max-rounds", "3", "--json")
    data = json.loads(out)
    assert code == 1 and data["outcome"] == "not_converged" and not data["verified"]
    assert data["source_path"][-1] == "RUNNING"


def test_simulate_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(capsys, "simulate", "--runs", "20", "--seed", "4", "--faults", "--json")
    data = json.loads(out)
    assert code == 0 and data["runs"] == 20 and data["passed"] == 20 and data["failed"] == 0
    assert data["failures"] == []


def test_simulate_human_and_replay(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(capsys, "simulate", "--runs", "10", "--seed", "2", "--faults")
    assert code == 0 and "10 runs" in out and "fault" in out
    code, out = run(capsys, "simulate", "--replay", "2000003", "--faults")
    assert code == 0 and "PASSED" in out and "seed 2000003" in out
