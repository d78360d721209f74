"""Rendering of proof results: a terminal table, Markdown, JSON."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

from vfio_user_mig.proofs.framework import Result, Status, SuiteResult

_MARK = {True: "ok", False: "UNEXPECTED"}


def _verdict(result: Result) -> str:
    if result.status is Status.SKIPPED:
        return "skipped"
    word = result.status.value
    if result.theorem.expect == "fails":
        word += " (expected)" if result.as_expected else " (expected to fail)"
    return word


def _short(result: Result, width: int = 60) -> str:
    if result.status is Status.SKIPPED:
        text = result.note
    elif result.counterexample is None:
        return ""
    else:
        text = f"{result.counterexample.case}: {result.counterexample.reason}"
    return text if len(text) <= width else text[: width - 3] + "..."


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' if n != 1 else ''}"


def _totals(suite: SuiteResult) -> str:
    """What was checked, each figure once: the theorems over enumerated domains with the
    cases they checked, then each explored state space once with the theorems checked over it
    (theorems that re-walk one exploration do not add its states up again)."""
    checked = [r for r in suite.results if r.status is not Status.SKIPPED]
    skipped = len(suite.results) - len(checked)
    bad = len(suite.unexpected())
    enumerated = sum(1 for r in checked if r.explored is None)
    lines = [f"{_plural(len(suite.results), 'theorem')} ({len(checked)} checked, {skipped} "
             f"skipped), {_plural(bad, 'unexpected outcome')} in {suite.seconds:.2f} s "
             f"[implementation: {suite.implementation}]",
             f"{_plural(enumerated, 'theorem')} over enumerated domains: "
             f"{_plural(suite.enumerated_cases, 'case')} checked"]
    for space, names in suite.explorations():
        lines.append(f"{_plural(len(names), 'theorem')} over one exploration of "
                     f"{_plural(space.states, 'state')} and "
                     f"{_plural(space.transitions, 'transition')}")
    return "\n".join(lines)


def _details(result: Result) -> list[str]:
    cex = result.counterexample
    if cex is None:
        return []
    lines = [f"{result.theorem.name}: {_verdict(result)}",
             f"  statement: {result.theorem.statement}",
             f"  domain: {result.theorem.domain}",
             f"  counterexample: {cex.case}",
             f"  why: {cex.reason}"]
    if result.failures > 1:
        lines.append(f"  ({result.failures} failing cases; this is the smallest)")
    if cex.trace:
        lines.append(f"  shortest trace ({len(cex.trace)} steps):")
        lines += [f"    {i:3d}. {step}" for i, step in enumerate(cex.trace, 1)]
    return lines


def render_text(suite: SuiteResult) -> str:
    """A fixed-width table, then the counterexamples, then the totals."""
    rows = [(_MARK[r.as_expected], r.theorem.name, _verdict(r), str(r.cases),
             f"{r.seconds * 1000:.0f}", _short(r)) for r in suite.results]
    head = ("", "theorem", "result", "cases", "ms", "counterexample / note")
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(5)]

    def line(row: Sequence[str]) -> str:
        cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1]), row[2].ljust(widths[2]),
                 row[3].rjust(widths[3]), row[4].rjust(widths[4]), row[5]]
        return "  ".join(cells).rstrip()

    out = [line(head), line(["-" * w for w in widths] + ["-" * 21])]
    out += [line(row) for row in rows]
    details = [_details(r) for r in suite.results if r.counterexample is not None]
    if details:
        out.append("")
        out.append("Counterexamples")
        for block in details:
            out.append("")
            out += block
    out.append("")
    out.append(_totals(suite))
    return "\n".join(out)


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def render_markdown(suite: SuiteResult) -> str:
    """A Markdown report: summary table, then each theorem with statement and domain."""
    out = ["# vfio-user-mig proofs", "", *[f"- {line}" for line in _totals(suite).splitlines()],
           "",
           "| | theorem | expect | result | cases | ms |", "|---|---|---|---|---:|---:|"]
    for r in suite.results:
        out.append(f"| {'✅' if r.as_expected else '❌'} | `{_md(r.theorem.name)}` | "
                   f"{r.theorem.expect} | {_verdict(r)} | {r.cases} | {r.seconds * 1000:.0f} |")
    out += ["", "## Theorems", ""]
    for r in suite.results:
        out += [f"### `{r.theorem.name}`", "", r.theorem.statement, "",
                f"- domain: {r.theorem.domain}", f"- result: **{_verdict(r)}**, "
                f"{r.cases} cases" + (f" ({r.note})" if r.note else "")]
        cex = r.counterexample
        if cex is not None:
            out.append(f"- counterexample: `{_md(cex.case)}`: {cex.reason}")
            if r.failures > 1:
                out.append(f"- {r.failures} failing cases; the smallest is shown")
            if cex.trace:
                out += ["", "  Shortest trace:", ""]
                out += [f"  {i}. {step}" for i, step in enumerate(cex.trace, 1)]
        out.append("")
    return "\n".join(out)


def render_json(suite: SuiteResult) -> str:
    """One JSON object."""
    return json.dumps(suite.to_json())


def render_matrix(matrix: Mapping[str, Sequence[str]]) -> str:
    """The mutation matrix: each mutant with the theorems it breaks."""
    out = ["mutant                theorems broken"]
    for name, broken in matrix.items():
        out.append(f"{name:<21} {len(broken):>3}  " + (", ".join(broken) or "(none)"))
    return "\n".join(out)


__all__ = ["render_json", "render_markdown", "render_matrix", "render_text"]
