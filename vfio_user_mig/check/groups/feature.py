"""Group ``feature``: DEVICE_FEATURE semantics (PROTOCOL.md section 3; vfio-user.rst
"VFIO_USER_DEVICE_FEATURE").

* PROBE (alone or with the operations a feature supports) succeeds, its reply echoes the
  request payload, and it executes nothing (PROBE|SET MIG_DEVICE_STATE STOP leaves RUNNING);
  PROBE with an operation the feature does not support is refused (EINVAL);
* GET replies carry the feature's data with ``argsz`` = the reply payload's size; the request's
  ``argsz`` is the largest reply the client takes, so a GET whose argsz cannot hold the reply is
  refused (EINVAL, as libvfio-user and the kernel);
* SET replies echo the request payload; a SET whose argsz is below its own payload is refused;
* an operation a feature does not support (e.g. SET MIGRATION, GET DMA_LOGGING_START), GET and
  SET together without PROBE, and no operation bit at all are refused with EINVAL;
* an unknown feature index is refused (:data:`~.common.UNKNOWN_FEATURE_ERRNOS`).

The supported operations come from the spec's feature table
(:data:`vfio_user_mig.wire.constants.FEATURE_OPS`).
"""

from __future__ import annotations

import struct

from vfio_user_mig.check.findings import Kind
from vfio_user_mig.check.groups.common import (
    EINVAL,
    UNKNOWN_FEATURE_ERRNOS,
    UNKNOWN_FEATURE_RULE,
)
from vfio_user_mig.check.requests import feature_request
from vfio_user_mig.check.session import Checker, Sequence
from vfio_user_mig.check.steps import Expect, flag_names, refused
from vfio_user_mig.model import MigrationCaps, State
from vfio_user_mig.wire import FeatureIndex, FeatureOp
from vfio_user_mig.wire.constants import FEATURE_OPS

_S3 = "PROTOCOL.md section 3"
_SAMPLE_DATA: dict[FeatureIndex, bytes] = {
    FeatureIndex.MIGRATION: b"",
    FeatureIndex.MIG_DEVICE_STATE: struct.pack("<II", State.RUNNING, 0),
    FeatureIndex.DMA_LOGGING_START: struct.pack("<QII", 4096, 0, 0),
    FeatureIndex.DMA_LOGGING_STOP: struct.pack("<QII", 4096, 0, 0),
    FeatureIndex.DMA_LOGGING_REPORT: struct.pack("<QQQ", 0, 4096, 4096),
}


#: What PROBE|SET carries: a state the device is not in, so that a PROBE that executes the
#: SET shows (the device is in RUNNING).
_PROBE_DATA = {**_SAMPLE_DATA, FeatureIndex.MIG_DEVICE_STATE: struct.pack("<II", State.STOP, 0)}


def _probes(seq: Sequence) -> None:
    for raw, ops in FEATURE_OPS.items():
        index = FeatureIndex(raw)
        data = _PROBE_DATA[index]
        for op in (FeatureOp(0), FeatureOp.GET, FeatureOp.SET):
            req = feature_request(seq.next_id(), index, int(FeatureOp.PROBE | op), data)
            what = f"PROBE{'|' + str(op.name) if op else ''} {index.name}"
            if op and not op & ops:
                seq.check(f"{what} refused: {op.name} unsupported", req,
                          refused(EINVAL, rule=f"{_S3}: {index.name} supports "
                                  f"{flag_names(ops)} only"))
            else:
                seq.check(f"{what} echoes the request", req,
                          Expect("ok", payload=req[16:], rule=f"{_S3}: PROBE replies echo the "
                                 "request"))
        req = feature_request(seq.next_id(), index, int(FeatureOp.PROBE), data,
                              argsz=4)
        seq.check(f"PROBE {index.name} with argsz below the payload refused", req,
                  refused(EINVAL, rule=f"{_S3}: argsz is the largest reply (the echo needs "
                          f"{len(req) - 16} bytes)"))
    state = seq.get_state()
    seq.verify(state == State.RUNNING, Kind.STATE, "PROBE|SET MIG_DEVICE_STATE changes the state",
               "RUNNING (a PROBE only asks whether the operation is supported)",
               state.name if state else "unreadable",
               f"{_S3}; vfio-user.rst \"VFIO_USER_DEVICE_FEATURE\": PROBE reports support and "
               "executes nothing (kernel vfio.h, VFIO_DEVICE_FEATURE_PROBE)")
    if state is not None:
        seq.state = state


def _unsupported(seq: Sequence) -> None:
    for raw, ops in FEATURE_OPS.items():
        index = FeatureIndex(raw)
        for op in (FeatureOp.GET, FeatureOp.SET):
            if op & ops:
                continue
            req = feature_request(seq.next_id(), index, int(op), _SAMPLE_DATA[index],
                                  argsz=64)
            seq.check(f"{op.name} {index.name} refused (unsupported operation)", req,
                      refused(EINVAL, rule=f"{_S3}: {index.name} supports {flag_names(ops)} "
                                     "only"))
    req = feature_request(seq.next_id(), FeatureIndex.MIG_DEVICE_STATE,
                          int(FeatureOp.GET | FeatureOp.SET),
                          _SAMPLE_DATA[FeatureIndex.MIG_DEVICE_STATE])
    seq.check("GET|SET together without PROBE refused", req,
              refused(EINVAL, rule=f"{_S3}: GET and SET are exclusive except with PROBE"))
    req = feature_request(seq.next_id(), FeatureIndex.MIGRATION, 0, argsz=16)
    seq.check("DEVICE_FEATURE with no operation bit refused", req,
              refused(EINVAL, rule=f"{_S3}: one of GET, SET, PROBE is required"))
    for unknown in (0, 3, 0x100, 0xFFFF):
        for ops in (FeatureOp.GET, FeatureOp.PROBE | FeatureOp.GET):
            req = feature_request(seq.next_id(), unknown, int(ops), argsz=64)
            seq.check(f"{flag_names(ops)} of unknown feature {unknown} refused", req,
                      refused(*UNKNOWN_FEATURE_ERRNOS, rule=UNKNOWN_FEATURE_RULE))


def _get(seq: Sequence) -> None:
    caps = seq.caps
    for argsz in (16, 64):
        req = feature_request(seq.next_id(), FeatureIndex.MIGRATION, int(FeatureOp.GET),
                              argsz=argsz)
        reply = seq.check(f"GET MIGRATION with argsz {argsz}", req,
                          Expect("ok", payload_len=16, rule=f"{_S3}: GET MIGRATION replies "
                                 "{argsz, flags, u64 flags}"))
        if reply is not None and not reply.is_error and len(reply.payload) >= 16:
            got_argsz, flags, mig = struct.unpack_from("<IIQ", reply.payload)
            seq.verify(got_argsz == len(reply.payload), Kind.REPLY,
                       "GET reply argsz is the reply payload size",
                       str(len(reply.payload)), str(got_argsz),
                       f"{_S3}: GET replies carry argsz = reply payload size")
            seq.verify(flags == int(FeatureIndex.MIGRATION | FeatureOp.GET), Kind.REPLY,
                       "GET reply flags echo the request's",
                       hex(FeatureIndex.MIGRATION | FeatureOp.GET), hex(flags), _S3)
            seq.verify(caps is None or mig & 7 == int(caps), Kind.REPLY,
                       "GET MIGRATION answers the same capabilities every time",
                       "none" if caps is None else flag_names(caps),
                       flag_names(MigrationCaps(mig & 7)), _S3)
    for index, need in ((FeatureIndex.MIGRATION, 16), (FeatureIndex.MIG_DEVICE_STATE, 16)):
        req = feature_request(seq.next_id(), index, int(FeatureOp.GET), argsz=need - 8)
        seq.check(f"GET {index.name} whose argsz cannot hold the reply refused", req,
                  refused(EINVAL, rule=f"{_S3}: argsz is the largest reply the client takes "
                          "(libvfio-user and the kernel: EINVAL)"))
    req = feature_request(seq.next_id(), FeatureIndex.MIG_DEVICE_STATE, int(FeatureOp.GET),
                          argsz=64)
    reply = seq.check("GET MIG_DEVICE_STATE with a large argsz", req,
                      Expect("ok", payload_len=16, rule=f"{_S3}: the reply has its own size"))
    if reply is not None and not reply.is_error and len(reply.payload) >= 16:
        got_argsz, _flags, state, _fd = struct.unpack_from("<IIII", reply.payload)
        seq.verify(got_argsz == 16 and state == int(State.RUNNING), Kind.REPLY,
                   "GET MIG_DEVICE_STATE reply: argsz 16, the current state",
                   "argsz 16, state RUNNING", f"argsz {got_argsz}, state {state}", _S3)


def _set(seq: Sequence) -> None:
    data = _SAMPLE_DATA[FeatureIndex.MIG_DEVICE_STATE]
    req = feature_request(seq.next_id(), FeatureIndex.MIG_DEVICE_STATE, int(FeatureOp.SET),
                          data)
    seq.check("SET MIG_DEVICE_STATE (RUNNING -> RUNNING) echoes the request", req,
              Expect("ok", payload=req[16:], rule=f"{_S3}: SET replies echo the request"))
    req = feature_request(seq.next_id(), FeatureIndex.MIG_DEVICE_STATE, int(FeatureOp.SET),
                          data, argsz=8)
    seq.check("SET whose argsz is below its payload refused", req,
              refused(EINVAL, rule=f"{_S3}: argsz covers the payload (libvfio-user EINVAL)"))
    data = struct.pack("<II", 8, 0)
    req = feature_request(seq.next_id(), FeatureIndex.MIG_DEVICE_STATE, int(FeatureOp.SET),
                          data)
    seq.check("SET MIG_DEVICE_STATE to state 8 (no such state) refused", req,
              refused(EINVAL, rule="PROTOCOL.md section 5: states are 0-7 (libvfio-user's "
                      "bound check lets 8 through)"))
    state = seq.get_state()
    seq.verify(state == State.RUNNING, Kind.STATE, "state unchanged after refused SETs",
               "RUNNING", state.name if state else "unreadable", "PROTOCOL.md section 5")


def run(checker: Checker) -> None:
    """The ``feature`` group (module docstring)."""
    with checker.sequence("feature", "PROBE") as seq:
        if seq.caps is not None:
            _probes(seq)
    with checker.sequence("feature", "unsupported operations and features") as seq:
        if seq.caps is not None:
            _unsupported(seq)
    with checker.sequence("feature", "GET and SET") as seq:
        if seq.caps is not None:
            _get(seq)
            _set(seq)

