"""Randomized simulation campaigns: scenarios drawn from a seed, faults, invariants.

Every run draws a :class:`Scenario` from its own seed (sizes, dirty rate, capability set,
policy, a sequence of legal and illegal state requests, optionally a fault), runs it on two
thread-hosted servers with the simulated clock, and checks the invariants:

* **model**: after every MIG_DEVICE_STATE SET (the request sequence and the driver's), the
  errno and the state reached equal the model's prediction (:class:`Predictor`: the path of
  :func:`~vfio_user_mig.model.transition_path`, injected arc failures, the stream check of
  RESUMING -> STOP), and so does the server's own state; a request lost with its connection
  leaves the server where it was;
* **errno**: every command probed in every state gets the errno
  :func:`~vfio_user_mig.protocol.gating.gate` predicts (or succeeds when the gate lets it
  through); an accepted DEVICE_RESET returns the device to RUNNING.
  :attr:`RunResult.checks` counts comparisons made, after making them;
* **no corrupted stream accepted**: with a truncated or bit-flipped stream the migration fails
  and the destination never completes RESUMING -> STOP;
* **verification**: a run without a fault that fired (or with a benign one) verifies (or, with a
  dirty rate its policy cannot beat, ends "not converged" with the source running);
* **recovery**: after a failure before the destination runs, the source runs again (unless the
  model says its device broke or its connection died);
* **no hang, no leak**: the run ends within its deadline; open fds and threads are the same
  before and after.

:func:`run_campaign` runs many seeds, in worker processes with ``workers > 1``.
"""

from __future__ import annotations

import contextlib
import errno as _errno
import gc
import itertools
import os
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sized
from dataclasses import dataclass, field
from typing import Any

from vfio_user_mig.model import ALL_CAPS, MigrationCaps, State, caps_label, known_path
from vfio_user_mig.protocol.gating import gate
from vfio_user_mig.simulator.client.api import Client
from vfio_user_mig.simulator.client.io import VfioUserError
from vfio_user_mig.simulator.executor import run_batched
from vfio_user_mig.simulator.migration.campaign_stats import (
    CampaignStats,
    RunCoverage,
    replay_command,
)
from vfio_user_mig.simulator.migration.faults import (
    BENIGN,
    CORRUPTING,
    Fault,
    FaultState,
    FaultyClient,
    draw_fault,
)
from vfio_user_mig.simulator.migration.guest import GuestRam
from vfio_user_mig.simulator.migration.isolation import one_cpu
from vfio_user_mig.simulator.migration.policies import POLICIES
from vfio_user_mig.simulator.migration.session import Hooks, MigrateOptions, migrate
from vfio_user_mig.wire.constants import Command

#: Wall-clock seconds a run may take.
RUN_DEADLINE = 20.0
#: Per-request timeout of the clients in a run.
REQUEST_TIMEOUT = 3.0
_PROBES = (Command.MIG_DATA_READ, Command.MIG_DATA_WRITE, Command.DEVICE_GET_INFO,
           Command.REGION_READ, Command.DEVICE_RESET)


def run_seed(campaign_seed: int, index: int) -> int:
    """The seed of run ``index`` of a campaign (what ``--replay`` takes)."""
    return campaign_seed * 1_000_000 + index


@dataclass(frozen=True)
class Scenario:
    """Everything one run does, drawn from ``seed``."""

    seed: int
    caps: MigrationCaps
    device_mem: int
    guest_mem: int
    chunk: int
    bandwidth: float
    dirty_rate: float
    policy: str
    iterations: int
    downtime_limit: float
    src_requests: tuple[int, ...]
    dst_requests: tuple[int, ...]
    probes: tuple[int, ...]
    fault: Fault | None
    mig_data_socket: bool = False
    """Migration data on the experimental separate socket (``x-mig-data-socket``)."""

    def describe(self) -> str:
        """One line."""
        return (f"caps {caps_label(self.caps)}, device {self.device_mem // 1024} KiB, guest "
                f"{self.guest_mem // 1024} KiB, chunk {self.chunk}, policy {self.policy}, "
                f"dirty {self.dirty_rate / max(self.bandwidth, 1):.2f}x bandwidth, "
                f"{'separate data socket, ' if self.mig_data_socket else ''}"
                f"fault {self.fault.describe() if self.fault else 'none'}")


def draw(seed: int, faults: bool) -> Scenario:
    """The scenario of run ``seed``."""
    rng = random.Random(seed)
    caps = rng.choice(ALL_CAPS)
    device_mem = 1 << rng.randint(14, 17)
    guest_mem = rng.choice((16, 32, 64)) * 4096
    chunk = rng.choice((4096, 16384, 65536))
    bandwidth = float(rng.choice((4, 16, 64)) << 20)
    dirty_rate = bandwidth * rng.choice((0.0, 0.02, 0.1, 0.3, 0.6, 1.5))
    policy = rng.choice(POLICIES)
    iterations = rng.randint(1, 4)
    downtime_limit = rng.choice((0.002, 0.02, 0.3))
    states = [int(s) for s in State] + [8]
    src_requests = tuple(rng.choice(states) for _ in range(rng.randint(0, 6)))
    dst_requests = tuple(rng.choice(states) for _ in range(rng.randint(0, 3)))
    probes = tuple(rng.randrange(len(_PROBES)) for _ in range(len(src_requests)))
    fault = draw_fault(rng, caps, device_mem // chunk + 3) if faults else None
    mig_data_socket = rng.random() < 0.25  # drawn last: earlier draws keep their seeds' values
    return Scenario(seed, caps, device_mem, guest_mem, chunk, bandwidth, dirty_rate, policy,
                    iterations, downtime_limit, src_requests, dst_requests, probes, fault,
                    mig_data_socket)


class Predictor:
    """The model's prediction of each SET: errno (None = success) and the state reached."""

    def __init__(self, caps: MigrationCaps) -> None:
        self.caps = caps
        self.injected: dict[str, dict[tuple[State, State], tuple[int, bool]]] = {
            "src": {}, "dst": {}}
        self.stream_ok: dict[str, Callable[[], bool]] = {
            "src": lambda: False, "dst": lambda: False}
        self.broke: dict[str, bool] = {"src": False, "dst": False}

    def predict(self, side: str, cur: State, target: int) -> tuple[int | None, State]:
        """Prediction of ``SET target`` from ``cur`` (consumes injected failures it walks)."""
        if target not in State._value2member_map_:
            return _errno.EINVAL, cur
        path = known_path(cur, State(target), self.caps)
        if path is None:
            return _errno.EINVAL, cur  # the model refuses (InvalidTransition: EINVAL)
        for a, b in itertools.pairwise(path):
            injected = self.injected[side].pop((a, b), None)
            if injected is not None:
                if injected[1]:
                    self.broke[side] = True
                return injected[0], State.ERROR if injected[1] else a
            if (a, b) == (State.RESUMING, State.STOP) and not self.stream_ok[side]():
                return _errno.EINVAL, State.ERROR
        return None, State(target)


@dataclass
class RunResult:
    """One run's outcome."""

    seed: int
    ok: bool
    reason: str
    outcome: str
    fault: str
    fired: bool
    elapsed: float
    rounds: int = 0
    checks: int = 0
    transport: str = "main"
    """Where migration data went: ``main`` socket or ``separate`` (x-mig-data-socket)."""
    arcs: dict[str, int] = field(default_factory=dict)
    """FSM arcs the run's SETs walked (``RUNNING->STOP``: count), see :class:`RunCoverage`."""
    cells: dict[str, int] = field(default_factory=dict)
    """(state, command) cells probed (``STOP_COPY/MIG_DATA_READ``: count)."""


class _Run:
    """State of one run while it executes."""

    def __init__(self, sc: Scenario) -> None:
        self.sc = sc
        self.predictor = Predictor(sc.caps)
        self.faults = FaultState(sc.fault)
        self.violations: list[str] = []
        self.endpoints: dict[str, Any] = {}
        self.checks = 0
        self.dst_accepted_stream = False
        self.resuming_bytes = 0
        self.coverage = RunCoverage(sc.caps)

    def fired(self) -> bool:
        """Whether the fault took place (an injected arc failure: whether it was walked)."""
        f = self.sc.fault
        if f is not None and f.kind == "device_action":
            return self.faults.armed and f.arc not in self.predictor.injected[f.side]
        return self.faults.fired

    def violate(self, text: str) -> None:
        self.violations.append(text)

    # ----- checks ------------------------------------------------------------------------
    def server_state(self, side: str) -> State | None:
        ep = self.endpoints.get(side)
        return None if ep is None else ep.state()

    def observe(self, side: str, cur: State, target: int, errno: int | None,
                reached: State | None) -> None:
        """State observer of the driver (and of the request sequence); counts one check per
        SET it compared with the model (a request lost with its connection is compared only
        when the server's state can be read)."""
        name = State(target).name if target in State._value2member_map_ else str(target)
        actual = self.server_state(side)
        if errno is not None and reached is None:
            # The request died with its connection: the server must not have moved.
            if actual is not None and errno in (_errno.ECONNRESET, _errno.EPIPE,
                                                _errno.ENOTCONN):
                if actual != cur:
                    self.violate(f"{side} {cur.name}->{name}: connection lost but server moved "
                                 f"to {actual.name}")
                self.checks += 1
            return
        want_errno, want_state = self.predictor.predict(side, cur, target)
        if errno != want_errno:
            self.violate(f"{side} {cur.name}->{name}: errno {errno}, model says {want_errno}")
        if reached is not None and reached != want_state:
            self.violate(f"{side} {cur.name}->{name}: reached {reached.name}, model says "
                         f"{want_state.name}")
        if actual is not None and actual != want_state:
            self.violate(f"{side} {cur.name}->{name}: server in {actual.name}, model says "
                         f"{want_state.name}")
        self.checks += 1
        self.coverage.set_state(cur, target, reached)
        if (side == "dst" and self.faults.armed and cur is State.RESUMING
                and target != State.RESUMING and errno is None):
            self.dst_accepted_stream = True  # RESUMING -> STOP passed: the stream was taken

    def probe(self, client: Client, state: State, which: int) -> None:
        """One command in ``state``; its errno must be the gate's. Migration data goes where
        the driver sends it (:attr:`Client.data_client`); with a migration-data channel open,
        the same command on the main socket must also be refused (EINVAL). An accepted
        DEVICE_RESET must leave the device in RUNNING (PROTOCOL.md section 5). Each comparison
        counts as one check once it has been made."""
        command = _PROBES[which]
        want = gate(state, command, self.sc.caps)
        data = client.data_client
        if data is not client and command in (Command.MIG_DATA_READ, Command.MIG_DATA_WRITE):
            try:
                if command == Command.MIG_DATA_READ:
                    client.mig_data_read(1)
                else:
                    client.mig_data_write(b"M")
                got_main: int | None = None
            except VfioUserError as exc:
                got_main = exc.errno
            if got_main != _errno.EINVAL:
                self.violate(f"{command.name} on the main socket with a migration-data socket "
                             f"open: errno {got_main}, expected EINVAL")
            self.checks += 1
        try:
            if command == Command.MIG_DATA_READ:
                data.mig_data_read(1)
            elif command == Command.MIG_DATA_WRITE:
                # The next byte of a valid record prefix (the magic), or once it is written an
                # empty write: only the gate can refuse either.
                prefix = b"MGDV"[self.resuming_bytes : self.resuming_bytes + 1]
                data.mig_data_write(prefix if want is None else prefix or b"M")
                if want is None:
                    self.resuming_bytes += len(prefix)
            elif command == Command.DEVICE_GET_INFO:
                client.device_info()
            elif command == Command.DEVICE_RESET:
                client.reset()
            else:
                client.region_read(2, 0, 4)
            got: int | None = None
        except VfioUserError as exc:
            got = exc.errno
        if got != want:
            self.violate(f"{command.name} in {state.name}: errno {got}, gate says {want}")
        self.checks += 1
        self.coverage.probe(state, command.name)
        if command == Command.DEVICE_RESET and got is None:
            self.predictor.broke["src"] = False
            self.resuming_bytes = 0
            after = client.get_state()
            if after is not State.RUNNING:
                self.violate(f"DEVICE_RESET in {state.name} left the device in {after.name}")
            self.checks += 1

    def request_sequence(self, side: str, client: Client, requests: tuple[int, ...]) -> None:
        """The scenario's state requests on one side, then back to RUNNING."""
        cur = client.get_state()
        for i, target in enumerate(requests):
            errno: int | None = None
            try:
                client.set_state(target)
            except VfioUserError as exc:
                errno = exc.errno
            reached = client.get_state()
            self.observe(side, cur, target, errno, reached)
            if reached is not cur or reached is not State.RESUMING:
                self.resuming_bytes = 0
            cur = reached
            if side == "src" and i < len(self.sc.probes):
                self.probe(client, cur, self.sc.probes[i])
                cur = client.get_state()
        for _ in range(3):
            if cur is State.RUNNING:
                break
            if cur is State.ERROR:
                client.reset()
                self.predictor.broke[side] = False
            else:
                errno = None
                try:
                    client.set_state(State.RUNNING)
                except VfioUserError as exc:
                    errno = exc.errno
                self.observe(side, cur, int(State.RUNNING), errno, client.get_state())
            cur = client.get_state()
        if cur is not State.RUNNING:
            self.violate(f"{side}: could not return to RUNNING (in {cur.name})")

    def on_ready(self, parts: dict[str, Any]) -> None:
        """Hook: servers and clients are up; run the request sequences, arm the fault."""
        src, dst = parts["src"], parts["dst"]
        self.endpoints = {ep.label: ep for ep in parts["endpoints"]}
        self.request_sequence("src", src.client, self.sc.src_requests)
        self.request_sequence("dst", dst.client, self.sc.dst_requests)
        corrupt = self.sc.fault is not None and self.sc.fault.kind in CORRUPTING
        self.predictor.stream_ok["dst"] = lambda: not (corrupt and self.faults.fired)
        f = self.sc.fault
        if f is not None and f.kind == "device_action" and f.arc is not None:
            self.predictor.injected[f.side][f.arc] = (f.errno, f.broken)
        self.faults.arm(self.endpoints)

    def client_factory(self, side: str, sock: Any, guest: GuestRam, timeout: float) -> Client:
        return FaultyClient(sock, side=side, faults=self.faults, memory=guest.memory,
                            timeout=timeout)


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def run_scenario(sc: Scenario, trace: str | None = None) -> RunResult:
    """Run one scenario and check every invariant (``trace``: write the run's trace)."""
    fds, threads = _fd_count(), threading.active_count()
    t0 = time.monotonic()
    run = _Run(sc)
    opts = MigrateOptions(
        device_mem=sc.device_mem, guest_mem=sc.guest_mem, dirty_rate=sc.dirty_rate,
        bandwidth=sc.bandwidth, downtime_limit=sc.downtime_limit, policy=sc.policy,
        iterations=sc.iterations, max_rounds=8, caps=sc.caps, seed=sc.seed, chunk=sc.chunk,
        timeout=REQUEST_TIMEOUT, deadline=RUN_DEADLINE / 2, latency=20e-6, trace=trace,
        mig_data_socket=sc.mig_data_socket, extra={"campaign_seed": sc.seed})
    hooks = Hooks(client_factory=run.client_factory, relay_filter=run.faults.relay,
                  observer=run.observe, on_ready=run.on_ready)
    outcome, rounds = "error", 0
    try:
        result = migrate(opts, hooks)
        outcome, rounds = result.outcome, int(result.summary["precopy_rounds"])
        run_checks(run, result.ok, outcome, result.committed,
                   str(result.error) if result.error else "")
    except Exception as exc:  # a harness-level failure is a failed run, never a crash
        run.violate(f"exception: {exc!r}")
    elapsed = time.monotonic() - t0
    if elapsed > RUN_DEADLINE:
        run.violate(f"run took {elapsed:.1f} s > deadline {RUN_DEADLINE} s")
    for _ in range(100):
        if threading.active_count() <= threads:
            break
        time.sleep(0.01)
    if threading.active_count() != threads:
        run.violate(f"thread leak: {threads} -> {threading.active_count()}")
    if _fd_count() != fds:
        run.violate(f"fd leak: {fds} -> {_fd_count()}")
    fault = sc.fault.describe() if sc.fault else "none"
    return RunResult(sc.seed, not run.violations, "; ".join(run.violations), outcome, fault,
                     run.fired(), elapsed, rounds, run.checks,
                     "separate" if sc.mig_data_socket else "main",
                     dict(run.coverage.arcs), dict(run.coverage.cells))


def run_checks(run: _Run, ok: bool, outcome: str, committed: bool, error: str = "") -> None:
    """Invariants on the outcome of the migration."""
    f, fired = run.sc.fault, run.fired()
    if f is not None and f.kind in CORRUPTING and fired and (ok or run.dst_accepted_stream):
        run.violate(f"corrupted stream ({f.kind}) accepted by the destination")
    effective = f is not None and fired and f.kind not in BENIGN
    if not effective and outcome not in ("verified", "not_converged"):
        run.violate(f"no fault took effect but the migration ended {outcome} ({error})")
    if outcome == "not_converged" and run.sc.policy == "iterations":
        run.violate("the iteration-cap policy cannot give up")
    if not ok and not committed:
        state = run.server_state("src")
        src_alive = not (f is not None and f.side == "src" and fired and f.kind in (
            "client_disconnect", "server_disconnect"))
        if src_alive and not run.predictor.broke["src"] and state is not State.RUNNING:
            run.violate(f"source not recovered: in {state.name if state is not None else None}")


def _work(item: tuple[int, bool]) -> RunResult:
    return run_scenario(draw(item[0], item[1]))


def _work_frozen(item: tuple[int, bool]) -> RunResult:
    """:func:`_work` in a process whose heap is frozen first (see :func:`_frozen_heap`; for
    good, uncollected: on Dask each batch runs in a forked child that ends with it)."""
    if not gc.get_freeze_count():
        gc.freeze()
    return _work(item)


def _on_one_cpu(results: Iterator[RunResult]) -> Iterator[RunResult]:
    """``results`` computed with the calling thread and the threads it starts meanwhile (each
    run's thread-isolated servers) on one CPU (:func:`~.isolation.one_cpu`), pinned once for
    the whole campaign: the local executor running in this process. (Its pool workers are
    pinned a CPU each when they start; not on Dask: workers forking a child per batch cannot
    tell their CPUs apart, and two pinned to one CPU would stay there.)"""
    with one_cpu():
        yield from results


#: The summary of a campaign: streaming counters, bounded failures and coverage.
CampaignResult = CampaignStats


def iter_campaign(seeds: Iterable[int], faults: bool, workers: int, *, executor: str = "local",
                  scheduler: str | None = None, batch_size: int | None = None,
                  total: int | None = None) -> Iterator[RunResult]:
    """Run ``seeds``, yielding results as they finish (in batches, on ``executor``: see
    :func:`~vfio_user_mig.simulator.executor.run_batched`)."""
    work = _work if executor == "local" else _work_frozen
    results = run_batched(work, ((s, faults) for s in seeds), executor=executor,
                          scheduler=scheduler, workers=workers, batch_size=batch_size,
                          total=total if total is not None else
                          (len(seeds) if isinstance(seeds, Sized) else None))
    return _on_one_cpu(results) if executor == "local" and workers <= 1 else results


@contextlib.contextmanager
def _frozen_heap() -> Iterator[None]:
    """The objects alive now (modules, classes, tables: the campaign's own code) are moved out
    of the cyclic garbage collector's sight (:func:`gc.freeze`) while the campaign runs, then
    given back. A run makes reference cycles (an exception that fails a request holds its
    frames in its traceback), so collections of the oldest generation come often, and each
    walked every object of the process (a few ms); frozen, they walk only what the runs made.
    Forked workers inherit the frozen heap. Nothing is collected less: a frozen object is one
    that was alive before the campaign, and reference counting still frees it."""
    if gc.get_freeze_count():  # someone froze already (a worker, a caller)
        yield
        return
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def run_campaign(runs: int, seed: int, *, faults: bool = False, workers: int = 1,
                 progress: Callable[[RunResult], None] | None = None, executor: str = "local",
                 scheduler: str | None = None, batch_size: int | None = None) -> CampaignStats:
    """Run ``runs`` scenarios of campaign ``seed``; every result goes to ``progress`` (in
    completion order) and into the streaming summary, none is kept."""
    result = CampaignStats(seed, faults, workers, executor, scheduler)
    t0 = time.monotonic()
    with _frozen_heap():
        for r in iter_campaign((run_seed(seed, i) for i in range(runs)), faults, workers,
                               executor=executor, scheduler=scheduler, batch_size=batch_size,
                               total=runs):
            result.add(r)
            if progress is not None:
                progress(r)
        result.elapsed = time.monotonic() - t0
    return result


__all__ = [
    "CampaignResult",
    "CampaignStats",
    "Predictor",
    "RunResult",
    "Scenario",
    "draw",
    "iter_campaign",
    "replay_command",
    "run_campaign",
    "run_scenario",
    "run_seed",
]
