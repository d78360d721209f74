"""A ``check-client`` run as a check :class:`~vfio_user_mig.check.findings.Report`.

Each scenario is judged on every rule of :mod:`.rules`: one check per (scenario, rule), failed
when a finding of that rule came from that scenario. Findings carry the last messages of the
connection as a reproducer, and the whole recorded session is saved to ``out_dir`` (its path
in ``report.extra["sessions"]``) for ``check-client --replay``. Coverage counts the client's
requests and the migration arcs its devices went through.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from vfio_user_mig.check.client.judge import ConnFacts, judge_session, reproducer
from vfio_user_mig.check.client.rules import RULES
from vfio_user_mig.check.client.scenarios import did, verdict
from vfio_user_mig.check.findings import Finding, Report
from vfio_user_mig.check.steps import request_label
from vfio_user_mig.simulator.referee.record import Session


def referee_errors(session: Session) -> list[str]:
    """Connections the referee itself ended by a bug (the run says nothing of the client)."""
    return [f"{c.role}: {e.note['ended']}" for c in session.conns for e in c.events
            if str(e.note.get("ended", "")).startswith("referee internal error")]


def judge(session: Session) -> tuple[list[Finding], dict[str, Any]]:
    """The findings of one session (rules, then the scenario's verdict) and what it did."""
    findings, facts = judge_session(session)
    for f in findings:
        f.title = f"[{session.scenario}] {f.title}"
    what = did(session, facts)
    errors = referee_errors(session)
    if errors:
        what["referee_errors"] = errors
    else:
        outcome = verdict(session, facts)
        if session.conns:  # the last messages of the source (else the first) connection
            conn = next((c for c in session.conns if c.role == "src"), session.conns[0])
            for f in outcome:
                f.reproducer = reproducer(conn, len(conn.events) - 1)
        findings += outcome
    what["advisories"] = advisories(session, facts)
    return findings, what


def advisories(session: Session, facts: list[ConnFacts]) -> list[tuple[str, str]]:
    """What the client did that breaks no rule but matters to a VM (title, why)."""
    out = []
    if session.outcome == "error":
        for f in facts:
            if f.ended.startswith("dropped"):
                continue  # the referee went away: nothing left to resume
            if f.role == "src" and f.final_state in ("STOP", "STOP_COPY", "PRE_COPY"):
                out.append(("source device not resumed after the failed migration",
                            f"left in {f.final_state}: the VM cannot run on the source "
                            "until its device is RUNNING again"))
            if f.role == "dst" and f.final_state == "ERROR":
                out.append(("destination device left in ERROR",
                            "a later client finds the device in ERROR until it is reset"))
    return out


def add_session(report: Report, session: Session, out_dir: Path | None) -> list[Finding]:
    """Judge ``session`` into ``report``; save it under ``out_dir``; returns its findings."""
    findings, what = judge(session)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"{session.scenario}-seed{session.seed}.json"
        session.save(path)
        what["session"] = str(path)
        for f in findings:
            if f.reproducer:
                f.reproducer[0]["note"] = (f.reproducer[0].get("note", "")
                                           + f"; whole session: {path}")
    report.extra.setdefault("scenarios", []).append(what)
    for title, why in what["advisories"]:
        report.add_advisory(f"[{session.scenario}] {title}", why, session.scenario)
    if "referee_errors" in what:
        report.extra.setdefault("referee_errors", []).extend(what["referee_errors"])
    report.findings += findings
    failed = {f.group for f in findings}
    report.checks += len(RULES)
    report.passed += len(RULES) - len(failed & set(RULES))
    report.coverage.groups[session.scenario] += 1
    for conn in session.conns:
        states = [e.note["state"] for e in conn.events
                  if e.direction == "note" and "state" in e.note]
        for a, b in itertools.pairwise(states):
            if a != b:
                report.coverage.arcs[(a, b)] += 1
        for e in conn.events:
            if e.direction == "c2s" and len(e.data) >= 16:
                report.coverage.requests[(conn.role, request_label(e.data))] += 1
    return findings


def new_report(client: str, device: str) -> Report:
    return Report(server=f"client {client} (referee device {device})", caps={},
                  extra={"mode": "check-client"})


__all__ = ["add_session", "judge", "new_report"]
