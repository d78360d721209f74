"""The error a device raises to refuse a request (the lowest module of the device package:
:mod:`.base`, :mod:`.dma`, :mod:`.dirtylog` and the devices all raise it, and the server turns
it into an errno reply, PROTOCOL.md section 2)."""

from __future__ import annotations

import errno as _errno


class DeviceError(Exception):
    """A request the device refuses; ``errno`` is the positive errno the client is told.

    The device is left exactly as it was before the failed request.
    """

    def __init__(self, message: str, errno: int = _errno.EINVAL) -> None:
        super().__init__(message)
        self.errno = errno


__all__ = ["DeviceError"]
