"""An abstract migration session, explored exhaustively (a small explicit-state model checker).

The product of four components and four bounded FIFO channels:

* the **migration driver** (the VMM; client of both servers), a program counter over
  :data:`PROGRAM`: set the destination to RESUMING, the source to PRE_COPY, copy records
  (MIG_DATA_READ from the source, MIG_DATA_WRITE to the destination) until the source has
  caught up, set the source to STOP_COPY, copy records up to and including END, set the
  destination to RUNNING and the source to STOP. It has one command outstanding at a time.
  Besides its program it may send ``probes`` stray zero-length MIG_DATA_READ / MIG_DATA_WRITE
  commands to either device whenever it is not waiting. A *serving* driver answers the
  servers' DMA requests while it waits for a reply; a non-serving one only reads replies;
* the **source** and **destination** servers: each runs the model's FSM (SET walks
  :func:`~vfio_user_mig.model.transition_path` arc by arc) with abstract Mealy actions: entering
  the saving group opens a save session, leaving it closes it; entering RESUMING opens a restore
  session, leaving it validates the stream (it must end with END) and applies it, or the arc
  fails. MIG_DATA_READ is served from the save session (the N chunks in order, then in STOP_COPY
  the chunks dirtied during pre-copy, then END; an empty reply means "caught up" in PRE_COPY),
  MIG_DATA_WRITE appends to the restore session; without the session they fail (EINVAL). While
  handling a MIG_DATA command a server may (``dma_budget`` times) first need guest memory: it
  sends a DMA request to the driver and waits for the reply before it replies itself;
* the **guest**, which may dirty any chunk of the running source ``dirty_budget`` times;
* the channels driver -> server (commands, DMA replies) and server -> driver (replies, DMA
  requests), one pair per server, each of capacity ``capacity``.

:func:`explore` builds the reachable state graph with a breadth-first search (a
``networkx.DiGraph`` whose edges carry the action label and, for each MIG_DATA command a
server handled, the state it was handled in and the outcome). Final states: the driver's
program ended (DONE or FAILED) with nothing in flight. The theorems in
:mod:`vfio_user_mig.proofs.protocol_theorems` are checked on that graph.
"""

from __future__ import annotations

import functools
import itertools
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

import networkx as nx

from vfio_user_mig.model import VFIO_USER_CAPS, InvalidTransition, MigrationCaps, State
from vfio_user_mig.model.graph import transition_graph
from vfio_user_mig.model.paths import transition_path

Record = tuple[int, int]  # (chunk index, chunk version); END is (-1, 0)
END: Record = (-1, 0)
BLANK = -1  # content of a chunk the destination never received

SRC, DST = 0, 1
DEV_NAMES = ("src", "dst")


@dataclass(frozen=True)
class SessionConfig:
    """The bounds and switches of one abstract session (hashable: explorations are cached)."""

    chunks: int = 3
    capacity: int = 2
    dma_budget: int = 2
    dirty_budget: int = 2
    probe_budget: int = 1
    serving_driver: bool = True
    resend_dirty: bool = True  # mutant switch: source resends chunks dirtied in pre-copy
    close_save_on_leave: bool = True  # mutant switch: leaving the saving group ends the session
    caps: MigrationCaps = field(default=VFIO_USER_CAPS)


class Msg(NamedTuple):
    """An abstract message: a command, its reply, a DMA request or a DMA reply."""

    kind: str  # "cmd" | "reply" | "dma_req" | "dma_reply"
    op: str = ""  # "SET" | "READ" | "WRITE"
    target: int = 0  # SET: the requested state
    rec: Record | None = None  # WRITE request data / READ reply data
    ok: bool = True
    probe: bool = False


class Save(NamedTuple):
    """An open save session: next chunk of the first pass, dirtied chunks, END sent."""

    pointer: int
    dirty: frozenset[int]
    end_sent: bool


class Dev(NamedTuple):
    """One server with its device."""

    fsm: State
    busy: Msg | None  # the command being handled while waiting for a DMA reply
    dma_left: int
    save: Save | None
    restore: tuple[Record, ...] | None
    content: tuple[int, ...]  # chunk versions (the device's internal state)
    log: tuple[Record, ...]  # src: records emitted; dst: records accepted


class World(NamedTuple):
    """One global state of the session."""

    pc: int
    carry: Record | None
    waiting: int  # -1: not waiting; else the server whose reply the driver awaits
    probing: bool
    probes_left: int
    dirty_left: int
    devs: tuple[Dev, Dev]
    c2s: tuple[tuple[Msg, ...], tuple[Msg, ...]]
    s2c: tuple[tuple[Msg, ...], tuple[Msg, ...]]


class Event(NamedTuple):
    """A MIG_DATA command handled by a server: where, in which state, with what outcome."""

    dev: int
    op: str
    state: State
    ok: bool
    probe: bool


#: The driver's program: (server, operation, SET target).
PROGRAM: tuple[tuple[int, str, State | None], ...] = (
    (DST, "SET", State.RESUMING),
    (SRC, "SET", State.PRE_COPY),
    (SRC, "READ", None),  # 2: pre-copy read
    (DST, "WRITE", None),  # 3
    (SRC, "SET", State.STOP_COPY),  # 4
    (SRC, "READ", None),  # 5: stop-copy read
    (DST, "WRITE", None),  # 6
    (DST, "SET", State.RUNNING),
    (SRC, "SET", State.STOP),
)
DONE = len(PROGRAM)
FAILED = DONE + 1


def describe_record(rec: Record | None) -> str:
    """``chunk1@v0``, ``END`` or ``no data``."""
    if rec is None:
        return "no data"
    return "END" if rec == END else f"chunk{rec[0]}@v{rec[1]}"


def initial(cfg: SessionConfig) -> World:
    """Both devices RUNNING, nothing in flight; the destination holds no state."""
    src = Dev(State.RUNNING, None, cfg.dma_budget, None, None, (0,) * cfg.chunks, ())
    dst = Dev(State.RUNNING, None, cfg.dma_budget, None, None, (BLANK,) * cfg.chunks, ())
    return World(0, None, -1, False, cfg.probe_budget, cfg.dirty_budget, (src, dst),
                 ((), ()), ((), ()))


def is_final(w: World) -> bool:
    """The program ended and nothing is in flight."""
    return (w.pc in (DONE, FAILED) and w.waiting < 0 and not any(w.c2s) and not any(w.s2c)
            and all(d.busy is None for d in w.devs))


def _pair_dev(devs: tuple[Dev, Dev], i: int, dev: Dev) -> tuple[Dev, Dev]:
    return (dev, devs[1]) if i == 0 else (devs[0], dev)


def _pair_q(qs: tuple[tuple[Msg, ...], tuple[Msg, ...]], i: int,
            q: tuple[Msg, ...]) -> tuple[tuple[Msg, ...], tuple[Msg, ...]]:
    return (q, qs[1]) if i == 0 else (qs[0], q)


# ---------------------------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------------------------

def _walk(dev: Dev, target: State, cfg: SessionConfig) -> tuple[Dev, bool, str]:
    """DEVICE_FEATURE SET mig state: walk the model's path with the abstract Mealy actions."""
    saving = {s for s, d in transition_graph(cfg.caps).nodes(data=True) if d["saving"]}
    try:
        path = transition_path(dev.fsm, target, cfg.caps)
    except InvalidTransition as exc:
        return dev, False, f"refused ({exc.reason})"
    walked = [dev.fsm.name]
    for a, b in itertools.pairwise(path):
        if a is State.RESUMING:
            if not dev.restore or dev.restore[-1] != END:
                return dev, False, f"{' -> '.join(walked)}; RESUMING -> STOP fails (no END)"
            content = list((BLANK,) * cfg.chunks)
            for idx, version in dev.restore[:-1]:
                content[idx] = version
            dev = dev._replace(restore=None, content=tuple(content))
        if b is State.RESUMING:
            dev = dev._replace(restore=())
        if b in saving and a not in saving:
            dev = dev._replace(save=Save(0, frozenset(), False))
        if a in saving and b not in saving and cfg.close_save_on_leave:
            dev = dev._replace(save=None)
        dev = dev._replace(fsm=b)
        walked.append(b.name)
    return dev, True, " -> ".join(walked)


def _read(dev: Dev, cfg: SessionConfig) -> tuple[Dev, Record | None]:
    """The next record of the save stream (None: nothing to send now)."""
    save = dev.save
    assert save is not None
    if save.pointer < cfg.chunks:
        i = save.pointer
        rec = (i, dev.content[i])
        save = save._replace(pointer=i + 1, dirty=save.dirty - {i})
    elif dev.fsm is State.PRE_COPY:
        return dev, None  # caught up for now
    elif cfg.resend_dirty and save.dirty:
        i = min(save.dirty)
        rec = (i, dev.content[i])
        save = save._replace(dirty=save.dirty - {i})
    elif not save.end_sent:
        rec = END
        save = save._replace(end_sent=True)
    else:
        return dev, None  # the stream has ended
    return dev._replace(save=save, log=(*dev.log, rec)), rec


def handle(dev: Dev, i: int, cmd: Msg, cfg: SessionConfig) -> tuple[Dev, Msg, str, Event | None]:
    """Execute one command on a server: the new device, the reply, a label, the event."""
    who = DEV_NAMES[i]
    if cmd.op == "SET":
        dev, ok, how = _walk(dev, State(cmd.target), cfg)
        return dev, Msg("reply", "SET", ok=ok), f"{who} SET {State(cmd.target).name}: {how}", None
    state = dev.fsm
    if cmd.op == "READ":
        ok = dev.save is not None
        rec: Record | None = None
        if ok and not cmd.probe:
            dev, rec = _read(dev, cfg)
    else:
        ok = dev.restore is not None
        rec = None
        if ok and not cmd.probe:
            assert cmd.rec is not None and dev.restore is not None
            dev = dev._replace(restore=(*dev.restore, cmd.rec), log=(*dev.log, cmd.rec))
    name = "MIG_DATA_READ" if cmd.op == "READ" else "MIG_DATA_WRITE"
    size = " (0 bytes)" if cmd.probe else ""
    result = ("ok " + describe_record(rec if cmd.op == "READ" else cmd.rec)) if ok else "EINVAL"
    label = f"{who} in {state.name} handles {name}{size}: {result}"
    reply = Msg("reply", cmd.op, rec=rec, ok=ok, probe=cmd.probe)
    return dev, reply, label, Event(i, cmd.op, state, ok, cmd.probe)


# ---------------------------------------------------------------------------------------------
# The successor relation
# ---------------------------------------------------------------------------------------------

Step = tuple[bool, str, Event | None, World]  # (guest action?, label, event, next)


def _driver_command(w: World) -> Msg:
    _dev, op, target = PROGRAM[w.pc]
    if op == "SET":
        assert target is not None
        return Msg("cmd", "SET", target=int(target))
    if op == "WRITE":
        return Msg("cmd", "WRITE", rec=w.carry)
    return Msg("cmd", "READ")


def _after_reply(w: World, reply: Msg) -> tuple[int, Record | None]:
    """The driver's next program counter and carried record after a program reply."""
    if not reply.ok:
        return FAILED, None
    pc = w.pc
    if pc == 2:
        return (3, reply.rec) if reply.rec is not None else (4, None)
    if pc == 3:
        return 2, None
    if pc == 5:
        return (6, reply.rec) if reply.rec is not None else (FAILED, None)
    if pc == 6:
        return (7 if w.carry == END else 5), None
    return pc + 1, None


def successors(w: World, cfg: SessionConfig) -> Iterator[Step]:
    """Every action enabled in ``w``: (by the guest?, label, MIG_DATA event, next world)."""
    cap = cfg.capacity
    # driver: issue the next program command
    if w.waiting < 0 and w.pc < DONE:
        peer = PROGRAM[w.pc][0]
        if len(w.c2s[peer]) < cap:
            cmd = _driver_command(w)
            what = cmd.op + (f" {State(cmd.target).name}" if cmd.op == "SET" else "")
            if cmd.op == "WRITE":
                what += f" {describe_record(cmd.rec)}"
            yield (False, f"driver -> {DEV_NAMES[peer]}: {what}", None,
                   w._replace(waiting=peer, probing=False,
                         c2s=_pair_q(w.c2s, peer, (*w.c2s[peer], cmd))))
    # driver: a stray zero-length MIG_DATA command
    if w.waiting < 0 and w.probes_left > 0:
        for peer in (SRC, DST):
            if len(w.c2s[peer]) >= cap:
                continue
            for op in ("READ", "WRITE"):
                cmd = Msg("cmd", op, probe=True)
                yield (False, f"driver -> {DEV_NAMES[peer]}: stray {op} of 0 bytes", None,
                       w._replace(waiting=peer, probing=True, probes_left=w.probes_left - 1,
                             c2s=_pair_q(w.c2s, peer, (*w.c2s[peer], cmd))))
    # driver: receive the reply it waits for / serve a DMA request
    for peer in (SRC, DST):
        queue = w.s2c[peer]
        if not queue:
            continue
        head, rest = queue[0], queue[1:]
        if head.kind == "reply" and w.waiting == peer:
            s2c = _pair_q(w.s2c, peer, rest)
            if w.probing:
                yield (False, f"driver <- {DEV_NAMES[peer]}: probe reply", None,
                       w._replace(waiting=-1, probing=False, s2c=s2c))
            else:
                pc, carry = _after_reply(w, head)
                ok = "ok" if head.ok else "error"
                yield (False, f"driver <- {DEV_NAMES[peer]}: {head.op} reply {ok}", None,
                       w._replace(waiting=-1, pc=pc, carry=carry, s2c=s2c))
        elif head.kind == "dma_req" and cfg.serving_driver and len(w.c2s[peer]) < cap:
            yield (False, f"driver serves {DEV_NAMES[peer]}'s DMA request", None,
                   w._replace(s2c=_pair_q(w.s2c, peer, rest),
                         c2s=_pair_q(w.c2s, peer, (*w.c2s[peer], Msg("dma_reply")))))
    # servers
    for i in (SRC, DST):
        dev = w.devs[i]
        queue = w.c2s[i]
        if not queue or len(w.s2c[i]) >= cap:
            continue
        head, rest = queue[0], queue[1:]
        if dev.busy is None and head.kind == "cmd":
            if head.op in ("READ", "WRITE") and not head.probe and dev.dma_left > 0:
                yield (False, f"{DEV_NAMES[i]} needs guest memory for MIG_DATA_{head.op}: "
                       f"sends a DMA request and waits", None,
                       w._replace(devs=_pair_dev(w.devs, i, dev._replace(
                           busy=head, dma_left=dev.dma_left - 1)),
                           c2s=_pair_q(w.c2s, i, rest),
                           s2c=_pair_q(w.s2c, i, (*w.s2c[i], Msg("dma_req")))))
            new, reply, label, event = handle(dev, i, head, cfg)
            yield (False, label, event, w._replace(devs=_pair_dev(w.devs, i, new),
                                       c2s=_pair_q(w.c2s, i, rest),
                                       s2c=_pair_q(w.s2c, i, (*w.s2c[i], reply))))
        elif dev.busy is not None and head.kind == "dma_reply":
            new, reply, label, event = handle(dev._replace(busy=None), i, dev.busy, cfg)
            yield (False, f"(DMA done) {label}", event,
                   w._replace(devs=_pair_dev(w.devs, i, new), c2s=_pair_q(w.c2s, i, rest),
                         s2c=_pair_q(w.s2c, i, (*w.s2c[i], reply))))
    # guest: dirty a chunk of the running source
    src = w.devs[SRC]
    if w.dirty_left > 0 and src.fsm in (State.RUNNING, State.PRE_COPY):
        for idx in range(cfg.chunks):
            content = tuple(v + 1 if k == idx else v for k, v in enumerate(src.content))
            save = src.save._replace(dirty=src.save.dirty | {idx}) if src.save else None
            yield (True, f"guest dirties src chunk{idx}", None,
                   w._replace(dirty_left=w.dirty_left - 1,
                         devs=_pair_dev(w.devs, SRC, src._replace(content=content, save=save))))


@dataclass
class Exploration:
    """The reachable state graph of one configuration."""

    config: SessionConfig
    graph: nx.DiGraph
    init: World
    depth: dict[World, int]

    @property
    def states(self) -> int:
        """Number of reachable states."""
        return int(self.graph.number_of_nodes())

    @property
    def arcs(self) -> int:
        """Number of explored transitions."""
        return int(self.graph.number_of_edges())

    def finals(self) -> list[World]:
        """Final states, shallowest first."""
        return sorted((w for w in self.graph if is_final(w)), key=self.depth.__getitem__)

    def stuck(self, w: World) -> bool:
        """True when no driver, server or channel action is enabled in ``w`` (the guest may
        still dirty memory: that does not move the protocol)."""
        return all(d["guest"] for _, _, d in self.graph.out_edges(w, data=True))

    def deadlocks(self) -> list[World]:
        """Non-final stuck states, shallowest first."""
        return sorted((w for w in self.graph if not is_final(w) and self.stuck(w)),
                      key=self.depth.__getitem__)

    def trace(self, goal: World) -> tuple[str, ...]:
        """The labels of a shortest run from the initial state to ``goal``."""
        path = nx.shortest_path(self.graph, self.init, goal)
        return tuple(self.graph.edges[a, b]["label"] for a, b in itertools.pairwise(path))


@functools.cache
def explore(cfg: SessionConfig) -> Exploration:
    """Breadth-first exploration of every state reachable from :func:`initial`."""
    init = initial(cfg)
    graph = nx.DiGraph()
    graph.add_node(init)
    depth = {init: 0}
    todo = deque([init])
    while todo:
        w = todo.popleft()
        for guest, label, event, nxt in successors(w, cfg):
            if nxt not in depth:
                depth[nxt] = depth[w] + 1
                todo.append(nxt)
            if not graph.has_edge(w, nxt):
                graph.add_edge(w, nxt, label=label, guest=guest,
                               events=[event] if event else [])
            elif event is not None:
                graph.edges[w, nxt]["events"].append(event)
    return Exploration(cfg, graph, init, depth)


def describe_world(w: World) -> str:
    """A one-line summary of a global state (for counterexamples)."""
    parts = [f"driver pc={w.pc}" + (f" waits for {DEV_NAMES[w.waiting]}" if w.waiting >= 0
                                    else "")]
    for i, dev in enumerate(w.devs):
        busy = " busy awaiting DMA reply" if dev.busy is not None else ""
        queue = ",".join(m.kind for m in w.s2c[i]) or "empty"
        parts.append(f"{DEV_NAMES[i]} {dev.fsm.name}{busy}, {DEV_NAMES[i]}->driver [{queue}]")
    return "; ".join(parts)


__all__ = [
    "DONE",
    "END",
    "FAILED",
    "PROGRAM",
    "Dev",
    "Event",
    "Exploration",
    "Msg",
    "SessionConfig",
    "World",
    "describe_record",
    "describe_world",
    "explore",
    "handle",
    "initial",
    "is_final",
    "successors",
]
