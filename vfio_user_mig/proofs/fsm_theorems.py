"""Theorems about the migration FSM, stated per capability set and checked exhaustively.

Every theorem checks an *implementation under test* (:class:`~.fsm_rule.FsmUnderTest`;
:data:`~.fsm_rule.MODEL`, the real model, by default) against the rule as
:mod:`vfio_user_mig.proofs.fsm_rule` states it independently of the model (saving group,
admissible paths, cost, forbidden requests, the request values quantified over) and against
the kernel's transcribed table (:mod:`vfio_user_mig.proofs.kernel_reference`).
:data:`FSM_THEOREMS` lists the theorem templates; :func:`fsm_theorems` instantiates them per
capability set.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from vfio_user_mig.model import ALL_CAPS, MigrationCaps, State, caps_label
from vfio_user_mig.proofs import kernel_reference as kernel
from vfio_user_mig.proofs.framework import Theorem, Verdict, exhaust
from vfio_user_mig.proofs.fsm_rule import (
    FORBIDDEN,
    FULL_CAPS,
    MODEL,
    REQUEST_VALUES,
    SAVING,
    Answer,
    DidNotReturn,
    FsmUnderTest,
    InertDevice,
    admissible,
    ask,
    best_paths,
    cost,
    name,
    show,
    supported,
    valid_state,
)


def _pairs(caps: MigrationCaps) -> list[tuple[State, State]]:
    states = supported(caps)
    return [(a, b) for a in states for b in states]


def _requests() -> list[tuple[int, int]]:
    """Every (cur, target) request value pair, smallest largest-value first."""
    pairs = [(a, b) for a in REQUEST_VALUES for b in REQUEST_VALUES]
    return sorted(pairs, key=lambda p: (max(p), p))


def _show_pair(pair: tuple[int, int]) -> str:
    return f"{name(pair[0])} -> {name(pair[1])}"


def _machine_moves(fut: FsmUnderTest, caps: MigrationCaps) -> tuple[
        dict[tuple[State, State], list[str]], dict[State, State | None], list[str]]:
    """Fire every trigger of the machine from every state: moves by trigger, reset results."""
    machine = fut.machine(caps)
    model = machine.model
    graph = fut.graph(caps)
    events = sorted(machine.events)
    moves: dict[tuple[State, State], list[str]] = {}
    reset: dict[State, State | None] = {}
    for src in sorted(graph.nodes):
        for event in events:
            machine.set_state(src.name, model=model)
            try:
                fired = model.trigger(event)
            except Exception:
                fired = False
            dst = State[model.state] if fired else None
            if event == "reset":
                reset[src] = dst
            elif dst is not None:
                moves.setdefault((src, dst), []).append(event)
    return moves, reset, events


# ---------------------------------------------------------------------------------------------
# Theorems
# ---------------------------------------------------------------------------------------------

def thm_direct_arcs(fut: FsmUnderTest, caps: MigrationCaps) -> Verdict:
    """Every accepted complex path starts at cur, ends at target and uses only direct arcs."""
    graph = fut.graph(caps)

    def check(pair: tuple[State, State]) -> str | None:
        ans = ask(lambda: fut.path(pair[0], pair[1], caps))
        if not ans.accepted:
            return None if ans.refused else ans.describe()
        path = tuple(ans.value)
        if path[0] != pair[0] or path[-1] != pair[1]:
            return f"path {show(path)} does not go from cur to target"
        for a, b in itertools.pairwise(path):
            if not graph.has_edge(a, b):
                return f"path {show(path)} uses {name(a)} -> {name(b)}, not a direct arc"
        return None

    return exhaust(_pairs(caps), check, _show_pair)


def thm_shortest(fut: FsmUnderTest, caps: MigrationCaps) -> Verdict:
    """The path is the unique admissible simple path of minimal (length, interior saving
    states), found by brute force over all simple paths; no admissible path: refused."""
    graph = fut.graph(caps)
    enumerated = 0

    def check(pair: tuple[State, State]) -> str | None:
        nonlocal enumerated
        cur, target = pair
        best = best_paths(graph, cur, target)
        enumerated += max(1, len(best))
        ans = ask(lambda: fut.path(cur, target, caps))
        if not best:
            return None if ans.refused else f"no admissible path exists, but {ans.describe()}"
        if len(best) > 1:
            return "the rule is ambiguous: " + " | ".join(show(p) for p in best)
        if not ans.accepted:
            return f"expected {show(best[0])}, but {ans.describe()}"
        if tuple(ans.value) != best[0]:
            return f"expected {show(best[0])} (cost {cost(best[0])}), got {show(ans.value)} " \
                   f"(cost {cost(ans.value)})"
        return None

    return exhaust(_pairs(caps), check, _show_pair)


def thm_no_reentry(fut: FsmUnderTest, caps: MigrationCaps) -> Verdict:
    """No accepted path leaves the saving group and re-enters it."""

    def check(pair: tuple[State, State]) -> str | None:
        ans = ask(lambda: fut.path(pair[0], pair[1], caps))
        if not ans.accepted:
            return None if ans.refused else ans.describe()
        runs = [k for k, _ in itertools.groupby(s in SAVING for s in ans.value)]
        if runs.count(True) > 1:
            return f"path {show(ans.value)} leaves the saving group and re-enters it"
        return None

    return exhaust(_pairs(caps), check, _show_pair)


def thm_walk_terminates(fut: FsmUnderTest, caps: MigrationCaps) -> Verdict:
    """Iterating ``cur = next_state(cur, target)`` from any supported cur to any supported
    target reaches target along direct arcs within ``len(states)`` calls, or is refused by the first
    call (never midway, never spinning)."""
    graph = fut.graph(caps)
    bound = len(supported(caps))

    def check(pair: tuple[State, State]) -> str | None:
        cur, target = pair
        walked: list[int] = [cur]
        while walked[-1] != target:
            if len(walked) > bound:
                return f"no arrival within {bound} steps: {show(walked)} ..."
            here = walked[-1]
            ans = ask(functools.partial(fut.next_state, here, target, caps))
            if ans.refused:
                return None if len(walked) == 1 else f"refused midway after {show(walked)}"
            if not ans.accepted:
                return f"next_state({name(here)}, {name(target)}) {ans.describe()}"
            if not graph.has_edge(here, ans.value):
                return f"step {name(here)} -> {name(ans.value)} is not a direct arc"
            walked.append(int(ans.value))
        return None

    return exhaust(_pairs(caps), check, _show_pair)


def thm_refused_at_once(fut: FsmUnderTest, caps: MigrationCaps) -> Verdict:
    """For every request value pair: next_state refuses it with EINVAL by its first call
    exactly when cur or target is not a supported state (out of range, ERROR, missing
    capability) or no admissible path exists; otherwise it answers with a state."""
    graph = fut.graph(caps)

    def check(pair: tuple[int, int]) -> str | None:
        cur, target = pair
        should_refuse = not (valid_state(cur, caps) and valid_state(target, caps)) or \
            not best_paths(graph, State(cur), State(target))
        ans = ask(lambda: fut.next_state(cur, target, caps))
        if should_refuse and not ans.refused:
            return f"must be refused with EINVAL, but {ans.describe()}"
        if not should_refuse and not ans.accepted:
            return f"must be accepted, but {ans.describe()}"
        return None

    return exhaust(_requests(), check, _show_pair)


def thm_blocked_and_error(fut: FsmUnderTest, caps: MigrationCaps) -> Verdict:
    """STOP_COPY -> PRE_COPY and STOP_COPY -> PRE_COPY_P2P (where supported), and every
    request with ERROR as target, are refused with EINVAL (both next_state and path)."""
    cases = sorted(p for p in FORBIDDEN if valid_state(p[1], caps))
    cases += [(s, State.ERROR) for s in supported(caps)]

    def check(pair: tuple[State, State]) -> str | None:
        for what, call in (("next_state", fut.next_state), ("path", fut.path)):
            ans = ask(functools.partial(call, pair[0], pair[1], caps))
            if not ans.refused:
                return f"{what} must refuse with EINVAL, but {ans.describe()}"
        return None

    return exhaust(cases, check, _show_pair)


def thm_error_only_by_reset(fut: FsmUnderTest, caps: MigrationCaps) -> Verdict:
    """ERROR is left only by DEVICE_RESET: every request from ERROR is refused, no arc
    trigger of the executor leaves ERROR, and reset from any state (ERROR included) lands in
    RUNNING."""
    moves, reset, events = _machine_moves(fut, caps)
    cases: list[tuple[str, int]] = [("request", v) for v in REQUEST_VALUES]
    cases += [("trigger", i) for i, e in enumerate(events) if e != "reset"]
    cases += [("reset", int(s)) for s in sorted(reset)]
    out_of_error = {dst: trig for (src, dst), trig in moves.items() if src is State.ERROR}

    def check(case: tuple[str, int]) -> str | None:
        kind, value = case
        if kind == "request":
            ans = ask(lambda: fut.next_state(State.ERROR, value, caps))
            return None if ans.refused else f"must be refused, but {ans.describe()}"
        if kind == "trigger":
            event = events[value]
            hits = [dst for dst, trig in out_of_error.items() if event in trig]
            return f"trigger {event} leaves ERROR for {hits[0].name}" if hits else None
        landed = reset[State(value)]
        if landed is not State.RUNNING:
            return f"reset from {name(value)} lands in {landed.name if landed else 'nothing'}"
        return None

    def render(case: tuple[str, int]) -> str:
        kind, value = case
        if kind == "request":
            return f"request ERROR -> {name(value)}"
        return f"trigger {events[value]} in ERROR" if kind == "trigger" else \
            f"reset in {name(value)}"

    return exhaust(cases, check, render)


def thm_reachability(fut: FsmUnderTest, caps: MigrationCaps) -> Verdict:
    """Every supported state is reachable by one request from every other supported state,
    except exactly the forbidden requests STOP_COPY -> PRE_COPY(_P2P), which are refused."""
    cases = [(a, b) for a, b in _pairs(caps) if a != b]

    def check(pair: tuple[State, State]) -> str | None:
        ans = ask(lambda: fut.path(pair[0], pair[1], caps))
        if pair in FORBIDDEN:
            return None if ans.refused else f"forbidden, but {ans.describe()}"
        if not ans.accepted:
            return f"unreachable: {ans.describe()}"
        if tuple(ans.value)[-1] != pair[1]:
            return f"path {show(ans.value)} does not reach {pair[1].name}"
        return None

    return exhaust(cases, check, _show_pair)


def thm_restriction(fut: FsmUnderTest, caps: MigrationCaps) -> Verdict:
    """For every supported pair, the path under ``caps`` is the path under all capabilities
    with the unsupported states removed, and both refuse the same requests."""

    def check(pair: tuple[State, State]) -> str | None:
        small = ask(lambda: fut.path(pair[0], pair[1], caps))
        full = ask(lambda: fut.path(pair[0], pair[1], FULL_CAPS))
        if not (small.accepted or small.refused) or not (full.accepted or full.refused):
            return f"{caps_label(caps)}: {small.describe()}; full: {full.describe()}"
        if small.refused or full.refused:
            if small.refused != full.refused:
                return f"{caps_label(caps)}: {small.describe()}; full: {full.describe()}"
            return None
        restricted = tuple(s for s in full.value if valid_state(s, caps))
        if tuple(small.value) != restricted:
            return f"path {show(small.value)}, but the full path {show(full.value)} " \
                   f"restricted is {show(restricted)}"
        return None

    return exhaust(_pairs(caps), check, _show_pair)


def thm_kernel_arcs(fut: FsmUnderTest, caps: MigrationCaps) -> Verdict:
    """The direct arcs are exactly the kernel's single steps: ``a -> b`` (a != b supported)
    is an arc iff ``vfio_mig_get_next_state(a, new)`` returns b for some new state."""
    graph = fut.graph(caps)
    flags = int(caps)
    steps = {
        (a, nxt)
        for a in range(kernel.NUM_STATES)
        for new in range(kernel.NUM_STATES)
        if (nxt := kernel.kernel_next_state(flags, a, new)) not in (None, kernel.EINVAL)
        and nxt != a
    }
    cases = [(a, b) for a, b in _pairs(caps) if a != b]

    def check(pair: tuple[State, State]) -> str | None:
        in_graph = graph.has_edge(*pair)
        in_kernel = (int(pair[0]), int(pair[1])) in steps
        if in_graph and not in_kernel:
            return "a direct arc of the graph, but the kernel never steps along it"
        if in_kernel and not in_graph:
            return "a kernel step, but not a direct arc of the graph"
        return None

    return exhaust(cases, check, _show_pair)


def thm_kernel_agreement(fut: FsmUnderTest, caps: MigrationCaps) -> Verdict:
    """For every (cur, target) in 0..9 x 0..9, next_state equals the kernel's (fixed)
    ``vfio_mig_get_next_state()`` (EINVAL = refused) and the path equals the kernel's
    iterated walk."""
    flags = int(caps)
    cases = sorted(((a, b) for a in range(10) for b in range(10)), key=lambda p: (max(p), p))

    def check(pair: tuple[int, int]) -> str | None:
        cur, target = pair
        expected = kernel.kernel_next_state(flags, cur, target)
        ans = ask(lambda: fut.next_state(cur, target, caps))
        if expected == kernel.EINVAL:
            if not ans.refused:
                return f"kernel: EINVAL; next_state {ans.describe()}"
            return None
        if not ans.accepted or int(ans.value) != expected:
            return f"kernel: {name(expected or 0)}; next_state {ans.describe()}"
        kpath = kernel.kernel_path(flags, cur, target)
        pans = ask(lambda: fut.path(cur, target, caps))
        if not pans.accepted or tuple(int(s) for s in pans.value) != kpath:
            shown = show(kpath) if isinstance(kpath, tuple) else str(kpath)
            return f"kernel path {shown}; {pans.describe()}"
        return None

    return exhaust(cases, check, _show_pair)


def thm_executor(fut: FsmUnderTest, caps: MigrationCaps) -> Verdict:
    """The device executor and the graph agree arc for arc: firing every trigger of the
    ``transitions`` machine from every state, ``u -> v`` (reset aside) is possible by exactly
    one trigger when ``u -> v`` is a direct arc, and by none otherwise."""
    graph = fut.graph(caps)
    moves, _reset, _events = _machine_moves(fut, caps)
    nodes = sorted(graph.nodes)
    cases = [(a, b) for a in nodes for b in nodes]

    def check(pair: tuple[State, State]) -> str | None:
        triggers = moves.get(pair, [])
        if graph.has_edge(*pair):
            if len(triggers) != 1:
                return f"direct arc with {len(triggers)} triggers {triggers}"
        elif triggers:
            return f"not a direct arc, but trigger {triggers[0]} moves the executor along it"
        return None

    return exhaust(cases, check, _show_pair)


@dataclass(frozen=True)
class FsmTheoremSpec:
    """A theorem template: instantiated once per capability set."""

    key: str
    check: Callable[[FsmUnderTest, MigrationCaps], Verdict]
    domain: Callable[[MigrationCaps], str]
    all_caps: bool = True  # False: only the proper subsets of the full capability set


def _n(caps: MigrationCaps) -> int:
    return len(supported(caps))


FSM_THEOREMS: tuple[FsmTheoremSpec, ...] = (
    FsmTheoremSpec("direct-arcs", thm_direct_arcs,
                   lambda c: f"supported cur x target ({_n(c) ** 2} pairs)"),
    FsmTheoremSpec("shortest-under-rule", thm_shortest,
                   lambda c: f"supported cur x target ({_n(c) ** 2} pairs) x all simple paths"),
    FsmTheoremSpec("no-reentry", thm_no_reentry,
                   lambda c: f"supported cur x target ({_n(c) ** 2} pairs)"),
    FsmTheoremSpec("walk-terminates", thm_walk_terminates,
                   lambda c: f"supported cur x target ({_n(c) ** 2} pairs)"),
    FsmTheoremSpec("refused-at-once", thm_refused_at_once,
                   lambda c: f"device_state values {{0..9, 255, 2^32-1}}^2 "
                             f"({len(REQUEST_VALUES) ** 2} requests)"),
    FsmTheoremSpec("blocked-and-error-refused", thm_blocked_and_error,
                   lambda c: "STOP_COPY -> PRE_COPY(_P2P) where supported, and every "
                             "supported state -> ERROR"),
    FsmTheoremSpec("error-left-only-by-reset", thm_error_only_by_reset,
                   lambda c: "requests ERROR -> any value, every executor trigger in ERROR, "
                             "reset in every state"),
    FsmTheoremSpec("reachability", thm_reachability,
                   lambda c: f"ordered pairs of distinct supported states "
                             f"({_n(c) * (_n(c) - 1)} pairs)"),
    FsmTheoremSpec("restriction-of-full", thm_restriction,
                   lambda c: f"supported cur x target ({_n(c) ** 2} pairs) vs the full set",
                   all_caps=False),
    FsmTheoremSpec("kernel-arcs", thm_kernel_arcs,
                   lambda c: f"ordered pairs of distinct supported states "
                             f"({_n(c) * (_n(c) - 1)} pairs)"),
    FsmTheoremSpec("kernel-agreement", thm_kernel_agreement,
                   lambda c: "cur x target in 0..9 (100 requests)"),
    FsmTheoremSpec("executor-matches-graph", thm_executor,
                   lambda c: "graph states x graph states, every trigger fired"),
)


def _statement(spec: FsmTheoremSpec, caps: MigrationCaps) -> str:
    doc = (spec.check.__doc__ or "").strip()
    return " ".join(doc.split()) + f" [caps {caps_label(caps)}]"


def fsm_theorems(
    fut: FsmUnderTest = MODEL, caps_list: Sequence[MigrationCaps] = ALL_CAPS
) -> list[Theorem]:
    """Every FSM theorem for every capability set in ``caps_list`` (checking ``fut``)."""
    theorems: list[Theorem] = []
    for caps in caps_list:
        for spec in FSM_THEOREMS:
            if not spec.all_caps and caps == FULL_CAPS:
                continue
            theorems.append(Theorem(
                name=f"fsm.{spec.key}[{caps_label(caps)}]",
                statement=_statement(spec, caps),
                domain=spec.domain(caps),
                check=_bind(spec.check, fut, caps),
                group="fsm",
                caps=caps_label(caps),
            ))
    return theorems


def _bind(check: Callable[[FsmUnderTest, MigrationCaps], Verdict], fut: FsmUnderTest,
          caps: MigrationCaps) -> Callable[[], Verdict]:
    return lambda: check(fut, caps)


__all__ = [
    "FORBIDDEN",
    "FSM_THEOREMS",
    "MODEL",
    "REQUEST_VALUES",
    "SAVING",
    "Answer",
    "DidNotReturn",
    "FsmTheoremSpec",
    "FsmUnderTest",
    "InertDevice",
    "admissible",
    "ask",
    "best_paths",
    "cost",
    "fsm_theorems",
    "name",
    "show",
    "supported",
]
