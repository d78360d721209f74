"""The migration driver's state and plumbing (:mod:`.driver` describes the driver): the
sides, clock, trace and counters of one migration, calls on a side with errors turned into
:class:`~.driver_types.MigrationError` (a lost connection marks the side dead), the deadline,
state queries and MIG_DEVICE_STATE SET with the observer, and letting the guest run.
"""

from __future__ import annotations

import errno as _errno
import time
from collections.abc import Callable
from typing import Any, TypeVar

from vfio_user_mig.model import MigrationCaps, State, known_path
from vfio_user_mig.simulator.client.io import VfioUserError
from vfio_user_mig.simulator.migration.clock import Clock
from vfio_user_mig.simulator.migration.driver_types import (
    DriverConfig,
    MigrationError,
    RelayFilter,
    Side,
    StateObserver,
)
from vfio_user_mig.simulator.migration.guest import Workload
from vfio_user_mig.simulator.migration.policies import SwitchoverPolicy
from vfio_user_mig.simulator.migration.trace import Trace

T = TypeVar("T")


class DriverBase:
    """State and plumbing of a :class:`~.driver.MigrationDriver`."""

    def __init__(
        self,
        src: Side,
        dst: Side,
        *,
        policy: SwitchoverPolicy,
        clock: Clock,
        trace: Trace | None = None,
        workload: Workload | None = None,
        config: DriverConfig | None = None,
        relay_filter: RelayFilter | None = None,
        observer: StateObserver | None = None,
        params: dict[str, Any] | None = None,
    ) -> None:
        self.src = src
        self.dst = dst
        self.policy = policy
        self.clock = clock
        self.trace = trace if trace is not None else Trace()
        self.workload = workload
        self.config = config or DriverConfig()
        self.relay_filter = relay_filter
        self.observer = observer
        self.params = params or {}
        self.caps = MigrationCaps.STOP_COPY
        self.page_size = src.guest.page_size
        self.logging = False
        #: the DMA logging page size the source device selected (DMA_LOGGING_START's reply)
        self.log_page_size = self.page_size
        self._dma_dirty: set[int] = set()
        self._chunks = 0
        self._round = 0
        self._chunk = self.config.chunk
        self._wall_start = time.monotonic()
        self._src_digest: str | None = None
        self._dst_digest: str | None = None
        self._last_device_bytes = 0
        self._relay_buf: memoryview | None = None
        self._size_query = False

    # ----- plumbing -------------------------------------------------------------------------
    def _emit(self, ev: str, **fields: Any) -> None:
        self.trace.emit(self.clock.now(), ev, **fields)

    def _io(self, side: Side, where: str, fn: Callable[..., T], *args: Any) -> T:
        """Call ``fn(*args)`` on ``side``; errors become :class:`MigrationError`."""
        if not side.alive:
            raise MigrationError(f"{side.name} {where}", _errno.ENOTCONN, "connection lost")
        try:
            return fn(*args)
        except VfioUserError as exc:
            raise MigrationError(f"{side.name} {where}", exc.errno or _errno.EIO, str(exc)) from exc
        except (OSError, ValueError) as exc:  # connection lost, timeout, framing
            side.alive = False
            side.state = None
            err: int = getattr(exc, "errno", None) or _errno.ECONNRESET
            raise MigrationError(f"{side.name} {where}", err, f"connection lost: {exc}") from exc

    def _check_deadline(self) -> None:
        limit = self.config.deadline
        if limit is not None and time.monotonic() - self._wall_start > limit:
            raise MigrationError("deadline", _errno.ETIMEDOUT, f"exceeded {limit} s")

    def _query_state(self, side: Side) -> State | None:
        if not side.alive:
            return None
        try:
            return side.client.get_state()
        except VfioUserError:
            return None
        except (OSError, ValueError):
            side.alive = False
            return None

    def set_state(self, side: Side, target: State) -> None:
        """One MIG_DEVICE_STATE SET, traced with the model's arcs; raises on failure."""
        cur = side.state if side.state is not None else self._query_state(side)
        if cur is None:
            raise MigrationError(f"{side.name} -> {target.name}", _errno.ENOTCONN,
                                 "state unknown (connection lost)")
        arcs = [s.name for s in known_path(cur, target, self.caps) or (cur,)]
        errno: int | None = None
        try:
            self._io(side, f"{cur.name} -> {target.name}", side.client.set_state, target)
            reached: State | None = target
        except MigrationError as exc:
            errno = exc.errno
            reached = self._query_state(side)
            side.state = reached
            self._emit("state", side=side.name, **{"from": cur.name}, to=target.name, arcs=arcs,
                       ok=False, errno=errno, reached=reached.name if reached is not None else None)
            if self.observer is not None:
                self.observer(side.name, cur, int(target), errno, reached)
            raise
        side.state = target
        self._emit("state", side=side.name, **{"from": cur.name}, to=target.name, arcs=arcs,
                   ok=True, errno=None, reached=target.name)
        if self.observer is not None:
            self.observer(side.name, cur, int(target), None, reached)

    def _tick(self) -> None:
        """Let the guest run until the clock's now."""
        if self.workload is not None:
            self._io(self.src, "workload", self.workload.run_until, self.clock.now())

__all__ = ["DriverBase"]
