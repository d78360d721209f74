"""Run one scenario against a client: referees up, the client started, the session recorded.

The thin IO of ``check-client``: :func:`run_scenario` starts a :class:`~vfio_user_mig.
simulator.referee.pump.Referee` for the source (``{socket}``) and one for the destination
(``{dst_socket}``), starts the client command (or waits for a client started by hand), waits
at most ``timeout`` seconds, kills the client's whole process group if it is still running,
and returns the :class:`Session`. Judging is :mod:`.judge`'s and :mod:`.scenarios`' job.

libvfio-user's ``samples/client`` starts its own destination: it execs ``<its directory>/
server -v SOCK_migrated``. :func:`samples_dir` puts a copy of the client next to a small
``server`` script that runs this package's destination referee (``check-client --serve-dst``),
which records its session to a file, and reaps the client (its child after the exec) to learn
its exit status.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from vfio_user_mig.simulator.referee.pump import Referee
from vfio_user_mig.simulator.referee.record import Session
from vfio_user_mig.simulator.referee.scenarios import misbehaviour

DST_SESSION = "dst-session.json"


@dataclass
class RunSpec:
    """How to run the client under test and the referees (``check-client`` arguments)."""

    run: str | None = None
    socket: str | None = None
    dst_socket: str | None = None
    device: str = "migdev"
    mem_size: int = 1 << 20
    timeout: float = 30.0
    samples_client: str | None = None


def outcome_of(returncode: int | None, killed: bool) -> str:
    if killed or returncode is None:
        return "hung"
    if returncode == 0:
        return "completed"
    return "crashed" if returncode < 0 else "error"


def samples_dir(client: str, workdir: Path, scenario: str, seed: int, spec: RunSpec) -> str:
    """A directory with ``client`` (a copy) and the ``server`` the client execs; returns the
    command to run."""
    if not os.access(client, os.X_OK):
        raise ValueError(f"{client}: not an executable file")
    shutil.copy2(client, workdir / "client")
    serve = [sys.executable, "-m", "vfio_user_mig.cli", "check-client", "--serve-dst",
             "SOCK", "--scenario", scenario, "--seed", str(seed), "--device", spec.device,
             "--device-mem", str(spec.mem_size), "--timeout", str(spec.timeout),
             "--session-out", str(workdir / DST_SESSION)]
    command = " ".join(shlex.quote(a) for a in serve).replace("SOCK", '"$2"')
    script = workdir / "server"
    script.write_text(f"#!/bin/sh\n# the destination samples/client execs: our referee\n"
                      f"exec {command}\n")
    script.chmod(0o755)
    return f"{workdir / 'client'} {{socket}}"


def _wait(proc: subprocess.Popen[bytes], timeout: float) -> tuple[int | None, bool]:
    try:
        return proc.wait(timeout), False
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
        return None, True


def _wait_by_hand(src: Referee, dst: Referee, timeout: float) -> str:
    """A client started by hand: done when it connected and every connection ended."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        logs = src.logs + dst.logs
        if logs and all(log.events and "ended" in log.events[-1].note for log in logs):
            time.sleep(2.0)  # a destination connection may still come
            if len(src.logs + dst.logs) == len(logs):
                return "disconnected"
        time.sleep(0.05)
    return "hung"


def run_scenario(spec: RunSpec, scenario: str, seed: int, workdir: Path | None = None) -> Session:
    """Run ``scenario`` with ``seed`` against the client (module docstring)."""
    knobs = misbehaviour(scenario, seed)
    own = workdir is None
    work = Path(tempfile.mkdtemp(prefix="vfio-user-check-client-")) if workdir is None \
        else Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    src_path = spec.socket or str(work / "src.sock")
    dst_path = spec.dst_socket or str(work / "dst.sock")
    hold = min(5.0, spec.timeout / 4)
    src = Referee("src", src_path, device=spec.device, mem_size=spec.mem_size, knobs=knobs,
                  seed=seed, timeout=hold).start()
    session = Session(scenario, seed, spec.device, meta={
        "limits": src.limits(), "timeout": spec.timeout, "knobs": repr(knobs),
        "mem_size": spec.mem_size})
    dst: Referee | None = None
    try:
        run = spec.run
        if spec.samples_client:
            run = samples_dir(spec.samples_client, work, scenario, seed, spec)
        else:
            dst = Referee("dst", dst_path, device=spec.device, mem_size=spec.mem_size,
                          knobs=knobs, seed=seed, timeout=hold).start()
        if run is None:
            assert dst is not None
            session.outcome = _wait_by_hand(src, dst, spec.timeout)
        else:
            command = run.replace("{socket}", src_path).replace("{dst_socket}", dst_path)
            session.meta.update(command=command, run=spec.run,
                                samples_client=spec.samples_client)
            with open(work / "client.out", "wb") as out:
                proc = subprocess.Popen(shlex.split(command), stdout=out,
                                        stderr=subprocess.STDOUT, cwd=work,
                                        start_new_session=True)
                code, killed = _wait(proc, spec.timeout)
            session.outcome = outcome_of(code, killed)
            session.meta["exit"] = code
            tail = (work / "client.out").read_bytes()[-2000:]
            session.meta["output_tail"] = tail.decode("utf-8", "replace")
    finally:
        src.close()
        if dst is not None:
            dst.close()
    session.conns = list(src.logs) + (list(dst.logs) if dst is not None else [])
    dst_file = work / DST_SESSION
    if spec.samples_client and dst_file.exists():
        remote = Session.load(dst_file)
        session.conns += remote.conns
        client_exit = remote.meta.get("client_exit")
        if session.outcome != "hung" and client_exit is not None:
            session.meta["exit"] = client_exit
            session.outcome = outcome_of(client_exit, False)
    if own:
        shutil.rmtree(work, ignore_errors=True)
    return session


def serve_dst(path: str, scenario: str, seed: int, device: str, mem_size: int,
              timeout: float, out: Path) -> int:
    """``check-client --serve-dst``: be the destination a client execs (module docstring):
    serve one connection, reap the client, write the session to ``out``."""
    referee = Referee("dst", path, device=device, mem_size=mem_size,
                      knobs=misbehaviour(scenario, seed), seed=seed,
                      timeout=min(5.0, timeout / 4))
    started = time.monotonic()
    try:
        referee.accept_one(timeout * 0.6)
    finally:
        referee.close()
    client_exit = None
    while time.monotonic() < started + timeout * 0.9:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid:
            client_exit = os.waitstatus_to_exitcode(status)
            break
        time.sleep(0.05)
    Session(scenario, seed, device, referee.logs,
            meta={"client_exit": client_exit}).save(out)
    return 0


__all__ = ["RunSpec", "outcome_of", "run_scenario", "samples_dir", "serve_dst"]
