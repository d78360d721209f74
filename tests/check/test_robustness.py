"""The checker survives the servers it checks: a stream that never ends is a finding made
within the checker's bounds (and its memory stays small), a reply with the wrong message id
is reported as such at once, and however ``check`` is stopped no server it spawned is left
running and its report (``--json``, ``--markdown``) is still written, marked interrupted."""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vfio_user_mig.check.target import AHEAD

CLI = [sys.executable, "-m", "vfio_user_mig.cli"]
SERVE = f"{sys.executable} -m vfio_user_mig.cli serve --socket {{socket}}"
PLANTED = f"{sys.executable} -m tests.check.planted"
#: The generous bound on a run against a misbehaving server (seconds) and on its peak RSS.
RUN_LIMIT = 60.0
RSS_LIMIT = 300 << 20


def _run_measured(args: list[str], out: Path) -> tuple[int, int]:
    """Run ``check`` with stdout to ``out``; (exit status, peak RSS in bytes), from the
    kernel's rusage of that process (``wait4``). Fails past :data:`RUN_LIMIT`."""
    with open(out, "wb") as stdout:
        proc = subprocess.Popen([*CLI, "check", *args], stdout=stdout,
                                stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + RUN_LIMIT
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return proc.returncode, usage.ru_maxrss * 1024
        if time.monotonic() > deadline:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            pytest.fail(f"check ran for more than {RUN_LIMIT:g} s")
        time.sleep(0.05)


def test_a_stream_that_never_ends_is_a_finding_and_memory_stays_small(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    code, rss = _run_measured(["--spawn", f"{PLANTED} endless {{socket}}", "--only", "fsm",
                               "--only", "migdata", "--only", "roundtrip", "--json"], out)
    report = json.loads(out.read_text())
    titles = {f["title"] for f in report["findings"]}
    assert "the STOP_COPY stream never ends" in titles, titles
    endless = next(f for f in report["findings"]
                   if f["title"] == "the STOP_COPY stream never ends")
    assert endless["kind"] == "data" and "no end of stream" in endless["observed"]
    assert code == 1
    assert rss < RSS_LIMIT, f"peak RSS {rss >> 20} MiB"


def test_the_stream_bound_is_configurable(tmp_path: Path) -> None:
    """--stream-limit 1: our own server's 4 MiB STOP_COPY stream is then "endless"."""
    out = tmp_path / "report.json"
    code, _ = _run_measured(["--spawn", f"{SERVE} --device-mem 4M", "--only", "roundtrip",
                             "--stream-limit", "1", "--json"], out)
    report = json.loads(out.read_text())
    assert "the STOP_COPY stream never ends" in {f["title"] for f in report["findings"]}
    assert code == 1


def _wrong_id_server(path: str, stop: threading.Event) -> None:
    """Answers every request with a success reply whose msg id is one more than the request's."""
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(8)
    srv.settimeout(0.1)
    conns: list[socket.socket] = []
    try:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
                conn.settimeout(0.1)
                conns.append(conn)
            except TimeoutError:
                pass
            for conn in list(conns):
                try:
                    head = conn.recv(16, socket.MSG_PEEK)
                    if len(head) < 16:
                        if not head:
                            conns.remove(conn)
                            conn.close()
                        continue
                    msg_id, command, size = struct.unpack_from("<HHI", head)
                    data = b""
                    while len(data) < size:
                        data += conn.recv(size - len(data))
                    conn.sendall(struct.pack("<HHIII", (msg_id + 1) & 0xFFFF, command, 16,
                                             1, 0))
                except TimeoutError:
                    continue
                except OSError:
                    conns.remove(conn)
    finally:
        for conn in conns:
            conn.close()
        srv.close()


@pytest.fixture
def wrong_id_socket(tmp_path: Path) -> Iterator[str]:
    path = str(tmp_path / "wrong.sock")
    stop = threading.Event()
    thread = threading.Thread(target=_wrong_id_server, args=(path, stop), daemon=True)
    thread.start()
    while not os.path.exists(path):
        time.sleep(0.01)
    yield path
    stop.set()
    thread.join(5)


def test_a_reply_with_the_wrong_message_id_is_reported_as_such(wrong_id_socket: str,
                                                              tmp_path: Path) -> None:
    """With a 100 s reply timeout: waiting for the right id would take longer than the run's
    bound (a hang finding after the timeout is what the checker must not do)."""
    out = tmp_path / "report.json"
    code, _ = _run_measured(["--socket", wrong_id_socket, "--only", "fsm", "--timeout", "100",
                             "--json"], out)
    report = json.loads(out.read_text())
    kinds = {f["kind"] for f in report["findings"]}
    wrong = [f for f in report["findings"] if "wrong message id" in f["title"]]
    assert wrong, [f["title"] for f in report["findings"]]
    assert wrong[0]["kind"] == "reply" and "hang" not in kinds
    assert wrong[0]["title"] == "wrong message id in the reply to VERSION"
    assert "message id 0x2 while awaiting the reply to 0x1" in wrong[0]["observed"]
    assert code == 1


def _children(pid: int) -> set[int]:
    """Pids whose parent is ``pid`` (from /proc)."""
    out = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[1]) == pid:
            out.add(int(entry))
    return out


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_stopped_check_leaves_no_server_and_writes_its_report(sig: signal.Signals,
                                                               tmp_path: Path) -> None:
    markdown = tmp_path / "report.md"
    proc = subprocess.Popen([*CLI, "check", "--spawn", SERVE, "--json", "--markdown",
                             str(markdown)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    servers: set[int] = set()
    deadline = time.monotonic() + RUN_LIMIT
    # A few sequences in: the first starts its server and AHEAD spares, each later one
    # starts one more server.
    enough = 1 + AHEAD + 3
    while len(servers) < enough and time.monotonic() < deadline and proc.poll() is None:
        servers |= _children(proc.pid)
        time.sleep(0.02)
    assert len(servers) >= enough, "check did not spawn its servers"
    os.kill(proc.pid, sig)
    stdout, stderr = proc.communicate(timeout=RUN_LIMIT)
    left = [p for p in servers if _alive(p)]
    for pid in left:  # do not leave them to the next test either
        os.kill(pid, signal.SIGKILL)
    assert left == [], f"servers left running: {left}"
    assert proc.returncode == 128 + sig, stderr
    report = json.loads(stdout)
    assert report["interrupted"] == sig.name
    assert report["checks"] >= 1
    assert f"| interrupted | by {sig.name}: the report is partial |" in markdown.read_text()


def test_a_killed_check_takes_its_servers_with_it() -> None:
    """SIGKILL runs no handler: the parent-death signal the servers were started with
    (``PR_SET_PDEATHSIG``, by setpriv or in the child) ends them."""
    proc = subprocess.Popen([*CLI, "check", "--spawn", SERVE, "--json"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    servers: set[int] = set()
    deadline = time.monotonic() + RUN_LIMIT
    while len(servers) < 1 + AHEAD and time.monotonic() < deadline and proc.poll() is None:
        servers |= _children(proc.pid)
        time.sleep(0.02)
    assert len(servers) >= 1 + AHEAD, "check did not spawn its servers"
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 5
    while [p for p in servers if _alive(p)] and time.monotonic() < deadline:
        time.sleep(0.02)
    left = [p for p in servers if _alive(p)]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert left == [], f"servers left running: {left}"


def test_stop_all_stops_every_launched_server_and_its_group() -> None:
    """What ``check`` runs on exit, on a stop signal and from atexit: every server launched
    and not stopped (a sequence's, a spare, a round trip's destination) is stopped, children
    in its process group included."""
    from vfio_user_mig.check.target import LIVE, SpawnTarget, stop_all

    forks = ("import os, sys, time; pid = os.fork(); "
             "print(pid, flush=True) if pid else None; time.sleep(120)")
    target = SpawnTarget(f"{sys.executable} -c '{forks}' {{socket}}")
    launches = [target._launch(), target._launch()]
    assert set(launches) <= LIVE
    pids = {launch.proc.pid for launch in launches}
    deadline = time.monotonic() + RUN_LIMIT
    while time.monotonic() < deadline and not all(
            _children(launch.proc.pid) for launch in launches):
        time.sleep(0.02)
    pids |= {p for launch in launches for p in _children(launch.proc.pid)}
    assert len(pids) == 4
    assert stop_all() == 2
    assert not set(launches) & LIVE
    deadline = time.monotonic() + RUN_LIMIT
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.02)
    assert [p for p in pids if _alive(p)] == []


def test_a_sequence_longer_than_the_bound_ends_with_a_finding(
        served: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from vfio_user_mig.check import session
    from vfio_user_mig.check.groups import run_suite
    from vfio_user_mig.check.target import SocketTarget

    monkeypatch.setattr(session, "SEQUENCE_LIMIT", 40)
    checker = session.Checker(SocketTarget(served))
    run_suite(checker, {"fsm"})
    titles = {f.title for f in checker.report.findings}
    assert titles == {"a sequence exceeds the checker's message bound"}
    assert all(len(f.reproducer) == 41 for f in checker.report.findings)


def test_the_stream_meter_counts_one_saving_phase() -> None:
    """Bytes add up across reads of one phase, a state SET starts a new phase, and a state
    found endless is cut at the smaller bound afterwards."""
    from vfio_user_mig.check.bounds import ENDLESS_RECHECK, StreamMeter
    from vfio_user_mig.check.requests import feature_request, raw_message
    from vfio_user_mig.wire import Command, FeatureIndex, FeatureOp

    read = raw_message(1, Command.MIG_DATA_READ, struct.pack("<II", 8 + 4096, 4096))
    full = struct.pack("<II", 8 + 4096, 4096) + bytes(4096)
    set_state = feature_request(2, FeatureIndex.MIG_DEVICE_STATE, FeatureOp.SET,
                                struct.pack("<II", 3, 0))
    meter = StreamMeter(limit=3 * 4096, seconds=60.0)
    assert [meter.observe(read, False, full, "STOP_COPY") for _ in range(3)] == [None] * 3
    over = meter.observe(read, False, full, "STOP_COPY")
    assert over is not None and over[0] == "STOP_COPY" and "16384 bytes" in over[2]
    assert meter.observe(set_state, False, b"", "STOP_COPY") is None  # a new phase
    assert meter.observe(read, False, full, "PRE_COPY") is None
    assert meter.observe(read, True, b"", "PRE_COPY") is None  # a refused read counts nothing
    assert meter.endless == {"STOP_COPY"}
    big = StreamMeter(limit=1 << 30, seconds=60.0, endless={"STOP_COPY"})
    results = [big.observe(read, False, full, "STOP_COPY")
               for _ in range(ENDLESS_RECHECK // 4096 + 1)]
    assert results[:-1] == [None] * (ENDLESS_RECHECK // 4096) and results[-1] is not None


def test_the_stream_bound_scales_with_the_declared_device(tmp_path: Path) -> None:
    """A 64 MiB device streams more than 64 MiB in a phase (its memory and registers): its
    byte bound is four times what it declares, and the time bound grows with it."""
    from vfio_user_mig.check.bounds import (
        SIZE_FACTOR,
        STREAM_LIMIT,
        STREAM_SECONDS,
        declared_size,
        stream_bounds,
    )
    from vfio_user_mig.simulator.server.hosting import host_device
    from vfio_user_mig.simulator.server.io import UnixServer

    big = 64 << 20
    hosted_big = host_device("migdev", mem_size=big)
    path = str(tmp_path / "big.sock")
    server = UnixServer(hosted_big.core, path).start()
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(path)
        declared = declared_size(sock, 5.0)
    finally:
        server.stop()
        hosted_big.close()
    assert big < declared < big + (1 << 20)  # BAR2 plus BAR0 and config space
    limit, seconds = stream_bounds(declared)
    assert limit == SIZE_FACTOR * declared and seconds > STREAM_SECONDS
    assert stream_bounds(0) == (STREAM_LIMIT, STREAM_SECONDS)
    assert stream_bounds(declared, 1 << 20) == (1 << 20, STREAM_SECONDS)  # --stream-limit 1
