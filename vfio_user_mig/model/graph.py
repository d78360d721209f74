"""The one declaration of the migration FSM, and the graph derived from it per capability set.

Everything the project knows about migration states and direct arcs is in the two tables
below (``STATES`` and ``ARCS``). :func:`transition_graph` turns them into a
``networkx.DiGraph`` for one capability set; every other view (complex paths, the device
executor, pictures, tables, proofs) is computed from that graph, or, where networkx is not
worth importing (a server starting), from :func:`fsm_states` and :func:`direct_arcs`: the
same nodes and edges the graph is built from.

Sources: the Linux uapi FSM comment (``include/uapi/linux/vfio.h``), the arcs a driver must
implement per capability set as listed in ``vfio_mig_get_next_state()``
(``drivers/vfio/vfio_main.c``), and PROTOCOL.md section 5.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:  # imported on first use (_build_graph): importing the model stays fast
    import networkx as nx

from vfio_user_mig.model.states import ALL_CAPS, MigrationCaps, State

_SC = MigrationCaps.STOP_COPY
_P2P = MigrationCaps.P2P
_PRE = MigrationCaps.PRE_COPY
_NONE = MigrationCaps(0)


class StateInfo(NamedTuple):
    """Static facts about one state: what enables it, whether it saves, how it is drawn."""

    state: State
    requires: MigrationCaps
    saving: bool
    description: str
    pos: tuple[float, float]
    running: bool = False


class ArcInfo(NamedTuple):
    """A direct arc ``src -> dst``: present when both ends are supported and no cap in
    ``absent_with`` is set (the P2P variants replace some arcs, see module docstring)."""

    src: State
    dst: State
    action: str
    absent_with: MigrationCaps = _NONE


#: Every state with the capability flags that enable it (ERROR is always "present" as the
#: failure state, but can never be requested: see ``paths``).
STATES: tuple[StateInfo, ...] = (
    StateInfo(State.ERROR, _NONE, False,
              "the device failed and must be reset (DEVICE_RESET returns it to RUNNING)",
              (-2.2, 3.0)),
    StateInfo(State.STOP, _SC, False,
              "not running: neither internal nor external state changes", (0.0, 0.0)),
    StateInfo(State.RUNNING, _SC, False, "running normally", (0.0, 3.0), running=True),
    StateInfo(State.STOP_COPY, _SC, True,
              "stopped; its whole internal state can be read out", (3.4, 0.0)),
    StateInfo(State.RESUMING, _SC, False,
              "stopped; loading a new internal state from the stream", (0.0, -1.6)),
    StateInfo(State.RUNNING_P2P, _SC | _P2P, False,
              "running, but initiates no peer-to-peer DMA and accepts none", (-1.3, 1.5),
              running=True),
    StateInfo(State.PRE_COPY, _SC | _PRE, True,
              "running while its internal state is read out and changes are tracked",
              (3.4, 3.0), running=True),
    StateInfo(State.PRE_COPY_P2P, _SC | _P2P | _PRE, True,
              "pre-copy while quiesced for peer-to-peer DMA", (4.7, 1.5), running=True),
)

#: Every direct arc of the FSM with its Mealy action (what the device does on the arc).
ARCS: tuple[ArcInfo, ...] = (
    ArcInfo(State.RUNNING, State.STOP,
            "stop the device: no further DMA, interrupts or state changes", _P2P),
    ArcInfo(State.STOP, State.RUNNING, "start the device running again", _P2P),
    ArcInfo(State.STOP, State.STOP_COPY,
            "open a save session: the whole device state becomes readable"),
    ArcInfo(State.STOP_COPY, State.STOP, "close the save session; the device stays stopped"),
    ArcInfo(State.STOP, State.RESUMING,
            "open a restore session: prepare to load a new device state"),
    ArcInfo(State.RESUMING, State.STOP,
            "close the restore session: validate and apply the loaded state (fail if invalid)"),
    ArcInfo(State.RUNNING, State.RUNNING_P2P,
            "quiesce peer-to-peer: stop initiating P2P DMA, keep running"),
    ArcInfo(State.RUNNING_P2P, State.RUNNING, "resume peer-to-peer DMA"),
    ArcInfo(State.RUNNING_P2P, State.STOP, "stop the quiesced device"),
    ArcInfo(State.STOP, State.RUNNING_P2P, "start the device, still P2P-quiesced"),
    ArcInfo(State.RUNNING, State.PRE_COPY,
            "open a save session while running: initial data readable, changes tracked"),
    ArcInfo(State.PRE_COPY, State.RUNNING, "close the save session; keep running"),
    ArcInfo(State.PRE_COPY, State.STOP_COPY,
            "stop the device; the rest of its state becomes readable", _P2P),
    ArcInfo(State.PRE_COPY, State.PRE_COPY_P2P,
            "quiesce peer-to-peer while the save session goes on"),
    ArcInfo(State.PRE_COPY_P2P, State.PRE_COPY,
            "resume peer-to-peer DMA while the save session goes on"),
    ArcInfo(State.PRE_COPY_P2P, State.RUNNING_P2P, "close the save session; stay quiesced"),
    ArcInfo(State.PRE_COPY_P2P, State.STOP_COPY,
            "stop the quiesced device; the rest of its state becomes readable"),
    ArcInfo(State.RUNNING_P2P, State.PRE_COPY_P2P,
            "open a save session while quiesced: initial data readable, changes tracked"),
)

#: What DEVICE_RESET does to the migration state (not an FSM arc: it can't be requested).
RESET_TARGET = State.RUNNING
RESET_ACTION = "device reset: drop any session, return to RUNNING"

_INFO: dict[State, StateInfo] = {info.state: info for info in STATES}
_SAVING = frozenset(info.state for info in STATES if info.saving)
_RUNNING = frozenset(info.state for info in STATES if info.running)


def state_info(state: State) -> StateInfo:
    """The static facts about ``state``."""
    return _INFO[state]


def saving_states() -> frozenset[State]:
    """The saving group: states in which the device's state can be read out."""
    return _SAVING


def running_states() -> frozenset[State]:
    """States in which the device operates (DMA, interrupts, state changes allowed)."""
    return _RUNNING


def normalize_caps(caps: MigrationCaps | int) -> MigrationCaps:
    """Validate a capability set: STOP_COPY is mandatory, no unknown bits."""
    value = MigrationCaps(int(caps) & 0x7)
    if int(caps) & ~0x7 or MigrationCaps.STOP_COPY not in value:
        raise ValueError(
            f"invalid migration capability set {int(caps):#x}: STOP_COPY is mandatory and "
            "only STOP_COPY, P2P, PRE_COPY are defined"
        )
    return value


def is_supported(state: State, caps: MigrationCaps) -> bool:
    """True when ``state`` can be requested or entered under ``caps`` (ERROR never can)."""
    if state is State.ERROR:
        return False
    required = _INFO[state].requires
    return required & caps == required


@functools.cache
def _fsm_states(caps: MigrationCaps) -> tuple[State, ...]:
    return tuple(
        info.state for info in STATES
        if info.state is State.ERROR or is_supported(info.state, caps)
    )


@functools.cache
def _direct_arcs(caps: MigrationCaps) -> tuple[tuple[State, State], ...]:
    return tuple(
        (arc.src, arc.dst) for arc in ARCS
        if is_supported(arc.src, caps) and is_supported(arc.dst, caps)
        and not (arc.absent_with & caps)
    )


@functools.cache
def _arc_set(caps: MigrationCaps) -> frozenset[tuple[State, State]]:
    return frozenset(_direct_arcs(caps))


def fsm_states(caps: MigrationCaps | int) -> tuple[State, ...]:
    """The nodes of :func:`transition_graph` (supported states plus ERROR, in ``STATES``
    order), without building the graph (cached; no networkx import)."""
    return _fsm_states(normalize_caps(caps))


def direct_arcs(caps: MigrationCaps | int) -> tuple[tuple[State, State], ...]:
    """The edges of :func:`transition_graph` as (src, dst) pairs in ``ARCS`` order, without
    building the graph (cached; no networkx import)."""
    return _direct_arcs(normalize_caps(caps))


def is_direct_arc(src: State, dst: State, caps: MigrationCaps | int) -> bool:
    """True when ``src -> dst`` is an edge of :func:`transition_graph` (O(1), cached)."""
    return (src, dst) in _arc_set(normalize_caps(caps))


@functools.cache
def _build_graph(caps: MigrationCaps) -> nx.DiGraph:
    import networkx as nx  # deferred: most of the import time

    graph = nx.DiGraph(caps=caps, name=f"vfio migration FSM [{caps_label(caps)}]")
    for state in _fsm_states(caps):
        info = _INFO[state]
        graph.add_node(
            info.state,
            saving=info.saving,
            running=info.running,
            requires=info.requires,
            description=info.description,
            pos=info.pos,
        )
    actions = {(arc.src, arc.dst): arc.action for arc in ARCS}
    for src, dst in _direct_arcs(caps):
        graph.add_edge(src, dst, action=actions[src, dst], trigger=trigger_name(src, dst))
    nx.freeze(graph)
    return graph


def transition_graph(caps: MigrationCaps | int) -> nx.DiGraph:
    """The FSM for one capability set: supported states (plus ERROR) and their direct arcs.

    Node attributes: ``saving`` (bool, member of the saving group), ``requires``
    (``MigrationCaps`` enabling the state), ``description``, ``pos`` (fixed drawing position).
    Edge attributes: ``action`` (the Mealy action of the arc) and ``trigger`` (the name of the
    arc's trigger on the device executor). The graph is frozen and cached per capability set.
    """
    return _build_graph(normalize_caps(caps))


@functools.cache
def trigger_name(src: State, dst: State) -> str:
    """The executor trigger name of the arc ``src -> dst`` (made once per arc)."""
    return f"{src.name.lower()}__{dst.name.lower()}"


def caps_label(caps: MigrationCaps | int) -> str:
    """``STOP_COPY|P2P|PRE_COPY`` style label (fixed order)."""
    value = MigrationCaps(int(caps))
    return "|".join(flag.name or "" for flag in MigrationCaps if flag in value) or "none"


def parse_caps(text: str) -> MigrationCaps:
    """Parse ``"stop_copy,pre_copy"`` (or ``|``/``+`` separated, case-insensitive, ``all``,
    ``vfio-user``) into a validated capability set; STOP_COPY is implied."""
    words = [w for w in text.replace("|", ",").replace("+", ",").split(",") if w.strip()]
    caps = MigrationCaps.STOP_COPY
    for word in words:
        key = word.strip().upper().replace("-", "_")
        if key == "ALL":
            caps |= MigrationCaps.P2P | MigrationCaps.PRE_COPY
        elif key in ("VFIO_USER", "DEFAULT"):
            caps |= MigrationCaps.PRE_COPY
        elif key in MigrationCaps.__members__:
            caps |= MigrationCaps[key]
        else:
            raise ValueError(f"unknown capability {word!r} (use stop_copy, p2p, pre_copy)")
    return normalize_caps(caps)


def graph_summary(caps: MigrationCaps | int) -> dict[str, Any]:
    """A JSON-ready description of the graph for ``caps``."""
    graph = transition_graph(caps)
    return {
        "caps": caps_label(graph.graph["caps"]),
        "states": [
            {
                "state": s.name,
                "value": int(s),
                "saving": d["saving"],
                "description": d["description"],
            }
            for s, d in graph.nodes(data=True)
        ],
        "arcs": [
            {"src": u.name, "dst": v.name, "action": d["action"]}
            for u, v, d in graph.edges(data=True)
        ],
    }


__all__ = [
    "ALL_CAPS",
    "ARCS",
    "RESET_ACTION",
    "RESET_TARGET",
    "STATES",
    "ArcInfo",
    "StateInfo",
    "caps_label",
    "direct_arcs",
    "fsm_states",
    "graph_summary",
    "is_direct_arc",
    "is_supported",
    "normalize_caps",
    "parse_caps",
    "running_states",
    "saving_states",
    "state_info",
    "transition_graph",
    "trigger_name",
]
