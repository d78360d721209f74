"""Stateful test: a live server over a socketpair against the model's predictions.

Hypothesis drives random legal and illegal requests (state SETs 0..9, region access in and out
of bounds, MIG_DATA_READ/WRITE in any state, DMA_MAP/UNMAP without fd, DEVICE_RESET). Every
reply is checked against ``vfio_user_mig.model.transition_path`` / ``InvalidTransition`` and
``vfio_user_mig.model.gating.gate``; the device memory (region 2), the DMA map table and the
migration state are modelled and compared after every step.
"""

from __future__ import annotations

import errno
from collections.abc import Callable

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from tests.simulator.conftest import Session, close_session, make_session
from vfio_user_mig.model import InvalidTransition, State, transition_path
from vfio_user_mig.model.gating import gate
from vfio_user_mig.simulator.client import VfioUserError
from vfio_user_mig.wire.constants import Command

MEM = 1 << 14  # device memory (region 2) size
BAR0, BAR2 = 0, 2
PAGE = 0x1000
#: Offsets near the start (so reads see earlier writes) and around the end (out of bounds).
OFFSETS = st.one_of(st.integers(0, 64), st.integers(MEM - 300, MEM + 64))


class ServerMachine(RuleBasedStateMachine):
    """Model: migration state, region-2 bytes, DMA mappings (iova -> size)."""

    session: Session

    def __init__(self) -> None:
        super().__init__()
        self.session = make_session(mem_size=MEM)
        self.session.client.negotiate()
        self.state = State.RUNNING
        self.memory = bytearray(MEM)
        self.maps: dict[int, int] = {}
        self.resume_fed = False  # nothing valid is ever fed: leaving RESUMING must fail

    def teardown(self) -> None:
        close_session(self.session)

    # ----- helpers ----------------------------------------------------------------------------
    def call(self, command: Command, fn: Callable[[], object], device_errno: int | None) -> object:
        """Run ``fn``; the gate's errno wins, else ``device_errno`` (None: must succeed)."""
        want = gate(self.state, command)
        if want is None:
            want = device_errno
        try:
            result = fn()
        except VfioUserError as exc:
            assert want is not None, f"{command.name} in {self.state.name}: errno {exc.errno}"
            assert exc.errno == want, f"{command.name} in {self.state.name}: {exc.errno} != {want}"
            return None
        assert want is None, f"{command.name} in {self.state.name} succeeded, expected {want}"
        return result

    def _power_on(self) -> None:
        self.memory[:] = bytes(MEM)

    # ----- rules ------------------------------------------------------------------------------
    @initialize()
    def start(self) -> None:
        assert self.session.client.get_state() == State.RUNNING

    @rule(wanted=st.integers(0, 9))
    def set_state(self, wanted: int) -> None:
        client = self.session.client
        cur = self.state
        try:
            path = transition_path(cur, wanted)
        except InvalidTransition as exc:
            want: int | None = exc.errno
            new = cur
        else:
            if cur is State.RESUMING and len(path) > 1:
                want, new = errno.EINVAL, State.ERROR  # incomplete stream: RESUMING -> STOP fails
            else:
                want, new = None, State(wanted)
        try:
            client.set_state(wanted)
        except VfioUserError as exc:
            assert want is not None, f"SET {cur.name}->{wanted} refused: errno {exc.errno}"
            assert exc.errno == want == errno.EINVAL
        else:
            assert want is None, f"SET {cur.name}->{wanted} accepted, expected errno {want}"
        if new is not cur and new in (State.ERROR, State.RESUMING):
            self._power_on()  # entering ERROR (device cleared) or a restore session
        self.state = new

    @rule(offset=OFFSETS, count=st.integers(1, 256))
    def read_mem(self, offset: int, count: int) -> None:
        client = self.session.client
        inside = offset + count <= MEM
        data = self.call(Command.REGION_READ, lambda: client.region_read(BAR2, offset, count),
                         None if inside else errno.EINVAL)
        if data is not None:
            assert data == bytes(self.memory[offset : offset + count])

    @rule(offset=OFFSETS, data=st.binary(min_size=1, max_size=256))
    def write_mem(self, offset: int, data: bytes) -> None:
        client = self.session.client
        inside = offset + len(data) <= MEM
        self.call(Command.REGION_WRITE, lambda: client.region_write(BAR2, offset, data),
                  None if inside else errno.EINVAL)
        if gate(self.state, Command.REGION_WRITE) is None and inside:
            self.memory[offset : offset + len(data)] = data

    @rule(region=st.sampled_from([BAR0, 9, 100, 0xDEADBEEF]))
    def read_other_region(self, region: int) -> None:
        client = self.session.client
        data = self.call(Command.REGION_READ, lambda: client.region_read(region, 0, 4),
                         None if region == BAR0 else errno.EINVAL)
        if data is not None:
            assert len(data) == 4

    @rule(size=st.integers(1, 4096))
    def mig_read(self, size: int) -> None:
        client = self.session.client
        data = self.call(Command.MIG_DATA_READ, lambda: client.mig_data_read(size), None)
        if data is not None:
            assert isinstance(data, bytes) and len(data) <= size

    @rule(data=st.binary(min_size=1, max_size=64))
    def mig_write(self, data: bytes) -> None:
        client = self.session.client
        want = gate(self.state, Command.MIG_DATA_WRITE)
        try:
            client.mig_data_write(data)
        except VfioUserError as exc:
            # Allowed: the device may refuse garbage (EINVAL), never anything else.
            assert exc.errno == (want if want is not None else errno.EINVAL)
        else:
            assert want is None, f"MIG_DATA_WRITE in {self.state.name} accepted"

    @rule(page=st.integers(0, 15), pages=st.integers(0, 4))
    def dma_map(self, page: int, pages: int) -> None:
        client = self.session.client
        iova, size = page * PAGE, pages * PAGE
        overlaps = any(i < iova + size and iova < i + n for i, n in self.maps.items())
        bad = size == 0 or overlaps
        self.call(Command.DMA_MAP, lambda: client.dma_map(iova, size),
                  errno.EINVAL if bad else None)
        if gate(self.state, Command.DMA_MAP) is None and not bad:
            self.maps[iova] = size

    @rule(page=st.integers(0, 15), pages=st.integers(1, 4))
    def dma_unmap_random(self, page: int, pages: int) -> None:
        client = self.session.client
        iova, size = page * PAGE, pages * PAGE
        exact = self.maps.get(iova) == size
        self.call(Command.DMA_UNMAP, lambda: client.dma_unmap(iova, size),
                  None if exact else errno.ENOENT)
        if gate(self.state, Command.DMA_UNMAP) is None and exact:
            del self.maps[iova]

    @precondition(lambda self: bool(self.maps))
    @rule(choice=st.data())
    def dma_unmap_existing(self, choice: st.DataObject) -> None:
        client = self.session.client
        iova = choice.draw(st.sampled_from(sorted(self.maps)))
        size = self.maps[iova]
        self.call(Command.DMA_UNMAP, lambda: client.dma_unmap(iova, size), None)
        if gate(self.state, Command.DMA_UNMAP) is None:
            del self.maps[iova]

    @rule()
    def dma_unmap_all(self) -> None:
        client = self.session.client
        self.call(Command.DMA_UNMAP, lambda: client.dma_unmap(all_regions=True), None)
        if gate(self.state, Command.DMA_UNMAP) is None:
            self.maps.clear()

    @rule()
    def reset(self) -> None:
        client = self.session.client
        self.call(Command.DEVICE_RESET, client.reset, None)
        if gate(self.state, Command.DEVICE_RESET) is None:
            self.state = State.RUNNING
            self._power_on()

    # ----- invariants ---------------------------------------------------------------------------
    @invariant()
    def state_matches(self) -> None:
        assert self.session.client.get_state() == self.state
        assert self.session.core.state == self.state

    @invariant()
    def maps_match(self) -> None:
        got = {m.iova: m.size for m in self.session.core.dma.mappings}
        assert got == self.maps


def test_server_against_model() -> None:
    run_state_machine_as_test(
        ServerMachine,
        settings=settings(max_examples=25, stateful_step_count=30, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow]),
    )
