"""Sequences: one connection to the server under test, the checks made on it, and the model's
prediction of the device's migration state.

A :class:`Checker` owns the target, the report and the options; ``with
checker.sequence(group, title) as seq:`` opens a fresh connection (a fresh process for
``--spawn``), negotiates VERSION, learns the migration capabilities (DEVICE_FEATURE
MIGRATION GET, PROTOCOL.md section 3) and brings the device to RUNNING along the model's path
(for ``--socket``, where an earlier sequence may have left it elsewhere).

On a :class:`Sequence`, :meth:`Sequence.check` sends one request and counts one check whose
outcome :func:`~vfio_user_mig.check.steps.judge` decides; :meth:`Sequence.verify` counts a check
on something already received. Every message sent is recorded as a
:class:`~vfio_user_mig.check.steps.Step`, so each finding carries the messages that reproduce
it. A request that gets no reply in time (``hang``), a server that dies (``crash``) or closes
where it must answer (``close``), sends bytes that are no message or a reply with another
message id (``reply``) ends the sequence: :class:`SequenceAborted` is raised after the finding
is recorded and the checker moves on to the next sequence. The checker itself never waits
without a deadline.

The bounds on streams and sequence lengths are :mod:`~vfio_user_mig.check.bounds`'s.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import struct
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from vfio_user_mig import wire
from vfio_user_mig.check.bounds import SEQUENCE_LIMIT, STREAM_LIMIT, STREAM_SECONDS, StreamMeter
from vfio_user_mig.check.conn import BadFrame, Conn, Reply, ReplyTimeout, WrongReplyId
from vfio_user_mig.check.facts import ReadBack, ServerFacts
from vfio_user_mig.check.findings import Finding, Kind, Report
from vfio_user_mig.check.requests import (
    CLIENT_MAX_DATA_XFER,
    feature_request,
    raw_message,
    state_name,
    version_request,
)
from vfio_user_mig.check.steps import OK, Expect, Step, judge, make_fds, refused, request_label
from vfio_user_mig.check.target import Target
from vfio_user_mig.model import InvalidTransition, MigrationCaps, State, transition_path
from vfio_user_mig.model.graph import transition_graph

#: The largest chunk the checker asks for when it reads a migration stream (1 MiB, the spec's
#: default ``max_data_xfer_size``; a server or client limit below it wins).
READ_CHUNK = 1024 * 1024
_STATE = struct.Struct("<II")
_MIG_DATA = struct.Struct("<II")
_ECHO_SIZE = 8 + _STATE.size
#: How :class:`~vfio_user_mig.check.target.Death` describes a process that exited cleanly.
CLEAN_EXIT = "exited with status 0"


class Profile(Protocol):
    """A device the checker can stimulate (contract: :mod:`vfio_user_mig.check.profiles`,
    which holds the profiles; declared here, beside the :class:`Sequence` it drives)."""

    name: str
    dma_maps: tuple[tuple[int, int, bool], ...]

    def settle(self, seq: Sequence) -> None: ...

    def prepare(self, seq: Sequence) -> None: ...

    def stimulate(self, seq: Sequence, armed: Callable[[], None] | None = None) -> set[int]: ...

    # -- the round trip (groups/roundtrip.py): device state between rounds, read-back --------

    def disturb(self, seq: Sequence, round_no: int) -> None: ...

    def read_back(self, seq: Sequence) -> list[ReadBack]: ...

    def resume_stream(self, precopy: bytes, stopcopy: bytes) -> bytes: ...


class SequenceAborted(Exception):
    """The sequence cannot go on; the finding that says why is already recorded."""


class Checker:
    """The target, the options and the report shared by every sequence (module docstring)."""

    def __init__(self, target: Target, *, timeout: float = 2.0,
                 client_max_xfer: int = CLIENT_MAX_DATA_XFER,
                 profile: Profile | None = None) -> None:
        self.target = target
        self.profile = profile
        self.timeout = timeout
        self.client_max_xfer = client_max_xfer
        self.facts = ServerFacts()
        self.report = Report(server=target.name, caps={})
        #: A migration stream read from this server (for RESUMING checks), once one was read.
        self.saved_stream: bytes | None = None
        #: Bounds of one saving phase's stream (module docstring).
        self.stream_limit = STREAM_LIMIT
        self.stream_seconds = STREAM_SECONDS
        #: States whose stream was found endless in this run.
        self.endless: set[str] = set()
        #: A second instance of the server (the round trip's destination), when given.
        self.peer: Target | None = None

    @contextlib.contextmanager
    def sequence(self, group: str, title: str, *, setup: bool = True,
                 max_xfer: int | None = None, target: Target | None = None
                 ) -> Iterator[Sequence]:
        """A fresh connection; ``setup`` negotiates and brings the device to RUNNING.

        ``target``: another instance than :attr:`target` (the round trip's destination).
        When the setup itself cannot go on (its finding recorded), the body still runs but
        its first request ends the sequence (:attr:`Sequence.dead`)."""
        target = target or self.target
        sock = target.begin()
        seq = Sequence(self, Conn(sock, self.timeout), group, title, target)
        self.report.coverage.groups[group] += 1
        try:
            if setup:
                try:
                    seq.setup(max_xfer=max_xfer)
                except SequenceAborted:
                    seq.dead = True
                    seq.caps = None
                    seq.state = None
            yield seq
        except SequenceAborted:
            pass
        finally:
            seq.conn.close()
            target.end()


class Sequence:
    """One connection and the checks made on it (module docstring)."""

    def __init__(self, checker: Checker, conn: Conn, group: str, title: str,
                 target: Target | None = None) -> None:
        self.checker = checker
        self.target = target or checker.target
        self.conn = conn
        self.group = group
        self.title = title
        self.steps: list[Step] = []
        self._id = 0
        #: The model's prediction of the device state (``None``: not known).
        self.state: State | None = None
        self.caps: MigrationCaps | None = None
        #: The sequence cannot go on: every further request raises :class:`SequenceAborted`.
        self.dead = False
        self._repro: tuple[int, list[dict[str, Any]]] | None = None
        self.meter = StreamMeter(checker.stream_limit, checker.stream_seconds,
                                 checker.endless)
        #: How many fds came with the last reply (they are closed on arrival).
        self.reply_fds = 0

    # -- messages ---------------------------------------------------------------------------

    def next_id(self) -> int:
        self._id = (self._id + 1) & 0x7FFF or 1
        return self._id

    def exchange(self, data: bytes, *, fds: tuple[str, ...] = (), expect: Expect = OK,
                 note: str = "", timeout: float | None = None,
                 close_ok: bool = False) -> Reply | None:
        """Send ``data`` and return its reply (``None``: closed); hangs, crashes and bad frames
        are recorded and abort the sequence. Counts no check.

        ``close_ok``: the server may close the connection here, and a spawned server that then
        exits with status 0 (one-client servers) has not crashed."""
        if self.dead:
            raise SequenceAborted("the sequence has ended")
        step = Step(data, fds, expect, note)
        self.steps.append(step)
        command = step.command
        if len(self.steps) > SEQUENCE_LIMIT:
            self._abort(Kind.HANG, "a sequence exceeds the checker's message bound",
                        f"more than {SEQUENCE_LIMIT} messages in one sequence", command,
                        expected=f"at most {SEQUENCE_LIMIT} messages",
                        spec="the checker's bound on a sequence")
        if self.state is not None and len(data) >= 16:
            self.checker.report.coverage.requests[(self.state.name, command)] += 1
        opened = make_fds(fds)
        try:
            reply = self.conn.request(data, opened, timeout)
            if reply is not None:
                self.reply_fds = len(reply.fds)
                reply.close_fds()
                self.conn.memory.track(data, opened, reply.is_error)
        except ReplyTimeout:
            death = self.target.death()
            if death is not None:
                self._abort(Kind.CRASH, death.title(request_label(data)), death.describe(),
                            command)
            self._abort(Kind.HANG, f"no reply to {request_label(data)}",
                        f"no reply within {self.conn.timeout:g} s", command)
        except BadFrame as exc:
            self._abort(Kind.REPLY, f"unframeable bytes in reply to {command}", str(exc),
                        command)
        except WrongReplyId as exc:
            self._abort(Kind.REPLY, f"wrong message id in the reply to {command}", str(exc),
                        command, expected=f"a reply with message id {exc.want:#x}",
                        spec="vfio-user.rst \"Header\": a reply carries its request's "
                        "message id")
        finally:
            for fd in opened:
                with contextlib.suppress(OSError):
                    os.close(fd)
        if reply is not None:
            self._meter(data, reply, command)
        if reply is None:
            death = self.target.death()
            if death is not None and death.status == CLEAN_EXIT:
                if not close_ok:  # it ended the connection, and exited as after any client
                    self._abort(Kind.CLOSE, f"server closes the connection on "
                                f"{request_label(data)}", death.describe(), command)
            elif death is not None:
                self._abort(Kind.CRASH, death.title(request_label(data)), death.describe(),
                            command)
        return reply

    def _meter(self, data: bytes, reply: Reply, command: str) -> None:
        """Count a saving phase's stream against the bounds (:mod:`.bounds`)."""
        over = self.meter.observe(data, reply.is_error, reply.payload,
                                  self.state.name if self.state is not None else "saving")
        if over is not None:
            state, expected, observed = over
            self._abort(Kind.DATA, f"the {state} stream never ends", observed, command,
                        expected=expected, spec="PROTOCOL.md section 4: a read shorter than "
                        "asked ends the stream (the checker's bound on one saving phase)")

    def _abort(self, kind: Kind, title: str, observed: str, command: str, *,
               expected: str = "a reply within the timeout",
               spec: str = "vfio-user.rst: every command gets a reply") -> None:
        self.checker.report.count(self.group, title, False)
        self.finding(kind, title, expected, observed, spec, [command])
        self.dead = True
        raise SequenceAborted(title)

    # -- checks -----------------------------------------------------------------------------

    def finding(self, kind: Kind, title: str, expected: str, observed: str, spec: str,
                commands: list[str] | None = None) -> None:
        self.checker.report.findings.append(Finding(
            kind=kind, title=title,
            commands=commands or sorted({s.command for s in self.steps[-1:]}),
            expected=expected, observed=observed, spec=spec,
            reproducer=self._reproducer(), group=self.group))

    def _reproducer(self) -> list[dict[str, Any]]:
        """The steps as JSON, built once per length of the sequence (findings made after the
        same steps share it: a round trip's carries the whole stream)."""
        if self._repro is None or self._repro[0] != len(self.steps):
            self._repro = (len(self.steps), [s.to_json() for s in self.steps])
        return self._repro[1]

    def advise(self, title: str, detail: str) -> None:
        """Record an advisory: behaviour worth knowing that breaks no rule (not a check)."""
        self.checker.report.add_advisory(title, detail, self.group)

    def verify(self, ok: bool, kind: Kind, title: str, expected: str, observed: str,
               spec: str, commands: list[str] | None = None) -> bool:
        """Count one check on something already received; record a finding when not ``ok``."""
        self.checker.report.count(self.group, title, ok)
        if not ok:
            self.finding(kind, title, expected, observed, spec, commands)
        return ok

    def check(self, title: str, data: bytes, expect: Expect, *, fds: tuple[str, ...] = (),
              spec: str = "", cell: bool = True, close_ok: bool = False) -> Reply | None:
        """Send one request and count one check: its reply must meet ``expect``
        (``close_ok`` as for :meth:`exchange`)."""
        state = self.state
        reply = self.exchange(data, fds=fds, expect=expect, close_ok=close_ok)
        verdict = judge(expect, reply)
        if cell and state is not None:
            self.checker.report.coverage.cells[(state.name, self.steps[-1].command)] += 1
        self.verify(verdict.kind is None, verdict.kind or Kind.REPLY, title,
                    expect.describe(), verdict.observed, spec or expect.rule)
        if reply is None and not self.conn.closed:
            self.conn.closed = True
        if reply is None:
            raise SequenceAborted(title) if verdict.kind is not None else SequenceAborted(
                f"{title}: closed as allowed")
        return reply

    # -- setup and migration state ----------------------------------------------------------

    def setup(self, max_xfer: int | None = None) -> None:
        """VERSION, MIGRATION GET, then RUNNING along the model's path (module docstring)."""
        facts = self.checker.facts
        reply = self.check("VERSION is accepted",
                           version_request(self.next_id(),
                                           max_xfer=max_xfer or self.checker.client_max_xfer),
                           Expect("ok", rule="vfio-user.rst: Version"), cell=False)
        if reply is not None and len(reply.payload) >= 4:
            facts.version = struct.unpack_from("<HH", reply.payload)
            text = reply.payload[4:].rstrip(b"\0").decode("utf-8", "replace")
            with contextlib.suppress(ValueError):
                caps = json.loads(text).get("capabilities", {})
                if isinstance(caps, dict):
                    facts.capabilities = caps
        reply = self.exchange(feature_request(self.next_id(), wire.FeatureIndex.MIGRATION,
                                              wire.FeatureOp.GET, argsz=16))
        if reply is not None and not reply.is_error and len(reply.payload) >= 16:
            self.caps = facts.caps = MigrationCaps(struct.unpack_from("<Q", reply.payload, 8)[0]
                                                   & 7)
        self.checker.report.caps = facts.to_json()
        if self.caps is None:
            return
        current = self.get_state()
        if current is None:
            return
        self.state = current
        if current == State.RESUMING:
            # Left by an earlier connection (--socket), perhaps with part of a stream: leave
            # it without loading more (a refusal is allowed, PROTOCOL.md section 5).
            self.exchange(self.set_state_request(int(State.STOP)), expect=Expect("any"))
            self.state = self.get_state()
        if self.state in (State.ERROR, State.RESUMING):
            self.exchange(raw_message(self.next_id(), wire.Command.DEVICE_RESET, b""))
            self.state = self.get_state()
        if self.state is not None and self.state != State.RUNNING:
            self.goto(State.RUNNING)
        if self.checker.profile is not None and self.state == State.RUNNING:
            self.checker.profile.settle(self)

    def supported_states(self) -> list[State]:
        if self.caps is None:
            return []
        return sorted(transition_graph(self.caps).nodes)

    def get_state(self) -> State | None:
        """The device state by MIG_DEVICE_STATE GET, checked for form (one check)."""
        reply = self.exchange(feature_request(self.next_id(), wire.FeatureIndex.MIG_DEVICE_STATE,
                                              wire.FeatureOp.GET, argsz=_ECHO_SIZE))
        ok = (reply is not None and not reply.is_error and len(reply.payload) >= _ECHO_SIZE)
        if not self.verify(ok, Kind.REPLY, "MIG_DEVICE_STATE GET answers with the state",
                           f"success with a {_ECHO_SIZE}-byte payload",
                           "closed" if reply is None else f"{len(reply.payload)} bytes, error "
                           f"{reply.errno}", "PROTOCOL.md section 3 (MIG_DEVICE_STATE)"):
            return None
        assert reply is not None
        value = struct.unpack_from("<I", reply.payload, 8)[0]
        try:
            return State(value)
        except ValueError:
            self.finding(Kind.STATE, "MIG_DEVICE_STATE GET reports an unknown state",
                         "a state 0-7", str(value), "PROTOCOL.md section 3")
            return None

    def set_state_request(self, target: int) -> bytes:
        return feature_request(self.next_id(), wire.FeatureIndex.MIG_DEVICE_STATE,
                               wire.FeatureOp.SET, _STATE.pack(target, 0))

    def set_state(self, target: State | int, *, title: str | None = None,
                  may_fail: bool = False) -> bool:
        """SET ``target`` and check the reply and the state reached against the model.

        Returns whether the device is now where the model says (``self.state`` follows the
        model's prediction). ``may_fail``: the device's action on an arc of a valid path may
        legitimately fail (e.g. RESUMING -> STOP with no or invalid data): a refusal is then
        accepted when the device is left in a state of the path before ``target`` (the last
        state reached) or in ERROR (PROTOCOL.md section 5)."""
        if may_fail:
            return self._set_state_may_fail(target, title)
        cur = self.state
        if cur is None or self.caps is None:
            raise SequenceAborted("state unknown")
        data = self.set_state_request(int(target))
        name = state_name(target)
        title = title or f"SET {cur.name} -> {name}"
        try:
            path = transition_path(cur, State(target), self.caps)
            expect = Expect("ok", payload=data[16:], rule="PROTOCOL.md section 5; section 3: "
                            "a SET reply echoes the request")
        except (InvalidTransition, ValueError):
            path = None
            expect = refused(22, rule="PROTOCOL.md section 5: an invalid transition is "
                             "refused with EINVAL and the state is unchanged")
        reply = self.check(title, data, expect)
        if reply is None:
            return False
        rule = "PROTOCOL.md section 5 (the model's path)"
        if path is not None and not reply.is_error:
            for a, b in itertools.pairwise(path):
                self.checker.report.coverage.arcs[(a.name, b.name)] += 1
            allowed = {State(target)}
        elif path is not None:
            # a refused arc of a valid path: the last state reached, or ERROR (kernel vfio.h,
            # "any -> ERROR"); never a state off the path
            allowed = set(path[:-1]) | {State.ERROR}
            rule = "PROTOCOL.md section 5: a failed arc leaves the last state reached or ERROR"
        else:
            allowed = {cur}
        observed = self.get_state()
        if observed is None:
            raise SequenceAborted("state unreadable")
        self.state = observed
        return self.verify(
            observed in allowed, Kind.STATE, f"{title}: state reached",
            " or ".join(sorted(s.name for s in allowed)), observed.name, rule,
            ["DEVICE_FEATURE"])

    def _set_state_may_fail(self, target: State | int, title: str | None) -> bool:
        cur = self.state
        if cur is None or self.caps is None:
            raise SequenceAborted("state unknown")
        name = state_name(target)
        title = title or f"SET {cur.name} -> {name}"
        try:
            path = transition_path(cur, State(target), self.caps)
        except (InvalidTransition, ValueError):
            return self.set_state(target, title=title)
        data = self.set_state_request(int(target))
        self.checker.report.coverage.cells[(cur.name, "DEVICE_FEATURE")] += 1
        reply = self.exchange(data, expect=Expect("any", rule="PROTOCOL.md section 5"))
        if reply is None:
            self.verify(False, Kind.CLOSE, title, "a reply", "the connection closed",
                        "vfio-user.rst: every command gets a reply")
            raise SequenceAborted(title)
        if reply.is_error:
            self.verify(True, Kind.ERRNO, title, "", "", "")
            allowed = set(path[:-1]) | {State.ERROR}
        else:
            self.verify(bytes(reply.payload) == data[16:], Kind.REPLY, f"{title}: echo",
                        f"the request payload {data[16:].hex()}", reply.payload.hex(),
                        "PROTOCOL.md section 3: a SET reply echoes the request")
            for a, b in itertools.pairwise(path):
                self.checker.report.coverage.arcs[(a.name, b.name)] += 1
            allowed = {State(target)}
        observed = self.get_state()
        if observed is None:
            raise SequenceAborted("state unreadable")
        self.state = observed
        return self.verify(
            observed in allowed, Kind.STATE, f"{title}: state reached",
            " or ".join(sorted(s.name for s in allowed)), observed.name,
            "PROTOCOL.md section 5: a failed arc leaves the last state reached or ERROR",
            ["DEVICE_FEATURE"])

    def read_stream(self, chunk: int | None = None) -> bytes | None:
        """MIG_DATA_READ until a short read (end of this phase's data); ``None`` on an error.
        A stream beyond the checker's bounds ends the sequence (module docstring). ``chunk``
        defaults to the largest read both sides take (:attr:`read_chunk`)."""
        chunk = self.read_chunk if chunk is None else chunk
        out = bytearray()
        while True:
            payload = _MIG_DATA.pack(8 + chunk, chunk)
            reply = self.exchange(raw_message(self.next_id(), wire.Command.MIG_DATA_READ,
                                              payload))
            if reply is None or reply.is_error or len(reply.payload) < 8:
                return None
            size = struct.unpack_from("<I", reply.payload, 4)[0]
            out += memoryview(reply.payload)[8:8 + size]
            if size < chunk:
                return bytes(out)

    @property
    def read_chunk(self) -> int:
        """The largest MIG_DATA_READ both sides take: the server's and the checker's
        ``max_data_xfer_size`` (PROTOCOL.md section 4), at most :data:`READ_CHUNK`."""
        checker = self.checker
        return min(READ_CHUNK, checker.facts.max_data_xfer_size, checker.client_max_xfer)

    def goto(self, target: State) -> None:
        """Move to ``target`` as a VMM does: the first STOP_COPY stream of the run is read to
        its end and kept (RESUMING is fed it, when it is entered by a goto); a saving state
        left later keeps its data unread, as a VMM that cancels a migration or ends pre-copy
        leaves it (the kernel's STOP_COPY -> STOP and PRE_COPY -> STOP_COPY end the data)."""
        if self.state == target:
            return
        if self.state == State.STOP_COPY and self.checker.saved_stream is None:
            self.checker.saved_stream = self.read_stream()
        elif self.state == State.RESUMING and self.checker.saved_stream is not None:
            self.write_stream(self.checker.saved_stream)
        where = self.state.name if self.state is not None else "?"
        if not self.set_state(target, title=f"SET {where} -> {target.name} (setup)"):
            raise SequenceAborted(f"cannot reach {target.name}")

    def write_stream(self, stream: bytes) -> bool:
        limit = min(self.checker.facts.max_data_xfer_size, CLIENT_MAX_DATA_XFER)
        for at in range(0, len(stream), limit):
            part = stream[at:at + limit]
            reply = self.exchange(raw_message(self.next_id(), wire.Command.MIG_DATA_WRITE,
                                              _MIG_DATA.pack(8 + len(part), len(part)) + part))
            if reply is None or reply.is_error:
                return False
        return True
