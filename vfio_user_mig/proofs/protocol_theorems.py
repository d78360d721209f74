"""Theorems about the vfio-user protocol: the command legality table and the migration session.

Legality: :func:`vfio_user_mig.protocol.gating.legality_table` is the total table (migration state
x client command -> accepted or errno) derived from the model. One theorem checks the table's
MIG_DATA rows against the FSM (saving group, RESUMING); another checks every cell against a
*probe* ``probe(state, command) -> errno | None`` that asks a real server over a socketpair.
The probe comes from ``vfio_user_mig.simulator.server.legality_probe.make_probe(caps)`` when that
module exists (it is imported lazily; the theorem is skipped with a note otherwise). A probe
may have a ``close()`` method, called when the check is done.

Session: the abstract migration session of :mod:`vfio_user_mig.proofs.session_model`, explored
exhaustively once per configuration; every theorem is checked over that one exploration (its
verdict names the :class:`~vfio_user_mig.proofs.framework.Explored` space, reported once per
suite), counts the items it checked (states, final states or MIG_DATA events), and a failure
comes with the shortest run that reaches it.
"""

from __future__ import annotations

import dataclasses
import errno as _errno
import importlib
from collections.abc import Callable, Sequence

from vfio_user_mig.model import VFIO_USER_CAPS, MigrationCaps, State, caps_label
from vfio_user_mig.model.graph import transition_graph
from vfio_user_mig.proofs.framework import (
    Counterexample,
    Explored,
    Skip,
    Theorem,
    Verdict,
    exhaust,
)
from vfio_user_mig.proofs.session_model import (
    DONE,
    END,
    Exploration,
    SessionConfig,
    World,
    describe_record,
    describe_world,
    explore,
    is_final,
)
from vfio_user_mig.protocol.gating import CLIENT_COMMANDS, gate, legality_table
from vfio_user_mig.wire.constants import Command

Probe = Callable[[State, Command], int | None]
PROBE_MODULE = "vfio_user_mig.simulator.server.legality_probe"

_MIG_COMMAND = {"READ": Command.MIG_DATA_READ, "WRITE": Command.MIG_DATA_WRITE}


def _cell(cell: tuple[State, Command]) -> str:
    return f"{cell[0].name} x {cell[1].name}"


def _errno_name(value: int | None) -> str:
    return "accepted" if value is None else _errno.errorcode.get(value, str(value))


# ---------------------------------------------------------------------------------------------
# Legality table
# ---------------------------------------------------------------------------------------------

def check_legality_model(caps: MigrationCaps) -> Verdict:
    """The legality table is total over (every state of the graph, ERROR included) x (every
    client command); every refusal is EINVAL; MIG_DATA_READ is accepted exactly in the saving
    group and MIG_DATA_WRITE exactly in RESUMING; DMA_READ/DMA_WRITE are never client
    commands."""
    table = legality_table(caps)
    graph = transition_graph(caps)
    cells = [(s, c) for s in sorted(graph.nodes) for c in Command]
    readable = {State.PRE_COPY, State.PRE_COPY_P2P, State.STOP_COPY}

    def check(cell: tuple[State, Command]) -> str | None:
        state, command = cell
        if command in (Command.DMA_READ, Command.DMA_WRITE):
            return "a server-to-client command in the client table" if cell in table else None
        if cell not in table:
            return "missing cell: the table is not total"
        value = table[cell]
        if value not in (None, _errno.EINVAL):
            return f"refused with {_errno_name(value)}, not EINVAL"
        if command == Command.MIG_DATA_READ and (value is None) != (state in readable):
            return f"MIG_DATA_READ {_errno_name(value)} in {state.name}"
        if command == Command.MIG_DATA_WRITE and (value is None) != (state is State.RESUMING):
            return f"MIG_DATA_WRITE {_errno_name(value)} in {state.name}"
        return None

    return exhaust(cells, check, _cell)


def check_legality_probe(caps: MigrationCaps, probe: Probe) -> Verdict:
    """Every cell of the legality table (graph state x client command) equals what the
    server answers: the same errno, or accepted. The counterexample is the first differing
    cell in table order."""
    table = legality_table(caps)
    cells = sorted(table)

    def check(cell: tuple[State, Command]) -> str | None:
        try:
            got = probe(*cell)
        except Exception as exc:
            return f"probe crashed: {type(exc).__name__}: {exc}"
        want = table[cell]
        if got != want:
            return f"model: {_errno_name(want)}; server: {_errno_name(got)}"
        return None

    return exhaust(cells, check, _cell)


def gate_probe(caps: MigrationCaps) -> Probe:
    """A probe answering from :func:`~vfio_user_mig.protocol.gating.gate` itself (for tests)."""
    return lambda state, command: gate(state, command, caps)


def server_probe_factory() -> Callable[[MigrationCaps], Probe] | None:
    """``make_probe`` of the simulator's legality probe module, or None when absent."""
    try:
        module = importlib.import_module(PROBE_MODULE)
    except ModuleNotFoundError as exc:
        if exc.name is not None and PROBE_MODULE.startswith(exc.name):
            return None
        raise
    factory: Callable[[MigrationCaps], Probe] = module.make_probe
    return factory


def _server_check(caps: MigrationCaps,
                  factory: Callable[[MigrationCaps], Probe] | None) -> Callable[[], Verdict]:
    def check() -> Verdict:
        make = factory if factory is not None else server_probe_factory()
        if make is None:
            raise Skip(f"no server to probe yet: {PROBE_MODULE}.make_probe(caps) is not "
                       "importable")
        probe = make(caps)
        try:
            return check_legality_probe(caps, probe)
        finally:
            close = getattr(probe, "close", None)
            if callable(close):
                close()

    return check


def legality_theorems(
    caps_list: Sequence[MigrationCaps] = (VFIO_USER_CAPS,),
    probe_factory: Callable[[MigrationCaps], Probe] | None = None,
    *,
    name: str = "server",
) -> list[Theorem]:
    """The legality theorems for each capability set; ``probe_factory`` defaults to the
    simulator's ``make_probe`` (skipped when it does not exist)."""
    out: list[Theorem] = []
    for caps in caps_list:
        label = caps_label(caps)
        n_states = transition_graph(caps).number_of_nodes()
        out.append(Theorem(
            f"protocol.legality-table-model[{label}]",
            " ".join((check_legality_model.__doc__ or "").split()) + f" [caps {label}]",
            f"graph states x all commands ({n_states} x {len(Command)} cells)",
            _bind_model(caps), group="protocol", caps=label))
        out.append(Theorem(
            f"protocol.legality-vs-{name}[{label}]",
            " ".join((check_legality_probe.__doc__ or "").split()) + f" [caps {label}]",
            f"graph states x client commands ({n_states} x {len(CLIENT_COMMANDS)} cells), "
            "each asked of the server over a socketpair",
            _server_check(caps, probe_factory), group="protocol", caps=label))
    return out


def _bind_model(caps: MigrationCaps) -> Callable[[], Verdict]:
    return lambda: check_legality_model(caps)


# ---------------------------------------------------------------------------------------------
# Session
# ---------------------------------------------------------------------------------------------

def _size_note(exp: Exploration) -> str:
    return f"over {exp.states} states, {exp.arcs} transitions"


def _explored(exp: Exploration) -> Explored:
    """The exploration as the framework reports it: one entry per configuration."""
    return Explored(repr(exp.config), exp.states, exp.arcs)


def _state_verdict(exp: Exploration, bad: list[tuple[World, str]], cases: int,
                   note: str = "") -> Verdict:
    """A verdict whose counterexample is the shallowest bad state, with its shortest trace."""
    note = _size_note(exp) + note
    if not bad:
        return Verdict(cases, None, 0, note, _explored(exp))
    world, reason = min(bad, key=lambda item: exp.depth[item[0]])
    trace = exp.trace(world)
    cex = Counterexample(describe_world(world), reason, len(trace), trace)
    return Verdict(cases, cex, len(bad), note, _explored(exp))


def check_no_deadlock(cfg: SessionConfig) -> Verdict:
    """Deadlock freedom: every reachable state that is not final has an enabled driver,
    server or channel action (the guest dirtying memory does not count)."""
    exp = explore(cfg)
    bad = [(w, _why_stuck(w)) for w in exp.deadlocks()]
    return _state_verdict(exp, bad, exp.states)


def _why_stuck(w: World) -> str:
    waits = f"the driver waits for {('src', 'dst')[w.waiting]}'s reply" if w.waiting >= 0 \
        else "the driver is idle"
    busy = [("src", "dst")[i] for i, d in enumerate(w.devs) if d.busy is not None]
    if busy:
        return f"deadlock: {waits} while {busy[0]} waits for its DMA reply"
    return f"deadlock: {waits} and no server can move"


def check_completes(cfg: SessionConfig) -> Verdict:
    """From every reachable state a successful final state (program DONE) is still
    reachable: no run is condemned to fail, to deadlock or to livelock."""
    exp = explore(cfg)
    goals = [w for w in exp.finals() if w.pc == DONE]
    good: set[World] = set(goals)
    todo = list(goals)
    while todo:  # backwards reachability from every successful end
        for pred in exp.graph.predecessors(todo.pop()):
            if pred not in good:
                good.add(pred)
                todo.append(pred)
    bad = [(w, "no successful end is reachable from here") for w in exp.graph if w not in good]
    return _state_verdict(exp, bad, exp.states)


def check_final_agreement(cfg: SessionConfig) -> Verdict:
    """Every complete run ends with the program DONE, the destination RUNNING holding exactly
    the source's device state (every chunk at the source's version), and the source in STOP;
    at least one complete run exists."""
    exp = explore(cfg)
    finals = exp.finals()
    if not finals:
        return Verdict(0, Counterexample("(none)", "no run completes"), 1,
                       _size_note(exp), _explored(exp))
    bad: list[tuple[World, str]] = []
    for w in finals:
        src, dst = w.devs
        if w.pc != DONE:
            bad.append((w, "the run FAILED"))
        elif dst.content != src.content:
            bad.append((w, f"destination state {dst.content} != source state {src.content}"))
        elif dst.fsm is not State.RUNNING or src.fsm is not State.STOP:
            bad.append((w, f"ends with src {src.fsm.name}, dst {dst.fsm.name}"))
    return _state_verdict(exp, bad, len(finals))


def check_mig_data_gating(cfg: SessionConfig) -> Verdict:
    """Every MIG_DATA_READ / MIG_DATA_WRITE a server handles, in every reachable state, is
    accepted exactly when the model's legality table accepts it in the server's migration
    state: READ outside PRE_COPY/STOP_COPY and WRITE outside RESUMING always fail."""
    exp = explore(cfg)
    bad: list[tuple[World, str]] = []
    cases = 0
    cells: set[tuple[str, str]] = set()
    for _a, after, data in exp.graph.edges(data=True):
        for event in data["events"]:
            cases += 1
            command = _MIG_COMMAND[event.op]
            cells.add((event.state.name, command.name))
            allowed = gate(event.state, command, cfg.caps) is None
            if event.ok != allowed:
                outcome = "accepted" if event.ok else "refused"
                bad.append((after, f"{('src', 'dst')[event.dev]} {outcome} {command.name} in "
                               f"{event.state.name}; the table says "
                               f"{'accept' if allowed else 'EINVAL'}"))
    return _state_verdict(exp, bad, cases, f"; {len(cells)} (state, command) cells exercised")


def check_stream_in_order(cfg: SessionConfig) -> Verdict:
    """The stream is delivered complete and in order: in every reachable state the records
    the destination accepted are a prefix of the records the source emitted; in every
    successful final state they are equal, END occurs once and last, and every chunk has
    been delivered."""
    exp = explore(cfg)
    bad: list[tuple[World, str]] = []
    for w in exp.graph:
        sent, got = w.devs[0].log, w.devs[1].log
        if got != sent[:len(got)]:
            bad.append((w, f"destination got {_recs(got)}, source sent {_recs(sent)}"))
        elif is_final(w) and w.pc == DONE:
            chunks = {r[0] for r in got if r != END}
            if got != sent or got.count(END) != 1 or got[-1:] != (END,) or \
                    chunks != set(range(cfg.chunks)):
                bad.append((w, f"incomplete: destination got {_recs(got)}, "
                               f"source sent {_recs(sent)}"))
    return _state_verdict(exp, bad, exp.states)


def _recs(records: tuple[tuple[int, int], ...]) -> str:
    return "[" + ", ".join(describe_record(r) for r in records) + "]"


def _domain(cfg: SessionConfig) -> str:
    driver = "serving" if cfg.serving_driver else "non-serving"
    return (f"every reachable state of driver ({driver}) x src x dst x 4 channels "
            f"(capacity {cfg.capacity}), {cfg.chunks} chunks, <= {cfg.dma_budget} DMA requests per "
            f"server, <= {cfg.dirty_budget} guest writes, <= {cfg.probe_budget} stray MIG_DATA "
            "commands")


SESSION_CHECKS: tuple[tuple[str, Callable[[SessionConfig], Verdict]], ...] = (
    ("no-deadlock", check_no_deadlock),
    ("completes", check_completes),
    ("final-state-agreement", check_final_agreement),
    ("mig-data-gating", check_mig_data_gating),
    ("stream-in-order", check_stream_in_order),
)


def session_theorems(cfg: SessionConfig | None = None, *, suffix: str = "",
                     non_serving: bool = True) -> list[Theorem]:
    """The session theorems for ``cfg`` (a serving driver by default), plus (``non_serving``)
    the theorem expected to fail: a driver that does not serve DMA requests while waiting
    never deadlocks."""
    cfg = cfg if cfg is not None else SessionConfig()
    tag = f"[{suffix}]" if suffix else ""
    out = [
        Theorem(f"session.{key}{tag}", " ".join((check.__doc__ or "").split()), _domain(cfg),
                _bind_session(check, cfg), group="session", caps=caps_label(cfg.caps))
        for key, check in SESSION_CHECKS
    ]
    if cfg.serving_driver and non_serving:
        blocking = dataclasses.replace(cfg, serving_driver=False)
        out.append(Theorem(
            f"session.no-deadlock[non-serving driver]{tag}",
            "A driver that waits synchronously for each reply without serving the server's "
            "DMA requests never deadlocks. Expected to FAIL: the shortest deadlocking run is "
            "the counterexample.",
            _domain(blocking), _bind_session(check_no_deadlock, blocking), expect="fails",
            group="session", caps=caps_label(cfg.caps)))
    return out


def _bind_session(check: Callable[[SessionConfig], Verdict],
                  cfg: SessionConfig) -> Callable[[], Verdict]:
    return lambda: check(cfg)


__all__ = [
    "PROBE_MODULE",
    "SESSION_CHECKS",
    "Probe",
    "check_completes",
    "check_final_agreement",
    "check_legality_model",
    "check_legality_probe",
    "check_mig_data_gating",
    "check_no_deadlock",
    "check_stream_in_order",
    "gate_probe",
    "legality_theorems",
    "server_probe_factory",
    "session_theorems",
]
