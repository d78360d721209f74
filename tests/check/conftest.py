"""Fixtures shared by the checker's tests."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

import pytest

from vfio_user_mig.simulator.server.hosting import host_device
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
