"""Fixtures shared by the checker's tests."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from vfio_user_mig.simulator.server.hosting import HostedDevice, host_device
from vfio_user_mig.simulator.server.io import UnixServer


@pytest.fixture
def served() -> Iterator[str]:
    """Our server in this process (migdev, 64 KiB of memory) on a fresh socket path; it
    serves connection after connection, keeping the device's state between them."""
    hosted = host_device("migdev", mem_size=64 << 10)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "s.sock")
        server = UnixServer(hosted.core, path).start()
        try:
            yield path
        finally:
            server.stop()
            hosted.close()


@pytest.fixture
def served_device(tmp_path: Path, request: pytest.FixtureRequest
                  ) -> Iterator[tuple[HostedDevice, str]]:
    """Our server in this process on ``tmp_path``: (the hosted device, its socket path); the
    device is migdev unless the test parametrizes it indirectly (e.g. ``"lvu-sample"``), with
    1 MiB of memory, its state kept across connections."""
    hosted = host_device(getattr(request, "param", "migdev"), mem_size=1 << 20)
    path = str(tmp_path / "s.sock")
    server = UnixServer(hosted.core, path).start()
    yield hosted, path
    server.stop()
    hosted.close()
