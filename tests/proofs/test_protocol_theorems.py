"""Protocol theorems: the legality table (model and probe), and the abstract session."""

from __future__ import annotations

import errno

import pytest

from vfio_user_mig.model import VFIO_USER_CAPS, State
from vfio_user_mig.proofs import Status, run_all, run_theorem
from vfio_user_mig.proofs import protocol_theorems as pt
from vfio_user_mig.proofs.mutants import BREAKS, SESSION_MUTANTS
from vfio_user_mig.proofs.report import render_text
from vfio_user_mig.proofs.session_model import (
    DONE,
    END,
    SessionConfig,
    explore,
    is_final,
)
from vfio_user_mig.proofs.suite import theorem_key
from vfio_user_mig.wire.constants import Command


def test_legality_table_model_holds() -> None:
    verdict = pt.check_legality_model(VFIO_USER_CAPS)
    assert verdict.holds and verdict.cases == 6 * len(Command)


def test_legality_against_a_gate_probe_holds_on_every_cell() -> None:
    verdict = pt.check_legality_probe(VFIO_USER_CAPS, pt.gate_probe(VFIO_USER_CAPS))
    assert verdict.holds and verdict.cases == 6 * 15


def test_a_wrong_probe_fails_on_the_first_differing_cell() -> None:
    right = pt.gate_probe(VFIO_USER_CAPS)

    def wrong(state: State, command: Command) -> int | None:
        # libvfio-user-like slip: MIG_DATA_READ accepted in RESUMING and in STOP
        if command == Command.MIG_DATA_READ and state in (State.RESUMING, State.STOP):
            return None
        return right(state, command)

    verdict = pt.check_legality_probe(VFIO_USER_CAPS, wrong)
    assert not verdict.holds and verdict.failures == 2
    assert verdict.counterexample is not None
    assert verdict.counterexample.case == "STOP x MIG_DATA_READ"  # table order: STOP < RESUMING
    assert verdict.counterexample.reason == "model: EINVAL; server: accepted"


def test_probe_errors_are_failures_and_probes_are_closed() -> None:
    closed: list[bool] = []

    class Probe:
        def __call__(self, state: State, command: Command) -> int | None:
            raise ConnectionResetError("gone")

        def close(self) -> None:
            closed.append(True)

    (_, server) = pt.legality_theorems((VFIO_USER_CAPS,), lambda caps: Probe(), name="fake")
    result = run_theorem(server)
    assert result.status is Status.FAILS and closed == [True]
    assert result.counterexample is not None and "gone" in result.counterexample.reason


def test_server_theorem_is_skipped_when_no_probe_module(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pt, "PROBE_MODULE", "vfio_user_mig.simulator.no_such_probe")
    (_, server) = pt.legality_theorems((VFIO_USER_CAPS,))
    result = run_theorem(server)
    assert result.status is Status.SKIPPED and result.as_expected
    assert "no_such_probe" in result.note


def test_session_theorems_hold_and_report_the_state_space() -> None:
    suite = run_all(pt.session_theorems())
    by_name = {r.theorem.name: r for r in suite.results}
    assert suite.ok, [(r.theorem.name, r.counterexample) for r in suite.unexpected()]
    exp = explore(SessionConfig())
    assert by_name["session.no-deadlock"].cases == exp.states
    assert by_name["session.stream-in-order"].cases == exp.states
    assert by_name["session.final-state-agreement"].cases == len(exp.finals())
    # The five theorems re-walk one exploration: it is reported once, with its theorems.
    spaces = suite.explorations()
    assert [(s.states, s.transitions, len(names)) for s, names in spaces] == [
        (exp.states, exp.arcs, 5), (spaces[1][0].states, spaces[1][0].transitions, 1)]
    assert spaces[1][1] == ["session.no-deadlock[non-serving driver]"]
    assert suite.enumerated_cases == 0
    line = f"5 theorems over one exploration of {exp.states} states and {exp.arcs} transitions"
    assert render_text(suite).count(line) == 1
    assert exp.states > 10_000 and exp.finals()
    assert all(w.pc == DONE and w.devs[1].log[-1] == END for w in exp.finals() if is_final(w))


def test_mig_data_gating_exercises_every_vfio_user_state() -> None:
    exp = explore(SessionConfig())
    cells = {(e.state, e.op) for _, _, d in exp.graph.edges(data=True) for e in d["events"]}
    for state in (State.RUNNING, State.STOP, State.PRE_COPY, State.STOP_COPY, State.RESUMING):
        assert (state, "READ") in cells and (state, "WRITE") in cells


def test_non_serving_driver_deadlocks_with_the_shortest_trace() -> None:
    (blocking,) = [t for t in pt.session_theorems() if "non-serving" in t.name]
    assert blocking.expect == "fails"
    result = run_theorem(blocking)
    assert result.status is Status.FAILS and result.as_expected
    cex = result.counterexample
    assert cex is not None and "deadlock" in cex.reason
    assert cex.trace[-1].startswith("src needs guest memory for MIG_DATA_READ")
    assert cex.trace[0] == "driver -> dst: SET RESUMING"
    assert len(cex.trace) == 8 == cex.size


def test_serving_driver_never_deadlocks_even_with_more_dma() -> None:
    cfg = SessionConfig(chunks=2, dma_budget=3, dirty_budget=1, probe_budget=0)
    assert pt.check_no_deadlock(cfg).holds
    assert not pt.check_no_deadlock(SessionConfig(chunks=2, dma_budget=3, dirty_budget=1,
                                                  probe_budget=0,
                                                  serving_driver=False)).holds


@pytest.mark.parametrize("mutant", sorted(SESSION_MUTANTS))
def test_session_mutants_break_exactly_their_theorems(mutant: str) -> None:
    suite = run_all(pt.session_theorems(SESSION_MUTANTS[mutant], suffix=mutant,
                                        non_serving=False))
    broken = {theorem_key(r.theorem.name) for r in suite.results if not r.as_expected}
    assert broken == BREAKS[mutant]
    for r in suite.unexpected():
        assert r.status is Status.FAILS and r.counterexample is not None
        assert r.counterexample.trace  # a run that shows it


def test_no_dirty_resend_loses_the_dirtied_chunk() -> None:
    verdict = pt.check_final_agreement(SESSION_MUTANTS["no-dirty-resend"])
    assert verdict.counterexample is not None
    assert "destination state" in verdict.counterexample.reason
    assert any(step.startswith("guest dirties") for step in verdict.counterexample.trace)


def test_errno_rendering() -> None:
    assert pt._errno_name(None) == "accepted" and pt._errno_name(errno.EINVAL) == "EINVAL"
