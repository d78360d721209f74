"""Text views of the FSM, all derived from the graph: path matrix, one path, Mermaid, DOT.

No matplotlib here (see :mod:`vfio_user_mig.model.plot` for pictures).
"""

from __future__ import annotations

import itertools
from typing import Any

from vfio_user_mig.model.errors import InvalidTransition
from vfio_user_mig.model.graph import (
    RESET_ACTION,
    RESET_TARGET,
    caps_label,
    normalize_caps,
    transition_graph,
)
from vfio_user_mig.model.paths import path_table, transition_path
from vfio_user_mig.model.states import MigrationCaps, State

_SHORT = {
    State.ERROR: "ERR",
    State.STOP: "STOP",
    State.RUNNING: "RUN",
    State.STOP_COPY: "SC",
    State.RESUMING: "RES",
    State.RUNNING_P2P: "RUNP2P",
    State.PRE_COPY: "PRE",
    State.PRE_COPY_P2P: "PREP2P",
}


def short_name(state: State) -> str:
    """A compact label used in matrices."""
    return _SHORT[state]


def path_cell(cur: State, target: State, caps: MigrationCaps | int) -> str:
    """One matrix cell: the interior of the path (``-`` direct arc, ``=`` same state), or the
    refusal (``EINVAL``)."""
    try:
        path = transition_path(cur, target, caps)
    except InvalidTransition:
        return "EINVAL"
    if len(path) == 1:
        return "="
    if len(path) == 2:
        return "-"
    return ">".join(short_name(s) for s in path[1:-1])


def path_matrix(caps: MigrationCaps | int) -> dict[str, Any]:
    """The full cur x target matrix as JSON-ready data (ERROR included as row and column)."""
    table = path_table(caps)
    states = [*table.supported, State.ERROR]
    rows: dict[str, dict[str, Any]] = {}
    for cur in states:
        row: dict[str, Any] = {}
        for target in states:
            try:
                row[target.name] = [s.name for s in transition_path(cur, target, caps)]
            except InvalidTransition as exc:
                row[target.name] = {"errno": exc.errno, "reason": exc.reason}
        rows[cur.name] = row
    return {"caps": caps_label(table.caps), "matrix": rows}


def format_matrix(caps: MigrationCaps | int) -> str:
    """The matrix as an aligned text table: rows are the current state, columns the target;
    a cell lists the interior states of the path."""
    table = path_table(caps)
    states = [*table.supported, State.ERROR]
    header = ["cur \\ target", *(short_name(s) for s in states)]
    body = [[s.name, *(path_cell(s, t, caps) for t in states)] for s in states]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    lines = [
        f"Complex transitions for {caps_label(table.caps)}",
        "(cell: interior states of the path; '-' direct arc; '=' no change; EINVAL refused)",
        "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)),
        "  ".join("-" * w for w in widths),
    ]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in body]
    if table.blocked:
        blocked = ", ".join(f"{a.name}->{b.name}" for a, b in sorted(table.blocked))
        lines.append(f"blocked: {blocked}")
    return "\n".join(line.rstrip() for line in lines)


def describe_path(cur: State, target: State, caps: MigrationCaps | int) -> dict[str, Any]:
    """One path with the Mealy action of each arc, JSON-ready; refusals carry errno/reason."""
    graph = transition_graph(caps)
    try:
        path = transition_path(cur, target, caps)
    except InvalidTransition as exc:
        return {"cur": cur.name, "target": target.name, "ok": False, "errno": exc.errno,
                "reason": exc.reason, "message": str(exc)}
    arcs = [
        {"src": a.name, "dst": b.name, "action": graph.edges[a, b]["action"]}
        for a, b in itertools.pairwise(path)
    ]
    return {"cur": cur.name, "target": target.name, "ok": True,
            "path": [s.name for s in path], "arcs": arcs, "caps": caps_label(graph.graph["caps"])}


def format_path(cur: State, target: State, caps: MigrationCaps | int) -> str:
    """Human text for :func:`describe_path`."""
    info = describe_path(cur, target, caps)
    if not info["ok"]:
        return f"{cur.name} -> {target.name}: refused, errno {info['errno']} ({info['message']})"
    lines = [" -> ".join(info["path"])]
    if not info["arcs"]:
        lines.append("  (already there: no arc walked)")
    for arc in info["arcs"]:
        lines.append(f"  {arc['src']} -> {arc['dst']}: {arc['action']}")
    return "\n".join(lines)


def to_mermaid(caps: MigrationCaps | int) -> str:
    """A Mermaid ``stateDiagram-v2`` of the graph; saving states styled, reset dashed-in-text."""
    graph = transition_graph(caps)
    label = caps_label(graph.graph["caps"])
    lines = ["stateDiagram-v2", f"    %% vfio migration FSM, caps {label}"]
    lines.append("    classDef saving fill:#f6c89f,stroke:#b35c00")
    lines.append("    classDef error fill:#f4a6a6,stroke:#a00000")
    lines.append(f"    [*] --> {State.RUNNING.name}")
    for u, v, d in graph.edges(data=True):
        lines.append(f"    {u.name} --> {v.name}: {d['action']}")
    lines.append(f"    {State.ERROR.name} --> {RESET_TARGET.name}: {RESET_ACTION}")
    for n, d in graph.nodes(data=True):
        if d["saving"]:
            lines.append(f"    class {n.name} saving")
    lines.append(f"    class {State.ERROR.name} error")
    return "\n".join(lines)


def to_dot(caps: MigrationCaps | int) -> str:
    """A Graphviz DOT digraph of the graph, with the fixed positions as ``pos`` hints."""
    graph = transition_graph(caps)
    caps_value = normalize_caps(caps)
    lines = [f'digraph "vfio_mig_{int(caps_value)}" {{',
             f'  label="vfio migration FSM [{caps_label(caps_value)}]";',
             "  node [shape=box, style=\"rounded,filled\", fillcolor=\"#dbe9f6\"];"]
    for n, d in graph.nodes(data=True):
        color = "#f4a6a6" if n is State.ERROR else ("#f6c89f" if d["saving"] else "#dbe9f6")
        x, y = d["pos"]
        lines.append(f'  {n.name} [fillcolor="{color}", pos="{x},{y}!", '
                     f'tooltip="{d["description"]}"];')
    for u, v, d in graph.edges(data=True):
        lines.append(f'  {u.name} -> {v.name} [tooltip="{d["action"]}"];')
    lines.append(f'  {State.ERROR.name} -> {RESET_TARGET.name} [style=dashed, label="reset"];')
    lines.append("}")
    return "\n".join(lines)


__all__ = [
    "describe_path",
    "format_matrix",
    "format_path",
    "path_cell",
    "path_matrix",
    "short_name",
    "to_dot",
    "to_mermaid",
]
