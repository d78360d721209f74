"""``@record``: the frozen, slotted dataclass every wire message and record is declared with.

A record class is a real dataclass (``dataclasses.fields``, ``replace``, ``asdict`` work) whose
per-class methods are not generated when the class is made:

* ``__eq__``, ``__hash__``, ``__repr__``, ``__setattr__``/``__delattr__`` (frozen: assigning or
  deleting a field raises ``dataclasses.FrozenInstanceError``) and pickling are written once,
  on :class:`Record`, and behave as the generated ones do: equal when of the same class with
  equal compared fields (compared as tuples, in field order), a hash of those fields
  (unhashable when one is, e.g. a writable memoryview), ``Name(field=value, ...)``;
* ``__init__`` is generated on the class's first instantiation, with the signature and
  behaviour of the dataclass one (positional fields, then keyword-only ones; defaults,
  factories, ``init=False`` fields, ``__post_init__``; fields set through ``object.__setattr__``
  as a frozen dataclass's are).

Generating those methods when each of some 70 classes was made (three ``exec`` compilations
per class) was most of the time a ``serve`` process spent before it could accept a
connection; a server now compiles the ``__init__`` of the classes it uses, no more.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import MISSING, FrozenInstanceError, dataclass, field, fields
from typing import Any, TypeVar, dataclass_transform, overload

T = TypeVar("T")

#: class -> (compared field names, hashed field names, repr'd field names)
_NAMES: dict[type, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {}


def _names(cls: type) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    names = _NAMES.get(cls)
    if names is None:
        fs = fields(cls)
        names = (tuple(f.name for f in fs if f.compare),
                 tuple(f.name for f in fs if (f.compare if f.hash is None else f.hash)),
                 tuple(f.name for f in fs if f.repr))
        _NAMES[cls] = names
    return names


def _init_source(cls: type) -> tuple[str, dict[str, Any]]:
    """The source of ``cls``'s dataclass ``__init__`` and the names it refers to."""
    names: dict[str, Any] = {"_set": object.__setattr__, "_MISSING": MISSING}
    positional: list[str] = []
    keyword: list[str] = []
    body: list[str] = []
    for f in fields(cls):
        value = f.name
        if f.default is not MISSING:
            names[f"_d_{f.name}"] = f.default
            default = f"_d_{f.name}"
        elif f.default_factory is not MISSING:
            names[f"_f_{f.name}"] = f.default_factory
            default = "_MISSING"
            value = f"_f_{f.name}() if {f.name} is _MISSING else {f.name}"
        else:
            default = ""
        if not f.init:
            if default:
                value = f"_f_{f.name}()" if default == "_MISSING" else default
                body.append(f"    _set(self, {f.name!r}, {value})")
            continue
        param = f"{f.name}={default}" if default else f.name
        (keyword if f.kw_only else positional).append(param)
        body.append(f"    _set(self, {f.name!r}, {value})")
    if hasattr(cls, "__post_init__"):
        body.append("    self.__post_init__()")
    params = ", ".join(["self", *positional, *(["*", *keyword] if keyword else [])])
    return f"def __init__({params}) -> None:\n" + ("\n".join(body) or "    pass") + "\n", names


def _make_init(cls: type) -> Callable[..., None]:
    source, names = _init_source(cls)
    exec(source, names)  # built from the class's own field names only
    init: Callable[..., None] = names["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    return init


def _first_init(self: Record, *args: Any, **kwargs: Any) -> None:
    """Every record class's ``__init__`` until its first instance: generate the real one,
    put it on the class, run it."""
    cls = self.__class__
    init = _make_init(cls)
    cls.__init__ = init  # type: ignore[method-assign]
    init(self, *args, **kwargs)


class Record:
    """Base of every ``@record`` class: its dataclass methods, written once (module
    docstring)."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        compared = _names(self.__class__)[0]
        return tuple(getattr(self, n) for n in compared) == tuple(
            getattr(other, n) for n in compared)

    def __hash__(self) -> int:
        return hash(tuple(getattr(self, n) for n in _names(self.__class__)[1]))

    def __repr__(self) -> str:
        shown = ", ".join(f"{n}={getattr(self, n)!r}" for n in _names(self.__class__)[2])
        return f"{self.__class__.__qualname__}({shown})"

    def __setattr__(self, name: str, value: Any) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}")

    def __getstate__(self) -> list[Any]:
        return [getattr(self, f.name) for f in fields(self)]  # type: ignore[arg-type]

    def __setstate__(self, state: list[Any]) -> None:
        for f, value in zip(fields(self), state, strict=True):  # type: ignore[arg-type]
            object.__setattr__(self, f.name, value)


@overload
def record(cls: type[T], /) -> type[T]: ...


@overload
def record(*, kw_only: bool = False) -> Callable[[type[T]], type[T]]: ...


@dataclass_transform(frozen_default=True, field_specifiers=(field,))
def record(cls: type[T] | None = None, /, *, kw_only: bool = False
           ) -> type[T] | Callable[[type[T]], type[T]]:
    """A frozen, slotted dataclass with :class:`Record`'s methods (module docstring); ``cls``
    must derive from :class:`Record`. ``kw_only`` as for ``dataclass``."""

    def make(klass: type[T]) -> type[T]:
        if not issubclass(klass, Record):
            raise TypeError(f"{klass.__name__} must derive from Record")
        made: Any = dataclass(init=False, repr=False, eq=False, slots=True,
                              kw_only=kw_only)(klass)
        made.__init__ = _first_init
        return made  # type: ignore[no-any-return]

    return make if cls is None else make(cls)


__all__ = ["Record", "record"]
