"""The transport study: does migration data on the main socket block other requests?

The migration v2 review asked whether carrying MIG_DATA_READ/WRITE on the vfio-user socket
blocks other requests, and proposed a separate socket for the migration data. This study
measures it with the real client and server: every run is one real migration
(:func:`~vfio_user_mig.simulator.migration.session.migrate`, wall clock, no link cap), the two
servers in their own processes, the VMM side one
:class:`~vfio_user_mig.simulator.client.threaded.ThreadedClient` per server, shared by threads
as a multi-threaded VMM shares its socket: the migration thread runs the driver
while a *vCPU thread* issues a 4-byte REGION_READ of BAR0 every :attr:`Grid.probe_interval`
seconds and records how long each took. The transports compared:

* ``main``: migration data on the main socket (the protocol as specified): a REGION_READ sent
  during a transfer queues behind the MIG_DATA_READ replies in flight (the driver keeps two);
* ``separate``: the experimental migration-data socket (``x-mig-data-socket``,
  :mod:`~vfio_user_mig.simulator.server.mig_channel`) negotiated at VERSION: MIG_DATA_READ/WRITE on
  their own socket, served by its own server thread; the device is shared, so a REGION_READ
  can still wait for the device to finish making one chunk, but not for chunks to be sent.

Profiles: ``pre_copy`` (capabilities STOP_COPY|PRE_COPY: the device state moves in PRE_COPY,
while the guest runs; one pre-copy round reads all of it, the guest is idle so STOP_COPY has
little left) and ``stop_copy`` (STOP_COPY only: all of it moves in STOP_COPY, during
the downtime). Each probe is assigned the phase the source was in when it was sent: ``idle``
(before the migration; a baseline), ``pre_copy`` or ``stop_copy``. In STOP_COPY the server
refuses region access (EINVAL, as libvfio-user): the refusal's round trip is what a vCPU
would wait, and is counted in ``refused``. A phase runs from the trace's record of the source
reaching its state to the record of the next one; at the edges (a probe sent while the
driver's SET is in flight) the server's answer settles it: only STOP_COPY refuses, so a
refused probe counts in ``stop_copy`` and a served one never does (it is dropped).

Per run: latency samples, the device-stream throughput (stream bytes over the time from the
first saving state to STOP), the downtime and total time (ms) from the migration summary, and
whether it verified. This module describes and runs the measurements: :func:`run_grid` runs
every run in turn (one at a time: they are timing measurements) and returns :class:`Run` rows.
The rest of the study sits above it, each part depending only on what it uses:

* :mod:`~vfio_user_mig.studies.transport_results`: :func:`aggregate` makes one ``Cell`` per
  transport x profile x chunk x phase; the computed conclusion, the Markdown summary, the CSV
  files;
* :mod:`~vfio_user_mig.studies.transport_figures`: the figures, drawn from runs and cells;
* :func:`vfio_user_mig.studies.output.write_transport_study` writes ``results.csv``,
  ``samples.csv``, ``summary.md`` and the figures.
"""

from __future__ import annotations

import errno as _errno
import math
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from vfio_user_mig.model import VFIO_USER_CAPS, MigrationCaps

KIB, MIB = 1 << 10, 1 << 20
TRANSPORTS = ("main", "separate")
PROFILES = {"pre_copy": VFIO_USER_CAPS, "stop_copy": MigrationCaps.STOP_COPY}
#: Phases a probe can fall in, in the order tables show them.
PHASES = ("idle", "pre_copy", "stop_copy")
BAR0 = 0


@dataclass(frozen=True)
class Grid:
    """What to run: every chunk size x profile x transport, ``repeats`` times."""

    chunks: tuple[int, ...] = (4 * KIB, 16 * KIB, 64 * KIB, 256 * KIB, MIB)
    transports: tuple[str, ...] = TRANSPORTS
    profiles: tuple[str, ...] = ("pre_copy", "stop_copy")
    device_mem: int = 16 * MIB
    """Device memory (most of the device state), bytes; a power of two."""
    guest_mem: int = MIB
    repeats: int = 2
    probe_interval: float = 0.001
    """Seconds the vCPU thread sleeps between two REGION_READs."""
    idle_probes: int = 100
    """REGION_READs before the migration starts (the ``idle`` baseline)."""
    seed: int = 0
    switch_interval: float | None = 0.0005
    """CPython's thread switch interval (``sys.setswitchinterval``) during the runs; the
    default 5 ms would let a busy thread delay a probe's hand-off by up to 5 ms on either
    side, which is the interpreter, not the transport. None leaves it alone. The server
    processes are forked from this one and inherit it."""

    def specs(self) -> list[RunSpec]:
        """Every run; the transports alternate so machine noise hits both alike."""
        return [
            RunSpec(transport, profile, chunk, repeat, self.device_mem, self.guest_mem,
                    self.probe_interval, self.idle_probes, self.seed + repeat,
                    self.switch_interval)
            for repeat in range(self.repeats)
            for profile in self.profiles
            for chunk in self.chunks
            for transport in self.transports
        ]


#: A few seconds: three chunk sizes, one repeat, 8 MiB of device memory.
QUICK_GRID = Grid(chunks=(4 * KIB, 64 * KIB, MIB), device_mem=8 * MIB, repeats=1,
                  idle_probes=50, probe_interval=0.0002)
#: About a minute on two cores.
DEFAULT_GRID = Grid(device_mem=32 * MIB, repeats=3, probe_interval=0.0002)


@dataclass(frozen=True)
class RunSpec:
    """One migration of the study."""

    transport: str
    profile: str
    chunk: int
    repeat: int
    device_mem: int
    guest_mem: int
    probe_interval: float
    idle_probes: int
    seed: int
    switch_interval: float | None = None


@dataclass
class Run:
    """What one migration measured."""

    spec: RunSpec
    verified: bool
    outcome: str
    total_ms: float | None
    downtime_ms: float | None
    stream_bytes: int
    stream_s: float | None
    samples: list[tuple[str, float, int | None]] = field(default_factory=list)
    """(phase, latency in µs, errno of an error reply or None), in the order sent."""

    @property
    def throughput_mbs(self) -> float | None:
        """Device stream MiB/s (None when nothing was measured)."""
        if not self.stream_s or not self.stream_bytes:
            return None
        return self.stream_bytes / MIB / self.stream_s


class Probe:
    """The vCPU thread: a 4-byte REGION_READ of BAR0 every ``interval`` s on ``client``;
    each sample is (clock time sent, latency µs, errno or None)."""

    def __init__(self, client: Any, now: Callable[[], float], interval: float) -> None:
        self.client = client
        self.now = now
        self.interval = interval
        self.samples: list[tuple[float, float, int | None]] = []
        #: Samples taken by :meth:`idle` (the baseline), kept apart.
        self.idle_samples: list[tuple[float, float, int | None]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self) -> bool:
        """One REGION_READ; False once the connection is gone."""
        from vfio_user_mig.simulator.client.io import VfioUserError

        sent = self.now()
        start = time.perf_counter()
        errno: int | None = None
        try:
            self.client.region_read(BAR0, 0, 4)
        except VfioUserError as exc:
            errno = exc.errno
        except (ConnectionError, TimeoutError, OSError):
            return False
        self.samples.append((sent, (time.perf_counter() - start) * 1e6, errno))
        return True

    def idle(self, count: int) -> None:
        """``count`` samples now, in the caller's thread (the baseline)."""
        for _ in range(count):
            self.sample()
            time.sleep(self.interval)
        self.idle_samples, self.samples = self.samples, []

    def start(self) -> None:
        """Sample in a thread until :meth:`stop`."""
        self._thread = threading.Thread(target=self._run, name="vcpu-probe", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set() and self.sample():
            self._stop.wait(self.interval)

    def stop(self) -> None:
        """Stop sampling and wait for the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)


def _src_windows(events: Sequence[dict[str, Any]]) -> list[tuple[float, float, str]]:
    """(start, end, phase) of every saving state the source was in, from the trace."""
    changes = [(float(e["t"]), str(e.get("reached") or e["to"])) for e in events
               if e.get("ev") == "state" and e.get("side") == "src"]
    windows = []
    for i, (t, state) in enumerate(changes):
        if state in ("PRE_COPY", "STOP_COPY"):
            end = changes[i + 1][0] if i + 1 < len(changes) else math.inf
            windows.append((t, end, state.lower()))
    return windows


def _phase(t: float, windows: Sequence[tuple[float, float, str]]) -> str | None:
    for start, end, phase in windows:
        if start <= t < end:
            return phase
    return None  # between windows or after: no transfer running


def run_one(spec: RunSpec) -> Run:
    """One migration with the vCPU probe running (see module docstring)."""
    from vfio_user_mig.simulator.client.threaded import ThreadedClient
    from vfio_user_mig.simulator.migration.session import Hooks, MigrateOptions, migrate

    probes: list[Probe] = []

    def client_factory(_label: str, sock: Any, guest: Any, timeout: float) -> Any:
        return ThreadedClient(sock, memory=guest.memory, timeout=timeout)

    def on_ready(ctx: dict[str, Any]) -> None:
        probe = Probe(ctx["src"].client, ctx["driver"].clock.now, spec.probe_interval)
        probes.append(probe)
        probe.idle(spec.idle_probes)
        probe.start()

    def on_finish() -> None:
        for probe in probes:
            probe.stop()

    caps = PROFILES[spec.profile]
    # Samples are classified by the source's saving-state windows (below); the idle
    # baseline is the synchronous probes before the driver starts.
    opts = MigrateOptions(
        device_mem=spec.device_mem, guest_mem=spec.guest_mem, dirty_rate=0, bandwidth=None,
        clock="real", caps=caps, chunk=spec.chunk, isolation="process", seed=spec.seed,
        mig_data_socket=spec.transport == "separate", keep_chunk_events=False,
        round_device_budget=2 * spec.device_mem,  # pre_copy: the whole memory in one round
    )
    result = migrate(opts, Hooks(client_factory=client_factory, on_ready=on_ready,
                                 on_finish=on_finish))
    summary = result.summary
    windows = _src_windows(result.trace_events)
    first = windows[0][0] if windows else math.inf
    stream_s = None
    if windows:
        last = max(end for _s, end, _p in windows)
        stream_s = last - first if math.isfinite(last) else None
    samples: list[tuple[str, float, int | None]] = []
    if probes:
        samples += [("idle", latency, errno) for _t, latency, errno in probes[0].idle_samples]
        for sent, latency, errno in probes[0].samples:
            phase = "stop_copy" if errno == _errno.EINVAL else _phase(sent, windows)
            if phase is not None and not (phase == "stop_copy" and errno is None):
                samples.append((phase, latency, errno))
    return Run(spec, bool(summary.get("verified")), str(summary.get("outcome")),
               summary.get("total_ms"), summary.get("downtime_ms"),
               int(summary.get("stream_bytes") or 0), stream_s, samples)


def run_grid(grid: Grid, progress: Callable[[int, int], None] | None = None) -> list[Run]:
    """Every run of ``grid``, one after the other (with the grid's switch interval)."""
    specs = grid.specs()
    runs = []
    saved = sys.getswitchinterval()
    if grid.switch_interval is not None:
        sys.setswitchinterval(grid.switch_interval)
    try:
        for i, spec in enumerate(specs):
            runs.append(run_one(spec))
            if progress is not None:
                progress(i + 1, len(specs))
    finally:
        sys.setswitchinterval(saved)
    return runs


__all__ = [
    "DEFAULT_GRID",
    "KIB",
    "MIB",
    "PHASES",
    "PROFILES",
    "QUICK_GRID",
    "TRANSPORTS",
    "Grid",
    "Probe",
    "Run",
    "RunSpec",
    "run_grid",
    "run_one",
]
