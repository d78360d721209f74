"""Switchover policies: when the pre-copy phase should stop and the source stop-and-copy.

A policy is plain logic fed by one :class:`RoundStats` per finished pre-copy round; it
answers with a :class:`Decision`: keep iterating, switch over, or give up (the migration does
not converge). Every policy gives up after ``max_rounds`` rounds, so no migration iterates
forever.

* :class:`QemuPolicy`: QEMU's rule: switch when the bytes still pending can be sent within the
  downtime limit at the measured bandwidth (``pending <= bandwidth * downtime_limit``).
* :class:`IterationCapPolicy`: switch after a fixed number of rounds (the downtime is whatever
  it is; never gives up).
* :class:`DirtyRatePolicy`: uses the observed dirty rate: switch when the expected downtime
  (pending / bandwidth) fits the limit; give up early when the dirty rate is at least
  ``give_up_ratio`` x bandwidth for ``patience`` consecutive rounds (each round then sends
  as much as gets dirtied: it cannot converge), or when pending bytes stopped shrinking.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

#: Default downtime limit (QEMU's ``downtime-limit`` default, 300 ms).
DEFAULT_DOWNTIME_LIMIT = 0.3
#: Default bound on pre-copy rounds for every policy.
DEFAULT_MAX_ROUNDS = 30


@dataclass(frozen=True)
class RoundStats:
    """Measurements of one finished pre-copy round (``round`` counts from 1)."""

    round: int
    round_bytes: int
    round_seconds: float
    pending_bytes: int
    bandwidth: float
    dirty_rate: float
    elapsed: float
    pending_source: str = "estimate"
    """Where the device part of ``pending_bytes`` comes from: ``"estimate"`` (the driver's
    guess: vfio-user has no way to ask) or ``"device"`` (the experimental MIG_DATA_SIZE)."""


@dataclass(frozen=True)
class Decision:
    """What to do after a round; ``reason`` is human text for the trace and summary."""

    action: str  # "continue" | "switchover" | "give_up"
    reason: str

    @property
    def switch(self) -> bool:
        """True to switch over now."""
        return self.action == "switchover"


def _continue(reason: str) -> Decision:
    return Decision("continue", reason)


class SwitchoverPolicy(Protocol):
    """The interface of a switchover policy."""

    name: str

    def decide(self, stats: RoundStats) -> Decision:
        """Decide after one round."""
        ...


def _expected_downtime(stats: RoundStats) -> float:
    if stats.bandwidth <= 0:
        return float("inf")
    return stats.pending_bytes / stats.bandwidth


class QemuPolicy:
    """Switch when ``pending <= bandwidth * downtime_limit`` (QEMU's migration_iteration_run
    rule); give up after ``max_rounds``."""

    name = "qemu"

    def __init__(
        self, downtime_limit: float = DEFAULT_DOWNTIME_LIMIT, max_rounds: int = DEFAULT_MAX_ROUNDS
    ) -> None:
        self.downtime_limit = downtime_limit
        self.max_rounds = max_rounds

    def decide(self, stats: RoundStats) -> Decision:
        threshold = stats.bandwidth * self.downtime_limit
        if stats.pending_bytes <= threshold:
            source = "" if stats.pending_source == "estimate" else " (device-reported)"
            return Decision(
                "switchover",
                f"pending {stats.pending_bytes} B{source} <= bandwidth x downtime limit "
                f"{threshold:.0f} B",
            )
        if stats.round >= self.max_rounds:
            return Decision(
                "give_up",
                f"not converged after {stats.round} rounds: pending {stats.pending_bytes} B > "
                f"{threshold:.0f} B",
            )
        return _continue(f"pending {stats.pending_bytes} B > {threshold:.0f} B")


class IterationCapPolicy:
    """Switch over after exactly ``rounds`` pre-copy rounds."""

    name = "iterations"

    def __init__(self, rounds: int = 3) -> None:
        if rounds < 1:
            raise ValueError("rounds must be at least 1")
        self.rounds = rounds

    def decide(self, stats: RoundStats) -> Decision:
        if stats.round >= self.rounds:
            return Decision("switchover", f"iteration cap {self.rounds} reached")
        return _continue(f"round {stats.round} of {self.rounds}")


class DirtyRatePolicy:
    """Switch when the expected downtime fits; give up when the dirty rate keeps up with the
    link (see module docstring)."""

    name = "dirty-rate"

    def __init__(
        self,
        downtime_limit: float = DEFAULT_DOWNTIME_LIMIT,
        max_rounds: int = DEFAULT_MAX_ROUNDS,
        give_up_ratio: float = 0.95,
        patience: int = 3,
    ) -> None:
        self.downtime_limit = downtime_limit
        self.max_rounds = max_rounds
        self.give_up_ratio = give_up_ratio
        self.patience = patience
        self._hot = 0
        self._best_pending: int | None = None
        self._stalled = 0

    def decide(self, stats: RoundStats) -> Decision:
        expected = _expected_downtime(stats)
        if expected <= self.downtime_limit:
            return Decision(
                "switchover",
                f"expected downtime {expected * 1000:.1f} ms <= {self.downtime_limit * 1000:.0f}"
                f" ms (dirty rate {stats.dirty_rate:.0f} B/s)",
            )
        ratio = stats.dirty_rate / stats.bandwidth if stats.bandwidth > 0 else float("inf")
        self._hot = self._hot + 1 if ratio >= self.give_up_ratio else 0
        if self._best_pending is None or stats.pending_bytes < self._best_pending:
            self._best_pending = stats.pending_bytes
            self._stalled = 0
        else:
            self._stalled += 1
        if self._hot >= self.patience:
            return Decision(
                "give_up",
                f"dirty rate {stats.dirty_rate:.0f} B/s >= {self.give_up_ratio:.0%} of bandwidth "
                f"{stats.bandwidth:.0f} B/s for {self._hot} rounds: cannot converge",
            )
        if self._stalled >= 2 * self.patience or stats.round >= self.max_rounds:
            return Decision(
                "give_up",
                f"not converged after {stats.round} rounds (pending {stats.pending_bytes} B, "
                f"expected downtime {expected * 1000:.1f} ms)",
            )
        return _continue(
            f"expected downtime {expected * 1000:.1f} ms > {self.downtime_limit * 1000:.0f} ms"
        )


POLICIES = ("qemu", "iterations", "dirty-rate")


def make_policy(
    name: str,
    *,
    downtime_limit: float = DEFAULT_DOWNTIME_LIMIT,
    max_rounds: int = DEFAULT_MAX_ROUNDS,
    iterations: int = 3,
) -> SwitchoverPolicy:
    """A policy by name (one of :data:`POLICIES`)."""
    if name == "qemu":
        return QemuPolicy(downtime_limit, max_rounds)
    if name == "iterations":
        return IterationCapPolicy(iterations)
    if name == "dirty-rate":
        return DirtyRatePolicy(downtime_limit, max_rounds)
    raise ValueError(f"unknown policy {name!r} (one of {', '.join(POLICIES)})")


__all__ = [
    "DEFAULT_DOWNTIME_LIMIT",
    "DEFAULT_MAX_ROUNDS",
    "POLICIES",
    "Decision",
    "DirtyRatePolicy",
    "IterationCapPolicy",
    "QemuPolicy",
    "RoundStats",
    "SwitchoverPolicy",
    "make_policy",
]
