"""Benchmarks of live migration through the driver (issue 5).

* ``migration_relay``: migration stream rate, source server -> driver -> destination server
  (both servers in forked processes, the driver in this one; an idle guest, unlimited link,
  real clock), bytes/s from the source entering PRE_COPY to the source reaching STOP (the whole
  stream: every chunk read, relayed, written and restored). ``baseline``: a raw socketpair relay
  of the same number of 1 MiB chunks through this process as the middle (request a chunk from
  a source process, receive it, send it to a sink process, wait for its 1-byte ack). Goal
  ratio >= 0.8.
* ``relay_peak_rss``: peak RSS of the driver process (a fresh interpreter; servers in child
  processes) migrating 1 GiB of device memory (``value``) vs 64 MiB (``baseline``); 256 MiB vs
  16 MiB with ``quick``. Flat means chunk-bounded: goal ratio ~1.0.
* ``campaign_rate``: randomized campaign runs per second with faults (small scenarios), with 2
  worker processes (``value``) vs 1 (``baseline``); ``ratio`` is the speed-up (2 shared cores).

Run this file directly to print the JSON.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import socket
import subprocess
import sys
import time
from typing import Any

CHUNK = 1 << 20
_CTX = mp.get_context("fork")


# ----- migration_relay -------------------------------------------------------------------------
def _relay_rate(mem_size: int) -> tuple[float, int, int, float]:
    """(bytes/s, stream bytes, chunks, driver CPU share) of one migration through the
    driver."""
    from vfio_user_mig.simulator.migration.session import MigrateOptions, migrate

    opts = MigrateOptions(device_mem=mem_size, guest_mem=1 << 16, dirty_rate=0,
                          bandwidth=None, clock="real", isolation="process", fill=False,
                          chunk=CHUNK)
    cpu, wall = time.process_time(), time.perf_counter()
    result = migrate(opts)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    assert result.ok, result.summary["errors"]
    s = result.summary
    return (s["stream_bytes"] / _stream_seconds(result), s["stream_bytes"], _chunks(result),
            cpu / wall)


def _stream_seconds(result: Any) -> float:
    events = result.trace_events
    start = next(e["t"] for e in events if e["ev"] == "state" and e["side"] == "src"
                 and e["to"] == "PRE_COPY")
    end = next(e["t"] for e in events if e["ev"] == "state" and e["side"] == "src"
               and e["to"] == "STOP")
    return float(end - start)


def _chunks(result: Any) -> int:
    return sum(1 for e in result.trace_events if e["ev"] == "chunk")


def _source(sock: socket.socket, peer: socket.socket) -> None:
    peer.close()
    data = bytes(CHUNK)
    buf = memoryview(bytearray(64))
    while sock.recv_into(buf):
        sock.sendall(data)
    sock.close()


def _sink(sock: socket.socket, peer: socket.socket) -> None:
    peer.close()
    buf = memoryview(bytearray(CHUNK))
    while True:
        got = 0
        while got < CHUNK:
            n = sock.recv_into(buf[got:])
            if n == 0:
                sock.close()
                return
            got += n
        sock.send(b"k")


def _raw_relay(chunks: int) -> float:
    socks = []
    procs = []
    for target in (_source, _sink):
        parent, child = socket.socketpair()
        proc = _CTX.Process(target=target, args=(child, parent), daemon=True)
        proc.start()
        child.close()
        socks.append(parent)
        procs.append(proc)
    src, dst = socks
    buf = memoryview(bytearray(CHUNK))
    ack = bytearray(1)
    try:
        t0 = time.perf_counter()
        for _ in range(chunks):
            src.send(b"r")
            got = 0
            while got < CHUNK:
                got += src.recv_into(buf[got:])
            dst.sendall(buf)
            dst.recv_into(ack)
        return chunks * CHUNK / (time.perf_counter() - t0)
    finally:
        for s in socks:
            s.close()
        for p in procs:
            p.join(10)


# ----- relay_peak_rss --------------------------------------------------------------------------
_RSS_SCRIPT = """
import json, resource, sys
from vfio_user_mig.simulator.migration.session import MigrateOptions, migrate
r = migrate(MigrateOptions(device_mem=int(sys.argv[1]), guest_mem=1 << 20, dirty_rate=0,
                           bandwidth=None, clock="real", isolation="process", fill=False,
                           keep_chunk_events=False))
print(json.dumps({"ok": r.ok, "rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "stream": r.summary["stream_bytes"]}))
"""


def _driver_rss(mem_size: int) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, str(mem_size)], check=True,
                         capture_output=True, text=True, timeout=900).stdout
    data: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    assert data["ok"], data
    return data


# ----- campaign_rate ---------------------------------------------------------------------------
def _campaign_rate(runs: int, workers: int) -> float:
    from vfio_user_mig.simulator.migration.campaign import run_campaign

    result = run_campaign(runs, 11, faults=True, workers=workers)
    assert not result.failed, [(r.seed, r.reason) for r in result.failed[:3]]
    return runs / result.elapsed


def run(quick: bool) -> dict[str, dict[str, Any]]:
    relay_mem = (16 << 20) if quick else (64 << 20)
    repeat = 2 if quick else 3
    best = max((_relay_rate(relay_mem) for _ in range(repeat)), key=lambda t: t[0])
    rate, stream, chunks, driver_cpu = best
    raw = max(_raw_relay(chunks) for _ in range(repeat))
    small, big = ((16 << 20), (256 << 20)) if quick else ((64 << 20), (1 << 30))
    rss_small, rss_big = _driver_rss(small), _driver_rss(big)
    runs = 100 if quick else 400
    one = _campaign_rate(runs, 1)
    two = _campaign_rate(runs, 2)
    return {
        "migration_relay": {
            "value": round(rate, 1),
            "unit": "bytes/s",
            "baseline": round(raw, 1),
            "ratio": round(rate / raw, 4),
            "stream_bytes": stream,
            "chunks": chunks,
            "device_mem": relay_mem,
            "driver_cpu_share": round(driver_cpu, 4),
            "note": "source server -> driver -> destination server (processes), PRE_COPY to "
                    "STOP; baseline raw 1 MiB request/relay/ack through a middle process",
        },
        "relay_peak_rss": {
            "value": rss_big["rss_kib"] * 1024,
            "unit": "bytes",
            "baseline": rss_small["rss_kib"] * 1024,
            "ratio": round(rss_big["rss_kib"] / rss_small["rss_kib"], 4),
            "device_mem": big,
            "baseline_device_mem": small,
            "note": "driver process peak RSS (servers in child processes); flat = chunk-bounded",
        },
        "campaign_rate": {
            "value": round(two, 2),
            "unit": "runs/s",
            "baseline": round(one, 2),
            "ratio": round(two / one, 4),
            "per_worker_runs_per_s": round(one, 2),
            "runs": runs,
            "note": "simulate --faults small scenarios; value 2 workers, baseline 1 worker",
        },
    }


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv[1:]), indent=2))
