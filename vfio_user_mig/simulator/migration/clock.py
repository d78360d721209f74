"""Clocks for the migration driver: the real one, and a simulated one.

The driver never reads time itself: it asks its :class:`Clock`. Every byte that crosses the
migration link is reported with :meth:`Clock.transfer`, so a link bandwidth cap is the clock's
business:

* :class:`SimClock` advances simulated time by ``bytes / bandwidth`` per transfer (plus an
  optional per-message latency) and never sleeps: a migration of any size runs as fast as the
  IO allows and its timings (rounds, downtime) are those of the simulated link;
* :class:`RealClock` reads ``time.monotonic``; with a bandwidth cap it sleeps as a token bucket
  would, so real timings respect the cap.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """What the driver needs from a clock."""

    @property
    def simulated(self) -> bool:
        """True when time is simulated."""
        ...

    def now(self) -> float:
        """Seconds since an arbitrary origin."""
        ...

    def transfer(self, nbytes: int) -> None:
        """``nbytes`` crossed the migration link (may advance time or sleep)."""
        ...

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass (simulated: jump; real: sleep)."""
        ...


class SimClock:
    """Simulated time: starts at 0, advances only by transfers and :meth:`advance`.

    ``bandwidth`` in bytes/s (``None``: transfers are instantaneous); ``latency`` seconds are
    added per transfer (a message round trip on the link).
    """

    simulated = True

    def __init__(self, bandwidth: float | None = None, latency: float = 0.0) -> None:
        if bandwidth is not None and bandwidth <= 0:
            raise ValueError("bandwidth must be positive")
        self.bandwidth = bandwidth
        self.latency = latency
        self._t = 0.0

    def now(self) -> float:
        return self._t

    def transfer(self, nbytes: int) -> None:
        self._t += self.latency
        if self.bandwidth is not None:
            self._t += nbytes / self.bandwidth

    def advance(self, seconds: float) -> None:
        if seconds > 0:
            self._t += seconds


class RealClock:
    """Wall-clock time; with ``bandwidth`` (bytes/s) transfers are paced to that rate."""

    simulated = False

    def __init__(self, bandwidth: float | None = None) -> None:
        if bandwidth is not None and bandwidth <= 0:
            raise ValueError("bandwidth must be positive")
        self.bandwidth = bandwidth
        self._origin = time.monotonic()
        self._link_free = 0.0

    def now(self) -> float:
        return time.monotonic() - self._origin

    def transfer(self, nbytes: int) -> None:
        if self.bandwidth is None:
            return
        start = max(self.now(), self._link_free)
        self._link_free = start + nbytes / self.bandwidth
        delay = self._link_free - self.now()
        if delay > 0:
            time.sleep(delay)

    def advance(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


__all__ = ["Clock", "RealClock", "SimClock"]
