"""``vfio-user-mig check`` end to end: our own server passes clean, with both devices, over at
least 500 checks; a server that breaks a rule is reported with a reproducer that replays; the
checker never hangs on a server that does not answer, and says so."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "vfio_user_mig.cli"]
SERVE = f"{sys.executable} -m vfio_user_mig.cli serve --socket {{socket}}"


def run_check(*args: str, timeout: float = 240) -> tuple[int, dict[str, object], str]:
    proc = subprocess.run([*CLI, "check", *args, "--json"], capture_output=True, text=True,
                          timeout=timeout, check=False)
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout + proc.stderr
    return proc.returncode, json.loads(lines[0]), proc.stderr


@pytest.mark.parametrize("device", ["migdev", "lvu-sample"])
def test_our_server_passes_clean(device: str) -> None:
    # lvu-sample with its profile: the profile declares the sample's raw stream format, which
    # cannot tell a corrupted or foreign stream (the migdata group reports that without it)
    profile = ["--profile", device] if device == "lvu-sample" else []
    code, report, err = run_check("--spawn", f"{SERVE} --device {device}", *profile)
    assert report["findings"] == [], json.dumps(report["findings"], indent=1)[:4000]
    assert code == 0, err
    assert report["checks"] >= 500
    assert report["passed"] == report["checks"]
    totals = report["coverage"]["totals"]  # type: ignore[index]
    assert totals["arcs_covered"] == totals["arcs_total"]


def test_human_output_and_bad_arguments(tmp_path: Path) -> None:
    proc = subprocess.run([*CLI, "check", "--spawn", SERVE, "--only", "fsm"],
                          capture_output=True, text=True, timeout=240, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "checks" in proc.stdout and "0 distinct finding" in proc.stdout
    bad = subprocess.run([*CLI, "check"], capture_output=True, text=True, timeout=60,
                         check=False)
    assert bad.returncode == 2
    missing = subprocess.run([*CLI, "check", "--socket", str(tmp_path / "nothing.sock")],
                             capture_output=True, text=True, timeout=60, check=False)
    assert missing.returncode == 2 and "cannot connect" in missing.stderr


def _silent_server(path: str, stop: threading.Event) -> None:
    """Accepts connections and never answers: every request must become a hang finding."""
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(8)
    srv.settimeout(0.1)
    held: list[socket.socket] = []
    while not stop.is_set():
        try:
            conn, _ = srv.accept()
            held.append(conn)
        except TimeoutError:
            continue
    for conn in held:
        conn.close()
    srv.close()


def test_a_server_that_never_answers_is_a_hang_not_a_hung_checker(tmp_path: Path) -> None:
    path = str(tmp_path / "silent.sock")
    stop = threading.Event()
    thread = threading.Thread(target=_silent_server, args=(path, stop), daemon=True)
    thread.start()
    while not os.path.exists(path):
        time.sleep(0.01)
    try:
        started = time.monotonic()
        code, report, _ = run_check("--socket", path, "--timeout", "0.1", timeout=60)
        assert time.monotonic() - started < 30
    finally:
        stop.set()
        thread.join(5)
    assert code == 1
    kinds = {f["kind"] for f in report["findings"]}  # type: ignore[union-attr]
    assert kinds == {"hang"}
