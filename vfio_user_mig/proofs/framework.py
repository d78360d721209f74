"""A small theorem framework: named statements over finite domains, checked exhaustively.

A :class:`Theorem` has a name, a precise statement, a description of the finite domain it
quantifies over, a checker and an expected outcome. The checker enumerates the whole domain
and returns a :class:`Verdict`: how many cases it checked, how many failed, and the smallest
failing case (:class:`Counterexample`). :func:`run_theorem` times a check and turns it into a
:class:`Result`; a result is *as expected* when the outcome matches ``Theorem.expect`` (a
theorem expected to fail, such as "a driver that does not serve DMA requests never
deadlocks", passes when it fails) or when it was skipped (:class:`Skip`).

:func:`exhaust` is the usual checker body: it checks every case of an ordered domain, keeps
counting after the first failure and reports the failing case of smallest ``size`` (ties:
the first in domain order), so the counterexample is minimal and the case count is always the
size of the whole domain.

Theorems about a reachable state space (the session theorems) re-walk one shared exploration:
their verdicts carry the :class:`Explored` space, and a :class:`SuiteResult` reports each
distinct space once (its states and transitions, and the theorems checked over it) instead of
summing the cases of theorems that walk the same states. Only theorems over an enumerated
domain of their own contribute to :attr:`SuiteResult.enumerated_cases`.
"""

from __future__ import annotations

import enum
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

Expect = Literal["holds", "fails"]
C = TypeVar("C")


class Status(enum.StrEnum):
    """What a check found."""

    HOLDS = "holds"
    FAILS = "fails"
    SKIPPED = "skipped"
    ERROR = "error"  # the checker itself raised: reported as a failure of the theorem


class Skip(Exception):
    """Raised by a checker whose domain cannot be built here (e.g. no server to probe)."""


@dataclass(frozen=True)
class Counterexample:
    """One failing case: what it is, why it fails, optionally the trace that reaches it."""

    case: str
    reason: str
    size: int = 0
    trace: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"case": self.case, "reason": self.reason, "size": self.size,
                "trace": list(self.trace)}


@dataclass(frozen=True)
class Explored:
    """A reachable state space a theorem was checked over; theorems with the same ``key``
    walked the same exploration."""

    key: str
    states: int
    transitions: int

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"key": self.key, "states": self.states, "transitions": self.transitions}


@dataclass(frozen=True)
class Verdict:
    """What a checker returns: cases checked, failures, the minimal counterexample."""

    cases: int
    counterexample: Counterexample | None = None
    failures: int = 0
    note: str = ""
    explored: Explored | None = None

    @property
    def holds(self) -> bool:
        """True when no case failed."""
        return self.counterexample is None


@dataclass(frozen=True)
class Theorem:
    """A property with the finite domain it quantifies over and the checker that exhausts it."""

    name: str
    statement: str
    domain: str
    check: Callable[[], Verdict]
    expect: Expect = "holds"
    group: str = "fsm"
    caps: str = ""


@dataclass(frozen=True)
class Result:
    """The outcome of checking one theorem."""

    theorem: Theorem
    status: Status
    cases: int
    seconds: float
    counterexample: Counterexample | None = None
    failures: int = 0
    note: str = ""
    explored: Explored | None = None

    @property
    def as_expected(self) -> bool:
        """True when skipped or when the outcome is the expected one."""
        if self.status is Status.SKIPPED:
            return True
        return self.status.value == self.theorem.expect

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form."""
        t = self.theorem
        return {
            "name": t.name,
            "group": t.group,
            "caps": t.caps,
            "statement": t.statement,
            "domain": t.domain,
            "expect": t.expect,
            "status": self.status.value,
            "as_expected": self.as_expected,
            "cases": self.cases,
            "failures": self.failures,
            "seconds": round(self.seconds, 4),
            "note": self.note,
            "explored": None if self.explored is None else self.explored.to_json(),
            "counterexample": None if self.counterexample is None
            else self.counterexample.to_json(),
        }


@dataclass
class SuiteResult:
    """All results of one run, with totals."""

    results: list[Result] = field(default_factory=list)
    seconds: float = 0.0
    implementation: str = "model"

    @property
    def enumerated_cases(self) -> int:
        """Cases checked by the theorems over an enumerated domain of their own (a case
        checked by two theorems counts twice: two properties were checked); theorems over a
        shared exploration are reported by :meth:`explorations` instead."""
        return sum(r.cases for r in self.results if r.explored is None)

    def explorations(self) -> list[tuple[Explored, list[str]]]:
        """Each distinct explored state space once, with the theorems checked over it."""
        spaces: dict[str, tuple[Explored, list[str]]] = {}
        for r in self.results:
            if r.explored is not None:
                spaces.setdefault(r.explored.key, (r.explored, []))[1].append(r.theorem.name)
        return list(spaces.values())

    @property
    def ok(self) -> bool:
        """True when every outcome matches its expectation."""
        return all(r.as_expected for r in self.results)

    def unexpected(self) -> list[Result]:
        """Results whose outcome differs from the expectation."""
        return [r for r in self.results if not r.as_expected]

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "implementation": self.implementation,
            "ok": self.ok,
            "seconds": round(self.seconds, 3),
            "theorems": len(self.results),
            "enumerated_cases": self.enumerated_cases,
            "enumerated_theorems": sum(1 for r in self.results
                                       if r.explored is None and r.status is not Status.SKIPPED),
            "explorations": [{**space.to_json(), "theorems": names}
                             for space, names in self.explorations()],
            "unexpected": [r.theorem.name for r in self.unexpected()],
            "results": [r.to_json() for r in self.results],
        }


def exhaust(
    cases: Iterable[C],
    check: Callable[[C], str | None],
    render: Callable[[C], str],
    size: Callable[[C], int] | None = None,
    note: str = "",
) -> Verdict:
    """Check every case; ``check`` returns ``None`` when the case holds, else the reason.

    The counterexample is the failing case of smallest ``size`` (first in domain order among
    equals). Every case is checked even after a failure, so ``cases`` is the domain size and
    ``failures`` the number of failing cases.
    """
    count = 0
    failures = 0
    best: tuple[int, int, C, str] | None = None
    for index, case in enumerate(cases):
        count += 1
        reason = check(case)
        if reason is None:
            continue
        failures += 1
        key = size(case) if size is not None else 0
        if best is None or (key, index) < (best[0], best[1]):
            best = (key, index, case, reason)
    if best is None:
        return Verdict(count, None, 0, note)
    return Verdict(count, Counterexample(render(best[2]), best[3], best[0]), failures, note)


def run_theorem(theorem: Theorem) -> Result:
    """Check one theorem, timing it; a crash of the checker is an ERROR with its traceback."""
    start = time.perf_counter()
    try:
        verdict = theorem.check()
    except Skip as skip:
        return Result(theorem, Status.SKIPPED, 0, time.perf_counter() - start, note=str(skip))
    except Exception as exc:
        tb = traceback.format_exception_only(type(exc), exc)[-1].strip()
        cex = Counterexample("(checker crashed)", tb)
        return Result(theorem, Status.ERROR, 0, time.perf_counter() - start, cex, 1)
    status = Status.HOLDS if verdict.holds else Status.FAILS
    return Result(theorem, status, verdict.cases, time.perf_counter() - start,
                  verdict.counterexample, verdict.failures, verdict.note, verdict.explored)


def run_all(theorems: Iterable[Theorem], implementation: str = "model") -> SuiteResult:
    """Check every theorem in order."""
    start = time.perf_counter()
    results = [run_theorem(t) for t in theorems]
    return SuiteResult(results, time.perf_counter() - start, implementation)


__all__ = [
    "Counterexample",
    "Expect",
    "Explored",
    "Result",
    "Skip",
    "Status",
    "SuiteResult",
    "Theorem",
    "Verdict",
    "exhaust",
    "run_all",
    "run_theorem",
]
