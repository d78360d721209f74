"""Stateful test: a live server over a socketpair against the model's predictions.

Hypothesis drives random legal and illegal requests (state SETs 0..9, region access in and out
of bounds, MIG_DATA_READ/WRITE in any state, DMA_MAP/UNMAP without fd, DEVICE_RESET). Every
reply is checked against ``vfio_user_mig.model.transition_path`` / ``InvalidTransition`` and
``vfio_user_mig.protocol.gating.gate``; the device memory (region 2), the DMA map table and the
migration state are modelled and compared after every step.

MIG_DATA_WRITE in RESUMING feeds the next bytes of a real stream (saved once from another
migdev holding :data:`PATTERN`), so every write must succeed except for a stated reason: bytes
after the stream's END, or any write once the device refused one (its decoder stays failed).
The device loads each page of a PAGES record as soon as it is whole (the model knows where in
the stream each page ends), and leaving RESUMING succeeds exactly when the whole stream was
written and region 2 still matches the digest END carries (a region write after its page was
loaded breaks that: a stated reason for EINVAL, after which the device is in ERROR).
"""

from __future__ import annotations

import errno
import functools
from collections.abc import Callable

from hypothesis import HealthCheck, event, settings
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
from vfio_user_mig.protocol.gating import gate
from vfio_user_mig.simulator.client.io import VfioUserError
from vfio_user_mig.simulator.device.stream import (
    PAGES_PREFIX,
    RECORD_HEADER,
    RecordType,
    pages_checked_span,
)
from vfio_user_mig.wire.constants import Command

MEM = 1 << 14  # device memory (region 2) size
BAR0, BAR2 = 0, 2
PAGE = 0x1000
#: Offsets near the start (so reads see earlier writes) and around the end (out of bounds).
OFFSETS = st.one_of(st.integers(0, 64), st.integers(MEM - 300, MEM + 64))
#: Region 2 of the device whose migration stream the machine restores.
PATTERN = bytes((i * 7 + 3) & 0xFF for i in range(MEM))


@functools.cache
def source_stream() -> bytes:
    """The complete migration stream of a migdev holding :data:`PATTERN`, read from a live
    server in STOP_COPY until the short read that ends it: any prefix is a valid sequence of
    MIG_DATA_WRITEs for a device of the same geometry."""
    source = make_session(mem_size=MEM)
    try:
        client = source.client
        client.negotiate()
        client.region_write(BAR2, 0, PATTERN)
        client.set_state(State.STOP_COPY)
        out = bytearray()
        while True:
            chunk = client.mig_data_read(PAGE)
            out += chunk
            if len(chunk) < PAGE:
                return bytes(out)
    finally:
        close_session(source)


def page_ends(stream: bytes) -> list[tuple[int, int]]:
    """(offset in ``stream`` where page ``p`` is whole, ``p``) for every page of its PAGES
    records (the record layout of :mod:`vfio_user_mig.simulator.device.stream`)."""
    out: list[tuple[int, int]] = []
    at = 0
    while at < len(stream):
        _magic, _version, rtype, _seq, length, _crc = RECORD_HEADER.unpack_from(stream, at)
        body = at + RECORD_HEADER.size
        if rtype == RecordType.PAGES:
            first, count = PAGES_PREFIX.unpack_from(stream, body)
            pages = body + pages_checked_span(count)
            out += [(pages + (k + 1) * PAGE, first + k) for k in range(count)]
        at = body + length
    assert at == len(stream) and sorted(p for _, p in out) == list(range(MEM // PAGE))
    return out


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
        self.stream = source_stream()
        self.fed = 0  # bytes of the stream written in this RESUMING session
        self.refused = False  # a write was refused in this RESUMING session
        self.page_ends = page_ends(self.stream)

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
            restored = (self.fed == len(self.stream) and not self.refused
                        and self.memory == PATTERN)  # END's digest covers region 2
            if cur is State.RESUMING and len(path) > 1 and not restored:
                want, new = errno.EINVAL, State.ERROR  # incomplete stream: RESUMING -> STOP fails
            else:
                want, new = None, State(wanted)
                if cur is State.RESUMING and len(path) > 1:
                    event("restored the whole stream")
        try:
            client.set_state(wanted)
        except VfioUserError as exc:
            assert want is not None, f"SET {cur.name}->{wanted} refused: errno {exc.errno}"
            assert exc.errno == want == errno.EINVAL
        else:
            assert want is None, f"SET {cur.name}->{wanted} accepted, expected errno {want}"
        if new is not cur and new in (State.ERROR, State.RESUMING):
            self._power_on()  # entering ERROR (device cleared) or a restore session
        if new is State.RESUMING and cur is not State.RESUMING:
            self.fed, self.refused = 0, False
        self.state = new

    @rule()
    def enter_resuming(self) -> None:
        """SET RESUMING (a restore session is rare among random SETs)."""
        self.set_state(int(State.RESUMING))

    @precondition(lambda self: self.state is State.RESUMING)
    @rule()
    def leave_resuming(self) -> None:
        """SET STOP from RESUMING: succeeds exactly when the whole stream was written."""
        self.set_state(int(State.STOP))

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

    @rule(size=st.sampled_from([1, 7, 64, 4096, 1 << 16]),
          junk=st.binary(min_size=1, max_size=64))
    def mig_write(self, size: int, junk: bytes) -> None:
        """Outside RESUMING ``junk`` (the gate refuses it); in RESUMING the next ``size`` bytes
        of the stream, refused only after END (then ``junk`` is trailing data) or once a
        write was refused."""
        client = self.session.client
        data, device_errno = junk, None
        if self.state is State.RESUMING:
            data = self.stream[self.fed : self.fed + size] or junk
            if self.refused or self.fed == len(self.stream):
                device_errno = errno.EINVAL
        self.call(Command.MIG_DATA_WRITE, lambda: client.mig_data_write(data), device_errno)
        if self.state is State.RESUMING:
            if device_errno is None:
                for end, page in self.page_ends:  # pages whole by now are loaded
                    if self.fed < end <= self.fed + len(data):
                        self.memory[page * PAGE : (page + 1) * PAGE] = \
                            PATTERN[page * PAGE : (page + 1) * PAGE]
                self.fed += len(data)
            else:
                event("MIG_DATA_WRITE refused in RESUMING")
                self.refused = True

    @precondition(lambda self: self.state is State.RESUMING)
    @rule(junk=st.binary(min_size=1, max_size=8))
    def mig_write_rest(self, junk: bytes) -> None:
        """The rest of the stream at once (so leaving RESUMING can succeed)."""
        self.mig_write(len(self.stream), junk)

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
            self.fed, self.refused = 0, False

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
        settings=settings(max_examples=50, stateful_step_count=30, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow]),
    )


def test_restore_of_the_source_stream_and_trailing_data() -> None:
    """The directed version of the machine's stream rules: the whole stream restores region 2;
    one byte after END is refused, and leaving RESUMING then fails into ERROR."""
    stream = source_stream()
    s = make_session(mem_size=MEM)
    try:
        c = s.client
        c.negotiate()
        c.set_state(State.RESUMING)
        for at in range(0, len(stream), 4096):
            c.mig_data_write(stream[at : at + 4096])
        c.set_state(State.RUNNING)
        assert c.region_read(BAR2, 0, 4096) == PATTERN[:4096]
        c.set_state(State.RESUMING)
        c.mig_data_write(stream)
        try:
            c.mig_data_write(b"\0")
        except VfioUserError as exc:
            assert exc.errno == errno.EINVAL
        else:
            raise AssertionError("a byte after END was accepted")
        try:
            c.set_state(State.STOP)
        except VfioUserError as exc:
            assert exc.errno == errno.EINVAL
        else:
            raise AssertionError("RESUMING -> STOP passed after a refused write")
        assert c.get_state() is State.ERROR
    finally:
        close_session(s)
