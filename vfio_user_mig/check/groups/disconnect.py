"""Group ``disconnect``: the client goes away in each state, and comes back.

For each supported state a sequence brings the device there and closes the connection
without a word (a VMM that dies). A spawned server may exit then (servers of one client do),
but only with status 0: being killed by a signal or a failure status is a ``crash``.

For ``--socket`` targets a second connection follows: VERSION must be accepted whatever the
migration state (:func:`vfio_user_mig.protocol.gating.legality_table`: VERSION is allowed in
every state) and MIG_DEVICE_STATE GET must answer a valid state (the spec does not say which
state survives a lost connection). The client that left had mapped a page of its memory; the
new client maps the same range again, which must succeed (a server drops its old client's DMA
regions, as libvfio-user and the kernel do). With ``--spawn`` each sequence is a fresh process,
so a reconnection cannot be checked and nothing is counted for it.
"""

from __future__ import annotations

from vfio_user_mig import wire
from vfio_user_mig.check.findings import Kind
from vfio_user_mig.check.groups.common import IOVA_BASE, enc, supported_states
from vfio_user_mig.check.requests import version_request
from vfio_user_mig.check.session import CLEAN_EXIT, Checker
from vfio_user_mig.check.steps import Expect
from vfio_user_mig.check.target import SocketTarget
from vfio_user_mig.model import State
from vfio_user_mig.protocol.gating import legality_table
from vfio_user_mig.wire import Command

#: The page the client maps before it leaves, and the next client maps again (module
#: docstring).
_LEFT_IOVA = IOVA_BASE + 0x0F00_0000
_PAGE = 0x1000
_DMA_RULE = ("libvfio-user drops every DMA region when its client goes (vfu_reset_ctx); the "
             "kernel unmaps a container's mappings when its fd is closed: a new client's map of "
             "the same range must not overlap a map the old one left")


def _leave(checker: Checker, state: State) -> None:
    with checker.sequence("disconnect", f"disconnect in {state.name}") as seq:
        if seq.caps is None:
            return
        if isinstance(checker.target, SocketTarget):  # the next client maps it again
            seq.exchange(enc(seq, wire.DmaMap(_LEFT_IOVA, _PAGE)), fds=(f"memfd:{_PAGE}",))
        seq.goto(state)
        seq.conn.close()
        death = checker.target.death()  # it waits for a process that is exiting
        seq.verify(death is None or death.status == CLEAN_EXIT, Kind.CRASH,
                   f"server survives a client leaving in {state.name}",
                   "the server lives, or exits with status 0", death.describe() if death else "",
                   "vfio-user.rst: a client may disconnect at any time")


def _come_back(checker: Checker, state: State) -> None:
    with checker.sequence("disconnect", f"reconnect after leaving in {state.name}",
                          setup=False) as seq:
        seq.state = state
        seq.caps = checker.facts.caps
        allowed = seq.caps is None or legality_table(seq.caps)[(state, Command.VERSION)] is None
        seq.check(f"VERSION accepted on a new connection after leaving in {state.name}",
                  version_request(seq.next_id()),
                  Expect("ok" if allowed else "error",
                         rule="vfio-user.rst: Version; protocol.gating: VERSION in every state"))
        seq.state = None
        now = seq.get_state()
        if now is None or (seq.caps is not None
                           and legality_table(seq.caps)[(now, Command.DMA_MAP)] is not None):
            return
        seq.check(f"DMA_MAP of the range the client that left in {state.name} had mapped",
                  enc(seq, wire.DmaMap(_LEFT_IOVA, _PAGE)),
                  Expect("ok", rule=_DMA_RULE), fds=(f"memfd:{_PAGE}",))
        seq.exchange(enc(seq, wire.DmaUnmap(_LEFT_IOVA, _PAGE)))


def run(checker: Checker) -> None:
    """The ``disconnect`` group (module docstring)."""
    states = supported_states(checker, "disconnect")
    reconnect = isinstance(checker.target, SocketTarget)
    for state in states:
        if state == State.ERROR:
            continue
        _leave(checker, state)
        if reconnect:
            _come_back(checker, state)
