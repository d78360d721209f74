"""Field-layout tables compiled into :class:`struct.Struct` (the single source of offsets).

A :class:`Layout` is declared as a table of ``(name, offset, size, kind)`` rows, exactly as the
spec's tables are written (vfio-user.rst gives every payload as Name / Offset / Size). The
constructor checks the rows are contiguous from offset 0 and that each size fits its kind, then
compiles one little-endian ``struct.Struct`` (PROTOCOL.md: "All multi-byte fields are
little-endian"). Codecs only ever call :meth:`Layout.unpack_from` / :meth:`Layout.pack`;
nobody else computes an offset.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any, Final, Literal

from vfio_user_mig.wire.record import Record, record

Kind = Literal["u8", "u16", "u32", "u64", "bytes"]

_FORMAT: Final[dict[str, tuple[str, int]]] = {
    "u8": ("B", 1),
    "u16": ("H", 2),
    "u32": ("I", 4),
    "u64": ("Q", 8),
}


@record
class FieldSpec(Record):
    """One row of a layout table: a field ``size`` bytes long at ``offset``."""

    name: str
    offset: int
    size: int
    kind: Kind


class Layout:
    """A fixed-size little-endian record compiled from a table of :class:`FieldSpec` rows.

    ``struct`` packs/unpacks the record alone; :meth:`with_prefix` gives a combined struct for
    "header + fixed part" so a small message is packed with one call.
    """

    __slots__ = ("fields", "fmt", "name", "names", "size", "struct")

    def __init__(self, name: str, rows: Sequence[tuple[str, int, int, Kind]]) -> None:
        self.name = name
        self.fields = tuple(FieldSpec(*row) for row in rows)
        fmt = ""
        expected = 0
        for f in self.fields:
            if f.offset != expected:
                raise AssertionError(f"{name}.{f.name}: offset {f.offset} != {expected}")
            if f.kind == "bytes":
                fmt += f"{f.size}s"
            else:
                code, width = _FORMAT[f.kind]
                if width != f.size:
                    raise AssertionError(f"{name}.{f.name}: {f.kind} is {width} bytes")
                fmt += code
            expected += f.size
        self.fmt = fmt
        self.size = expected
        self.names = tuple(f.name for f in self.fields)
        self.struct = struct.Struct("<" + fmt)
        if self.struct.size != self.size:
            raise AssertionError(f"{name}: struct size {self.struct.size} != {self.size}")

    def unpack_from(self, buf: Any, offset: int = 0) -> tuple[Any, ...]:
        """Unpack the record at ``offset`` of ``buf`` (caller has checked the length)."""
        return self.struct.unpack_from(buf, offset)

    def pack(self, *values: Any) -> bytes:
        """Pack the record; raises ``struct.error`` for out-of-range values."""
        return self.struct.pack(*values)

    def with_prefix(self, prefix: Layout) -> struct.Struct:
        """A struct packing ``prefix`` immediately followed by this record."""
        return struct.Struct("<" + prefix.fmt + self.fmt)

    def __repr__(self) -> str:
        return f"Layout({self.name!r}, size={self.size})"
