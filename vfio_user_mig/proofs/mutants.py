"""Seeded mutations: alternative implementations the theorems must reject (and one they accept).

Each FSM mutant is an :class:`~vfio_user_mig.proofs.fsm_theorems.FsmUnderTest` reproducing a
real bug class; :data:`BREAKS` records which theorems each one is expected to break (the
tests assert it, the CLI can run any of them with ``prove --mutant NAME``):

``kernel-unfixed``
    ``vfio_mig_get_next_state()`` before the 2026 fix: its skip loop spins forever on
    STOP_COPY -> PRE_COPY(_P2P) (bounded here: :class:`DidNotReturn`).
``missing-blocked-arc``
    the path search without the "never leave and re-enter the saving group" restriction:
    STOP_COPY -> PRE_COPY is accepted as STOP_COPY -> STOP -> RUNNING -> PRE_COPY.
``p2p-as-non-p2p``
    a P2P device given the non-P2P arc set (RUNNING <-> STOP and PRE_COPY -> STOP_COPY kept
    direct); its executor is built from the same wrong graph, so it is self-consistent.
``wrong-tie-break``
    the tie between equally short paths broken the other way (stay in the saving group as
    long as possible): PRE_COPY -> STOP goes through STOP_COPY.
``off-by-one-bound``
    libvfio-user's state bound check ``state <= 8`` instead of ``< 8``: device_state 8 is
    accepted (and stored).

``kernel-fixed`` is not a mutant: the kernel's fixed table iterated, an independent correct
implementation every FSM theorem must accept.

Session mutants (:data:`SESSION_MUTANTS`) are :class:`SessionConfig` variants of the abstract
migration session: a source that does not resend pages dirtied during pre-copy, and a server
that keeps its save session open after leaving the saving group.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import networkx as nx
from transitions import Machine

from vfio_user_mig.model import (
    ARCS,
    STATES,
    InvalidTransition,
    MigrationCaps,
    State,
    is_supported,
    next_state,
    transition_graph,
    transition_path,
)
from vfio_user_mig.model.graph import RESET_TARGET, normalize_caps, trigger_name
from vfio_user_mig.proofs import kernel_reference as kernel
from vfio_user_mig.proofs.fsm_rule import (
    MODEL,
    SAVING,
    DidNotReturn,
    FsmUnderTest,
    InertDevice,
)
from vfio_user_mig.proofs.session_model import SessionConfig

Path = tuple[int, ...]


# ---------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------

def graph_from_arcs(caps: MigrationCaps, *, honour_absent_with: bool = True) -> nx.DiGraph:
    """The FSM graph built from ``STATES``/``ARCS``; optionally ignoring ``absent_with``
    (the P2P arc substitutions), which yields the non-P2P arc set plus the P2P arcs."""
    caps = normalize_caps(caps)
    graph = nx.DiGraph(caps=caps)
    for info in STATES:
        if info.state is State.ERROR or is_supported(info.state, caps):
            graph.add_node(info.state, saving=info.saving)
    for arc in ARCS:
        if not (is_supported(arc.src, caps) and is_supported(arc.dst, caps)):
            continue
        if honour_absent_with and arc.absent_with & caps:
            continue
        graph.add_edge(arc.src, arc.dst, trigger=trigger_name(arc.src, arc.dst))
    return graph


def machine_from_graph(graph: nx.DiGraph) -> Any:
    """A ``transitions.Machine`` with one trigger per arc of ``graph`` plus ``reset``
    (what :func:`vfio_user_mig.model.executor.build_machine` does for the model's graph)."""
    machine = Machine(model=InertDevice(), states=[s.name for s in graph.nodes],
                      initial=State.RUNNING.name, auto_transitions=False, send_event=True)
    for src, dst in graph.edges:
        machine.add_transition(trigger_name(src, dst), src.name, dst.name, before="_before")
    machine.add_transition("reset", "*", RESET_TARGET.name)
    return machine


def rule_paths(graph: nx.DiGraph, *, penalty: float,
               forbid_reentry: bool = True) -> dict[tuple[State, State], Path]:
    """Complex paths by the model's search, with knobs: the tie-break ``penalty`` on arcs
    into interior saving states, and whether leaving and re-entering the group is forbidden.
    Pairs without a path are absent (blocked). Ties are broken by networkx's order."""
    nodes = [s for s in graph.nodes if s is not State.ERROR]
    table: dict[tuple[State, State], Path] = {}
    for cur in nodes:
        for target in nodes:
            if cur == target:
                table[(cur, target)] = (cur,)
                continue

            def allowed(u: State, v: State, cur: State = cur, target: State = target) -> bool:
                if forbid_reentry and v in SAVING and u not in SAVING:
                    return v == target and cur not in SAVING
                return True

            def weight(u: State, v: State, _d: object, target: State = target) -> float:
                return 1.0 + (penalty if v in SAVING and v != target else 0.0)

            view = nx.subgraph_view(graph, filter_edge=allowed)
            with contextlib.suppress(nx.NetworkXNoPath):
                table[(cur, target)] = tuple(nx.shortest_path(view, cur, target, weight=weight))
    return table


def _refuse(cur: int, target: int, reason: str) -> InvalidTransition:
    return InvalidTransition(cur, target, reason, "refused by the implementation under test")


def _table_fsm(name: str, description: str,
               graph: Callable[[MigrationCaps], nx.DiGraph],
               paths: Callable[[MigrationCaps], dict[tuple[State, State], Path]],
               machine: Callable[[MigrationCaps], Any]) -> FsmUnderTest:
    """An implementation given by a graph and a path table (validation as the model)."""

    def path(cur: int, target: int, caps: MigrationCaps) -> Path:
        for value in (cur, target):
            if value not in State._value2member_map_ or not is_supported(State(value), caps):
                raise _refuse(cur, target, "unsupported")
        found = paths(caps).get((State(cur), State(target)))
        if found is None:
            raise _refuse(cur, target, "blocked-arc")
        return found

    def step(cur: int, target: int, caps: MigrationCaps) -> int:
        found = path(cur, target, caps)
        return found[1] if len(found) > 1 else found[0]

    return FsmUnderTest(name, description, graph, step, path, machine)


def _kernel_fsm(name: str, description: str, *, fixed: bool) -> FsmUnderTest:
    """The kernel's transcribed table as an implementation (``fixed=False``: the old loop)."""

    def step(cur: int, target: int, caps: MigrationCaps) -> int:
        nxt = kernel.kernel_next_state(int(caps), cur, target, fixed=fixed)
        if nxt is None:
            raise DidNotReturn(f"skip loop spins on {cur} -> {target}")
        if nxt == kernel.EINVAL:
            raise _refuse(cur, target, "kernel-einval")
        return nxt

    def path(cur: int, target: int, caps: MigrationCaps) -> Path:
        walked = [cur]
        step(cur, target, caps)  # the kernel validates even when cur == target
        while walked[-1] != target:
            walked.append(step(walked[-1], target, caps))
            if len(walked) > kernel.NUM_STATES + 1:
                raise DidNotReturn(f"walk {cur} -> {target} does not arrive")
        return tuple(walked)

    return FsmUnderTest(name, description, MODEL.graph, step, path, MODEL.machine)


# ---------------------------------------------------------------------------------------------
# The implementations
# ---------------------------------------------------------------------------------------------

KERNEL_FIXED = _kernel_fsm(
    "kernel-fixed", "the kernel's vfio_from_fsm_table iterated, with the 2026 fix", fixed=True)

KERNEL_UNFIXED = _kernel_fsm(
    "kernel-unfixed", "the kernel's skip loop before the 2026 fix (spins on the blocked arc)",
    fixed=False)


@functools.cache
def _reentry_paths(caps: MigrationCaps) -> dict[tuple[State, State], Path]:
    return rule_paths(transition_graph(caps), penalty=1 / 16, forbid_reentry=False)


MISSING_BLOCKED_ARC = _table_fsm(
    "missing-blocked-arc", "path search without the leave-and-re-enter restriction",
    transition_graph, _reentry_paths, MODEL.machine)


@functools.cache
def _non_p2p_graph(caps: MigrationCaps) -> nx.DiGraph:
    return graph_from_arcs(caps, honour_absent_with=False)


@functools.cache
def _non_p2p_paths(caps: MigrationCaps) -> dict[tuple[State, State], Path]:
    return rule_paths(_non_p2p_graph(caps), penalty=1 / 16)


P2P_AS_NON_P2P = _table_fsm(
    "p2p-as-non-p2p", "P2P devices given the non-P2P arc set (graph, paths and executor)",
    _non_p2p_graph, _non_p2p_paths, lambda caps: machine_from_graph(_non_p2p_graph(caps)))


@functools.cache
def _eager_saving_paths(caps: MigrationCaps) -> dict[tuple[State, State], Path]:
    return rule_paths(transition_graph(caps), penalty=-1 / 16)


WRONG_TIE_BREAK = _table_fsm(
    "wrong-tie-break", "ties broken towards staying in the saving group (penalty -1/16)",
    transition_graph, _eager_saving_paths, MODEL.machine)


def _bound_next_state(cur: int, target: int, caps: MigrationCaps) -> int:
    for value in (cur, target):
        if not 0 <= value <= kernel.NUM_STATES:  # the bug: should be < NUM_STATES
            raise _refuse(cur, target, "out-of-range")
    if kernel.NUM_STATES in (cur, target):
        return target  # past the table: the state is stored as requested
    return next_state(cur, target, caps)


def _bound_path(cur: int, target: int, caps: MigrationCaps) -> Path:
    if kernel.NUM_STATES in (cur, target) and _bound_next_state(cur, target, caps) == target:
        return (cur, target)
    return transition_path(cur, target, caps)


OFF_BY_ONE_BOUND = FsmUnderTest(
    "off-by-one-bound", "libvfio-user's bound check: device_state 8 is let through",
    MODEL.graph, _bound_next_state, _bound_path, MODEL.machine)


#: Every alternative FSM implementation, by name.
FSM_IMPLEMENTATIONS: dict[str, FsmUnderTest] = {
    impl.name: impl
    for impl in (KERNEL_FIXED, KERNEL_UNFIXED, MISSING_BLOCKED_ARC, P2P_AS_NON_P2P,
                 WRONG_TIE_BREAK, OFF_BY_ONE_BOUND)
}

#: The FSM mutants (everything but the correct kernel-fixed reference).
FSM_MUTANTS: dict[str, FsmUnderTest] = {
    k: v for k, v in FSM_IMPLEMENTATIONS.items() if k != "kernel-fixed"
}

#: Session model variants with a seeded bug.
SESSION_MUTANTS: dict[str, SessionConfig] = {
    "no-dirty-resend": dataclasses.replace(SessionConfig(), resend_dirty=False),
    "leaky-save-session": dataclasses.replace(SessionConfig(), close_save_on_leave=False),
}

#: Theorem keys (name without group and caps) each implementation breaks on some capability
#: set: exactly these (the tests check the whole matrix).
BREAKS: dict[str, frozenset[str]] = {
    "kernel-fixed": frozenset(),
    "kernel-unfixed": frozenset({"direct-arcs", "shortest-under-rule", "no-reentry",
                                 "walk-terminates", "refused-at-once",
                                 "blocked-and-error-refused", "reachability",
                                 "restriction-of-full", "kernel-agreement"}),
    "missing-blocked-arc": frozenset({"shortest-under-rule", "no-reentry", "refused-at-once",
                                      "blocked-and-error-refused", "reachability",
                                      "kernel-agreement"}),
    "p2p-as-non-p2p": frozenset({"kernel-arcs", "kernel-agreement"}),
    "wrong-tie-break": frozenset({"shortest-under-rule", "kernel-agreement"}),
    "off-by-one-bound": frozenset({"refused-at-once", "error-left-only-by-reset",
                                   "kernel-agreement"}),
    "no-dirty-resend": frozenset({"final-state-agreement"}),
    "leaky-save-session": frozenset({"mig-data-gating"}),
}

__all__ = [
    "BREAKS",
    "FSM_IMPLEMENTATIONS",
    "FSM_MUTANTS",
    "KERNEL_FIXED",
    "KERNEL_UNFIXED",
    "MISSING_BLOCKED_ARC",
    "OFF_BY_ONE_BOUND",
    "P2P_AS_NON_P2P",
    "SESSION_MUTANTS",
    "WRONG_TIE_BREAK",
    "graph_from_arcs",
    "machine_from_graph",
    "rule_paths",
]
