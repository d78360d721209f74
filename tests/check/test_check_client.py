"""``vfio-user-mig check-client`` end to end: real processes, real UNIX sockets, our referee.

A small client with planted defects (``planted_client.py``) is refereed: each defect must be
reported under its rule, and the same client without a defect must not be. Our own migration
driver gets no finding in any scenario. ``--replay`` plays a recorded session again; the judge
is also fed a recorded session with one message changed (sans-IO, no sockets). libvfio-user's
``samples/client`` is refereed when a build of it is found (``LIBVFIO_USER_BUILD``, default
``/work/lvu-src/build``), else those tests are skipped.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from vfio_user_mig import wire
from vfio_user_mig.check.client.judge import judge_session
from vfio_user_mig.check.client.scenarios import verdict
from vfio_user_mig.model import State
from vfio_user_mig.simulator.referee.record import ConnLog, Event, Session

PLANTED = Path(__file__).with_name("planted_client.py")
LVU_CLIENT = Path(os.environ.get("LIBVFIO_USER_BUILD", "/work/lvu-src/build")) / "samples" / \
    "client"
DRIVER = ("vfio-user-mig migrate --src-socket {socket} --dst-socket {dst_socket} "
          "--device-mem 1M --guest-mem 4M --chunk 64K")


def check_client(*args: str) -> tuple[int, dict[str, Any]]:
    proc = subprocess.run([sys.executable, "-m", "vfio_user_mig.cli", "check-client", *args,
                           "--json"], capture_output=True, text=True, timeout=300)
    assert proc.returncode in (0, 1), proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def planted(defect: str | None, *scenarios: str, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    run = f"{sys.executable} {PLANTED} {'--defect ' + defect if defect else ''} " \
          "{socket} {dst_socket}"
    options = [a for s in scenarios for a in ("--scenario", s)]
    return check_client("--run", run, "--timeout", "20", *options, *extra)[1]


def groups(report: dict[str, Any]) -> set[tuple[str, str]]:
    """(scenario, rule) of every finding."""
    return {(f["title"].split("]")[0].lstrip("["), f["group"]) for f in report["findings"]}


#: defect -> (scenario that shows it, rule it breaks)
DEFECTS = {
    "past-end": ("clean", "past-end"),
    "leave-early": ("clean", "drain"),
    "ignore-report": ("no-converge", "resend"),
    "skip-last-chunk": ("clean", "whole-stream"),
    "no-log-stop": ("clean", "log-stop"),
}


def test_the_planted_client_without_defect_breaks_none_of_those_rules() -> None:
    report = planted(None, "clean", "no-converge")
    assert not groups(report) & set(DEFECTS.values())
    assert [s["outcome"] for s in report["scenarios"]] == ["completed", "completed"]


def test_a_failed_run_shows_what_the_client_printed_last() -> None:
    report = planted(None, "arc-fails")
    [run] = report["scenarios"]
    assert run["outcome"] == "error"
    assert "planted client:" in run["output_tail"]
    clean = planted(None, "clean")["scenarios"][0]
    assert clean["outcome"] == "completed" and "output_tail" not in clean


@pytest.mark.parametrize("defect", sorted(DEFECTS))
def test_each_planted_client_defect_is_reported_under_its_rule(defect: str) -> None:
    scenario, rule = DEFECTS[defect]
    report = planted(defect, scenario)
    assert (scenario, rule) in groups(report)
    finding = next(f for f in report["findings"] if f["group"] == rule)
    assert "PROTOCOL.md section" in finding["spec"]
    assert finding["reproducer"], "a finding carries the recorded messages"


def test_our_driver_gets_no_finding_in_any_scenario() -> None:
    code, report = check_client("--run", DRIVER)
    assert code == 0, report["findings"]
    assert report["findings"] == []
    outcomes = {s["scenario"]: s["outcome"] for s in report["scenarios"]}
    assert outcomes == {"clean": "completed", "arc-fails": "error", "resume-refused": "error",
                        "no-converge": "completed", "short-reads": "completed",
                        "dma-stop-copy": "completed", "disconnect": "error"}
    dma = next(s for s in report["scenarios"] if s["scenario"] == "dma-stop-copy")
    assert dma["source_states"] == ["PRE_COPY", "STOP_COPY", "STOP"]


def test_replay_plays_a_recorded_session_again(tmp_path: Path) -> None:
    first = planted("past-end", "clean", extra=("--out-dir", str(tmp_path)))
    path = first["scenarios"][0]["session"]
    assert Path(path).exists()
    code, again = check_client("--replay", path, "--timeout", "20")
    assert code == 1
    assert again["replay"]["identical"], again["replay"]
    assert ("clean", "past-end") in groups(again)


def test_the_judge_reads_a_recorded_session_without_sockets(tmp_path: Path) -> None:
    planted(None, "clean", extra=("--out-dir", str(tmp_path)))
    session = Session.load(tmp_path / "clean-seed0.json")
    assert judge_session(session)[0] == []
    src = next(c for c in session.conns if c.role == "src")
    # the same session with one more read after the device reached STOP
    late = wire.encode(wire.MigDataRead(size=4096, msg_id=0x7777))
    src.events.insert(len(src.events) - 1, Event("c2s", late))
    findings = judge_session(session)[0]
    assert [f.group for f in findings] == ["read-state"]
    assert "STOP" in findings[0].title


@pytest.fixture(scope="module")
def clean_session(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A recorded clean session of the planted client without defect."""
    out = tmp_path_factory.mktemp("clean")
    planted(None, "clean", extra=("--out-dir", str(out)))
    return out / "clean-seed0.json"


def _set_state(state: State, msg_id: int) -> bytes:
    return wire.encode(wire.DeviceFeature.set_request(
        wire.FeatureIndex.MIG_DEVICE_STATE, wire.MigDeviceState(state, 0), msg_id=msg_id))


def _after_state(conn: ConnLog, state: str) -> int:
    """The index just after the note saying the device entered ``state``."""
    return next(i for i, e in enumerate(conn.events) if e.note.get("state") == state) + 1


def _report(iova: int, length: int, page: int, argsz: int) -> bytes:
    data = wire.DmaLoggingReport(iova, length, page)
    return wire.encode(wire.DeviceFeature(wire.FeatureIndex.DMA_LOGGING_REPORT,
                                          wire.FeatureOp.GET, data, argsz, msg_id=0x7778))


def _blocked_arc(conn: ConnLog) -> None:
    conn.events.insert(_after_state(conn, "STOP_COPY"), Event("c2s", _set_state(
        State.PRE_COPY, 0x7777)))


def _too_many_fds(conn: ConnLog) -> None:
    conn.events[0].fds = 99


def _id_reused(conn: ConnLog) -> None:
    first = next(i for i, e in enumerate(conn.events) if e.direction == "c2s")
    conn.events.insert(first + 1, Event("c2s", conn.events[first].data))


def _read_too_big(conn: ConnLog) -> None:
    conn.events.insert(_after_state(conn, "PRE_COPY"), Event("c2s", wire.encode(
        wire.MigDataRead(size=4 << 20, msg_id=0x7777))))


def _bitmap_too_small(conn: ConnLog) -> None:
    conn.events.insert(_after_state(conn, "PRE_COPY"), Event("c2s", _report(
        0, 64 * 4096, 4096, 8 + 24)))


@pytest.mark.parametrize(("change", "rule"), [
    (_blocked_arc, "arc"), (_too_many_fds, "fds"), (_id_reused, "msg-id"),
    (_read_too_big, "xfer-size"), (_bitmap_too_small, "bitmap")])
def test_the_judge_applies_each_message_rule(clean_session: Path, change: Any,
                                             rule: str) -> None:
    session = Session.load(clean_session)
    change(next(c for c in session.conns if c.role == "src"))
    assert rule in {f.group for f in judge_session(session)[0]}


def test_a_client_started_by_hand_is_refereed(tmp_path: Path) -> None:
    src, dst = tmp_path / "src.sock", tmp_path / "dst.sock"
    referee = subprocess.Popen(
        [sys.executable, "-m", "vfio_user_mig.cli", "check-client", "--socket", str(src),
         "--dst-socket", str(dst), "--scenario", "clean", "--timeout", "30", "--json"],
        stdout=subprocess.PIPE, text=True)
    try:
        for _ in range(1200):  # both sockets listening: wait for them, at most a minute
            if src.exists() and dst.exists():
                break
            assert referee.poll() is None
            time.sleep(0.05)
        client = subprocess.run([sys.executable, str(PLANTED), "--defect", "past-end", str(src),
                                 str(dst)], timeout=60)
        assert client.returncode == 0
        out, _ = referee.communicate(timeout=60)
    finally:
        referee.kill()
    report = json.loads(out)
    assert report["scenarios"][0]["outcome"] == "disconnected"
    assert ("clean", "past-end") in groups(report)


def test_a_client_that_never_ends_is_a_hang_not_a_hung_checker() -> None:
    code, report = check_client("--run", "sleep 600", "--timeout", "2", "--scenario", "clean")
    assert code == 1
    assert report["scenarios"][0]["outcome"] == "hung"
    assert [f["group"] for f in report["findings"]] == ["no-hang"]


def _session(scenario: str, outcome: str) -> Session:
    return Session(scenario, 0, "migdev", outcome=outcome, meta={"exit": None})


@pytest.mark.parametrize(("scenario", "outcome", "rule"), [
    ("clean", "hung", "no-hang"), ("disconnect", "crashed", "no-crash"),
    ("short-reads", "error", "migrates"), ("arc-fails", "completed", "reports-failure"),
    ("resume-refused", "error", None), ("no-converge", "error", None),
    ("no-converge", "completed", None), ("clean", "completed", None),
    ("clean", "disconnected", None)])
def test_the_verdict_on_what_the_client_did(scenario: str, outcome: str,
                                            rule: str | None) -> None:
    found = verdict(_session(scenario, outcome), [])
    assert [f.group for f in found] == ([rule] if rule else [])


def test_unknown_arguments_are_refused_with_exit_2() -> None:
    proc = subprocess.run([sys.executable, "-m", "vfio_user_mig.cli", "check-client"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "--run" in proc.stderr


@pytest.mark.skipif(not LVU_CLIENT.exists(), reason="libvfio-user samples/client not built")
def test_libvfio_user_samples_client_is_refereed() -> None:
    # samples/client schedules an interrupt 10 s ahead on the source and expects the migrated
    # destination to raise it only after the client reconfigured IRQs there ("hopefully 10
    # seconds should be enough", client.c): on a loaded machine its own deadline can pass, so
    # a clean run gets three tries; a referee that breaks the clean run fails all three.
    for _attempt in range(3):
        code, report = check_client("--samples-client", str(LVU_CLIENT), "--device",
                                    "lvu-sample", "--device-mem", "16M", "--scenario", "clean",
                                    "--scenario", "short-reads")
        clean = next(s for s in report["scenarios"] if s["scenario"] == "clean")
        if clean["outcome"] == "completed":
            break
    assert clean["outcome"] == "completed", clean
    assert clean["destination_states"] == ["RESUMING", "STOP", "RUNNING"]
    # it reads exactly 8 + requested bytes: unpadded replies (PROTOCOL.md section 4) break it
    assert ("short-reads", "migrates") in groups(report)
    assert code == 1


def test_junit_of_a_client_with_a_defect_validates_and_fails(tmp_path: Path) -> None:
    """``check-client --junit FILE``: the same JUnit writer as ``check`` (schema-valid), a
    failed test case under the rule the planted client breaks."""
    from tests.tooling.test_junit import cases, validate

    out = tmp_path / "client.xml"
    planted("leave-early", "clean", extra=("--junit", str(out)))
    root = validate(out)
    failed = [c for c in cases(root) if c.find("failure") is not None]
    assert any("drain" in (c.get("classname", "") + c.get("name", "")) for c in failed), \
        [(c.get("classname"), c.get("name")) for c in failed]
