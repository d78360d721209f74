"""The per-socket half of a server: received bytes, queued replies, a broken stream.

A server core (:class:`~.core.ServerCore`, the main socket) and its experimental
migration-data channel (:class:`~.mig_channel.MigDataChannel`) each own one; both are driven
by the same IO pump (:func:`~.io.pump`).
"""

from __future__ import annotations

import contextlib

from vfio_user_mig import wire
from vfio_user_mig.simulator.transport import close_fds

Parts = list[bytes | memoryview]


def _framer_fds(framer: wire.Framer) -> list[int]:
    """Take the fds a framer still holds: those of a partial message and of queued ones."""
    take = getattr(framer, "take_fds", None)
    if take is not None:  # preferred public API (requested from the framer's owner)
        return list(take())
    held: list[int] = list(getattr(framer, "_fds", ()))
    with contextlib.suppress(AttributeError):
        framer._fds = []
    for _item, fds in getattr(framer, "_ready", ()):
        held.extend(fds)
        fds.clear()
    return held


class SocketEnd:
    """What one socket of a server holds: the bytes received not yet taken as messages (the
    framer), the messages to send, and whether the stream broke (an impossible ``msg_size``).
    :class:`ServerCore` is one (the main socket); a :class:`~.mig_channel.MigDataChannel` is
    another, sharing the core's device."""

    def __init__(self, max_msg_size: int, trim_trailing: bool = True) -> None:
        self.framer = self._new_framer(max_msg_size, trim_trailing)
        self._out: list[tuple[Parts, list[int]]] = []
        self._framing_error: wire.WireError | None = None

    def _new_framer(self, max_size: int, trim_trailing: bool) -> wire.Framer:
        """The framer of this socket (a subclass may have it claim messages)."""
        return wire.Framer(max_size=max_size, trim_trailing=trim_trailing)

    def receive_data(self, data: bytes | memoryview, fds: list[int] | tuple[int, ...] = ()) -> None:
        """Feed received bytes (and the fds that came with them).

        Raises ConnectionError (after closing ``fds``) once the stream is unrecoverable.
        """
        try:
            self.framer.feed(data, fds)
        except wire.WireError as exc:  # the framer broke earlier: these fds were not taken
            close_fds(fds)
            raise ConnectionError(f"unrecoverable framing error: {exc}") from exc

    def data_to_send(self) -> list[tuple[Parts, list[int]]]:
        """Take the messages to send, in order, each as (parts, fds)."""
        out, self._out = self._out, []
        return out

    def _reset_socket_state(self) -> None:
        """The peer is gone: close the fds still held, forget what was queued."""
        close_fds(_framer_fds(self.framer))
        self.framer = self._new_framer(self.framer.max_size, self.framer.trim_trailing)
        self._framing_error = None
        self._out.clear()


__all__ = ["Parts", "SocketEnd"]
