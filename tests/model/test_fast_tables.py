"""The graph's nodes and edges without networkx, the shared executor machine, and a server
that starts without networkx or the checker."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest

from vfio_user_mig.model import ALL_CAPS, DeviceFSM, State, transition_graph
from vfio_user_mig.model.graph import direct_arcs, fsm_states, is_direct_arc


@pytest.mark.parametrize("caps", ALL_CAPS, ids=lambda c: str(int(c)))
def test_tables_are_the_graph(caps: int) -> None:
    graph = transition_graph(caps)
    assert fsm_states(caps) == tuple(graph.nodes)
    assert sorted(direct_arcs(caps)) == sorted(graph.edges)  # each once
    for src in State:
        for dst in State:
            assert is_direct_arc(src, dst, caps) == graph.has_edge(src, dst)


def test_devices_sharing_a_machine_keep_their_own_state() -> None:
    """One transitions machine per capability set serves every DeviceFSM: walks of one
    device, in any thread, never move another."""
    a, b = DeviceFSM(), DeviceFSM(initial=State.STOP)
    assert a.machine is b.machine
    a.set_state(State.STOP_COPY)
    assert (a.state, b.state) == (State.STOP_COPY, State.STOP)
    b.set_state(State.RESUMING)
    a.reset()
    assert (a.state, b.state) == (State.RUNNING, State.RESUMING)
    fsms = [DeviceFSM() for _ in range(8)]
    errors: list[BaseException] = []

    def walk(fsm: DeviceFSM) -> None:
        try:
            for _ in range(200):
                for target in (State.PRE_COPY, State.STOP_COPY, State.STOP, State.RESUMING,
                               State.STOP, State.RUNNING):
                    assert fsm.set_state(target).ok and fsm.state is target
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=walk, args=(f,)) for f in fsms]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and all(f.state is State.RUNNING for f in fsms)


def test_a_served_device_needs_neither_networkx_nor_the_checker() -> None:
    """What ``serve`` builds before it listens (parser, device, core, listener) imports
    neither networkx (the FSM comes from the declared tables) nor the command modules."""
    code = (
        "import sys, tempfile, os\n"
        "from vfio_user_mig.cli import build_parser\n"
        "build_parser('serve').parse_args(['serve', '--socket', 'x'])\n"
        "from vfio_user_mig.simulator.server.hosting import host_device\n"
        "from vfio_user_mig.simulator.server.io import UnixServer\n"
        "hosted = host_device('migdev', mem_size=1 << 20)\n"
        "path = os.path.join(tempfile.mkdtemp(), 's')\n"
        "UnixServer(hosted.core, path).listener.close()\n"
        "hosted.core.fsm.set_state(3)\n"
        "heavy = [m for m in ('networkx', 'vfio_user_mig.check', 'vfio_user_mig.studies',\n"
        "         'vfio_user_mig.simulator.migration', 'vfio_user_mig.proofs')\n"
        "         if m in sys.modules]\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"
