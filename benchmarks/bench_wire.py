"""Benchmarks of vfio_user_mig.wire (not a timed test).

* ``wire_codec``: REGION_READ round trips per second, one pair = encode request, decode
  request, encode the 4-byte reply, decode reply (both peers' codec work). ``baseline`` is the
  same work done with raw ``struct`` pack/unpack in the same run; ``ratio`` = value/baseline.
* ``wire_mig_data_flatness``: decode time of a 1 MiB MIG_DATA_WRITE divided by that of a
  4 KiB one; ~1.0 means decode does not copy the payload.

``run(quick)`` returns ``{name: {"value", "unit", "baseline", "ratio", ...}}``; run this file
directly to print the JSON.
"""

from __future__ import annotations

import json
import struct
import sys
import timeit

from vfio_user_mig.wire import MigDataWrite, RegionRead, RegionReadReply, decode, encode


def _best(stmt: object, number: int, repeat: int) -> float:
    """Best time per call in seconds."""
    return min(timeit.repeat(stmt, number=number, repeat=repeat)) / number  # type: ignore[arg-type]


def _codec_pair() -> None:
    req = encode(RegionRead(0x2C, 7, 4, msg_id=1))
    msg = decode(req)
    assert isinstance(msg, RegionRead)
    rep = encode(RegionReadReply(msg.offset, msg.region, msg.count, b"\xfe\xca\xbe\xba",
                                 msg_id=msg.msg_id))
    decode(rep)


_HDR_REQ = struct.Struct("<HHIIIQII")
_HDR = struct.Struct("<HHIII")
_RA = struct.Struct("<QII")


def _raw_pair() -> None:
    req = _HDR_REQ.pack(1, 9, 32, 0, 0, 0x2C, 7, 4)
    _mid, _cmd, _size, _flags, _err = _HDR.unpack_from(req, 0)
    offset, region, count = _RA.unpack_from(req, 16)
    rep = _HDR_REQ.pack(_mid, 9, 36, 1, 0, offset, region, count) + b"\xfe\xca\xbe\xba"
    _HDR.unpack_from(rep, 0)
    _RA.unpack_from(rep, 16)
    memoryview(rep)[32:]


def run(quick: bool) -> dict[str, dict[str, float | str | None]]:
    number, repeat = (3_000, 3) if quick else (30_000, 5)
    t_pair = _best(_codec_pair, number, repeat)
    t_raw = _best(_raw_pair, number, repeat)
    pairs, raw = 1.0 / t_pair, 1.0 / t_raw

    small = encode(MigDataWrite(bytes(4096)))
    big = encode(MigDataWrite(bytes(1 << 20)))
    limit = len(big)
    n2 = number // 3
    t_small = _best(lambda: decode(small, max_size=limit), n2, repeat)
    t_big = _best(lambda: decode(big, max_size=limit), n2, repeat)
    return {
        "wire_codec": {
            "value": round(pairs, 1),
            "unit": "pairs/s",
            "baseline": round(raw, 1),
            "ratio": round(pairs / raw, 4),
            "note": "REGION_READ 4 B: encode+decode request and reply; baseline raw struct",
        },
        "wire_mig_data_flatness": {
            "value": round(t_big / t_small, 3),
            "unit": "x (decode 1 MiB / decode 4 KiB MIG_DATA_WRITE)",
            "baseline": 1.0,
            "ratio": round(t_big / t_small, 3),
            "t_4k_us": round(t_small * 1e6, 3),
            "t_1m_us": round(t_big * 1e6, 3),
        },
    }


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv[1:]), indent=2))
