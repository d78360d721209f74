"""The conformance checker's default suite against our own server: ``python benchmarks/run.py
check``.

* ``check_suite``: checks per second of ``vfio-user-mig check --spawn 'python -m
  vfio_user_mig.cli serve --socket {socket}' --json`` (the default suite; a fresh server per
  sequence, the next one started while the current sequence runs), from the checker's own
  ``elapsed_s`` (``value``; ``suite_s`` is that time, ``wall_s`` the whole command with the
  checker's start). ``baseline``: the floor of the same traffic shape without a checker or a
  server doing any work: as many sequences as the suite ran, each a bare echo server spawned
  the same way (``SpawnTarget``, prespawned, a Python script answering every message with an
  empty reply), connected to, and sent the suite's mean number of requests per sequence one
  round trip at a time (16-byte messages); ``baseline`` = the suite's checks divided by that
  time, so ``ratio`` = echo time / suite time (1.0: the suite costs no more than spawning
  processes and exchanging its messages). Goal: ``suite_s`` under 3 s.

Spawned interpreters cache byte code in a private ``PYTHONPYCACHEPREFIX`` warmed first (see
``bench_startup``).
"""

from __future__ import annotations

import json
import os
import shlex
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_startup import bytecode_env  # noqa: E402

#: A vfio-user message header (PROTOCOL.md section 2): msg_id, command, msg_size, flags, error.
_HEADER = struct.Struct("<HHIHHI")

#: The bare echo server: answers every whole message with a 16-byte reply header.
ECHO = """
import os, socket, struct, sys
H = struct.Struct("<HHIHHI")
path = sys.argv[1]
srv = socket.socket(socket.AF_UNIX)
srv.bind(path)
srv.listen(1)
conn, _ = srv.accept()
buf = b""
try:
    while data := conn.recv(1 << 20):
        buf += data
        while len(buf) >= 16:
            msg_id, cmd, size = H.unpack_from(buf)[:3]
            size = max(size, 16)
            if len(buf) < size:
                break
            buf = buf[size:]
            conn.sendall(H.pack(msg_id, cmd, 16, 1, 0, 0))
except OSError:
    pass
finally:
    conn.close()
    srv.close()
    os.unlink(path)
"""


def _suite(env: dict[str, str]) -> dict[str, Any]:
    serve = f"{shlex.quote(sys.executable)} -m vfio_user_mig.cli serve --socket {{socket}}"
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "vfio_user_mig.cli", "check", "--spawn", serve,
                          "--json"], capture_output=True, text=True, env=env, timeout=900)
    wall = time.perf_counter() - t0
    report: dict[str, Any] = json.loads(out.stdout)
    report["wall_s"] = wall
    return report


def _echo_floor(script: str, env: dict[str, str], sequences: int, requests: int) -> float:
    """Seconds for ``sequences`` spawned echo servers, ``requests`` round trips in all."""
    from vfio_user_mig.check.target import SpawnTarget

    os.environ["PYTHONPYCACHEPREFIX"] = env["PYTHONPYCACHEPREFIX"]  # SpawnTarget inherits
    target = SpawnTarget(f"{shlex.quote(sys.executable)} {shlex.quote(script)} {{socket}}")
    reply = bytearray(_HEADER.size)
    t0 = time.perf_counter()
    try:
        for i in range(sequences):
            sock = target.begin()
            n = requests // sequences + (1 if i < requests % sequences else 0)
            for msg_id in range(n):
                sock.sendall(_HEADER.pack(msg_id, 2, _HEADER.size, 0, 0, 0))
                got = 0
                while got < len(reply):
                    got += sock.recv_into(memoryview(reply)[got:])
            sock.close()
            target.end()
    finally:
        target.close()
    return time.perf_counter() - t0


def run(quick: bool) -> dict[str, dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="vfio-user-mig-check-") as tmp:
        env = bytecode_env(os.path.join(tmp, "pycache"))
        script = os.path.join(tmp, "echo.py")
        Path(script).write_text(ECHO)
        saved = os.environ.get("PYTHONPYCACHEPREFIX")
        try:
            subprocess.run([sys.executable, "-c", "import vfio_user_mig.cli, "
                            "vfio_user_mig.check.commands, vfio_user_mig.simulator.server.io"],
                           env=env, check=True)  # byte code cached before the timing
            reports = [_suite(env) for _ in range(1 if quick else 2)]
            report = min(reports, key=lambda r: float(r["elapsed_s"]))
            sequences = sum(report["coverage"]["groups"].values())
            requests = sum(report["coverage"]["requests"].values())
            floor = min(_echo_floor(script, env, sequences, requests)
                        for _ in range(1 if quick else 2))
        finally:
            if saved is None:
                os.environ.pop("PYTHONPYCACHEPREFIX", None)
            else:
                os.environ["PYTHONPYCACHEPREFIX"] = saved
    suite_s = float(report["elapsed_s"])
    checks = int(report["checks"])
    return {
        "check_suite": {
            "value": round(checks / suite_s, 2),
            "unit": "checks/s",
            "baseline": round(checks / floor, 2),
            "ratio": round(floor / suite_s, 4),
            "suite_s": round(suite_s, 3),
            "wall_s": round(float(report["wall_s"]), 3),
            "echo_s": round(floor, 3),
            "checks": checks,
            "findings": report["finding_count"],
            "sequences": sequences,
            "requests": requests,
            "note": "default check suite against `serve` via --spawn (fresh server per "
                    "sequence, prespawned); baseline: as many spawned bare echo servers "
                    "with the same number of round trips",
        },
    }


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv[1:]), indent=2))
