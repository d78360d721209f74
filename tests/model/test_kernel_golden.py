"""The generated FSM equals the Linux kernel's vfio_mig_get_next_state() on all 256 pairs."""

from __future__ import annotations

import errno

import pytest

from vfio_user_mig.model import ALL_CAPS, InvalidTransition, State, next_state, transition_path
from vfio_user_mig.proofs import kernel_reference as kernel

CASES = [(caps, cur, tgt) for caps in ALL_CAPS for cur in State for tgt in State]


def test_case_count() -> None:
    assert len(CASES) == 256


@pytest.mark.parametrize(("caps", "cur", "target"), CASES,
                         ids=[f"{int(c)}-{a.name}-{b.name}" for c, a, b in CASES])
def test_next_state_matches_kernel(caps: int, cur: State, target: State) -> None:
    expected = kernel.kernel_next_state(int(caps), int(cur), int(target))
    if expected == kernel.EINVAL:
        with pytest.raises(InvalidTransition) as info:
            next_state(cur, target, caps)
        assert info.value.errno == errno.EINVAL
    else:
        assert next_state(cur, target, caps) == State(expected)


@pytest.mark.parametrize(("caps", "cur", "target"), CASES,
                         ids=[f"{int(c)}-{a.name}-{b.name}" for c, a, b in CASES])
def test_path_matches_kernel_iteration(caps: int, cur: State, target: State) -> None:
    expected = kernel.kernel_path(int(caps), int(cur), int(target))
    if expected == kernel.EINVAL:
        with pytest.raises(InvalidTransition):
            transition_path(cur, target, caps)
    else:
        assert tuple(int(s) for s in transition_path(cur, target, caps)) == expected


def test_unfixed_kernel_loop_spins_exactly_on_the_blocked_pairs() -> None:
    """The pre-2026 skip loop never terminates on STOP_COPY -> PRE_COPY(_P2P) when PRE_COPY
    is supported; our model refuses exactly those pairs with a 'blocked-arc' reason."""
    spinning = {
        (int(c), cur, tgt)
        for c in ALL_CAPS
        for cur in range(8)
        for tgt in range(8)
        if kernel.kernel_next_state(int(c), cur, tgt, fixed=False) is None
    }
    assert spinning == {(5, 3, 6), (7, 3, 6), (7, 3, 7)}
    for caps, cur, tgt in spinning:
        with pytest.raises(InvalidTransition) as info:
            transition_path(cur, tgt, caps)
        assert info.value.reason == "blocked-arc"


def test_out_of_range_states_are_refused() -> None:
    """libvfio-user's bound check let device_state 8 through; we refuse 8 and above."""
    for bad in (8, 9, 255, -1):
        with pytest.raises(InvalidTransition) as info:
            next_state(State.RUNNING, bad, ALL_CAPS[-1])
        assert info.value.reason == "out-of-range"
        assert kernel.kernel_next_state(7, 2, bad if bad >= 0 else 2**32 - 1) == kernel.EINVAL
