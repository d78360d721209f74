"""Golden reference: the Linux kernel's migration FSM, transcribed by hand.

Transcribed (facts only) from ``drivers/vfio/vfio_main.c``: ``vfio_from_fsm_table`` and
``state_flags_table`` of ``vfio_mig_get_next_state()``, and its skip loop, with the 2026 fix
(the loop stops on the ERROR sentinel, so STOP_COPY -> PRE_COPY(_P2P) returns -EINVAL instead of
spinning). ``kernel_next_state(..., fixed=False)`` reproduces the unfixed loop, bounded so the
test can observe that it would not terminate.

This module is the independent oracle the generated paths are compared with (by the model tests
and by the proofs); the model must never import it.
"""

from __future__ import annotations

# Kernel state numbers (enum vfio_device_mig_state), spelled out so this file does not depend
# on the package under test.
ERROR, STOP, RUNNING, STOP_COPY, RESUMING, RUNNING_P2P, PRE_COPY, PRE_COPY_P2P = range(8)
NUM_STATES = 8

SC, P2P, PRE = 1, 2, 4  # VFIO_MIGRATION_STOP_COPY, _P2P, _PRE_COPY

# vfio_from_fsm_table[cur][new] -> next
FROM_FSM_TABLE: dict[int, dict[int, int]] = {
    STOP: {
        STOP: STOP, RUNNING: RUNNING_P2P, PRE_COPY: RUNNING_P2P, PRE_COPY_P2P: RUNNING_P2P,
        STOP_COPY: STOP_COPY, RESUMING: RESUMING, RUNNING_P2P: RUNNING_P2P, ERROR: ERROR,
    },
    RUNNING: {
        STOP: RUNNING_P2P, RUNNING: RUNNING, PRE_COPY: PRE_COPY, PRE_COPY_P2P: RUNNING_P2P,
        STOP_COPY: RUNNING_P2P, RESUMING: RUNNING_P2P, RUNNING_P2P: RUNNING_P2P, ERROR: ERROR,
    },
    PRE_COPY: {
        STOP: RUNNING, RUNNING: RUNNING, PRE_COPY: PRE_COPY, PRE_COPY_P2P: PRE_COPY_P2P,
        STOP_COPY: PRE_COPY_P2P, RESUMING: RUNNING, RUNNING_P2P: RUNNING, ERROR: ERROR,
    },
    PRE_COPY_P2P: {
        STOP: RUNNING_P2P, RUNNING: RUNNING_P2P, PRE_COPY: PRE_COPY,
        PRE_COPY_P2P: PRE_COPY_P2P, STOP_COPY: STOP_COPY, RESUMING: RUNNING_P2P,
        RUNNING_P2P: RUNNING_P2P, ERROR: ERROR,
    },
    STOP_COPY: {
        STOP: STOP, RUNNING: STOP, PRE_COPY: ERROR, PRE_COPY_P2P: ERROR,
        STOP_COPY: STOP_COPY, RESUMING: STOP, RUNNING_P2P: STOP, ERROR: ERROR,
    },
    RESUMING: {
        STOP: STOP, RUNNING: STOP, PRE_COPY: STOP, PRE_COPY_P2P: STOP, STOP_COPY: STOP,
        RESUMING: RESUMING, RUNNING_P2P: STOP, ERROR: ERROR,
    },
    RUNNING_P2P: {
        STOP: STOP, RUNNING: RUNNING, PRE_COPY: RUNNING, PRE_COPY_P2P: PRE_COPY_P2P,
        STOP_COPY: STOP, RESUMING: STOP, RUNNING_P2P: RUNNING_P2P, ERROR: ERROR,
    },
    ERROR: {s: ERROR for s in range(NUM_STATES)},
}

STATE_FLAGS: dict[int, int] = {
    STOP: SC,
    RUNNING: SC,
    PRE_COPY: SC | PRE,
    PRE_COPY_P2P: SC | P2P | PRE,
    STOP_COPY: SC,
    RESUMING: SC,
    RUNNING_P2P: SC | P2P,
    ERROR: 0xFFFFFFFF,  # ~0U: never satisfied
}

EINVAL = -22
LOOP_BOUND = 64  # far more than any real path; reaching it means "would spin forever"


def _supported(state: int, flags: int) -> bool:
    return STATE_FLAGS[state] & flags == STATE_FLAGS[state]


def kernel_next_state(flags: int, cur: int, new: int, *, fixed: bool = True) -> int | None:
    """Return the next state, EINVAL (-22), or ``None`` if the unfixed loop would spin."""
    if cur >= NUM_STATES or not _supported(cur, flags):
        return EINVAL
    if new >= NUM_STATES or not _supported(new, flags):
        return EINVAL
    nxt = FROM_FSM_TABLE[cur][new]
    steps = 0
    while (not fixed or nxt != ERROR) and not _supported(nxt, flags):
        nxt = FROM_FSM_TABLE[nxt][new]
        steps += 1
        if steps > LOOP_BOUND:
            return None
    return nxt if nxt != ERROR else EINVAL


def kernel_path(flags: int, cur: int, new: int) -> tuple[int, ...] | int | None:
    """Iterate the (fixed) kernel function: the state path, or EINVAL.

    The request is validated by one call even when ``cur == new`` (the kernel function
    refuses ERROR and unsupported states whatever the other argument is).
    """
    if kernel_next_state(flags, cur, new) == EINVAL:
        return EINVAL
    path = [cur]
    while path[-1] != new:
        nxt = kernel_next_state(flags, path[-1], new)
        if nxt is None or nxt == EINVAL:
            return nxt
        path.append(nxt)
        assert len(path) <= NUM_STATES, "kernel path longer than the state count"
    return tuple(path)
