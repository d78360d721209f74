"""The device executor: generated transitions.Machine, walker, failure semantics, reset."""

from __future__ import annotations

import errno
import itertools

import pytest
from transitions import MachineError

from vfio_user_mig.model import (
    ALL_CAPS,
    VFIO_USER_CAPS,
    ArcActionError,
    DeviceFSM,
    InvalidTransition,
    State,
    transition_graph,
    transition_path,
)


class Recorder:
    """Device actions that log every arc and fail on a chosen one."""

    def __init__(self, fail_on: tuple[State, State] | None = None, broken: bool = False) -> None:
        self.arcs: list[tuple[State, State]] = []
        self.resets = 0
        self.fail_on = fail_on
        self.broken = broken

    def on_arc(self, src: State, dst: State) -> None:
        if (src, dst) == self.fail_on:
            raise ArcActionError(f"{src.name}->{dst.name} failed", errno.EIO, broken=self.broken)
        self.arcs.append((src, dst))

    def on_reset(self) -> None:
        self.resets += 1


@pytest.mark.parametrize("caps", ALL_CAPS, ids=lambda c: str(int(c)))
def test_machine_triggers_are_exactly_the_graph_arcs(caps: int) -> None:
    fsm = DeviceFSM(caps)
    graph = transition_graph(caps)
    arcs = {
        (State[t.source], State[t.dest])
        for event in fsm.machine.events.values()
        if event.name != "reset"
        for trans in event.transitions.values()
        for t in trans
    }
    assert arcs == set(graph.edges)
    assert not any(name.startswith("to_") for name in fsm.machine.events)


@pytest.mark.parametrize("caps", ALL_CAPS, ids=lambda c: str(int(c)))
def test_walker_calls_one_action_per_arc_of_the_path(caps: int) -> None:
    graph = transition_graph(caps)
    states = [s for s in graph.nodes if s is not State.ERROR]
    for start in states:
        for target in states:
            rec = Recorder()
            fsm = DeviceFSM(caps, rec, initial=start)
            try:
                path = transition_path(start, target, caps)
            except InvalidTransition:
                with pytest.raises(InvalidTransition):
                    fsm.set_state(target)
                assert fsm.state == start and rec.arcs == []
                continue
            result = fsm.set_state(target)
            assert result.ok and fsm.state == target
            assert rec.arcs == list(itertools.pairwise(path))


def test_failing_action_stops_at_last_completed_state() -> None:
    rec = Recorder(fail_on=(State.STOP, State.STOP_COPY))
    fsm = DeviceFSM(VFIO_USER_CAPS, rec)
    result = fsm.set_state(State.STOP_COPY)
    assert not result.ok and result.error is not None and result.error.errno == errno.EIO
    assert fsm.state == State.STOP
    assert result.completed == [(State.RUNNING, State.STOP)]


def test_first_arc_failure_leaves_state_unchanged() -> None:
    rec = Recorder(fail_on=(State.RUNNING, State.PRE_COPY))
    fsm = DeviceFSM(VFIO_USER_CAPS, rec)
    assert not fsm.set_state(State.PRE_COPY).ok
    assert fsm.state == State.RUNNING


def test_broken_device_enters_error_and_only_reset_leaves_it() -> None:
    rec = Recorder(fail_on=(State.RESUMING, State.STOP), broken=True)
    fsm = DeviceFSM(VFIO_USER_CAPS, rec, initial=State.RESUMING)
    result = fsm.set_state(State.RUNNING)
    assert not result.ok and fsm.state == State.ERROR
    for target in State:
        with pytest.raises(InvalidTransition):
            fsm.set_state(target)
    fsm.reset()
    assert fsm.state == State.RUNNING and rec.resets == 1


def test_step_refuses_non_arcs() -> None:
    fsm = DeviceFSM(VFIO_USER_CAPS)
    with pytest.raises(MachineError):
        fsm.step(State.STOP_COPY)
    assert fsm.state == State.RUNNING


def test_force_error() -> None:
    fsm = DeviceFSM(VFIO_USER_CAPS)
    fsm.force_error()
    assert fsm.state == State.ERROR
