"""VERSION capabilities JSON (PROTOCOL.md section 2 "VERSION"; vfio-user.rst "Version").

The version data is UTF-8 JSON text terminated by one NUL. :class:`Capabilities` keeps the
exact text (so decode -> encode is byte-identical and unknown keys survive) and offers typed
accessors with the spec defaults: ``max_msg_fds`` 1, ``max_data_xfer_size`` 1 MiB,
``pgsizes`` 4096, ``max_dma_maps`` 65535. ``migration.pgsize`` is a libvfio-user addition.

``x-mig-data-socket`` (:data:`MIG_DATA_SOCKET_KEY`) is this project's experimental extension,
in neither the spec nor libvfio-user (docs/wire-compat.md): a separate socket carrying only
MIG_DATA_READ/WRITE, one of the alternatives proposed in the migration v2 review. It has the
shape of libvfio-user's ``twin_socket``: the client offers ``{"supported": true}``; a server
that agrees answers ``{"fd_index": N}`` and attaches the client's end of the new socket as fd
``N`` of the VERSION reply. Peers that do not know the key ignore it (spec: unknown keys are
ignored), so offering it is always safe.

``x-mig-data-unpadded`` (:data:`MIG_DATA_UNPADDED_KEY`, also ours, boolean): a client that
sends ``true`` declares it takes MIG_DATA_READ replies exactly as the spec defines them
(``size`` data bytes, no zero padding up to the size asked for). libvfio-user pads every
short reply, which costs up to the requested size in zeros at the end of every pre-copy round
and of the stream, because its own client reads exactly the size it asked for; a server that
knows the key and sees ``true`` does not pad, and says so by answering ``true``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import field
from typing import Any

from vfio_user_mig.wire.constants import DEFAULT_MAX_DATA_XFER_SIZE, U64_MAX
from vfio_user_mig.wire.errors import invalid
from vfio_user_mig.wire.record import Record, record

DEFAULT_MAX_MSG_FDS = 1
DEFAULT_PGSIZES = 4096
DEFAULT_MAX_DMA_MAPS = 65535

_FIELD = "VERSION.capabilities"
#: The experimental migration-data socket capability (see module docstring).
MIG_DATA_SOCKET_KEY = "x-mig-data-socket"
#: The client takes MIG_DATA_READ replies without padding (see module docstring).
MIG_DATA_UNPADDED_KEY = "x-mig-data-unpadded"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _is_uint(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= U64_MAX


def _check(obj: Any) -> None:
    """Validate the shape of the known keys; unknown keys are left alone (spec: ignored)."""
    if not isinstance(obj, dict):
        raise invalid("VERSION.json", "top level is not a JSON object")
    caps = obj.get("capabilities", {})
    if not isinstance(caps, dict):
        raise invalid(_FIELD, "not a JSON object")
    for key in ("max_msg_fds", "max_data_xfer_size", "pgsizes", "max_dma_maps"):
        if key in caps and not _is_uint(caps[key]):
            raise invalid(f"{_FIELD}.{key}", f"{caps[key]!r} is not an unsigned integer")
    for key in ("write_multiple", MIG_DATA_UNPADDED_KEY):
        if key in caps and not isinstance(caps[key], bool):
            raise invalid(f"{_FIELD}.{key}", "not a boolean")
    mig = caps.get("migration", {})
    if not isinstance(mig, dict):
        raise invalid(f"{_FIELD}.migration", "not a JSON object")
    if "pgsize" in mig and not _is_uint(mig["pgsize"]):
        raise invalid(f"{_FIELD}.migration.pgsize", "not an unsigned integer")
    for key in ("twin_socket", MIG_DATA_SOCKET_KEY):
        socket_cap = caps.get(key, {})
        if not isinstance(socket_cap, dict):
            raise invalid(f"{_FIELD}.{key}", "not a JSON object")
        if "supported" in socket_cap and not isinstance(socket_cap["supported"], bool):
            raise invalid(f"{_FIELD}.{key}.supported", "not a boolean")
        if "fd_index" in socket_cap and not _is_uint(socket_cap["fd_index"]):
            raise invalid(f"{_FIELD}.{key}.fd_index", "not an unsigned integer")


@record
class Capabilities(Record):
    """The VERSION JSON: exact ``text`` (without the NUL) plus its parsed object.

    Build with :meth:`make` (or :meth:`from_object`); parse received bytes with :meth:`parse`.
    Equality compares the text only.
    """

    text: str
    obj: Mapping[str, Any] = field(compare=False, repr=False)

    @classmethod
    def parse(cls, raw: bytes | memoryview) -> Capabilities:
        """Parse ``raw`` = JSON text + one terminating NUL (WireError EINVAL otherwise)."""
        data = bytes(raw)
        if not data.endswith(b"\0"):
            raise invalid("VERSION.json", "version data is not NUL-terminated")
        body = data[:-1]
        if b"\0" in body:
            raise invalid("VERSION.json", "NUL inside the JSON text")
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise invalid("VERSION.json", f"not UTF-8 ({exc.reason})") from None
        try:
            obj = json.loads(text, parse_constant=_reject_constant)
        except (ValueError, RecursionError) as exc:
            raise invalid("VERSION.json", f"malformed JSON ({type(exc).__name__})") from None
        _check(obj)
        return cls(text, obj)

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> Capabilities:
        """Serialize ``obj`` compactly (as libvfio-user's sample client does)."""
        text = json.dumps(obj, separators=(",", ":"))
        parsed = json.loads(text)
        _check(parsed)
        return cls(text, parsed)

    @classmethod
    def make(
        cls,
        *,
        max_msg_fds: int | None = None,
        max_data_xfer_size: int | None = None,
        pgsizes: int | None = None,
        max_dma_maps: int | None = None,
        migration_pgsize: int | None = None,
        twin_socket_supported: bool | None = None,
        twin_socket_fd_index: int | None = None,
        write_multiple: bool | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> Capabilities:
        """Build ``{"capabilities": {...}}`` with the given keys (``None`` = omitted)."""
        caps: dict[str, Any] = {}
        for key, value in (
            ("max_msg_fds", max_msg_fds),
            ("max_data_xfer_size", max_data_xfer_size),
            ("pgsizes", pgsizes),
            ("max_dma_maps", max_dma_maps),
        ):
            if value is not None:
                caps[key] = value
        if migration_pgsize is not None:
            caps["migration"] = {"pgsize": migration_pgsize}
        twin: dict[str, Any] = {}
        if twin_socket_supported is not None:
            twin["supported"] = twin_socket_supported
        if twin_socket_fd_index is not None:
            twin["fd_index"] = twin_socket_fd_index
        if twin:
            caps["twin_socket"] = twin
        if write_multiple is not None:
            caps["write_multiple"] = write_multiple
        if extra:
            caps.update(extra)
        return cls.from_object({"capabilities": caps})

    def encode(self) -> bytes:
        """The version data bytes: UTF-8 text + NUL."""
        return self.text.encode("utf-8") + b"\0"

    @property
    def caps(self) -> Mapping[str, Any]:
        """The ``capabilities`` object (empty when absent)."""
        c = self.obj.get("capabilities", {})
        return c if isinstance(c, dict) else {}

    @property
    def max_msg_fds(self) -> int:
        return int(self.caps.get("max_msg_fds", DEFAULT_MAX_MSG_FDS))

    @property
    def max_data_xfer_size(self) -> int:
        return int(self.caps.get("max_data_xfer_size", DEFAULT_MAX_DATA_XFER_SIZE))

    @property
    def pgsizes(self) -> int:
        return int(self.caps.get("pgsizes", DEFAULT_PGSIZES))

    @property
    def max_dma_maps(self) -> int:
        return int(self.caps.get("max_dma_maps", DEFAULT_MAX_DMA_MAPS))

    @property
    def migration_pgsize(self) -> int | None:
        """``migration.pgsize`` (libvfio-user); ``None`` when the peer sent no migration key."""
        mig = self.caps.get("migration")
        if not isinstance(mig, dict) or "pgsize" not in mig:
            return None
        return int(mig["pgsize"])

    def _socket_cap(self, key: str) -> Mapping[str, Any]:
        cap = self.caps.get(key)
        return cap if isinstance(cap, dict) else {}

    @property
    def twin_socket_supported(self) -> bool:
        return bool(self._socket_cap("twin_socket").get("supported", False))

    @property
    def twin_socket_fd_index(self) -> int | None:
        index = self._socket_cap("twin_socket").get("fd_index")
        return None if index is None else int(index)

    @property
    def mig_data_unpadded(self) -> bool:
        """The peer takes (client) or sends (server) MIG_DATA_READ replies without padding."""
        return self.caps.get(MIG_DATA_UNPADDED_KEY) is True

    @property
    def mig_data_socket_supported(self) -> bool:
        """The client offers the experimental migration-data socket."""
        return bool(self._socket_cap(MIG_DATA_SOCKET_KEY).get("supported", False))

    @property
    def mig_data_socket_fd_index(self) -> int | None:
        """Which fd of the VERSION reply is the migration-data socket (server's answer)."""
        index = self._socket_cap(MIG_DATA_SOCKET_KEY).get("fd_index")
        return None if index is None else int(index)

    @property
    def write_multiple(self) -> bool:
        return bool(self.caps.get("write_multiple", False))
