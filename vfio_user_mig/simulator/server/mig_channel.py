"""Experimental: a separate socket for migration data (``x-mig-data-socket``).

The migration v2 review asked whether carrying MIG_DATA_READ/WRITE on the main vfio-user
socket blocks other requests, and proposed, among other alternatives, "a special socket only
for the migration data, which could be optional and advertised by the client and/or server
during negotiation". This module is that socket, as this project implements it (in neither
the spec nor libvfio-user; docs/wire-compat.md):

* Negotiation (VERSION): the client offers ``"x-mig-data-socket": {"supported": true}``; a
  server configured with ``ServerConfig.experimental_mig_data_socket`` answers
  ``"x-mig-data-socket": {"fd_index": 0}`` and attaches the client's end of a new
  ``AF_UNIX``/``SOCK_STREAM`` socketpair to the VERSION reply. A server that does not know the
  key ignores it, and the client keeps using the main socket.
* The channel carries ordinary vfio-user messages (same header, same codecs, its own message
  ids), but only MIG_DATA_READ and MIG_DATA_WRITE requests from the client and their replies;
  any other request gets EINVAL. While it is open the main socket refuses MIG_DATA_READ/WRITE
  (EINVAL), so the stream has one order. State changes (DEVICE_FEATURE MIG_DEVICE_STATE),
  dirty logging and everything else stay on the main socket; command gating by migration
  state applies on the channel exactly as on the main socket.
* Lifetime: the channel ends when either side closes it (migration data then goes back to the
  main socket) and always with the main connection.

:class:`MigDataChannel` is sans-IO like the core: the IO layer (:func:`~.io.pump`)
serves it from its own thread; the device is shared, so the pumps of both sockets process
messages under one lock while sending and receiving run in parallel. A REGION_READ on the
main socket then waits at most for the device to make one chunk, never for the chunk to be
transmitted.
"""

from __future__ import annotations

import contextlib
import socket
from typing import Protocol

from vfio_user_mig.simulator.server.socket_end import SocketEnd
from vfio_user_mig.simulator.server.types import Handled, ServerConfig
from vfio_user_mig.wire.record import Record, record


class ChannelOwner(Protocol):
    """What a channel needs of the server it belongs to (the server's
    :class:`~.state.ServerState`): its limits, the dispatcher that processes a message
    received on the channel, and the notice that the channel closed."""

    @property
    def config(self) -> ServerConfig: ...

    def next_event_on(self, end: SocketEnd, now: float) -> Handled | None: ...

    def channel_closed(self, channel: MigDataChannel) -> None: ...


class MigDataChannel(SocketEnd):
    """The server side of one migration-data socket (see module docstring)."""

    def __init__(self, core: ChannelOwner) -> None:
        super().__init__(core.config.max_msg_size, not core.config.strict_spec)
        self.core = core

    def next_event(self, now: float = 0.0) -> Handled | None:
        """Process one whole message received on the channel (``None``: more bytes needed)."""
        return self.core.next_event_on(self, now)

    def connection_lost(self) -> None:
        """The channel's socket closed: close the fds it holds; the main socket carries
        migration data again."""
        self._reset_socket_state()
        self.core.channel_closed(self)


@record
class NewChannel(Record):
    """A channel VERSION agreed to: the server's socket, its core, the client's end (sent in
    the VERSION reply; the IO layer closes it once sent)."""

    server_sock: socket.socket
    channel: MigDataChannel
    client_end: socket.socket

    def close(self) -> None:
        """Close both sockets (the channel was never served)."""
        for sock in (self.server_sock, self.client_end):
            with contextlib.suppress(OSError):
                sock.close()


def open_channel(core: ChannelOwner) -> NewChannel:
    """A new socketpair and the channel serving its server end."""
    server_sock, client_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    return NewChannel(server_sock, MigDataChannel(core), client_end)


__all__ = ["ChannelOwner", "MigDataChannel", "NewChannel", "open_channel"]
