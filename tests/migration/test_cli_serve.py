"""``vfio-user-mig serve`` as a real process: readiness, a client over the UNIX socket, human
and ``--json`` output (exactly one JSON object on stdout), clean exit on SIGTERM, SIGINT and
``--max-connections``, exit status 2 for bad arguments and 1 when the socket cannot be made."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vfio_user_mig.model import State
from vfio_user_mig.simulator.client.api import Client
from vfio_user_mig.simulator.transport import connect_unix

BAR2 = 2


@pytest.fixture
def sock_path() -> Iterator[str]:
    """A short socket path (AF_UNIX paths are limited to 107 bytes)."""
    d = tempfile.mkdtemp(prefix="vum-serve-", dir="/tmp")
    yield os.path.join(d, "s.sock")
    shutil.rmtree(d, ignore_errors=True)


def start(path: str, *extra: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "vfio_user_mig.cli", "serve", "--socket", path,
         "--device-mem", "64K", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    while not os.path.exists(path):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "server did not create its socket"
        time.sleep(0.02)
    return proc


def use_device(path: str) -> int:
    """A short session over the socket; returns the number of requests it sent."""
    client = Client(connect_unix(path, timeout=5), timeout=5.0)
    try:
        client.negotiate()
        assert client.device_info().num_regions == 9
        client.region_write(BAR2, 0, b"served")
        assert client.region_read(BAR2, 0, 6) == b"served"
        client.set_state(State.STOP)
        assert client.get_state() is State.STOP
    finally:
        client.close()
    return 6


def finish(proc: subprocess.Popen[str], sig: int | None) -> tuple[str, str]:
    if sig is not None:
        proc.send_signal(sig)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, (out, err)
    return out, err


def test_human_output_client_and_sigterm(sock_path: str) -> None:
    proc = start(sock_path)
    sent = use_device(sock_path)
    out, _err = finish(proc, signal.SIGTERM)
    lines = out.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("serving migdev (65536 bytes of device memory, caps ")
    assert f"on {sock_path}, pid {proc.pid}" in lines[0]
    assert lines[1] == (f"served 1 connection(s); {sent} requests, 0 errors; final state STOP; "
                        "stopped by SIGTERM")
    assert not os.path.exists(sock_path)


def test_json_is_one_object_on_stdout_and_sigint_stops(sock_path: str) -> None:
    proc = start(sock_path, "--json")
    sent = use_device(sock_path)
    client = Client(connect_unix(sock_path, timeout=5), timeout=5.0)
    try:  # a second connection finds the device where the first left it
        client.negotiate()
        assert client.get_state() is State.STOP and client.region_read(BAR2, 0, 6) == b"served"
        client.set_state(State.RUNNING)
        sent += 4
    finally:
        client.close()
    out, err = finish(proc, signal.SIGINT)
    assert out.count("\n") == 1 and out.endswith("\n")
    data = json.loads(out)
    assert data == {
        "socket": sock_path, "device": "migdev", "device_mem": 65536,
        "caps": data["caps"], "pid": proc.pid, "connections": 2,
        "requests": sent, "errors": 0, "dma_messages": 0, "mig_writes_in_place": 0,
        "final_state": "RUNNING", "stopped_by": "SIGINT",
    }
    assert data["caps"] == "STOP_COPY|PRE_COPY"
    assert "serving migdev" in err and "Traceback" not in err
    assert not os.path.exists(sock_path)


def test_max_connections_exits_after_the_client(sock_path: str) -> None:
    proc = start(sock_path, "--json", "--max-connections", "1")
    use_device(sock_path)
    out, _err = finish(proc, None)
    data = json.loads(out)
    assert (data["connections"], data["stopped_by"], data["final_state"]) == (
        1, "max-connections", "STOP")


def test_sigterm_while_a_client_is_connected(sock_path: str) -> None:
    proc = start(sock_path, "--json")
    client = Client(connect_unix(sock_path, timeout=5), timeout=5.0)
    try:
        client.negotiate()
        out, _err = finish(proc, signal.SIGTERM)
    finally:
        client.close()
    data = json.loads(out)
    assert (data["connections"], data["requests"], data["stopped_by"]) == (1, 1, "SIGTERM")


@pytest.mark.parametrize("argv", [
    ["serve"],                                              # --socket is required
    ["serve", "--socket", "S", "--max-connections", "0"],
    ["serve", "--socket", "S", "--max-connections", "x"],
    ["serve", "--socket", "S", "--device", "nope"],
    ["serve", "--socket", "S", "--device-mem", "3000"],    # not a power of two
    ["serve", "--socket", "S", "--caps", "bogus"],
], ids=["no-socket", "zero-connections", "nan-connections", "device", "mem", "caps"])
def test_bad_arguments_exit_2(argv: list[str], tmp_path: Path) -> None:
    argv = [str(tmp_path / "s") if a == "S" else a for a in argv]
    proc = subprocess.run([sys.executable, "-m", "vfio_user_mig.cli", *argv, "--json"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2, proc
    assert proc.stdout == "" and proc.stderr.strip()
    assert not (tmp_path / "s").exists()


def test_socket_that_cannot_be_made_exits_1(tmp_path: Path) -> None:
    path = str(tmp_path / "missing-dir" / "s.sock")
    proc = subprocess.run([sys.executable, "-m", "vfio_user_mig.cli", "serve", "--socket", path,
                           "--device-mem", "64K", "--json"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1 and proc.stdout == ""
    assert "cannot listen on" in proc.stderr
