"""What a client must do in each referee scenario, and the verdict on what it did.

The referee's side of a scenario (what the device does) is in
:mod:`vfio_user_mig.simulator.referee.scenarios`; this module says what the spec requires
of the client then, as one of three expectations:

* ``completes``: the device behaved as the spec allows, so the migration must succeed
  (``clean``, ``short-reads``: PROTOCOL.md section 4 says a client takes unpadded replies;
  ``dma-stop-copy``: DMA requests are answered while the client waits);
* ``fails``: the migration cannot succeed (``arc-fails``, ``resume-refused``,
  ``disconnect``), so the client must report an error, not a success, and not hang;
* ``ends``: either is right, in bounded time (``no-converge``: switch over anyway or give up).

What the client did is its ``outcome`` (``completed``, ``error``, ``crashed``, ``hung``) plus
what the referee saw (the states each device went through, resets).
"""

from __future__ import annotations

from typing import Any

from vfio_user_mig.check.client.judge import ConnFacts
from vfio_user_mig.check.client.rules import spec_of
from vfio_user_mig.check.findings import Finding, Kind
from vfio_user_mig.simulator.referee.record import Session
from vfio_user_mig.simulator.referee.scenarios import SCENARIOS

EXPECT: dict[str, str] = {
    "clean": "completes",
    "arc-fails": "fails",
    "resume-refused": "fails",
    "no-converge": "ends",
    "short-reads": "completes",
    "dma-stop-copy": "completes",
    "disconnect": "fails",
}
assert set(EXPECT) == set(SCENARIOS), "every referee scenario has an expectation"

_SAID = {
    "completes": "the migration completes and the client reports success",
    "fails": "the client reports the failed migration (an error, not a success)",
    "ends": "the client switches over or gives up, in bounded time",
}


def did(session: Session, facts: list[ConnFacts]) -> dict[str, Any]:
    """What the client did in the run, for the report."""
    by_role: dict[str, list[str]] = {}
    for f in facts:
        by_role.setdefault(f.role, []).extend(f.states)
    summary = {
        "scenario": session.scenario,
        "seed": session.seed,
        "outcome": session.outcome,
        "expected": _SAID[EXPECT[session.scenario]],
        "exit": session.meta.get("exit"),
        "source_states": by_role.get("src", []),
        "destination_states": by_role.get("dst", []),
        "failed_state_changes": sum(f.failed_sets for f in facts),
        "connections": [f"{f.role}: {f.ended or 'open'}" for f in facts],
    }
    if session.outcome != "completed" and session.meta.get("output_tail"):
        # what the client printed last says why it stopped (its stdout and stderr, merged)
        summary["output_tail"] = str(session.meta["output_tail"])[-800:]
    return summary


def verdict(session: Session, facts: list[ConnFacts]) -> list[Finding]:
    """Findings on the client's outcome against what the scenario requires."""
    expect = EXPECT[session.scenario]
    outcome = session.outcome
    exit_text = f"outcome {outcome} (exit {session.meta.get('exit')})"
    title = f"[{session.scenario}]"
    if outcome == "hung":
        return [Finding(Kind.HANG, f"{title} client hung", [], _SAID[expect],
                        f"still running after {session.meta.get('timeout')} s: killed",
                        spec_of("no-hang"), group="no-hang")]
    if outcome == "crashed":
        return [Finding(Kind.CRASH, f"{title} client crashed", [], _SAID[expect], exit_text,
                        spec_of("no-crash"), group="no-crash")]
    if outcome not in ("completed", "error"):
        return []  # a client started by hand: no exit status to judge
    if expect == "completes" and outcome != "completed":
        return [Finding(Kind.STATE, f"{title} client did not complete a migration the device "
                        "allowed", [], _SAID[expect], exit_text, spec_of("migrates"),
                        group="migrates")]
    if expect == "fails" and outcome == "completed":
        return [Finding(Kind.STATE, f"{title} client reported success after a failed "
                        "migration", [], _SAID[expect], exit_text, spec_of("reports-failure"),
                        group="reports-failure")]
    return []


__all__ = ["EXPECT", "did", "verdict"]
