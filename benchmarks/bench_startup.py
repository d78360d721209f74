"""How fast ``vfio-user-mig serve`` is ready: ``python benchmarks/run.py startup``.

* ``serve_startup``: milliseconds from spawning ``python -m vfio_user_mig.cli serve --socket
  PATH`` (a migdev with the default 16 MiB) to its socket accepting a connection (the client
  polls ``connect`` every 0.5 ms), median of the runs (``value``); ``baseline``: the median
  wall time of ``python -c pass`` (start and exit of a bare interpreter) measured in the same
  run, so ``ratio`` = how many bare interpreter starts a server start costs. Also reported:
  ``first_reply_ms`` (spawn to the VERSION reply received: the socket is made once the
  server's imports and setup are done, so this is ``value`` plus one round trip),
  ``cpu_ms`` (user + system CPU of the server process until it was connectable, median) and
  ``baseline_cpu_ms``: wall time on a shared machine is mostly waiting for a CPU.

Both are spawned with byte-code caching in a private ``PYTHONPYCACHEPREFIX`` (a temporary
directory) warmed by one run first, as for an installed package whose modules are compiled
at install; without it (``PYTHONDONTWRITEBYTECODE=1`` and a source checkout) every start
compiles every module first.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

_POLL = 0.0005


def bytecode_env(prefix: str) -> dict[str, str]:
    """The environment of a spawned interpreter: this one's, with byte-code caching into
    ``prefix`` (never into the source tree)."""
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = prefix
    return env


def _spawn_serve(path: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "vfio_user_mig.cli", "serve", "--socket", path],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)


def _connect(path: str, proc: subprocess.Popen[bytes], deadline: float) -> socket.socket:
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
            return sock
        except OSError:
            sock.close()
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"serve did not start (exit {proc.returncode})") from None
            time.sleep(_POLL)


def _cpu_ms(proc: subprocess.Popen[bytes]) -> float:
    """Kill ``proc`` and return its user + system CPU time."""
    proc.kill()
    _pid, _status, usage = os.wait4(proc.pid, 0)
    proc.returncode = -9
    return (usage.ru_utime + usage.ru_stime) * 1e3


def _serve_once(tmp: str, env: dict[str, str], reply: bool) -> tuple[float, float]:
    """(ms to connectable or to the VERSION reply, CPU ms of the server until then)."""
    from vfio_user_mig.simulator.client.api import Client

    path = os.path.join(tmp, "serve.sock")
    t0 = time.perf_counter()
    proc = _spawn_serve(path, env)
    try:
        sock = _connect(path, proc, time.monotonic() + 30)
        if reply:
            client = Client(sock, timeout=30.0)
            client.negotiate()
        ms = (time.perf_counter() - t0) * 1e3
        cpu = _cpu_ms(proc)
        sock.close()
        return ms, cpu
    finally:
        if proc.returncode is None:
            proc.kill()
            proc.wait()
        if os.path.exists(path):
            os.unlink(path)


def _bare_once(env: dict[str, str]) -> tuple[float, float]:
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", "pass"], env=env)
    _pid, _status, usage = os.wait4(proc.pid, 0)
    proc.returncode = 0
    return (time.perf_counter() - t0) * 1e3, (usage.ru_utime + usage.ru_stime) * 1e3


def run(quick: bool) -> dict[str, dict[str, Any]]:
    runs = 5 if quick else 15
    with tempfile.TemporaryDirectory(prefix="vfio-user-mig-startup-") as tmp:
        env = bytecode_env(os.path.join(tmp, "pycache"))
        _serve_once(tmp, env, reply=True)  # compiles and caches the byte code
        ready, cpu, first, bare, bare_cpu = [], [], [], [], []
        for _ in range(runs):  # interleaved: the same load for both
            ms, c = _serve_once(tmp, env, reply=False)
            ready.append(ms)
            cpu.append(c)
            first.append(_serve_once(tmp, env, reply=True)[0])
            ms, c = _bare_once(env)
            bare.append(ms)
            bare_cpu.append(c)
    value, base = statistics.median(ready), statistics.median(bare)
    return {
        "serve_startup": {
            "value": round(value, 2),
            "unit": "ms",
            "baseline": round(base, 2),
            "ratio": round(value / base, 3),
            "first_reply_ms": round(statistics.median(first), 2),
            "cpu_ms": round(statistics.median(cpu), 2),
            "baseline_cpu_ms": round(statistics.median(bare_cpu), 2),
            "min_ms": round(min(ready), 2),
            "runs": runs,
            "note": "spawn of `python -m vfio_user_mig.cli serve` (migdev 16 MiB) to a "
                    "connectable socket, median; baseline `python -c pass`; byte code cached",
        },
    }


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv[1:]), indent=2))
