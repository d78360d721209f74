"""Endpoints: thread and process hosting give the same back door."""

from __future__ import annotations

import errno

import pytest

from vfio_user_mig.model import State
from vfio_user_mig.simulator.client import Client
from vfio_user_mig.simulator.client_io import VfioUserError
from vfio_user_mig.simulator.migration.isolation import ServerSpec, make_endpoint


@pytest.mark.parametrize("isolation", ["thread", "process"])
def test_endpoint_back_door(isolation: str) -> None:
    ep = make_endpoint(isolation, ServerSpec(mem_size=1 << 16), "src")
    try:
        client = Client(ep.connect(), timeout=5.0)
        client.negotiate()
        assert ep.state() is State.RUNNING and ep.digest()
        assert ep.inject_arc_failure(State.RUNNING, State.STOP, errno.EBUSY, False)
        with pytest.raises(VfioUserError) as info:
            client.set_state(State.STOP)
        assert info.value.errno == errno.EBUSY and ep.state() is State.RUNNING
        ep.crash()
        with pytest.raises((OSError, TimeoutError)):
            client.get_state()
    finally:
        ep.close()


def test_unknown_isolation() -> None:
    with pytest.raises(ValueError):
        make_endpoint("vm", ServerSpec(), "x")
