"""The FSM rule stated independently of the model, and the implementation the FSM theorems check.

The theorems of :mod:`vfio_user_mig.proofs.fsm_theorems` check an *implementation under test*
(:class:`FsmUnderTest`): a graph, a ``next_state`` in the style of the kernel's
``vfio_mig_get_next_state()``, a complex-path function and a ``transitions`` machine.
:data:`MODEL` is the real model; the mutants in :mod:`vfio_user_mig.proofs.mutants` are
alternative bundles that the theorems must reject.

Independent statements used by the theorems (they do not call :mod:`vfio_user_mig.model.paths`):

* the saving group is ``{PRE_COPY, PRE_COPY_P2P, STOP_COPY}`` (PROTOCOL.md section 5);
* a path is *admissible* when, if it starts outside the saving group, only its last state may
  be a saving state, and, if it starts inside, its saving states form a prefix (it never
  enters the group at an interior state and never leaves and re-enters it);
* the *cost* of a path is (number of states, number of interior saving states): shortest
  first, then leave the saving group as early as possible;
* the forbidden requests are ``STOP_COPY -> PRE_COPY`` and ``STOP_COPY -> PRE_COPY_P2P``.

Requests are quantified over the values a u32 ``device_state`` can carry that matter:
``0..9`` (the eight states and the first two values past the end: ``8`` is libvfio-user's
off-by-one) plus ``255`` and ``0xFFFFFFFF``. :func:`ask` runs one call of an implementation and
classifies it (:class:`Answer`: a value, a proper EINVAL refusal, or a problem).
"""

from __future__ import annotations

import errno as _errno
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import networkx as nx

from vfio_user_mig.model import (
    ALL_CAPS,
    InvalidTransition,
    MigrationCaps,
    State,
    is_supported,
    next_state,
    transition_graph,
    transition_path,
)
from vfio_user_mig.model.executor import build_machine

#: The saving group, as the spec states it.
SAVING: frozenset[State] = frozenset({State.PRE_COPY, State.PRE_COPY_P2P, State.STOP_COPY})

#: The requests the rule forbids (the saving group cannot be left and re-entered).
FORBIDDEN: frozenset[tuple[State, State]] = frozenset(
    {(State.STOP_COPY, State.PRE_COPY), (State.STOP_COPY, State.PRE_COPY_P2P)}
)

#: The ``device_state`` values requests are quantified over.
REQUEST_VALUES: tuple[int, ...] = (*range(10), 0xFF, 0xFFFFFFFF)

FULL_CAPS = ALL_CAPS[-1]


class DidNotReturn(RuntimeError):
    """Raised by a (bounded) implementation for a call that would never return."""


@dataclass(frozen=True)
class FsmUnderTest:
    """The FSM implementation the theorems check.

    ``next_state(cur, target, caps)`` takes raw ints (as read off the wire) and returns the
    next state, raising :class:`InvalidTransition` (errno EINVAL) for a refused request;
    ``path(cur, target, caps)`` returns the whole complex transition or raises the same;
    ``machine(caps)`` returns a ``transitions.Machine`` with one model whose ``_before`` is
    callable (the device executor). Any other exception is a failure of the implementation.
    """

    name: str
    description: str
    graph: Callable[[MigrationCaps], nx.DiGraph]
    next_state: Callable[[int, int, MigrationCaps], int]
    path: Callable[[int, int, MigrationCaps], tuple[int, ...]]
    machine: Callable[[MigrationCaps], Any]


class InertDevice:
    """The object a proof machine is attached to: its arc action does nothing."""

    state: str

    def _before(self, event: object) -> None:
        """Accept every arc."""


def _model_machine(caps: MigrationCaps) -> Any:
    return build_machine(caps, InertDevice())


#: The real model: the implementation every theorem is expected to hold for.
MODEL = FsmUnderTest(
    name="model",
    description="vfio_user_mig.model: generated paths, next_state, transitions executor",
    graph=transition_graph,
    next_state=next_state,
    path=transition_path,
    machine=_model_machine,
)


# ---------------------------------------------------------------------------------------------
# Independent statements of the rule
# ---------------------------------------------------------------------------------------------

def name(value: int) -> str:
    """A state's name, or the raw number when it is not a state."""
    return State(value).name if value in State._value2member_map_ else str(value)


def show(path: Sequence[int]) -> str:
    """``A -> B -> C``."""
    return " -> ".join(name(s) for s in path)


def supported(caps: MigrationCaps) -> list[State]:
    """The states a device with ``caps`` has (ERROR excluded), in state-number order."""
    return [s for s in State if is_supported(s, caps)]


def admissible(path: Sequence[int]) -> bool:
    """The saving-group rule, stated independently of the model's search (module docstring)."""
    inside = [s in SAVING for s in path]
    if not inside[0]:
        return not any(inside[1:-1])
    first_out = inside.index(False) if False in inside else len(inside)
    return not any(inside[first_out:])


def cost(path: Sequence[int]) -> tuple[int, int]:
    """(states, interior saving states): the rule's order on admissible paths."""
    return len(path), sum(1 for s in path[1:-1] if s in SAVING)


def best_paths(graph: nx.DiGraph, cur: State, target: State) -> list[tuple[int, ...]]:
    """All admissible simple paths of minimal cost (brute force; empty when blocked)."""
    if cur == target:
        return [(cur,)]
    good = [tuple(p) for p in nx.all_simple_paths(graph, cur, target) if admissible(p)]
    if not good:
        return []
    best = min(cost(p) for p in good)
    return sorted(p for p in good if cost(p) == best)


def valid_state(value: int, caps: MigrationCaps) -> bool:
    """True when ``value`` names a state a request may name as current or target."""
    return value in State._value2member_map_ and is_supported(State(value), caps)


@dataclass(frozen=True)
class Answer:
    """What an implementation call did: a value, a refusal (errno), or a problem."""

    value: Any = None
    errno: int | None = None
    problem: str | None = None

    @property
    def refused(self) -> bool:
        """True for a proper refusal (InvalidTransition with EINVAL)."""
        return self.errno == _errno.EINVAL and self.problem is None

    @property
    def accepted(self) -> bool:
        """True when a value was returned."""
        return self.errno is None and self.problem is None

    def describe(self) -> str:
        """Human form."""
        if self.problem is not None:
            return self.problem
        if self.errno is not None:
            return f"refused (errno {self.errno})"
        if isinstance(self.value, tuple):
            return f"path {show(self.value)}"
        return f"returned {name(self.value)}"


def ask(call: Callable[[], Any]) -> Answer:
    """Run one implementation call and classify the outcome."""
    try:
        value = call()
    except InvalidTransition as exc:
        if exc.errno != _errno.EINVAL:
            return Answer(errno=exc.errno, problem=f"refused with errno {exc.errno}, not EINVAL")
        return Answer(errno=exc.errno)
    except DidNotReturn as exc:
        return Answer(problem=f"never returns ({exc})")
    except Exception as exc:
        return Answer(problem=f"crashes with {type(exc).__name__}: {exc}")
    return Answer(value=value)


__all__ = [
    "FORBIDDEN",
    "FULL_CAPS",
    "MODEL",
    "REQUEST_VALUES",
    "SAVING",
    "Answer",
    "DidNotReturn",
    "FsmUnderTest",
    "InertDevice",
    "admissible",
    "ask",
    "best_paths",
    "cost",
    "name",
    "show",
    "supported",
    "valid_state",
]
