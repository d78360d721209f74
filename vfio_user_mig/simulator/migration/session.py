"""One migration, assembled: two servers, two guests, a workload, the driver; then torn down.

:func:`migrate` is what ``vfio-user-mig migrate`` runs; :class:`MigrateOptions` holds its
parameters. Hooks (a client class, relay filter, state observer, a callback once everything is
built) let the campaign inject faults and check invariants without reimplementing the setup.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vfio_user_mig.model import VFIO_USER_CAPS, MigrationCaps, caps_label
from vfio_user_mig.simulator.client.api import Client
from vfio_user_mig.simulator.migration.clock import Clock, RealClock, SimClock
from vfio_user_mig.simulator.migration.driver import MigrationDriver
from vfio_user_mig.simulator.migration.driver_types import (
    DriverConfig,
    MigrationResult,
    RelayFilter,
    Side,
    StateObserver,
)
from vfio_user_mig.simulator.migration.guest import BAR2, PAGE_SIZE, GuestRam, Workload
from vfio_user_mig.simulator.migration.isolation import (
    Endpoint,
    ExternalEndpoint,
    ServerSpec,
    make_endpoint,
)
from vfio_user_mig.simulator.migration.policies import (
    DEFAULT_DOWNTIME_LIMIT,
    DEFAULT_MAX_ROUNDS,
    make_policy,
)
from vfio_user_mig.simulator.migration.trace import Trace


@dataclass
class MigrateOptions:
    """Parameters of one migration (the ``migrate`` command's options)."""

    device_mem: int = 16 << 20
    guest_mem: int = 64 << 20
    dirty_rate: float = 16 << 20
    bandwidth: float | None = 128 << 20
    downtime_limit: float = DEFAULT_DOWNTIME_LIMIT
    policy: str = "qemu"
    iterations: int = 3
    max_rounds: int = DEFAULT_MAX_ROUNDS
    caps: MigrationCaps = VFIO_USER_CAPS
    seed: int = 0
    trace: str | None = None
    keep_chunk_events: bool = True
    isolation: str = "thread"
    src_socket: str | None = None
    dst_socket: str | None = None
    clock: str = "sim"
    latency: float = 0.0
    chunk: int = 1 << 20
    timeout: float = 30.0
    deadline: float | None = None
    fill: bool = True
    device_share: float = 0.2
    dma_share: float = 0.05
    round_device_budget: int | None = None
    """Most device bytes read in one pre-copy round (None: the driver's default,
    :attr:`DriverConfig.round_device_budget`)."""
    mig_data_socket: bool = False
    """Experimental: hosted servers agree to, and the clients negotiate, a separate socket for
    MIG_DATA_READ/WRITE (``x-mig-data-socket``, :mod:`~vfio_user_mig.simulator.server.mig_channel`).
    A server that does not know it (external servers) leaves migration data on the main
    socket."""
    size_query: bool = False
    """Experimental: enable MIG_DATA_SIZE on the hosted servers (threads or processes) and let
    the driver use the device's pending bytes instead of its estimate
    (:attr:`DriverConfig.size_query`). A server that refuses it (external servers,
    libvfio-user) leaves the estimate in use; the trace says so."""
    extra: dict[str, Any] = field(default_factory=dict)

    def params(self) -> dict[str, Any]:
        """The parameters recorded in the trace's ``start`` event."""
        return {
            "caps": caps_label(self.caps), "device_mem": self.device_mem,
            "guest_mem": self.guest_mem, "dirty_rate": self.dirty_rate,
            "bandwidth": self.bandwidth, "downtime_limit": self.downtime_limit,
            "seed": self.seed, "isolation": self.isolation if self.src_socket is None
            else "external", **({"size_query": True} if self.size_query else {}),
            **({"mig_data_socket": True} if self.mig_data_socket else {}),
            **self.extra,
        }


@dataclass
class Hooks:
    """Fault injection and observation points (all optional)."""

    client_factory: Callable[[str, Any, GuestRam, float], Client] | None = None
    relay_filter: RelayFilter | None = None
    observer: StateObserver | None = None
    on_ready: Callable[[dict[str, Any]], None] | None = None
    on_finish: Callable[[], None] | None = None
    """Called once the driver is done (or failed), before anything is torn down (e.g. to stop
    a thread that uses the clients)."""


def make_clock(opts: MigrateOptions) -> Clock:
    """The clock the options ask for."""
    if opts.clock == "sim":
        return SimClock(opts.bandwidth, opts.latency)
    if opts.clock == "real":
        return RealClock(opts.bandwidth)
    raise ValueError(f"unknown clock {opts.clock!r} (sim or real)")


#: The low page of a draw (:func:`fill_bytes`).
_PAGE_BITS = (1 << (8 * PAGE_SIZE)) - 1


def fill_bytes(rng: random.Random, n: int) -> bytes:
    """``n`` bytes of recognisable content, drawn so that ``rng`` moves on exactly as
    ``rng.randbytes(n)`` moves it (the workload's later draws, hence the run, stay those of
    the seed).

    Every page is distinct: the draw's first page (random bytes) with its first 8 bytes
    replaced by the page's number (``u64`` little-endian); a partial last page is a prefix of
    such a page. Converting the whole draw to bytes (what ``randbytes`` does) cost more than
    anything else a campaign run does in Python; one page of it is as good a pattern."""
    if n <= 0:
        return b""
    page = (rng.getrandbits(8 * n) & _PAGE_BITS).to_bytes(PAGE_SIZE, "little")[8:]
    whole, rest = divmod(n, PAGE_SIZE)
    out = b"".join(k.to_bytes(8, "little") + page for k in range(whole))
    if rest:
        out += (whole.to_bytes(8, "little") + page)[:rest]
    return out


def _fill(client: Client, guest: GuestRam, rng: random.Random, device_mem: int | None) -> None:
    """Give guest RAM and device memory recognisable content (:func:`fill_bytes`)."""
    block = 1 << 20
    for off in range(0, guest.size, block):
        n = min(block, guest.size - off)
        guest.memory.view[off : off + n] = fill_bytes(rng, n)
    if device_mem:
        step = min(block, client.server_caps.max_data_xfer_size if client.server_caps else block)
        for off in range(0, device_mem, step):
            client.region_write(BAR2, off, fill_bytes(rng, min(step, device_mem - off)))


def migrate(opts: MigrateOptions, hooks: Hooks | None = None) -> MigrationResult:
    """Run one migration as ``opts`` say; everything built here is released here."""
    hooks = hooks or Hooks()
    rng = random.Random(opts.seed)
    endpoints: list[Endpoint] = []
    guests: list[GuestRam] = []
    clients: list[Client] = []
    trace = Trace(opts.trace, keep_chunks=opts.keep_chunk_events)
    try:
        external = opts.src_socket is not None or opts.dst_socket is not None
        if external:
            if opts.src_socket is None or opts.dst_socket is None:
                raise ValueError("--src-socket and --dst-socket go together")
            endpoints = [ExternalEndpoint(opts.src_socket, "src"),
                         ExternalEndpoint(opts.dst_socket, "dst")]
        else:
            spec = ServerSpec(opts.device_mem, opts.caps, mig_data_socket=opts.mig_data_socket,
                              mig_data_size=opts.size_query)
            endpoints = [make_endpoint(opts.isolation, spec, "src")]
            endpoints.append(make_endpoint(opts.isolation, spec, "dst"))
        sides: list[Side] = []
        for ep in endpoints:
            guest = GuestRam(opts.guest_mem, name=f"guest-{ep.label}")
            guests.append(guest)
            sock = ep.connect()
            if hooks.client_factory is not None:
                client = hooks.client_factory(ep.label, sock, guest, opts.timeout)
            else:
                client = Client(sock, memory=guest.memory, timeout=opts.timeout)
            clients.append(client)
            client.negotiate(mig_data_socket=opts.mig_data_socket)
            sides.append(Side(ep.label, client, guest, ep.digest, hosted=ep.hosted))
        src, dst = sides
        if opts.fill:
            _fill(src.client, src.guest, rng, None if external else opts.device_mem)
        workload = None
        if opts.dirty_rate > 0:
            device_mem = opts.device_mem
            if external:
                info, fds = src.client.region_info(BAR2)
                for fd in fds:
                    os.close(fd)
                device_mem = int(info.size)
            workload = Workload(rng, src.guest, src.client, device_mem, opts.dirty_rate,
                                device_share=opts.device_share if device_mem else 0.0,
                                dma_share=opts.dma_share if not external else 0.0)
        params = opts.params()
        if opts.mig_data_socket:  # where the server agreed
            params["mig_data_channel"] = [s.name for s in sides
                                          if s.client.mig_channel is not None]
        policy = make_policy(opts.policy, downtime_limit=opts.downtime_limit,
                             max_rounds=opts.max_rounds, iterations=opts.iterations)
        driver = MigrationDriver(
            src, dst, policy=policy, clock=make_clock(opts), trace=trace, workload=workload,
            config=DriverConfig(chunk=opts.chunk, deadline=opts.deadline,
                                use_precopy=bool(opts.caps & MigrationCaps.PRE_COPY),
                                size_query=opts.size_query,
                                round_device_budget=opts.round_device_budget),
            relay_filter=hooks.relay_filter, observer=hooks.observer, params=params)
        if hooks.on_ready is not None:
            hooks.on_ready({"src": src, "dst": dst, "endpoints": endpoints, "driver": driver})
        try:
            return driver.run()
        finally:
            if hooks.on_finish is not None:
                hooks.on_finish()
    finally:
        trace.close()
        for client in clients:
            client.close()
        for ep in endpoints:
            ep.close()
        for guest in guests:
            guest.close()


__all__ = ["Hooks", "MigrateOptions", "make_clock", "migrate"]
