"""FSM theorems: they hold for the model and the kernel's fixed table, and every seeded mutant
breaks exactly the theorems it should, with a minimal, readable counterexample."""

from __future__ import annotations

import pytest

from vfio_user_mig.model import ALL_CAPS, State
from vfio_user_mig.proofs import Result, Status, run_all
from vfio_user_mig.proofs.fsm_theorems import (
    FSM_THEOREMS,
    MODEL,
    admissible,
    best_paths,
    fsm_theorems,
)
from vfio_user_mig.proofs.mutants import BREAKS, FSM_IMPLEMENTATIONS, FSM_MUTANTS
from vfio_user_mig.proofs.suite import theorem_key

FULL = ALL_CAPS[-1]
S = State


def _failed(impl_name: str) -> dict[str, list[Result]]:
    suite = run_all(fsm_theorems(FSM_IMPLEMENTATIONS[impl_name]), impl_name)
    out: dict[str, list[Result]] = {}
    for r in suite.results:
        if r.status is not Status.HOLDS:
            out.setdefault(theorem_key(r.theorem.name), []).append(r)
    return out


def test_every_fsm_theorem_holds_for_the_model() -> None:
    suite = run_all(fsm_theorems(MODEL))
    assert len(suite.results) == 4 * len(FSM_THEOREMS) - 1  # restriction: proper subsets only
    bad = [(r.theorem.name, r.counterexample) for r in suite.results if r.status != "holds"]
    assert bad == []
    assert all(r.cases > 0 for r in suite.results)
    assert suite.enumerated_cases > 1500 and suite.explorations() == []


def test_the_kernel_fixed_table_is_an_independent_correct_implementation() -> None:
    assert _failed("kernel-fixed") == {}


@pytest.mark.parametrize("mutant", sorted(FSM_MUTANTS))
def test_mutant_breaks_exactly_the_expected_theorems(mutant: str) -> None:
    failed = _failed(mutant)
    assert set(failed) == BREAKS[mutant]
    for results in failed.values():
        for r in results:
            assert r.status is Status.FAILS, r  # a counterexample, not a checker crash
            assert r.counterexample is not None and r.counterexample.reason


def _cex(mutant: str, key: str, caps: int = int(FULL)) -> tuple[str, str]:
    for r in run_all(fsm_theorems(FSM_IMPLEMENTATIONS[mutant])).results:
        if theorem_key(r.theorem.name) == key and r.theorem.caps == _label(caps):
            assert r.counterexample is not None, r
            return r.counterexample.case, r.counterexample.reason
    raise AssertionError(f"no {key} result for {mutant}")


def _label(caps: int) -> str:
    from vfio_user_mig.model import caps_label

    return caps_label(caps)


def test_unfixed_kernel_loop_is_reported_on_the_blocked_pair() -> None:
    case, reason = _cex("kernel-unfixed", "walk-terminates")
    assert case == "STOP_COPY -> PRE_COPY" and "never returns" in reason
    case, reason = _cex("kernel-unfixed", "refused-at-once", int(ALL_CAPS[2]))
    assert case == "STOP_COPY -> PRE_COPY" and "must be refused" in reason


def test_missing_blocked_arc_counterexample_shows_the_reentering_path() -> None:
    case, reason = _cex("missing-blocked-arc", "no-reentry", int(ALL_CAPS[2]))
    assert case == "STOP_COPY -> PRE_COPY"
    assert "STOP_COPY -> STOP -> RUNNING -> PRE_COPY" in reason


def test_p2p_arc_set_mutant_is_caught_by_the_kernel_arcs() -> None:
    case, reason = _cex("p2p-as-non-p2p", "kernel-arcs", int(ALL_CAPS[1]))
    assert case == "STOP -> RUNNING" and "kernel never steps" in reason


def test_wrong_tie_break_counterexample() -> None:
    case, reason = _cex("wrong-tie-break", "shortest-under-rule", int(ALL_CAPS[2]))
    assert case == "PRE_COPY -> STOP"
    assert "expected PRE_COPY -> RUNNING -> STOP" in reason
    assert "got PRE_COPY -> STOP_COPY -> STOP" in reason


def test_off_by_one_bound_lets_state_8_through() -> None:
    case, reason = _cex("off-by-one-bound", "refused-at-once", int(ALL_CAPS[0]))
    assert case.endswith("-> 8") and "returned 8" in reason


def test_admissibility_rule() -> None:
    assert admissible((S.PRE_COPY, S.PRE_COPY_P2P, S.STOP_COPY))
    assert admissible((S.PRE_COPY, S.RUNNING, S.STOP))
    assert admissible((S.RUNNING, S.STOP, S.STOP_COPY))
    assert not admissible((S.RUNNING, S.PRE_COPY, S.STOP_COPY))  # enters at an interior state
    assert not admissible((S.STOP_COPY, S.STOP, S.RUNNING, S.PRE_COPY))  # leaves, re-enters
    graph = MODEL.graph(FULL)
    assert best_paths(graph, S.STOP_COPY, S.PRE_COPY) == []
    assert best_paths(graph, S.PRE_COPY, S.STOP_COPY) == [
        (S.PRE_COPY, S.PRE_COPY_P2P, S.STOP_COPY)]
