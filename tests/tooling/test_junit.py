"""``check --junit FILE``: JUnit XML that validates against the schema CI systems read.

The schema is tests/tooling/data/junit-ant.xsd (Apache Ant's XML JUnit format, written for
this project from its documentation). Set ``JUNIT_XSD`` to the paths of further schema files
(``os.pathsep``-separated, e.g. a copy of the windyroad/JUnit-Schema ``JUnit.xsd``) to validate
every file against them too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import xmlschema

from vfio_user_mig.check.findings import Finding, Kind, Report
from vfio_user_mig.check.groups import GROUPS, run_suite
from vfio_user_mig.check.junit import UNITEMIZED, build_junit, write_junit
from vfio_user_mig.check.replay import load_reproducers
from vfio_user_mig.check.session import Checker
from vfio_user_mig.check.target import SocketTarget
from vfio_user_mig.model import State
from vfio_user_mig.simulator.server.hosting import host_device
from vfio_user_mig.simulator.server.io import UnixServer
from vfio_user_mig.wire import Command

DATA = Path(__file__).parent / "data"
CLI = [sys.executable, "-m", "vfio_user_mig.cli"]
SERVE = f"{sys.executable} -m vfio_user_mig.cli serve --socket {{socket}}"
LVU_SERVER = Path("/work/lvu-src/build/samples/server")


def schemas() -> list[xmlschema.XMLSchema]:
    paths = [DATA / "junit-ant.xsd"]
    paths += [Path(p) for p in os.environ.get("JUNIT_XSD", "").split(os.pathsep) if p]
    return [xmlschema.XMLSchema(str(p)) for p in paths]


def validate(path: Path) -> ET.Element:
    for schema in schemas():
        schema.validate(str(path))
    return ET.parse(path).getroot()


def cases(root: ET.Element) -> list[ET.Element]:
    return root.findall("testsuite/testcase")


def check_in_process(tmp_path: Path, *, open_gate: bool, only: set[str] | None) -> Report:
    hosted = host_device("migdev", mem_size=64 << 10)
    path = str(tmp_path / "s.sock")
    server = UnixServer(hosted.core, path).start()
    try:
        if open_gate:  # a planted defect: DEVICE_GET_INFO served in STOP_COPY
            hosted.core._gates[(State.STOP_COPY, Command.DEVICE_GET_INFO)] = None
        checker = Checker(SocketTarget(path))
        run_suite(checker, only)
        return checker.report
    finally:
        server.stop()
        hosted.close()


def test_clean_run_validates_with_one_case_per_check(tmp_path: Path) -> None:
    report = check_in_process(tmp_path, open_gate=False, only=None)
    assert report.findings == [] and report.checks >= 500
    out = write_junit(report, tmp_path / "clean.xml")
    root = validate(out)
    suites = root.findall("testsuite")
    assert [s.get("name") for s in suites] == list(GROUPS)
    assert len(cases(root)) == len(report.outcomes) + 1  # + the skipped round trip
    assert sum(p + f for p, f in report.outcomes.values()) == report.checks
    assert root.findall(".//failure") == []
    # One in-process instance: the round trip (two instances) is skipped, its advisory the reason.
    skipped = [c for c in cases(root) if c.find("skipped") is not None]
    assert [c.get("classname") for c in skipped] == ["check.roundtrip"]
    reason = skipped[0].find("skipped")
    assert reason is not None
    assert reason.get("message") in {a["title"] for a in report.advisories}
    assert sum(int(s.get("tests", "0")) for s in suites) == len(report.outcomes) + 1
    assert not (tmp_path / "clean-reproducers").exists()
    names = {(c.get("classname"), c.get("name")) for c in cases(root)}
    assert ("check.fsm", "VERSION is accepted") in names


def test_planted_defect_fails_with_rule_and_reproducer(tmp_path: Path) -> None:
    report = check_in_process(tmp_path, open_gate=True, only={"gating"})
    out = write_junit(report, tmp_path / "found.xml",
                      skipped={g: "not run (--only)" for g in GROUPS if g != "gating"},
                      replay="vfio-user-mig check --socket S --replay {path}")
    root = validate(out)
    failures = root.findall(".//failure")
    titles = {f.get("message"): f for f in failures}
    failure = titles["DEVICE_GET_INFO refused in STOP_COPY"]
    assert failure.get("type") == str(Kind.ERRNO)
    body = failure.text or ""
    assert "rule: PROTOCOL.md" in body and "commands: DEVICE_GET_INFO" in body
    reproducer = Path(body.split("reproducer: ", 1)[1].split("\n", 1)[0])
    assert f"--replay {reproducer}" in body
    (title, steps), = load_reproducers(json.loads(reproducer.read_text()))
    assert title == "DEVICE_GET_INFO refused in STOP_COPY"
    assert steps[-1].command == "DEVICE_GET_INFO"
    gating = root.find("testsuite[@name='gating']")
    assert gating is not None and gating.get("failures") == str(len(failures))
    skipped = root.findall(".//skipped")
    assert len(skipped) == len(GROUPS) - 1
    assert {s.get("name") for s in root.findall("testsuite")} >= set(GROUPS)


def test_counted_only_reports_and_unprintable_text_still_validate(tmp_path: Path) -> None:
    """A Report that only counts (no itemized checks) and a finding whose text holds bytes XML
    cannot carry: the findings are failed cases, the rest one case, and the file validates."""
    report = Report(server="x", caps={}, checks=5, passed=4)
    report.findings.append(Finding(kind=Kind.REPLY, title="reply \x01 differs", commands=["X"],
                                   expected="a", observed="b\x00\x1b", spec="rule", group="d"))
    report.count("g", "itemized", True)
    out = tmp_path / "counted.xml"
    ET.ElementTree(build_junit(report)).write(out, encoding="utf-8", xml_declaration=True)
    root = validate(out)
    names = sorted(c.get("name") or "" for c in cases(root))
    assert names == [f"4 {UNITEMIZED}", "itemized", "reply \\x01 differs"]
    assert len(root.findall(".//failure")) == 1


def test_schema_rejects_what_ci_systems_would_not_read(tmp_path: Path) -> None:
    out = write_junit(Report(server="x", caps={}), tmp_path / "empty.xml")
    validate(out)  # no suites at all is a valid (empty) report
    report = Report(server="x", caps={})
    report.count("g", "t", True)
    root = build_junit(report)
    suite = root.find("testsuite")
    assert suite is not None
    del suite.attrib["hostname"]
    bad = tmp_path / "bad.xml"
    ET.ElementTree(root).write(bad, encoding="utf-8", xml_declaration=True)
    for schema in schemas():
        assert not schema.is_valid(str(bad))


def test_cli_spawn_only_fsm_writes_valid_junit(tmp_path: Path) -> None:
    out = tmp_path / "fsm.xml"
    proc = subprocess.run([*CLI, "check", "--spawn", SERVE, "--only", "fsm", "--junit", str(out)],
                          capture_output=True, text=True, timeout=240, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    root = validate(out)
    assert root.findall(".//failure") == []
    skipped = {c.get("classname") for c in cases(root) if c.find("skipped") is not None}
    assert skipped == {f"check.{g}" for g in GROUPS if g != "fsm"}


@pytest.mark.skipif(not LVU_SERVER.exists(), reason="libvfio-user's sample server not built")
def test_cli_against_libvfio_user_sample_carries_failures(tmp_path: Path) -> None:
    out = tmp_path / "lvu.xml"
    proc = subprocess.run([*CLI, "check", "--spawn", f"{LVU_SERVER} -v {{socket}}",
                           "--junit", str(out), "--json"],
                          capture_output=True, text=True, timeout=240, check=False)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr
    report = json.loads(proc.stdout)
    root = validate(out)
    failures = root.findall(".//failure")
    assert failures
    assert {f["title"] for f in report["findings"]} <= {f.get("message") for f in failures}
    for failure in failures:
        assert "rule: " in (failure.text or "") and "--replay" in (failure.text or "")
