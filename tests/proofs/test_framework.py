"""The theorem framework: exhaustive counting, minimal counterexamples, expectations, skips."""

from __future__ import annotations

from vfio_user_mig.proofs import (
    Explored,
    Skip,
    Status,
    Theorem,
    Verdict,
    exhaust,
    run_all,
    run_theorem,
)


def test_exhaust_counts_every_case_and_keeps_the_smallest_failure() -> None:
    verdict = exhaust(
        [5, 3, 8, 1, 4],
        lambda n: "odd" if n % 2 else None,
        lambda n: f"n={n}",
        size=lambda n: n,
    )
    assert verdict.cases == 5 and verdict.failures == 3 and not verdict.holds
    assert verdict.counterexample is not None
    assert verdict.counterexample.case == "n=1" and verdict.counterexample.reason == "odd"


def test_exhaust_without_size_reports_the_first_failure_in_domain_order() -> None:
    verdict = exhaust(range(10), lambda n: "big" if n > 6 else None, str)
    assert verdict.cases == 10 and verdict.failures == 3
    assert verdict.counterexample is not None and verdict.counterexample.case == "7"


def test_exhaust_holds() -> None:
    verdict = exhaust(range(4), lambda n: None, str, note="fine")
    assert verdict.holds and verdict.cases == 4 and verdict.note == "fine"


def _theorem(check: object, expect: str = "holds") -> Theorem:
    return Theorem("t", "statement", "domain", check, expect=expect)  # type: ignore[arg-type]


def test_expected_failure_counts_as_passing() -> None:
    failing = lambda: exhaust([1], lambda n: "no", str)  # noqa: E731
    assert run_theorem(_theorem(failing, "fails")).as_expected
    result = run_theorem(_theorem(failing))
    assert result.status is Status.FAILS and not result.as_expected
    holding = lambda: Verdict(3)  # noqa: E731
    assert not run_theorem(_theorem(holding, "fails")).as_expected


def test_skip_and_crash() -> None:
    def skipped() -> Verdict:
        raise Skip("nothing to probe")

    def crashing() -> Verdict:
        raise ZeroDivisionError("boom")

    skip = run_theorem(_theorem(skipped))
    assert skip.status is Status.SKIPPED and skip.as_expected and skip.note == "nothing to probe"
    crash = run_theorem(_theorem(crashing))
    assert crash.status is Status.ERROR and not crash.as_expected
    assert crash.counterexample is not None and "boom" in crash.counterexample.reason
    assert not run_theorem(_theorem(crashing, "fails")).as_expected


def test_suite_totals_and_json() -> None:
    suite = run_all([_theorem(lambda: Verdict(3)), _theorem(lambda: Verdict(4))])
    assert suite.ok and suite.enumerated_cases == 7 and suite.explorations() == []
    data = suite.to_json()
    assert data["enumerated_cases"] == 7 and data["ok"] and len(data["results"]) == 2
    assert data["explorations"] == [] and "total_cases" not in data


def test_a_shared_exploration_is_reported_once_not_summed() -> None:
    space = Explored("cfg-a", states=100, transitions=250)
    other = Explored("cfg-b", states=7, transitions=9)
    suite = run_all([
        _theorem(lambda: Verdict(5)),
        _theorem(lambda: Verdict(100, explored=space)),
        _theorem(lambda: Verdict(40, explored=space)),
        _theorem(lambda: Verdict(7, explored=other)),
    ])
    assert suite.enumerated_cases == 5
    assert [(s.key, s.states, s.transitions, len(names))
            for s, names in suite.explorations()] == [("cfg-a", 100, 250, 2), ("cfg-b", 7, 9, 1)]
    data = suite.to_json()
    assert data["enumerated_theorems"] == 1
    assert [(e["states"], e["transitions"], len(e["theorems"])) for e in data["explorations"]] \
        == [(100, 250, 2), (7, 9, 1)]
    assert data["results"][1]["explored"] == {"key": "cfg-a", "states": 100, "transitions": 250}
