"""What the checker reports: findings, coverage and the whole report (``check --json``).

A :class:`Finding` is one departure of the server under test from the model or the spec, with
the messages that reproduce it (:class:`~vfio_user_mig.check.steps.Step` dictionaries that
``check --replay`` sends again). Its ``kind`` says how the server departed:

* ``hang``: a request got no reply within the timeout;
* ``crash``: the server process died (or, for ``--socket``, stopped accepting connections);
* ``errno``: a request was refused with another errno than the rule gives, or refused where it
  must succeed, or accepted where it must be refused;
* ``reply``: a successful reply whose header or payload breaks a rule (size, echo, fields);
* ``state``: the device's migration state is not the one the model predicts;
* ``data``: data read back is not the data the rule gives (migration stream, dirty pages);
* ``close``: the server closed the connection where it had to answer.
"""

from __future__ import annotations

import enum
import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any


class Kind(enum.StrEnum):
    """How a server departed from the rules (module docstring)."""

    HANG = "hang"
    CRASH = "crash"
    ERRNO = "errno"
    REPLY = "reply"
    STATE = "state"
    DATA = "data"
    CLOSE = "close"


@dataclass
class Finding:
    """One departure, with the rule it breaks and a reproducer (a list of step dicts)."""

    kind: Kind
    title: str
    commands: list[str]
    expected: str
    observed: str
    spec: str
    reproducer: list[dict[str, Any]] = field(default_factory=list)
    group: str = ""

    def key(self) -> tuple[str, str]:
        """Findings with the same kind and title are one defect seen several times."""
        return (str(self.kind), self.title)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["kind"] = str(self.kind)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Finding:
        return cls(**{**data, "kind": Kind(data["kind"])})


@dataclass
class Coverage:
    """What a run exercised: (state, command) cells, FSM arcs, groups, with counts."""

    cells: Counter[tuple[str, str]] = field(default_factory=Counter)
    arcs: Counter[tuple[str, str]] = field(default_factory=Counter)
    requests: Counter[tuple[str, str]] = field(default_factory=Counter)
    groups: Counter[str] = field(default_factory=Counter)
    #: Covered and possible cells and arcs for the server's capabilities (set at the end).
    totals: dict[str, Any] = field(default_factory=dict)

    def merge(self, other: Coverage) -> None:
        self.cells.update(other.cells)
        self.arcs.update(other.arcs)
        self.requests.update(other.requests)
        self.groups.update(other.groups)

    def to_json(self) -> dict[str, Any]:
        return {
            "cells": {f"{s}/{c}": n for (s, c), n in sorted(self.cells.items())},
            "arcs": {f"{a}->{b}": n for (a, b), n in sorted(self.arcs.items())},
            "requests": {f"{s}/{c}": n for (s, c), n in sorted(self.requests.items())},
            "groups": dict(sorted(self.groups.items())),
            "totals": self.totals,
        }


@dataclass
class Report:
    """The result of one ``check`` run (the ``--json`` object)."""

    server: str
    caps: dict[str, Any]
    checks: int = 0
    passed: int = 0
    findings: list[Finding] = field(default_factory=list)
    coverage: Coverage = field(default_factory=Coverage)
    extra: dict[str, Any] = field(default_factory=dict)
    #: Behaviour worth knowing that breaks no rule: {"title", "detail", "group", "count"}.
    advisories: list[dict[str, Any]] = field(default_factory=list)
    #: Each check counted with :meth:`count`, by (group, title): [passed, failed] (the test
    #: cases of ``check --junit``; not in the ``--json`` object).
    outcomes: dict[tuple[str, str], list[int]] = field(default_factory=dict)

    def count(self, group: str, title: str, ok: bool) -> None:
        """Count one check: in ``checks``, ``passed`` and :attr:`outcomes`."""
        self.checks += 1
        self.passed += ok
        tally = self.outcomes.get((group, title))
        if tally is None:
            tally = self.outcomes[(group, title)] = [0, 0]
        tally[not ok] += 1

    def absorb_counts(self, other: Report) -> None:
        """Add ``other``'s ``checks``, ``passed`` and :attr:`outcomes` to this report's."""
        self.checks += other.checks
        self.passed += other.passed
        for key, (passed, failed) in other.outcomes.items():
            tally = self.outcomes.setdefault(key, [0, 0])
            tally[0] += passed
            tally[1] += failed

    def add_advisory(self, title: str, detail: str, group: str) -> None:
        for entry in self.advisories:
            if entry["title"] == title:
                entry["count"] += 1
                return
        self.advisories.append({"title": title, "detail": detail, "group": group, "count": 1})

    def distinct(self) -> list[Finding]:
        """One finding per (kind, title), the first seen (shortest reproducer kept)."""
        best: dict[tuple[str, str], Finding] = {}
        for f in self.findings:
            old = best.get(f.key())
            if old is None or len(f.reproducer) < len(old.reproducer):
                best[f.key()] = f
        return list(best.values())

    def to_json(self) -> dict[str, Any]:
        kinds = Counter(str(f.kind) for f in self.findings)
        return {
            "server": self.server,
            "caps": self.caps,
            "checks": self.checks,
            "passed": self.passed,
            "failed": self.checks - self.passed,
            "findings": [f.to_json() for f in self.distinct()],
            "finding_count": len(self.findings),
            "finding_kinds": dict(sorted(kinds.items())),
            "coverage": self.coverage.to_json(),
            "advisories": self.advisories,
            **self.extra,
        }

    def dumps(self) -> str:
        return json.dumps(self.to_json())
