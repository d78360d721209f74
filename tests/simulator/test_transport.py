"""``listen_unix``: the socket file appears only once it accepts, owner-only, nothing left over."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

from vfio_user_mig.simulator.transport import connect_unix, listen_unix


def test_the_socket_file_appears_listening_and_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "dev.sock"
    path.write_text("a stale file where the socket goes")
    with listen_unix(str(path)) as listener:
        mode = os.stat(path).st_mode
        assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
        assert os.listdir(tmp_path) == ["dev.sock"], "no staging name left behind"
        assert listener.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
        with connect_unix(str(path), 2):
            conn, _ = listener.accept()
            conn.close()


def test_a_path_too_long_for_a_staging_name_is_bound_directly(tmp_path: Path) -> None:
    room = 107 - len(os.fsencode(str(tmp_path))) - 1
    path = tmp_path / ("s" * room)  # 107 bytes: sun_path's limit, no room for a suffix
    assert len(os.fsencode(str(path))) == 107
    with listen_unix(str(path)) as listener:
        assert os.listdir(tmp_path) == [path.name]
        with connect_unix(str(path), 2):
            listener.accept()[0].close()
