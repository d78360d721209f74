"""``check --replay FILE``: run reproducers again and judge every reply against its Expect.

FILE may be any of:

* a reproducer written by random exploration (:mod:`.explore`): ``{"seed", "ops", "finding",
  "steps"}``;
* a finding's ``"reproducer"``: a JSON list of step dictionaries (:class:`~.steps.Step`);
* a finding object from ``--json`` output (``{"title", "reproducer", ...}``);
* a whole ``--json`` report: every finding's reproducer is replayed.

Each reproducer runs on a fresh connection (a fresh process for ``--spawn``), its steps sent in
order exactly as recorded (VERSION included); each reply is one check decided by
:func:`~.steps.judge`, and every departure is a :class:`~.findings.Finding` in the usual format,
whose own reproducer is the steps sent up to it. A fixed server replays clean.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vfio_user_mig.check.findings import Kind
from vfio_user_mig.check.session import Checker
from vfio_user_mig.check.steps import Step, judge
from vfio_user_mig.check.target import TargetError

GROUP = "replay"


class ReplayError(ValueError):
    """FILE is not a reproducer, a finding or a report."""


def load_reproducers(doc: Any) -> list[tuple[str, list[Step]]]:
    """(title, steps) for each reproducer in a parsed FILE (module docstring)."""
    if isinstance(doc, list):
        return [("reproducer", [Step.from_json(s) for s in doc])]
    if not isinstance(doc, dict):
        raise ReplayError("expected a JSON list of steps or an object")
    if isinstance(doc.get("steps"), list):
        finding = doc.get("finding")
        title = finding.get("title", "reproducer") if isinstance(finding, dict) else "reproducer"
        return [(str(title), [Step.from_json(s) for s in doc["steps"]])]
    if isinstance(doc.get("reproducer"), list):
        return [(str(doc.get("title", "finding")),
                 [Step.from_json(s) for s in doc["reproducer"]])]
    if isinstance(doc.get("findings"), list):
        out = []
        for finding in doc["findings"]:
            out.extend(load_reproducers(finding))
        return out
    raise ReplayError("no steps, reproducer or findings in the JSON object")


def replay_steps(checker: Checker, steps: list[Step], title: str) -> int:
    """Send ``steps`` on a fresh connection, one check per reply; the number of departures."""
    before = len(checker.report.findings)
    with checker.sequence(GROUP, f"replay: {title}", setup=False) as seq:
        for index, step in enumerate(steps):
            close_ok = step.expect.reply == "error_or_close"
            if step.no_reply:
                seq.steps.append(step)
                seq.conn.send(step.data)
                continue
            reply = seq.exchange(step.data, fds=step.fds, expect=step.expect, note=step.note,
                                 close_ok=close_ok)
            verdict = judge(step.expect, reply)
            seq.verify(verdict.kind is None, verdict.kind or Kind.REPLY,
                       f"{title} (replayed step {index}, {step.command})",
                       step.expect.describe(), verdict.observed,
                       step.expect.rule or "the reproducer's expectation", [step.command])
            if reply is None:
                break
    return len(checker.report.findings) - before


def replay(checker: Checker, path: str | Path) -> None:
    """Replay every reproducer in ``path`` (module docstring) into ``checker.report``;
    ``report.extra["replay"]`` says what ran."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ReplayError(f"cannot read {path}: {exc}") from exc
    runs = load_reproducers(doc)
    failing = 0
    errors: list[str] = []
    for title, steps in runs:
        try:
            failing += replay_steps(checker, steps, title) > 0
        except TargetError as exc:
            errors.append(str(exc))
    checker.report.extra["replay"] = {
        "file": str(path), "reproducers": len(runs),
        "steps": sum(len(s) for _t, s in runs), "still_failing": failing,
        "target_errors": errors,
    }


__all__ = ["ReplayError", "load_reproducers", "replay", "replay_steps"]
