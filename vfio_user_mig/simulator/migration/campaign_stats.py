"""Coverage of one campaign run, and the streaming summary of a whole campaign.

* :class:`RunCoverage` records, during one run, the FSM arcs its state SETs walked (the model's
  complex-transition path, :func:`~vfio_user_mig.model.transition_path`, up to the state the
  device reached) and the (state, command) cells its command probes hit (the gating matrix of
  PROTOCOL.md section 4).
* :class:`CampaignStats` aggregates run results as they arrive, in any order, with bounded
  memory: counters (outcomes, fault kinds, transports, checks, coverage) and the failures with
  the :data:`MAX_FAILURES` smallest seeds. Its summary (:meth:`CampaignStats.to_json`) depends
  only on the set of runs, never on their completion order, so any executor gives the same one.
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol

from vfio_user_mig.model import ARCS, STATES, MigrationCaps, State, known_path

#: Failures kept (those with the smallest seeds); the rest are only counted.
MAX_FAILURES = 1000
#: Outcome order of the summaries (others follow, sorted).
OUTCOME_ORDER = ("verified", "not_converged", "failed", "unverified", "error")


def arc_key(a: State, b: State) -> str:
    """``RUNNING->STOP``."""
    return f"{a.name}->{b.name}"


def cell_key(state: State, command: str) -> str:
    """``STOP_COPY/MIG_DATA_READ``."""
    return f"{state.name}/{command}"


#: Every direct arc of the model (any capability set), in the model's order.
ALL_ARCS: tuple[str, ...] = tuple(arc_key(a.src, a.dst) for a in ARCS)
#: Every state of the model, in the model's order.
ALL_STATES: tuple[str, ...] = tuple(s.state.name for s in STATES)


def replay_command(seed: int, faults: bool) -> str:
    """The command line that reproduces run ``seed``."""
    return f"vfio-user-mig simulate --replay {seed}{' --faults' if faults else ''}"


class RunCoverage:
    """What one run exercised: arcs walked and (state, command) cells probed, with counts."""

    def __init__(self, caps: MigrationCaps) -> None:
        self.caps = caps
        self.arcs: Counter[str] = Counter()
        self.cells: Counter[str] = Counter()

    def set_state(self, cur: State, target: int, reached: State | None) -> None:
        """A MIG_DEVICE_STATE SET from ``cur`` to ``target`` that left the device in
        ``reached``: count the arcs of the model's path from ``cur`` up to ``reached`` (none
        when the request was refused, its connection died, or the device fell into ERROR:
        which arc failed is the predictor's business, not coverage)."""
        if reached is None or reached is cur or target not in State._value2member_map_:
            return
        path = known_path(cur, State(target), self.caps) or ()
        if reached not in path:
            return
        for a, b in itertools.pairwise(path[: path.index(reached) + 1]):
            self.arcs[arc_key(a, b)] += 1

    def probe(self, state: State, command: str) -> None:
        """A command probed in ``state`` (its errno was checked against the gate)."""
        self.cells[cell_key(state, command)] += 1


class RunLike(Protocol):
    """The fields of a run result the summary reads (``campaign.RunResult``)."""

    seed: int
    ok: bool
    reason: str
    outcome: str
    fault: str
    fired: bool
    elapsed: float
    rounds: int
    checks: int
    transport: str
    arcs: dict[str, int]
    cells: dict[str, int]


def run_record(r: RunLike, faults: bool) -> dict[str, Any]:
    """One run as a JSON object (one line of ``simulate --out FILE.jsonl``)."""
    record: dict[str, Any] = {
        "seed": r.seed, "ok": r.ok, "outcome": r.outcome, "fault": r.fault, "fired": r.fired,
        "rounds": r.rounds, "checks": r.checks, "transport": r.transport,
        "elapsed_s": round(r.elapsed, 4), "arcs": dict(sorted(r.arcs.items())),
        "cells": dict(sorted(r.cells.items())),
    }
    if not r.ok:
        record["reason"] = r.reason
        record["replay"] = replay_command(r.seed, faults)
    return record


def _ordered(counts: Counter[str], order: tuple[str, ...]) -> dict[str, int]:
    known = [k for k in order if counts[k]]
    return {k: counts[k] for k in known + sorted(set(counts) - set(order)) if counts[k]}


@dataclass
class CampaignStats:
    """The streaming summary of a campaign: feed every run to :meth:`add`."""

    seed: int
    faults: bool
    workers: int
    executor: str = "local"
    scheduler: str | None = None
    """The Dask scheduler's address (``workers`` is then the cluster's business)."""
    elapsed: float = 0.0
    runs: int = 0
    passed: int = 0
    checks: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    arcs: Counter[str] = field(default_factory=Counter)
    cells: Counter[str] = field(default_factory=Counter)
    kinds: dict[str, Counter[str]] = field(default_factory=dict)
    transports: dict[str, Counter[str]] = field(default_factory=dict)
    _failures: list[tuple[int, int, RunLike]] = field(default_factory=list, repr=False)
    _tiebreak: itertools.count[int] = field(default_factory=itertools.count, repr=False)

    def add(self, r: RunLike) -> None:
        """Count one run (in any order)."""
        self.runs += 1
        self.passed += int(r.ok)
        self.checks += r.checks
        self.outcomes[r.outcome] += 1
        self.arcs.update(r.arcs)
        self.cells.update(r.cells)
        kind = self.kinds.setdefault(r.fault.split(" ")[0], Counter())
        kind.update(runs=1, fired=int(r.fired), passed=int(r.ok))
        transport = self.transports.setdefault(r.transport, Counter())
        transport.update(runs=1, passed=int(r.ok))
        if not r.ok:  # a max-heap on seed (negated): keep the MAX_FAILURES smallest seeds
            entry = (-r.seed, next(self._tiebreak), r)
            if len(self._failures) < MAX_FAILURES:
                heapq.heappush(self._failures, entry)
            elif entry[0] > self._failures[0][0]:
                heapq.heapreplace(self._failures, entry)

    @property
    def failed_count(self) -> int:
        """Runs that broke an invariant (all of them, kept or not)."""
        return self.runs - self.passed

    @property
    def failed(self) -> list[RunLike]:
        """The kept failures (the :data:`MAX_FAILURES` smallest seeds), by seed."""
        return [e[2] for e in sorted(self._failures, key=lambda e: -e[0])]

    def fault_table(self) -> dict[str, dict[str, int]]:
        """Per fault kind: runs, fired, passed."""
        return {k: {"runs": c["runs"], "fired": c["fired"], "passed": c["passed"]}
                for k, c in sorted(self.kinds.items())}

    def coverage(self) -> dict[str, Any]:
        """Arcs walked, (state, command) cells probed, fault kinds and outcomes, with counts
        and what was never exercised (arcs of the model, cells of the commands probed)."""
        commands = sorted({k.split("/", 1)[1] for k in self.cells})
        cells: dict[str, dict[str, int]] = {}
        for state in ALL_STATES:
            row = {c: self.cells[f"{state}/{c}"] for c in commands}
            if any(row.values()):
                cells[state] = row
        return {
            "arcs": _ordered(self.arcs, ALL_ARCS),
            "arcs_exercised": sum(1 for a in ALL_ARCS if self.arcs[a]),
            "arcs_total": len(ALL_ARCS),
            "arcs_missing": [a for a in ALL_ARCS if not self.arcs[a]],
            "cells": cells,
            "cells_exercised": sum(1 for v in self.cells.values() if v),
            "cells_total": len(ALL_STATES) * len(commands),
            "fault_kinds": {k: {"drawn": c["runs"], "fired": c["fired"]}
                            for k, c in sorted(self.kinds.items())},
            "outcomes": _ordered(self.outcomes, OUTCOME_ORDER),
        }

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` object (``failures``: the kept ones; ``failed``: all of them)."""
        return {
            "runs": self.runs,
            "passed": self.passed,
            "failed": self.failed_count,
            "seed": self.seed,
            "faults": self.faults,
            "workers": self.workers,
            "executor": self.executor,
            "scheduler": self.scheduler,
            "elapsed_s": round(self.elapsed, 3),
            "runs_per_s": round(self.runs / self.elapsed, 2) if self.elapsed > 0 else None,
            "outcomes": _ordered(self.outcomes, OUTCOME_ORDER),
            "fault_kinds": self.fault_table(),
            "transports": {t: {"runs": self.transports.get(t, Counter())["runs"],
                               "passed": self.transports.get(t, Counter())["passed"]}
                           for t in sorted({"main", "separate", *self.transports})},
            "checks": self.checks,
            "coverage": self.coverage(),
            "failures": [
                {"seed": r.seed, "reason": r.reason, "outcome": r.outcome, "fault": r.fault,
                 "replay": replay_command(r.seed, self.faults)}
                for r in self.failed
            ],
            "failures_kept": min(self.failed_count, MAX_FAILURES),
        }


__all__ = [
    "ALL_ARCS",
    "ALL_STATES",
    "MAX_FAILURES",
    "CampaignStats",
    "RunCoverage",
    "RunLike",
    "arc_key",
    "cell_key",
    "replay_command",
    "run_record",
]
