"""Typed errors of the migration FSM (PROTOCOL.md section 5)."""

from __future__ import annotations

import errno as _errno

from vfio_user_mig.model.states import State


class InvalidTransition(ValueError):
    """A requested state change the FSM refuses; ``errno`` is always ``EINVAL``.

    ``reason`` is one of ``"target-error"``, ``"current-error"``, ``"blocked-arc"``,
    ``"unsupported-current"``, ``"unsupported-target"``, ``"out-of-range"``.
    """

    def __init__(self, cur: State | int, target: State | int, reason: str, detail: str) -> None:
        super().__init__(f"invalid migration transition {_name(cur)} -> {_name(target)}: {detail}")
        self.cur = cur
        self.target = target
        self.reason = reason
        self.errno = _errno.EINVAL


class ArcActionError(Exception):
    """Raised by a device's Mealy action when the arc ``src -> dst`` could not be carried out.

    ``errno`` is the error the client is told. When ``broken`` is false the device stayed in
    ``src`` (the walker stops at the last completed state); when true the device could not
    restore any valid state and the walker moves it to ``State.ERROR``.
    """

    def __init__(self, message: str, errno: int = _errno.EIO, *, broken: bool = False) -> None:
        super().__init__(message)
        self.errno = errno
        self.broken = broken


def _name(value: State | int) -> str:
    try:
        return State(value).name
    except ValueError:
        return str(int(value))
