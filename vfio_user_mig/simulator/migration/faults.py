"""Faults a campaign run can inject, drawn from its seed.

==================  ===========================================================================
kind                what happens
==================  ===========================================================================
client_disconnect   the driver's connection to ``side`` closes before its ``at``-th message
server_disconnect   the source server drops the connection before the ``at``-th message
dst_crash           the destination server dies before the ``at``-th message to it
truncate            migration data from the ``at``-th chunk on is never delivered
bitflip             one bit of the ``at``-th chunk is flipped on the way
device_action       the device's action on ``arc`` fails (``errno``; ``broken``: to ERROR)
slow_peer           each of ``side``'s messages from the ``at``-th is delayed (``delay`` s)
==================  ===========================================================================

Message counts start when the migration starts (setup traffic is not counted). A server that
drops the connection or dies does so between two messages: it answers every message sent
before the ``at``-th, then goes (``Endpoint.crash``), so a seed decides the whole run. A fault
whose moment never comes (the run had fewer messages or chunks) does not *fire*; a run with a fault
that did not fire must behave as a fault-free run.
"""

from __future__ import annotations

import contextlib
import errno as _errno
import itertools
import random
import socket
import time
from dataclasses import dataclass
from typing import Any

from vfio_user_mig.model import MigrationCaps, State, transition_path
from vfio_user_mig.simulator.client.api import Client

FAULT_KINDS = (
    "client_disconnect",
    "server_disconnect",
    "dst_crash",
    "truncate",
    "bitflip",
    "device_action",
    "slow_peer",
)
#: Faults that corrupt the migration stream (the destination must refuse it).
CORRUPTING = frozenset({"truncate", "bitflip"})
#: Faults after which a migration must still verify.
BENIGN = frozenset({"slow_peer"})


@dataclass(frozen=True)
class Fault:
    """One fault (see module docstring)."""

    kind: str
    side: str = "src"
    at: int = 0
    bit: int = 0
    arc: tuple[State, State] | None = None
    errno: int = _errno.EIO
    broken: bool = False
    delay: float = 0.0

    def describe(self) -> str:
        """Short human text."""
        if self.kind == "device_action" and self.arc is not None:
            return (f"device_action {self.side} {self.arc[0].name}->{self.arc[1].name} "
                    f"errno {self.errno}{' broken' if self.broken else ''}")
        return f"{self.kind} {self.side} at {self.at}"


def driver_arcs(side: str, caps: MigrationCaps) -> list[tuple[State, State]]:
    """The direct arcs the driver walks on ``side`` in a successful migration."""
    if side == "src":
        cur, targets = State.RUNNING, [State.STOP_COPY, State.STOP]
        if caps & MigrationCaps.PRE_COPY:
            targets.insert(0, State.PRE_COPY)
    else:
        cur, targets = State.RUNNING, [State.RESUMING, State.STOP, State.RUNNING]
    arcs: list[tuple[State, State]] = []
    for target in targets:
        path = transition_path(cur, target, caps)
        arcs.extend(itertools.pairwise(path))
        cur = target
    return arcs


def draw_fault(rng: random.Random, caps: MigrationCaps, n_chunks: int) -> Fault | None:
    """A random fault (or None, one time in eight)."""
    if rng.random() < 0.125:
        return None
    kind = rng.choice(FAULT_KINDS)
    side = rng.choice(("src", "dst"))
    if kind == "server_disconnect":
        side = "src"
    elif kind == "dst_crash":
        side = "dst"
    if kind in CORRUPTING:
        return Fault(kind, "dst", at=rng.randrange(max(n_chunks, 1)),
                     bit=rng.randrange(1 << 20))
    if kind == "device_action":
        arc = rng.choice(driver_arcs(side, caps))
        return Fault(kind, side, arc=arc,
                     errno=rng.choice((_errno.EIO, _errno.EINVAL, _errno.ENOMEM, _errno.EBUSY)),
                     broken=rng.random() < 0.3)
    if kind == "slow_peer":
        return Fault(kind, side, at=rng.randrange(20), delay=rng.choice((0.0005, 0.001, 0.002)))
    return Fault(kind, side, at=rng.randrange(60 if side == "src" else 30))


class FaultState:
    """What a run's fault did; shared by the faulty clients and the relay filter."""

    def __init__(self, fault: Fault | None) -> None:
        self.fault = fault
        self.armed = False
        self.fired = False
        self.fired_at: str | None = None
        self.counts = {"src": 0, "dst": 0}
        self.endpoints: dict[str, Any] = {}

    def arm(self, endpoints: dict[str, Any]) -> None:
        """Start counting (the migration begins); ``endpoints`` by side for crashes."""
        self.endpoints = endpoints
        self.armed = True
        f = self.fault
        if f is not None and f.kind == "device_action" and f.arc is not None:
            endpoints[f.side].inject_arc_failure(f.arc[0], f.arc[1], f.errno, f.broken)

    def before_send(self, side: str, sock: socket.socket) -> None:
        """Called by a :class:`FaultyClient` before each message."""
        f = self.fault
        if not self.armed or f is None or f.side != side:
            return
        n = self.counts[side]
        self.counts[side] = n + 1
        if f.kind == "slow_peer":
            if f.at <= n < f.at + 40:
                self.fired = True
                time.sleep(f.delay)
            return
        if n != f.at or f.kind not in ("client_disconnect", "server_disconnect", "dst_crash"):
            return
        self.fired = True
        self.fired_at = f"message {n}"
        if f.kind == "client_disconnect":
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            raise ConnectionResetError(_errno.ECONNRESET, "injected client disconnect")
        self.endpoints[side].crash()

    def relay(self, index: int, data: bytes) -> bytes | None:
        """The relay filter: truncation and bit flips."""
        f = self.fault
        if f is None or f.kind not in CORRUPTING or index < f.at:
            return data
        if f.kind == "truncate":
            self.fired = True
            self.fired_at = self.fired_at or f"chunk {index}"
            return None
        if index == f.at and data:
            self.fired = True
            self.fired_at = f"chunk {index}"
            bit = f.bit % (len(data) * 8)
            flipped = bytearray(data)
            flipped[bit // 8] ^= 1 << (bit % 8)
            return bytes(flipped)
        return data


class FaultyClient(Client):
    """A :class:`Client` that lets a :class:`FaultState` act before each message it sends
    (:meth:`Client._before_send`: every message, on the generic and the direct paths)."""

    def __init__(self, sock: socket.socket, *, side: str, faults: FaultState,
                 **kwargs: Any) -> None:
        super().__init__(sock, **kwargs)
        self.side = side
        self.faults = faults

    def _before_send(self) -> None:
        self.faults.before_send(self.side, self.sock)

    def _channel_client(self, sock: socket.socket) -> Client:
        """The migration-data channel is faulty the same way: its messages count too."""
        return FaultyClient(sock, side=self.side, faults=self.faults, timeout=self.timeout,
                            max_data_xfer_size=self.max_data_xfer_size,
                            max_msg_fds=self.max_msg_fds)


__all__ = [
    "BENIGN",
    "CORRUPTING",
    "FAULT_KINDS",
    "Fault",
    "FaultState",
    "FaultyClient",
    "draw_fault",
    "driver_arcs",
]
