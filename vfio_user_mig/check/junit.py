"""``--junit FILE``: a :class:`~vfio_user_mig.check.findings.Report` as JUnit XML for CI systems.

The format is the one of Apache Ant's XML JUnit formatter, which Jenkins, GitLab and GitHub
Actions reporters read: a ``<testsuites>`` element holding one ``<testsuite>`` per group of
checks (``package`` and ``id`` set), each with ``<properties>`` (the run: server, version,
migration capabilities, checks, passed), its ``<testcase>`` elements, ``<system-out>`` (the
group's advisories: behaviour that breaks no rule) and ``<system-err>``.

One test case per check, a check being a (group, title) pair counted with
:meth:`~vfio_user_mig.check.findings.Report.count` (a check made several times, e.g. on several
connections, is one test case whose body says how often it failed). A failed check carries its
finding: ``message`` the finding's title, ``type`` its kind (hang, crash, errno, reply, state,
data, close), and a body with the rule (PROTOCOL.md section or vfio-user.rst text), what was
expected and observed, the commands involved, the reproducer's path and the command that
replays it, and the last messages of the reproducer. A finding without a counted check (a run
that only counts, such as the differential mode) is a failed test case of its own; checks
counted but not itemized are one test case. Groups that were not run (``--only``,
``--no-suite``) are skipped test cases, as are, when every check is itemized, groups that made
no check (the reason: the group's advisory, such as a round trip that needs two instances).

Nothing here knows which command made the report: ``check`` and ``check-client`` pass their
prefix (``classname`` of each test case), the groups they did not run and their replay command.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import socket
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from vfio_user_mig.check.findings import Finding, Report

#: Reproducer messages shown in a failure's body (the last ones; the file has them all).
TAIL_STEPS = 8
#: The test case of checks counted without a group and title.
UNITEMIZED = "checks counted but not itemized"

# Characters XML 1.0 cannot carry (C0 controls but tab, CR, LF; surrogates; U+FFFE/U+FFFF).
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _xml_text(text: str) -> str:
    return _NOT_XML.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()[:60] or "finding"


def findings_by_check(report: Report) -> dict[tuple[str, str], Finding]:
    """The finding of each failed check, by (group, title): the one with the shortest
    reproducer when the check failed several times."""
    best: dict[tuple[str, str], Finding] = {}
    for finding in report.findings:
        key = (finding.group, finding.title)
        old = best.get(key)
        if old is None or len(finding.reproducer) < len(old.reproducer):
            best[key] = finding
    return best


def write_reproducers(report: Report, directory: Path) -> dict[tuple[str, str], Path]:
    """Each failed check's finding as a JSON file in ``directory`` (``check --replay`` reads
    it); the paths by (group, title)."""
    paths: dict[tuple[str, str], Path] = {}
    found = findings_by_check(report)
    if found:
        directory.mkdir(parents=True, exist_ok=True)
    for index, (key, finding) in enumerate(found.items(), 1):
        path = directory / f"{index:03d}-{_slug(key[0])}-{_slug(key[1])}.json"
        path.write_text(json.dumps(finding.to_json(), indent=1) + "\n")
        paths[key] = path
    return paths


def failure_body(finding: Finding, times: tuple[int, int], reproducer: Path | None,
                 replay: str | None) -> str:
    """The text of a ``<failure>``: rule, expected, observed, commands, reproducer."""
    passed, failed = times
    lines = [
        f"rule: {finding.spec}",
        f"expected: {finding.expected}",
        f"observed: {finding.observed}",
        f"commands: {', '.join(finding.commands) or '-'}",
        f"failed {failed} of {passed + failed} time(s)",
    ]
    if reproducer is not None:
        lines.append(f"reproducer: {reproducer}")
        if replay:
            lines.append(f"replay: {replay.replace('{path}', str(reproducer))}")
    steps = finding.reproducer
    if steps:
        lines.append(f"reproducer messages ({len(steps)}, the last {min(len(steps), TAIL_STEPS)}):")
        for number, step in enumerate(steps[-TAIL_STEPS:], len(steps) - min(len(steps),
                                                                             TAIL_STEPS) + 1):
            note = f" ({step['note']})" if step.get("note") else ""
            size = step.get("size") or len(str(step.get("bytes", ""))) // 2
            expect = step.get("expect", {}).get("reply", "any")
            lines.append(f"  {number}. {step.get('command', '?')}{note}, {size} bytes, "
                         f"reply expected: {expect}")
    return "\n".join(lines)


def _properties(parent: ET.Element, report: Report) -> None:
    props = ET.SubElement(parent, "properties")
    caps = report.caps or {}
    values: dict[str, Any] = {
        "server": report.server,
        "version": caps.get("version", ""),
        "migration": ",".join(caps.get("migration") or []),
        "checks": report.checks,
        "passed": report.passed,
        "elapsed_s": report.extra.get("elapsed_s", ""),
    }
    for name, value in values.items():
        ET.SubElement(props, "property", name=name, value=_xml_text(str(value)))


class _Suite:
    def __init__(self, group: str) -> None:
        self.group = group
        self.cases: list[ET.Element] = []
        self.failures = 0
        self.skipped = 0


def build_junit(report: Report, *, package: str = "check",
                skipped: Mapping[str, str] | None = None,
                reproducers: Mapping[tuple[str, str], Path] | None = None,
                replay: str | None = None, timestamp: datetime | None = None,
                hostname: str | None = None) -> ET.Element:
    """The ``<testsuites>`` element of ``report`` (module docstring).

    ``package``: the prefix of every test case's ``classname`` (``check.fsm``); ``skipped``:
    groups not run, with the reason; ``reproducers``: each failed check's reproducer file
    (:func:`write_reproducers`); ``replay``: the command that replays one, ``{path}`` standing
    for the file."""
    skipped = skipped or {}
    reproducers = reproducers or {}
    found = findings_by_check(report)
    suites: dict[str, _Suite] = {}

    def suite(group: str) -> _Suite:
        return suites.setdefault(group or "run", _Suite(group or "run"))

    def case(group: str, name: str) -> ET.Element:
        element = ET.Element("testcase", name=_xml_text(name),
                             classname=f"{package}.{group or 'run'}", time="0")
        suite(group).cases.append(element)
        return element

    def fail(element: ET.Element, group: str, title: str, finding: Finding | None,
             times: tuple[int, int]) -> None:
        if finding is None:  # a failed count without its finding (a caller's own Report)
            failure = ET.SubElement(element, "failure", type="failure",
                                    message=_xml_text(title))
            failure.text = f"failed {times[1]} of {sum(times)} time(s); no finding recorded"
        else:
            body = failure_body(finding, times, reproducers.get((group, title)), replay)
            failure = ET.SubElement(element, "failure", type=str(finding.kind),
                                    message=_xml_text(finding.title))
            failure.text = _xml_text(body)
        suite(group).failures += 1

    itemized = 0
    for (group, title), (passed, failed) in report.outcomes.items():
        itemized += passed + failed
        element = case(group, title)
        if failed:
            fail(element, group, title, found.get((group, title)), (passed, failed))
    unmatched = [(key, f) for key, f in found.items() if key not in report.outcomes]
    for (group, title), finding in unmatched:
        fail(case(group, title), group, title, finding, (0, 1))
    # Checks counted without (group, title): each unmatched finding stands for one of them.
    itemized_failed = sum(f for _p, f in report.outcomes.values())
    rest = report.checks - itemized - len(unmatched)
    rest_failed = report.checks - report.passed - itemized_failed - len(unmatched)
    if rest > 0:
        element = case("run", f"{rest} {UNITEMIZED}")
        if rest_failed > 0:
            failure = ET.SubElement(element, "failure", type="checks",
                                    message=f"{rest_failed} of {rest} checks failed")
            failure.text = ("checks the report counts as failed without a finding of their "
                            "own (such as the unexplained differences of check --against, "
                            "which its --json object lists)")
            suite("run").failures += 1
    if rest <= 0:  # every check itemized: a group without one made none
        why: dict[str, str] = {}
        for advisory in report.advisories:
            why.setdefault(str(advisory.get("group", "")), str(advisory.get("title", "")))
        for group in [*report.coverage.groups, *why]:
            if group and group not in suites and group not in skipped:
                skipped = {**skipped, group: why.get(group, "its sequences made no check")}
    for group, reason in skipped.items():
        element = case(group, f"group {group}")
        ET.SubElement(element, "skipped", message=_xml_text(reason))
        suite(group).skipped += 1

    root = ET.Element("testsuites")
    stamp = (timestamp or datetime.now()).strftime("%Y-%m-%dT%H:%M:%S")
    host = hostname or socket.gethostname() or "localhost"
    for index, entry in enumerate(suites.values()):
        element = ET.SubElement(
            root, "testsuite", name=entry.group, package=package, id=str(index),
            timestamp=stamp, hostname=host, tests=str(len(entry.cases)),
            failures=str(entry.failures), errors="0", skipped=str(entry.skipped), time="0")
        _properties(element, report)
        element.extend(entry.cases)
        advisories = [f"advisory ({a['count']}x, no rule broken): {a['title']}: {a['detail']}"
                      for a in report.advisories if a.get("group") == entry.group]
        ET.SubElement(element, "system-out").text = _xml_text("\n".join(advisories))
        ET.SubElement(element, "system-err").text = ""
    return root


def write_junit(report: Report, path: str | Path, *, package: str = "check",
                skipped: Mapping[str, str] | None = None, replay: str | None = None,
                reproducer_dir: str | Path | None = None) -> Path:
    """Write ``report`` as JUnit XML to ``path`` and each failed check's reproducer to
    ``reproducer_dir`` (default: ``<path without suffix>-reproducers`` beside it, made only
    when something failed); returns ``path``."""
    out = Path(path)
    directory = Path(reproducer_dir) if reproducer_dir else out.with_name(
        f"{out.stem}-reproducers")
    reproducers = write_reproducers(report, directory)
    root = build_junit(report, package=package, skipped=skipped, reproducers=reproducers,
                       replay=replay)
    ET.indent(root)
    out.write_bytes(ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n")
    return out


def write_check_junit(report: Report, args: argparse.Namespace) -> Path:
    """``check --junit FILE``: the groups of the suite not run are skipped test cases, and each
    failure names the ``check --replay`` command for the same server."""
    from vfio_user_mig.check.groups import GROUPS

    skipped: dict[str, str] = {}
    if not (args.replay or args.against):
        if args.no_suite:
            skipped = dict.fromkeys(GROUPS, "not run (--no-suite)")
        elif args.only:
            skipped = {g: "not run (--only)" for g in GROUPS if g not in args.only}
    where = f"--spawn {shlex.quote(args.spawn)}" if args.spawn else \
        f"--socket {shlex.quote(args.socket)}"
    return write_junit(report, args.junit, package="check", skipped=skipped,
                       replay=f"vfio-user-mig check {where} --replay {{path}}")


__all__ = [
    "build_junit",
    "failure_body",
    "findings_by_check",
    "write_check_junit",
    "write_junit",
    "write_reproducers",
]
