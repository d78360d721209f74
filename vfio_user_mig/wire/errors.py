"""The one exception type of the wire layer.

Contract: :func:`vfio_user_mig.wire.decode` and :class:`vfio_user_mig.wire.Framer` raise only
:class:`WireError` on bad input (no ``struct.error``, ``IndexError``, ``UnicodeDecodeError``,
``json.JSONDecodeError``). ``errno`` is what a server should put in the error reply
(PROTOCOL.md section 1: "positive errno when the error bit is set").

This module sits below every other wire module and imports none of them: the header an error
carries is described by :class:`HeaderFields` (what :class:`~vfio_user_mig.wire.header.Header`
provides), so ``header.py`` can raise :class:`WireError` without a cycle.
"""

from __future__ import annotations

import errno as _errno
from typing import Protocol


class HeaderFields(Protocol):
    """The parsed 16-byte header an error refers to (PROTOCOL.md section 1).

    :class:`vfio_user_mig.wire.header.Header` is the one implementation.
    """

    @property
    def msg_id(self) -> int: ...
    @property
    def command(self) -> int: ...
    @property
    def msg_size(self) -> int: ...
    @property
    def flags(self) -> int: ...
    @property
    def error(self) -> int: ...
    @property
    def is_reply(self) -> bool: ...
    @property
    def no_reply(self) -> bool: ...
    @property
    def is_error(self) -> bool: ...


class WireError(ValueError):
    """Malformed or unencodable vfio-user bytes.

    Its attributes:

    ``errno``
        positive errno (``EINVAL``, ``E2BIG``, ``ENOTSUP``, ...).
    ``field``
        dotted name of the offending field (e.g. ``"header.msg_size"``,
        ``"DEVICE_FEATURE.flags"``), or ``""``.
    ``header``
        the parsed header when the 16 header bytes were readable (so a server can still
        address an error reply to ``header.msg_id``), else ``None``.
    ``fds``
        file descriptors that arrived with the bad message (set by the Framer); the caller
        owns them and must close them.
    """

    def __init__(
        self,
        err: int,
        field: str,
        detail: str,
        *,
        header: HeaderFields | None = None,
    ) -> None:
        name = _errno.errorcode.get(err, str(err))
        super().__init__(f"{field}: {detail} [{name}]" if field else f"{detail} [{name}]")
        self.errno = err
        self.field = field
        self.detail = detail
        self.header: HeaderFields | None = header
        self.fds: list[int] = []


def invalid(field: str, detail: str) -> WireError:
    """An ``EINVAL`` :class:`WireError` (the usual case)."""
    return WireError(_errno.EINVAL, field, detail)
