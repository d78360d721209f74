"""The device-side executor: a ``transitions.Machine`` generated from the FSM graph.

One trigger per direct arc of :func:`~vfio_user_mig.model.graph.transition_graph` (named by
:func:`~vfio_user_mig.model.graph.trigger_name`), ``auto_transitions=False`` so no other
state change exists, and the arc's Mealy action in ``before``: if the action raises, the
machine's state is unchanged. A ``reset`` trigger (DEVICE_RESET) goes from any state to
RUNNING.

:class:`DeviceFSM` is the typed facade: :meth:`DeviceFSM.set_state` validates a request with
the model (nothing happens on a refused request), then walks the generated path arc by arc.
When an action fails with :class:`ArcActionError` the walk stops at the last completed state,
or the device is put in ERROR when the error says it is ``broken`` (PROTOCOL.md section 5).
"""

from __future__ import annotations

import errno as _errno
import functools
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from transitions import Machine, MachineError

from vfio_user_mig.model.errors import ArcActionError
from vfio_user_mig.model.graph import (
    RESET_TARGET,
    direct_arcs,
    fsm_states,
    is_direct_arc,
    normalize_caps,
    trigger_name,
)
from vfio_user_mig.model.paths import Path, known_path, transition_path
from vfio_user_mig.model.states import VFIO_USER_CAPS, MigrationCaps, State


class ArcActions(Protocol):
    """What a device provides: the Mealy action of each arc, and its reset."""

    def on_arc(self, src: State, dst: State) -> None:
        """Carry out the arc ``src -> dst``; raise :class:`ArcActionError` on failure."""

    def on_reset(self) -> None:
        """DEVICE_RESET: return the device to its initial running condition."""


class NoActions:
    """Actions that do nothing (a pure FSM, for tests and proofs)."""

    def on_arc(self, src: State, dst: State) -> None:
        """Accept every arc."""

    def on_reset(self) -> None:
        """Nothing to reset."""


@dataclass
class WalkResult:
    """What :meth:`DeviceFSM.set_state` did: the arcs completed and how it ended."""

    requested: State
    path: Path
    completed: list[tuple[State, State]] = field(default_factory=list)
    error: ArcActionError | None = None

    @property
    def ok(self) -> bool:
        """True when the target was reached."""
        return self.error is None


class _Model:
    """The object ``transitions`` attaches its state and triggers to."""

    state: str

    def __init__(self, run_action: Callable[[State, State], None]) -> None:
        self._run_action = run_action

    def _before(self, event: Any) -> None:
        src = State[event.transition.source]
        dst = State[event.transition.dest]
        self._run_action(src, dst)


def build_machine(
    caps: MigrationCaps | int, model: object, initial: State = State.RUNNING
) -> Machine:
    """A ``transitions.Machine`` with exactly the graph's arcs as triggers (plus ``reset``);
    ``model`` None: a machine without a model, whose events are triggered for any model
    (:class:`DeviceFSM` shares one per capability set)."""
    caps = normalize_caps(caps)
    machine = Machine(
        model=model,
        states=[s.name for s in fsm_states(caps)],
        initial=initial.name,
        auto_transitions=False,
        send_event=True,
        ignore_invalid_triggers=False,
    )
    for src, dst in direct_arcs(caps):
        machine.add_transition(trigger_name(src, dst), src.name, dst.name, before="_before")
    machine.add_transition("reset", "*", RESET_TARGET.name)
    return machine


@functools.cache
def _shared_machine(caps: MigrationCaps) -> Machine:
    """The one machine of a capability set: built once, its events run for every device's
    model (a model only needs the ``state`` attribute and ``_before``; the machine keeps no
    per-model data and processes events synchronously, so devices in several threads share
    it)."""
    return build_machine(caps, None)


class DeviceFSM:
    """The migration state of one device, driven only along the model's arcs.

    ``actions`` receives one :meth:`ArcActions.on_arc` call per direct arc walked, in order.
    """

    def __init__(
        self,
        caps: MigrationCaps | int = VFIO_USER_CAPS,
        actions: ArcActions | None = None,
        initial: State = State.RUNNING,
    ) -> None:
        self.caps = normalize_caps(caps)
        self.actions: ArcActions = actions if actions is not None else NoActions()
        self._model = _Model(self.actions.on_arc)
        self.machine = _shared_machine(self.caps)
        self.machine.set_state(initial.name, model=self._model)
        self._events = self.machine.events

    @property
    def state(self) -> State:
        """The current migration state."""
        return State[self._model.state]

    def step(self, dst: State) -> None:
        """Walk one direct arc; raises ``MachineError`` if it is not an arc of the graph and
        :class:`ArcActionError` (state unchanged) if the action fails."""
        src = self.state
        if not is_direct_arc(src, dst, self.caps):
            raise MachineError(f"{src.name} -> {dst.name} is not a direct arc")
        self._events[trigger_name(src, dst)].trigger(self._model)

    def set_state(self, target: State | int) -> WalkResult:
        """Walk the complex transition to ``target``.

        Raises :class:`~vfio_user_mig.model.errors.InvalidTransition` (nothing done) for a
        refused request. Otherwise returns a :class:`WalkResult`; on an action failure it
        carries the error, and :attr:`state` is the last completed state, or ERROR when the
        error was ``broken``.
        """
        cur = self.state
        # The model's answers are kept (known_path); a refusal, or a value that is no state
        # (bool is an int the model refuses), is asked again to raise with its reason.
        known = type(target) is State or (type(target) is int
                                          and target in State._value2member_map_)
        path = known_path(cur, State(target), self.caps) if known else None
        if path is None:
            path = transition_path(cur, target, self.caps)
        result = WalkResult(path[-1], path)
        events = self._events
        for src, dst in itertools.pairwise(path):
            try:
                events[trigger_name(src, dst)].trigger(self._model)  # arcs of the model's path
            except ArcActionError as exc:
                result.error = exc
                if exc.broken:
                    self.machine.set_state(State.ERROR.name, model=self._model)
                break
            result.completed.append((src, dst))
        return result

    def reset(self) -> None:
        """DEVICE_RESET: run the device's reset and return to RUNNING from any state."""
        self.actions.on_reset()
        self._events["reset"].trigger(self._model)

    def force_error(self) -> None:
        """Put the device in ERROR (a device-internal failure outside any request)."""
        self.machine.set_state(State.ERROR.name, model=self._model)


def arc_failed(message: str, errno: int = _errno.EIO, *, broken: bool = False) -> ArcActionError:
    """Convenience constructor for device actions."""
    return ArcActionError(message, errno, broken=broken)


__all__ = ["ArcActions", "DeviceFSM", "NoActions", "WalkResult", "arc_failed", "build_machine"]
