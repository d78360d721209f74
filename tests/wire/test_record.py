"""``@record``: the shared equality, hash and repr behave as a generated dataclass's would."""

from __future__ import annotations

import dataclasses

import pytest

from vfio_user_mig import wire
from vfio_user_mig.wire.capabilities import Capabilities


def test_equal_when_same_class_and_fields() -> None:
    a = wire.DmaRead(addr=0x1000, count=8, msg_id=3)
    assert a == wire.DmaRead(addr=0x1000, count=8, msg_id=3)
    assert hash(a) == hash(wire.DmaRead(addr=0x1000, count=8, msg_id=3))
    assert a != wire.DmaRead(addr=0x1000, count=8, msg_id=4)
    assert a != wire.DmaRead(addr=0x1000, count=9, msg_id=3)
    assert a != wire.DmaRead(addr=0x1000, count=8, msg_id=3, no_reply=True)


def test_never_equal_across_classes_with_the_same_fields() -> None:
    assert wire.DeviceReset(msg_id=1) != wire.DeviceResetReply(msg_id=1)
    assert wire.DeviceReset(msg_id=1) != (1, False)
    assert wire.DeviceReset(msg_id=1).__eq__(object()) is NotImplemented


def test_fields_left_out_of_comparison_are_ignored() -> None:
    one = Capabilities(text="{}", obj={"a": 1})
    other = Capabilities(text="{}", obj={"b": 2})
    assert one == other and hash(one) == hash(other)
    assert "obj" not in repr(one)


def test_repr_names_the_class_and_its_fields_in_order() -> None:
    msg = wire.RegionRead(offset=1, region=2, count=3, msg_id=4)
    assert repr(msg) == "RegionRead(msg_id=4, no_reply=False, offset=1, region=2, count=3)"


def test_data_compares_by_content_and_a_writable_view_is_unhashable() -> None:
    data = bytearray(b"abcd")
    held = wire.RegionWrite(offset=0, region=1, count=4, data=memoryview(data))
    assert held == wire.RegionWrite(offset=0, region=1, count=4, data=b"abcd")
    with pytest.raises(ValueError, match="writable memoryview"):
        hash(held)


def test_frozen_and_still_dataclasses() -> None:
    msg = wire.DmaRead(addr=0, count=1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        msg.addr = 1  # type: ignore[misc]
    assert dataclasses.replace(msg, count=2) == wire.DmaRead(addr=0, count=2)
    assert not hasattr(msg, "__dict__"), "slots, no per-instance dict"


def test_init_takes_positional_fields_then_keyword_only_ones() -> None:
    msg = wire.RegionRead(1, 2, 3, msg_id=4, no_reply=True)
    assert (msg.offset, msg.region, msg.count, msg.msg_id, msg.no_reply) == (1, 2, 3, 4, True)
    with pytest.raises(TypeError):
        wire.RegionRead(1, 2, 3, 4)  # type: ignore[call-arg]  # msg_id is keyword-only
    with pytest.raises(TypeError, match="count"):
        wire.RegionRead(offset=1, region=2)  # type: ignore[call-arg]
    assert wire.DmaRead(addr=0, count=1).msg_id == 0, "defaults apply"


def test_init_false_fields_and_post_init_run_as_in_a_dataclass() -> None:
    plain = wire.RegionInfoReply(index=1, flags=0, size=4096, offset=0)
    assert plain._chain == b""
    with_cap = wire.RegionInfoReply(index=1, flags=0, size=4096, offset=0,
                                    caps=(wire.TypeCap(type=1, subtype=2),))
    assert with_cap._chain, "__post_init__ encoded the capability chain"
    with pytest.raises(TypeError):
        wire.RegionInfoReply(index=1, flags=0, size=4096, offset=0,
                             _chain=b"x")  # type: ignore[call-arg]


def test_copies_and_pickles_round_trip() -> None:
    import copy
    import pickle

    msg = wire.DmaRead(addr=0x2000, count=16, msg_id=9, no_reply=True)
    assert pickle.loads(pickle.dumps(msg)) == msg
    assert copy.copy(msg) == msg and copy.deepcopy(msg) == msg


def test_a_record_class_must_derive_from_record() -> None:
    from vfio_user_mig.wire.record import record

    with pytest.raises(TypeError, match="Record"):
        record(type("Plain", (), {"__annotations__": {"a": int}}))
