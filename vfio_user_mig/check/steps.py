"""Reproducible request steps: what the checker sends, as data (``--replay`` files).

A :class:`Step` is one whole message as bytes (header included), the file descriptors sent with
it described by kind (``"memfd:SIZE"`` a fresh memory file of SIZE bytes, ``"eventfd"`` a fresh
eventfd), and what the reply must be (:class:`Expect`). A reproducer is a list of steps sent in
order on one fresh connection; the checker and ``check --replay`` run it with
:func:`vfio_user_mig.check.session.run_steps`.

:func:`judge` is the one place that decides whether a reply meets an expectation; deterministic
checks, random exploration and replay all use it.
"""

from __future__ import annotations

import base64
import enum
import errno as _errno
import os
import zlib
from dataclasses import dataclass, field
from typing import Any

from vfio_user_mig import wire
from vfio_user_mig.check.conn import Reply
from vfio_user_mig.check.findings import Kind


def request_label(data: bytes) -> str:
    """A request's command, and for DEVICE_FEATURE its feature and operations, e.g.
    ``DEVICE_FEATURE DMA_LOGGING_REPORT GET`` (finding titles tell defects apart by it)."""
    if len(data) < 16:
        return "TRUNCATED"
    command = int.from_bytes(data[2:4], "little")
    name = command_name(command)
    if command == wire.Command.DEVICE_FEATURE and len(data) >= 24:
        flags = int.from_bytes(data[20:24], "little")
        index = flags & 0xFFFF
        try:
            feature = wire.FeatureIndex(index).name
        except ValueError:
            feature = f"feature {index}"
        return f"{name} {feature} {flag_names(wire.FeatureOp(flags & 0x70000), 'no op')}"
    return name


def flag_names(flags: enum.Flag, none: str = "none") -> str:
    """``flags`` as readable text, e.g. ``PROBE|GET`` (finding titles never show a Python
    repr such as ``<FeatureOp.GET: 65536>``)."""
    names = [m.name for m in type(flags) if m.name and m.value and m in flags
             and m.value & (m.value - 1) == 0]
    return "|".join(names) or none


@dataclass(frozen=True)
class Expect:
    """What the reply to a step must be.

    ``reply``: ``"ok"`` (a successful reply), ``"error"`` (an error reply; with ``errnos``
    non-empty, one of those errnos), ``"error_or_close"`` (an error reply, or the server closes
    the connection: malformed input), or ``"any"`` (only that an answer comes). ``payload``:
    when set, the successful reply's payload must be exactly these bytes; ``payload_len``: its
    exact length; ``max_len``: its largest length (also with ``"any"``: a refusal is fine, a
    success must fit). ``rule``: the spec rule or section the expectation comes from.
    """

    reply: str = "ok"
    errnos: tuple[int, ...] = ()
    payload: bytes | None = None
    payload_len: int | None = None
    rule: str = ""
    max_len: int | None = None

    def describe(self) -> str:
        if self.reply == "ok":
            text = "success"
            if self.payload is not None:
                text += f" with payload {self.payload.hex()}"
            elif self.payload_len is not None:
                text += f" with a {self.payload_len}-byte payload"
            elif self.max_len is not None:
                text += f" with a payload of at most {self.max_len} bytes"
            return text
        if self.reply == "error":
            return "error " + ("/".join(errname(e) for e in self.errnos) or "(any errno)")
        if self.reply == "error_or_close":
            return "an error reply or a clean close"
        if self.max_len is not None:
            return f"an error, or success with a payload of at most {self.max_len} bytes"
        return "any reply"

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"reply": self.reply}
        if self.errnos:
            data["errnos"] = list(self.errnos)
        if self.payload is not None:
            data["payload"] = self.payload.hex()
        if self.payload_len is not None:
            data["payload_len"] = self.payload_len
        if self.rule:
            data["rule"] = self.rule
        if self.max_len is not None:
            data["max_len"] = self.max_len
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Expect:
        payload = data.get("payload")
        return cls(
            reply=data.get("reply", "any"),
            errnos=tuple(data.get("errnos", ())),
            payload=bytes.fromhex(payload) if payload is not None else None,
            payload_len=data.get("payload_len"),
            rule=data.get("rule", ""),
            max_len=data.get("max_len"),
        )


OK = Expect("ok")
ANY = Expect("any")


def refused(*errnos: int, rule: str = "") -> Expect:
    return Expect("error", tuple(errnos), rule=rule)


def errname(code: int) -> str:
    return _errno.errorcode.get(code, str(code))


def command_name(command: int) -> str:
    try:
        return wire.Command(command).name
    except ValueError:
        return f"CMD_{command}"


#: Messages longer than this are stored zlib-compressed (base64) in reproducers, not as hex.
_INLINE = 4096


@dataclass
class Step:
    """One message to send, its fds by kind, and what its reply must be (module docstring)."""

    data: bytes
    fds: tuple[str, ...] = ()
    expect: Expect = ANY
    note: str = ""
    no_reply: bool = False

    @property
    def header(self) -> wire.Header:
        return wire.Header.unpack(self.data)

    @property
    def command(self) -> str:
        return command_name(self.header.command) if len(self.data) >= 16 else "TRUNCATED"

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"command": self.command}
        if len(self.data) > _INLINE:
            data["bytes_zlib_b64"] = base64.b64encode(zlib.compress(self.data, 6)).decode()
            data["size"] = len(self.data)
        else:
            data["bytes"] = self.data.hex()
        if self.fds:
            data["fds"] = list(self.fds)
        data["expect"] = self.expect.to_json()
        if self.note:
            data["note"] = self.note
        if self.no_reply:
            data["no_reply"] = True
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Step:
        raw = (zlib.decompress(base64.b64decode(data["bytes_zlib_b64"]))
               if "bytes_zlib_b64" in data else bytes.fromhex(data["bytes"]))
        return cls(
            data=raw,
            fds=tuple(data.get("fds", ())),
            expect=Expect.from_json(data.get("expect", {"reply": "any"})),
            note=data.get("note", ""),
            no_reply=bool(data.get("no_reply", False)),
        )


def make_fds(specs: tuple[str, ...]) -> list[int]:
    """Fresh file descriptors for ``specs`` (module docstring); the caller closes them."""
    fds: list[int] = []
    try:
        for spec in specs:
            kind, _, arg = spec.partition(":")
            if kind == "memfd":
                fd = os.memfd_create("vfio-user-check", os.MFD_CLOEXEC)
                os.ftruncate(fd, int(arg or "4096", 0))
                fds.append(fd)
            elif kind == "eventfd":
                fds.append(os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK))
            else:
                raise ValueError(f"unknown fd kind {spec!r} (memfd:SIZE or eventfd)")
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return fds


@dataclass
class Verdict:
    """The outcome of :func:`judge`: ``kind`` is ``None`` when the reply meets the rule."""

    kind: Kind | None
    observed: str
    details: list[str] = field(default_factory=list)


def describe_reply(reply: Reply | None) -> str:
    if reply is None:
        return "the connection closed"
    if reply.is_error:
        return f"error {errname(reply.errno)} ({len(reply.payload)}-byte payload)"
    return f"success with a {len(reply.payload)}-byte payload {reply.payload[:48].hex()}"


def judge(expect: Expect, reply: Reply | None) -> Verdict:
    """Does ``reply`` (``None``: the connection closed) meet ``expect``?"""
    observed = describe_reply(reply)
    too_long = (reply is not None and not reply.is_error and expect.max_len is not None
                and len(reply.payload) > expect.max_len)
    if expect.reply == "any":
        if too_long:
            return Verdict(Kind.REPLY, observed)
        return Verdict(None if reply is not None else Kind.CLOSE, observed)
    if reply is None:
        ok = expect.reply == "error_or_close"
        return Verdict(None if ok else Kind.CLOSE, observed)
    if expect.reply in ("error", "error_or_close"):
        if not reply.is_error:
            return Verdict(Kind.ERRNO, observed)
        if expect.errnos and reply.errno not in expect.errnos:
            return Verdict(Kind.ERRNO, observed)
        return Verdict(None, observed)
    if reply.is_error:
        return Verdict(Kind.ERRNO, observed)
    if expect.payload is not None and bytes(reply.payload) != expect.payload:
        return Verdict(Kind.REPLY, observed)
    if expect.payload_len is not None and len(reply.payload) != expect.payload_len:
        return Verdict(Kind.REPLY, observed)
    if too_long:
        return Verdict(Kind.REPLY, observed)
    return Verdict(None, observed)


def encode_step(msg: wire.Message, expect: Expect = ANY, fds: tuple[str, ...] = (),
                note: str = "") -> Step:
    """A step sending ``msg`` (its ``msg_id`` as set) encoded the way libvfio-user sends it."""
    return Step(wire.encode(msg), fds, expect, note)
