"""The ``roundtrip`` group: our server migrates between two of its instances with no finding,
with and without a profile, and planted save/restore defects (a page of the stream
corrupted, a register restored wrongly) are reported, as ``data`` findings naming the region
and offset where the device has no integrity check of its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tests.check.planted import CORRUPT_AT, WRONG_MEMORY_AT, hosted
from vfio_user_mig.check.findings import Finding, Kind
from vfio_user_mig.check.groups import roundtrip
from vfio_user_mig.check.profiles import get_profile
from vfio_user_mig.check.session import Checker
from vfio_user_mig.check.target import SocketTarget
from vfio_user_mig.model import MigrationCaps
from vfio_user_mig.model.states import VFIO_USER_CAPS
from vfio_user_mig.simulator.server.io import UnixServer

CLI = [sys.executable, "-m", "vfio_user_mig.cli"]


@contextmanager
def two_instances(defect: str, device: str, caps: MigrationCaps = VFIO_USER_CAPS
                  ) -> Iterator[tuple[str, str]]:
    """Two in-process servers of ``device``, each with ``defect`` planted (source, dest)."""
    devices = [hosted(defect, device, caps), hosted(defect, device, caps)]
    with tempfile.TemporaryDirectory() as tmp:
        paths = [os.path.join(tmp, f"{n}.sock") for n in ("src", "dst")]
        servers = [UnixServer(d.core, p).start() for d, p in zip(devices, paths, strict=True)]
        try:
            yield paths[0], paths[1]
        finally:
            for server in servers:
                server.stop()
            for d in devices:
                d.close()


def round_trip(defect: str, device: str, profile: str | None,
               caps: MigrationCaps = VFIO_USER_CAPS) -> tuple[Checker, list[Finding]]:
    with two_instances(defect, device, caps) as (src, dst):
        checker = Checker(SocketTarget(src), timeout=5.0,
                          profile=get_profile(profile) if profile else None)
        checker.peer = SocketTarget(dst)
        roundtrip.run(checker)
        return checker, checker.report.findings


@pytest.mark.parametrize(("device", "profile"), [("migdev", "migdev"), ("migdev", None),
                                                 ("lvu-sample", "lvu-sample"),
                                                 ("lvu-sample", None)])
def test_our_server_round_trips_clean(device: str, profile: str | None) -> None:
    checker, findings = round_trip("none", device, profile)
    assert findings == [], [f.title for f in findings]
    assert checker.report.coverage.groups["roundtrip"] == 2  # source and destination
    arcs = checker.report.coverage.arcs
    assert arcs[("RESUMING", "STOP")] == 1 and arcs[("STOP", "RUNNING")] == 1
    if profile is not None:
        assert arcs[("RUNNING", "PRE_COPY")] == 1 and arcs[("PRE_COPY", "STOP_COPY")] == 1
    assert checker.report.checks > 20


def test_a_corrupted_page_is_a_data_finding_at_its_offset() -> None:
    _, findings = round_trip("corrupt-page", "lvu-sample", "lvu-sample")
    data = [f for f in findings if f.kind == Kind.DATA]
    assert [f.title for f in data] == [
        f"after the round trip the destination's BAR1 differs (region 1 offset {CORRUPT_AT:#x})"
    ], [f.title for f in findings]
    assert "1 byte(s) differ" in data[0].observed
    assert data[0].group == "roundtrip" and data[0].reproducer


def test_a_corrupted_stream_refused_by_the_device_is_reported() -> None:
    """migdev checks its stream: the destination refuses it, which the round trip reports."""
    _, findings = round_trip("corrupt-page", "migdev", "migdev")
    assert findings, "a corrupted stream went unnoticed"
    assert any("RESUMING -> STOP" in f.title or "accepts the source's stream" in f.title
               for f in findings), [f.title for f in findings]


@pytest.mark.parametrize(("defect", "device", "name", "region", "offset"), [
    ("wrong-register", "migdev", "BAR0 register SCRATCH", 0, 0x58),
    ("wrong-register", "lvu-sample", "BAR0 deadline", 0, 0),
    ("wrong-memory", "migdev", "BAR2 (device memory)", 2, WRONG_MEMORY_AT)])
def test_state_restored_wrongly_is_a_data_finding(defect: str, device: str, name: str,
                                                   region: int, offset: int) -> None:
    _, findings = round_trip(defect, device, device)
    titles = [f.title for f in findings]
    assert titles == [f"after the round trip the destination's {name} differs "
                      f"(region {region} offset {offset:#x})"], titles
    assert findings[0].kind == Kind.DATA


def test_stop_copy_only_devices_are_compared_too() -> None:
    """Without PRE_COPY the device is changed once before the switchover and compared."""
    checker, findings = round_trip("none", "migdev", "migdev", MigrationCaps.STOP_COPY)
    assert findings == [] and checker.report.coverage.arcs[("PRE_COPY", "STOP_COPY")] == 0
    _, findings = round_trip("wrong-memory", "migdev", "migdev", MigrationCaps.STOP_COPY)
    assert [f.title for f in findings] == [
        "after the round trip the destination's BAR2 (device memory) differs "
        f"(region 2 offset {WRONG_MEMORY_AT:#x})"]


def test_without_a_second_instance_the_group_is_skipped_with_an_advisory(served: str) -> None:
    checker = Checker(SocketTarget(served), timeout=5.0)
    roundtrip.run(checker)
    assert checker.report.findings == [] and checker.report.checks == 0
    assert [a["title"] for a in checker.report.advisories] == [
        "round trip skipped: one server instance"]


@pytest.mark.parametrize("device", ["migdev", "lvu-sample"])
def test_spawned_round_trip_of_our_serve_with_its_profile(device: str) -> None:
    serve = f"{sys.executable} -m vfio_user_mig.cli serve --socket {{socket}} --device {device}"
    proc = subprocess.run([*CLI, "check", "--spawn", serve, "--only", "roundtrip",
                           "--profile", device, "--json"],
                          capture_output=True, text=True, timeout=120, check=False)
    report = json.loads(proc.stdout)
    assert report["findings"] == [], report["findings"]
    assert proc.returncode == 0, proc.stderr
    assert report["coverage"]["groups"] == {"roundtrip": 2}


def test_peer_socket_gives_the_destination_of_a_running_server() -> None:
    with two_instances("wrong-register", "migdev") as (src, dst):
        proc = subprocess.run([*CLI, "check", "--socket", src, "--peer-socket", dst, "--only",
                               "roundtrip", "--profile", "migdev", "--json"],
                              capture_output=True, text=True, timeout=120, check=False)
    report = json.loads(proc.stdout)
    assert [f["title"] for f in report["findings"]] == [
        "after the round trip the destination's BAR0 register SCRATCH differs "
        "(region 0 offset 0x58)"]
    assert proc.returncode == 1
    bad = subprocess.run([*CLI, "check", "--spawn", "x {socket}", "--peer-socket", "/tmp/x"],
                         capture_output=True, text=True, timeout=60, check=False)
    assert bad.returncode == 2 and "--peer-socket goes with --socket" in bad.stderr
