"""``check --markdown FILE``: the report for people.

A summary (server, capabilities, checks, passed, findings by kind), then the distinct findings
grouped by kind, each with the rule it breaks, what was expected and observed, and its
reproducer as a table of messages (command, the bytes in hex, truncated in the middle when
long, and the reply expected), then coverage tables: checks per group, (state, command) cells
and FSM arcs. :func:`render` takes the :class:`~vfio_user_mig.check.findings.Report`'s JSON
object (``Report.to_json()``), so a saved ``--json`` file renders the same way.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from vfio_user_mig.check.findings import Kind, Report
from vfio_user_mig.check.steps import Expect, Step

#: Hex digits kept at each end of a long message in a reproducer table.
HEX_KEEP = 48
#: Steps of a reproducer shown before the last ones (setup is usually long and alike).
HEAD_STEPS = 3
TAIL_STEPS = 8


def hex_cell(data: str) -> str:
    """Message bytes as hex in 2-digit groups, the middle cut when long."""
    if len(data) > 2 * HEX_KEEP + 8:
        cut = (len(data) - 2 * HEX_KEEP) // 2
        return f"`{data[:HEX_KEEP]}`…({cut} bytes)…`{data[-HEX_KEEP:]}`"
    return f"`{data}`" if data else ""


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def reproducer_table(steps: list[dict[str, Any]]) -> list[str]:
    """The messages of a reproducer as markdown table rows (long setups elided)."""
    lines = ["| # | command | bytes | expected reply |", "|---|---|---|---|"]
    shown = list(enumerate(steps, 1))
    if len(shown) > HEAD_STEPS + TAIL_STEPS:
        skipped = len(shown) - HEAD_STEPS - TAIL_STEPS
        shown = [*shown[:HEAD_STEPS], (0, {}), *shown[-TAIL_STEPS:]]
    else:
        skipped = 0
    for n, step in shown:
        if not step:
            lines.append(f"| … | {skipped} steps | | |")
            continue
        expect = Expect.from_json(step.get("expect", {"reply": "any"}))
        fds = f" + fds {', '.join(step['fds'])}" if step.get("fds") else ""
        note = f" ({step['note']})" if step.get("note") else ""
        lines.append(f"| {n} | {step.get('command', '?')}{fds}{_cell(note)} | "
                     f"{hex_cell(Step.from_json(step).data.hex())} | "
                     f"{_cell(expect.describe())} |")
    return lines


def _summary(data: dict[str, Any]) -> list[str]:
    kinds = data.get("finding_kinds", {})
    lines = [
        f"# vfio-user conformance report: {_cell(str(data.get('server', '')))}", "",
        "| | |", "|---|---|",
        f"| checks | {data.get('checks', 0)} |",
        f"| passed | {data.get('passed', 0)} |",
        f"| failed | {data.get('failed', 0)} |",
        f"| distinct findings | {len(data.get('findings', []))} |",
        f"| findings (all occurrences) | {data.get('finding_count', 0)} |",
    ]
    if data.get("interrupted"):
        lines.append(f"| interrupted | by {data['interrupted']}: the report is partial |")
    caps = data.get("caps") or {}
    if caps:
        lines.append(f"| version | {caps.get('version', '?')} |")
        mig = caps.get("migration")
        lines.append(f"| migration capabilities | {', '.join(mig) if mig else 'none'} |")
    lines += ["", "| kind | occurrences |", "|---|---|"]
    lines += [f"| {k} | {n} |" for k, n in sorted(kinds.items())] or ["| (none) | 0 |"]
    return lines


def _findings(data: dict[str, Any]) -> list[str]:
    by_kind: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for finding in data.get("findings", []):
        by_kind[str(finding.get("kind"))].append(finding)
    lines: list[str] = ["", "## Findings", ""]
    if not by_kind:
        return [*lines, "No findings."]
    order = [str(k) for k in Kind]
    for kind in sorted(by_kind, key=lambda k: order.index(k) if k in order else len(order)):
        lines += [f"### {kind} ({len(by_kind[kind])})", ""]
        for n, f in enumerate(by_kind[kind], 1):
            lines += [
                f"#### {kind}-{n}: {_cell(f.get('title', ''))}", "",
                f"- group: {f.get('group', '')}; commands: {', '.join(f.get('commands', []))}",
                f"- rule: {_cell(f.get('spec', ''))}",
                f"- expected: {_cell(f.get('expected', ''))}",
                f"- observed: {_cell(f.get('observed', ''))}", "",
                *reproducer_table(f.get("reproducer", [])), "",
            ]
    return lines


def _advisories(data: dict[str, Any]) -> list[str]:
    entries = data.get("advisories") or []
    if not entries:
        return []
    lines = ["", "## Advisories (no rule broken)", "", "| group | what | times | why it matters |",
             "|---|---|---|---|"]
    lines += [f"| {a['group']} | {_cell(a['title'])} | {a['count']} | {_cell(a['detail'])} |"
              for a in entries]
    return lines


def _coverage(data: dict[str, Any]) -> list[str]:
    cov = data.get("coverage", {})
    lines = ["## Coverage", "", "| group | sequences |", "|---|---|"]
    lines += [f"| {g} | {n} |" for g, n in cov.get("groups", {}).items()]
    cells: dict[str, dict[str, int]] = defaultdict(dict)
    for key, n in cov.get("cells", {}).items():
        state, _, command = key.partition("/")
        cells[command][state] = n
    states = sorted({s for row in cells.values() for s in row})
    if cells:
        lines += ["", "Checks per (command, state):", "",
                  "| command | " + " | ".join(states) + " |",
                  "|---|" + "---|" * len(states)]
        for command in sorted(cells):
            row = cells[command]
            lines.append(f"| {command} | " + " | ".join(str(row.get(s, "")) for s in states)
                         + " |")
    arcs = cov.get("arcs", {})
    if arcs:
        lines += ["", "FSM arcs exercised:", "", "| arc | times |", "|---|---|"]
        lines += [f"| {a} | {n} |" for a, n in arcs.items()]
    return lines


def render(data: dict[str, Any] | Report) -> str:
    """The markdown report (module docstring) of a report or its JSON object."""
    if isinstance(data, Report):
        data = data.to_json()
    return "\n".join([*_summary(data), *_findings(data), *_advisories(data), "",
                      *_coverage(data)]) + "\n"


#: The name the ``check`` command imports.
render_markdown = render

__all__ = ["hex_cell", "render", "render_markdown", "reproducer_table"]
