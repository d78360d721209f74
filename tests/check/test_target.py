"""Spawned servers: one process per sequence, the next one started ahead unless told not to,
and nothing left running once the target is closed."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from vfio_user_mig.check.target import AHEAD, SpawnTarget, TargetError

# A stand-in server: listens on {socket}, records its pid, accepts connections until killed.
SERVER = (f"{sys.executable} -c \"import os, socket, sys, time; "
          "s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(4); "
          "open(sys.argv[2] + '/' + str(os.getpid()), 'w').close(); "
          "[s.accept() for _ in range(100)]\" {socket} ")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is not alive; reap it if it is our child
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return done == 0


@pytest.mark.parametrize("prespawn", [True, False])
def test_one_process_per_sequence_and_none_left_after_close(tmp_path: Path,
                                                            prespawn: bool) -> None:
    target = SpawnTarget(SERVER + str(tmp_path), prespawn=prespawn)
    try:
        for _ in range(3):
            target.begin().close()
            assert target.death() is None
            target.end()
        assert target.spawned == (3 + AHEAD if prespawn else 3)
    finally:
        target.close()
    pids = [int(p.name) for p in tmp_path.iterdir()]
    # the spares may not have reached their pid files before they were stopped
    assert 3 <= len(pids) <= (3 + AHEAD if prespawn else 3)
    assert not [pid for pid in pids if _alive(pid)]


def test_a_server_that_cannot_start_is_a_target_error(tmp_path: Path) -> None:
    target = SpawnTarget(f"{sys.executable} -c 'raise SystemExit(3)' {{socket}}",
                         start_timeout=5)
    try:
        with pytest.raises(TargetError, match="exited with status 3"):
            target.begin()
    finally:
        target.close()
