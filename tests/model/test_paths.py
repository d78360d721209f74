"""Properties of the generated complex transitions, checked exhaustively."""

from __future__ import annotations

import itertools

import networkx as nx
import pytest

from vfio_user_mig.model import (
    ALL_CAPS,
    VFIO_USER_CAPS,
    InvalidTransition,
    MigrationCaps,
    State,
    is_supported,
    next_state,
    parse_caps,
    path_table,
    transition_graph,
    transition_path,
)

SAVING = {State.PRE_COPY, State.PRE_COPY_P2P, State.STOP_COPY}
FULL = ALL_CAPS[-1]


def supported(caps: MigrationCaps) -> list[State]:
    return [s for s in State if is_supported(s, caps)]


def pairs(caps: MigrationCaps) -> list[tuple[State, State]]:
    return list(itertools.product(supported(caps), repeat=2))


def admissible(path: tuple[State, ...]) -> bool:
    """Independent statement of the rule: saving-group members of the path form a prefix
    and/or the last node, and a path that left the group never comes back."""
    inside = [s in SAVING for s in path]
    left = False
    for i, flag in enumerate(inside):
        if not flag:
            left = True
        elif (left or not all(inside[: i + 1])) and not (i == len(path) - 1 and not inside[0]):
            return False
    return True


def interior_saving(path: tuple[State, ...]) -> int:
    return sum(1 for s in path[1:-1] if s in SAVING)


@pytest.mark.parametrize("caps", ALL_CAPS, ids=lambda c: str(int(c)))
def test_every_hop_is_a_direct_arc(caps: MigrationCaps) -> None:
    graph = transition_graph(caps)
    for cur, target in pairs(caps):
        try:
            path = transition_path(cur, target, caps)
        except InvalidTransition:
            continue
        assert path[0] == cur and path[-1] == target
        for a, b in itertools.pairwise(path):
            assert graph.has_edge(a, b), (cur, target, path)


@pytest.mark.parametrize("caps", ALL_CAPS, ids=lambda c: str(int(c)))
def test_paths_are_optimal_under_the_rule_by_brute_force(caps: MigrationCaps) -> None:
    """Enumerate every simple path; ours is the unique best admissible one by
    (length, interior saving states), and refused pairs have no admissible path."""
    graph = transition_graph(caps)
    for cur, target in pairs(caps):
        if cur == target:
            assert transition_path(cur, target, caps) == (cur,)
            continue
        candidates = [tuple(p) for p in nx.all_simple_paths(graph, cur, target)]
        good = [p for p in candidates if admissible(p)]
        if not good:
            with pytest.raises(InvalidTransition) as info:
                transition_path(cur, target, caps)
            assert info.value.reason == "blocked-arc"
            continue
        best = min((len(p), interior_saving(p)) for p in good)
        winners = [p for p in good if (len(p), interior_saving(p)) == best]
        assert winners == [transition_path(cur, target, caps)]


@pytest.mark.parametrize("caps", ALL_CAPS, ids=lambda c: str(int(c)))
def test_no_path_leaves_and_reenters_the_saving_group(caps: MigrationCaps) -> None:
    for cur, target in pairs(caps):
        try:
            path = transition_path(cur, target, caps)
        except InvalidTransition:
            continue
        flags = [s in SAVING for s in path]
        runs = [k for k, _ in itertools.groupby(flags)]
        assert runs.count(True) <= 1, path


@pytest.mark.parametrize("caps", ALL_CAPS, ids=lambda c: str(int(c)))
def test_smaller_caps_path_is_full_path_restricted(caps: MigrationCaps) -> None:
    for cur, target in pairs(caps):
        try:
            small = transition_path(cur, target, caps)
        except InvalidTransition:
            with pytest.raises(InvalidTransition):
                transition_path(cur, target, FULL)
            continue
        full = transition_path(cur, target, FULL)
        assert small == tuple(s for s in full if is_supported(s, caps))


@pytest.mark.parametrize("caps", ALL_CAPS, ids=lambda c: str(int(c)))
def test_iterating_next_state_terminates(caps: MigrationCaps) -> None:
    for cur, target in pairs(caps):
        state, steps = cur, 0
        try:
            while state != target:
                state = next_state(state, target, caps)
                steps += 1
                assert steps <= len(supported(caps))
        except InvalidTransition:
            assert steps == 0, "a request is refused at once or never"


def test_blocked_and_error_requests() -> None:
    for target in (State.PRE_COPY, State.PRE_COPY_P2P):
        with pytest.raises(InvalidTransition) as info:
            transition_path(State.STOP_COPY, target, FULL)
        assert info.value.reason == "blocked-arc"
    for cur in supported(FULL):
        with pytest.raises(InvalidTransition) as info:
            next_state(cur, State.ERROR, FULL)
        assert info.value.reason == "target-error"
    with pytest.raises(InvalidTransition) as info:
        next_state(State.ERROR, State.RUNNING, FULL)
    assert info.value.reason == "current-error"
    with pytest.raises(InvalidTransition) as info:
        next_state(State.RUNNING, State.RUNNING_P2P, VFIO_USER_CAPS)
    assert info.value.reason == "unsupported-target"
    with pytest.raises(InvalidTransition) as info:
        next_state(State.PRE_COPY, State.RUNNING, MigrationCaps.STOP_COPY)
    assert info.value.reason == "unsupported-current"


def test_vfio_user_arcs_are_the_spec_list() -> None:
    """PROTOCOL.md section 5: the nine direct arcs of vfio-user."""
    graph = transition_graph(VFIO_USER_CAPS)
    names = {(a.name, b.name) for a, b in graph.edges}
    assert names == {
        ("STOP", "RUNNING"), ("STOP", "STOP_COPY"), ("STOP", "RESUMING"), ("RUNNING", "STOP"),
        ("RUNNING", "PRE_COPY"), ("STOP_COPY", "STOP"), ("RESUMING", "STOP"),
        ("PRE_COPY", "RUNNING"), ("PRE_COPY", "STOP_COPY"),
    }
    assert {n for n, d in graph.nodes(data=True) if d["saving"]} == {
        State.PRE_COPY, State.STOP_COPY}
    assert all(d["action"] for _, _, d in graph.edges(data=True))
    assert all(len(d["pos"]) == 2 for _, d in graph.nodes(data=True))


def test_p2p_arc_substitutions() -> None:
    p2p = transition_graph(MigrationCaps.STOP_COPY | MigrationCaps.P2P)
    assert not p2p.has_edge(State.RUNNING, State.STOP)
    assert p2p.has_edge(State.RUNNING, State.RUNNING_P2P)
    full = transition_graph(FULL)
    assert not full.has_edge(State.PRE_COPY, State.STOP_COPY)
    assert transition_path(State.PRE_COPY, State.STOP_COPY, FULL) == (
        State.PRE_COPY, State.PRE_COPY_P2P, State.STOP_COPY)


def test_tables_are_precomputed_and_cached() -> None:
    assert path_table(FULL) is path_table(int(FULL))
    assert len(path_table(FULL).paths) == 7 * 7 - 2


def test_parse_caps() -> None:
    assert parse_caps("stop_copy,pre_copy") == VFIO_USER_CAPS
    assert parse_caps("all") == FULL
    assert parse_caps("p2p") == MigrationCaps.STOP_COPY | MigrationCaps.P2P
    with pytest.raises(ValueError):
        parse_caps("warp")
    with pytest.raises(ValueError):
        transition_graph(MigrationCaps.PRE_COPY)
