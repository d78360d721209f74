"""A recorded referee session: every message each way, with what the device knew at the time.

A :class:`ConnLog` is one client connection to one referee socket (``role`` ``"src"`` or
``"dst"``, the socket the client was given for it). Its :class:`Event` list holds, in the order
they crossed the socket, the whole messages (header included) the client sent (``"c2s"``) and
the referee sent (``"s2c"``), each with the number of file descriptors it carried, and
``"note"`` events: facts of the device (``state`` after a request, ``digest`` after a state
change, ``unreported_dirty`` pages before logging stops or the source leaves STOP_COPY, a
``dma_unanswered`` request id, why the connection ``ended``). Past 8 MiB of messages a
connection keeps only the first bytes of each large message (an endless pre-copy stream must
not fill the memory). :class:`Session` is all
connections of one run with the client's outcome; it round-trips through JSON (message bytes
zlib-compressed, base64) so a finding can carry it and ``check-client --replay`` can read it.
"""

from __future__ import annotations

import base64
import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Event:
    """One message (``data``) or one fact (``note``) of a connection."""

    direction: str  # "c2s", "s2c" or "note"
    data: bytes = b""
    fds: int = 0
    note: dict[str, Any] = field(default_factory=dict)
    t: float = 0.0
    #: The message's real size when only its first bytes were kept (0: kept whole).
    cut: int = 0

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"dir": self.direction, "t": round(self.t, 4)}
        if self.direction == "note":
            out["note"] = self.note
        else:
            out["z"] = base64.b64encode(zlib.compress(self.data, 6)).decode("ascii")
            if self.fds:
                out["fds"] = self.fds
            if self.cut:
                out["cut"] = self.cut
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Event:
        raw = zlib.decompress(base64.b64decode(data["z"])) if "z" in data else b""
        return cls(data["dir"], raw, int(data.get("fds", 0)), dict(data.get("note", {})),
                   float(data.get("t", 0.0)), int(data.get("cut", 0)))


#: Message bytes a connection keeps whole (then large messages are cut to CUT_TO bytes).
KEEP_BYTES = 8 << 20
CUT_TO = 64


@dataclass
class ConnLog:
    """One connection's events (module docstring)."""

    role: str
    index: int = 0
    events: list[Event] = field(default_factory=list)
    #: Message bytes kept whole so far; past :data:`KEEP_BYTES` (8 MiB) large messages keep only
    #: their first :data:`CUT_TO` bytes (``Event.cut`` says so): an endless stream stays small.
    kept: int = 0

    def add(self, direction: str, data: bytes = b"", fds: int = 0, t: float = 0.0,
            **note: Any) -> None:
        cut = 0
        if len(data) > CUT_TO and self.kept + len(data) > KEEP_BYTES:
            cut, data = len(data), data[:CUT_TO]
        self.kept += len(data)
        self.events.append(Event(direction, data, fds, note, t, cut))

    def to_json(self) -> dict[str, Any]:
        return {"role": self.role, "index": self.index,
                "events": [e.to_json() for e in self.events]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ConnLog:
        events = [Event.from_json(e) for e in data.get("events", [])]
        return cls(data["role"], int(data.get("index", 0)), events,
                   sum(len(e.data) for e in events))


@dataclass
class Session:
    """A whole run: the scenario, its seed, the device, every connection, the client's fate.

    ``outcome``: ``"completed"`` (exit 0), ``"error"`` (exited non-zero: it reported an error),
    ``"crashed"`` (killed by a signal it did not get from us), ``"hung"`` (still running at
    the timeout; then killed) or ``"disconnected"`` (a client started by hand closed its
    connections). ``meta`` holds the rest (command, exit status, server limits).
    """

    scenario: str
    seed: int
    device: str
    conns: list[ConnLog] = field(default_factory=list)
    outcome: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"scenario": self.scenario, "seed": self.seed, "device": self.device,
                "outcome": self.outcome, "meta": self.meta,
                "conns": [c.to_json() for c in self.conns]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Session:
        return cls(data["scenario"], int(data["seed"]), data["device"],
                   [ConnLog.from_json(c) for c in data.get("conns", [])],
                   data.get("outcome", ""), dict(data.get("meta", {})))

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json()))

    @classmethod
    def load(cls, path: Path) -> Session:
        try:
            return cls.from_json(json.loads(Path(path).read_text()))
        except (OSError, ValueError, KeyError, TypeError, zlib.error) as exc:
            raise ValueError(f"{path}: not a recorded check-client session ({exc})") from exc


__all__ = ["ConnLog", "Event", "Session"]
