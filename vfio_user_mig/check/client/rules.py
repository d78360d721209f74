"""The client rules ``check-client`` holds a vfio-user client to, each with its spec section.

One table (:data:`RULES`): a short name (what a finding's ``group`` says), the rule as a
sentence, and where the spec says it. The judge (:mod:`.judge`) and the scenario verdicts
(:mod:`.scenarios`) cite rules by name only, so each rule's text lives here once.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Rule:
    name: str
    text: str
    spec: str


RULES: dict[str, Rule] = {r.name: r for r in (
    Rule("header", "every message has a valid header: msg_size the whole message, a known "
         "command, flags of a command or a reply, no error on a command",
         "PROTOCOL.md section 1; vfio-user.rst \"Header\""),
    Rule("decode", "every request's payload is well formed for its command",
         "PROTOCOL.md sections 2-4 (payload layouts)"),
    Rule("version-first", "VERSION is the first request of a connection",
         "vfio-user.rst \"VFIO_USER_VERSION\": negotiated before any other message"),
    Rule("msg-id", "a client does not reuse the id of a request still waiting for its reply, "
         "and its replies echo the id of a server request",
         "PROTOCOL.md section 1 (msg_id chosen by the sender, echoed by the reply)"),
    Rule("fds", "no message carries more file descriptors than the server's max_msg_fds, and "
         "only DMA_MAP and DEVICE_SET_IRQS carry any",
         "PROTOCOL.md section 2 (VERSION capabilities: max_msg_fds)"),
    Rule("arc", "only transitions the model allows are requested: never ERROR, never a blocked "
         "arc such as STOP_COPY -> PRE_COPY, only states of the device's capabilities",
         "PROTOCOL.md section 5; kernel vfio.h vfio_mig_get_next_state()"),
    Rule("gated", "only requests the device executes in its migration state: a stopped "
         "device (STOP) takes region access, DEVICE_FEATURE and MIG_DATA_READ, a device in "
         "STOP_COPY only DEVICE_FEATURE and MIG_DATA_READ (protocol.gating)",
         "PROTOCOL.md sections 2 and 4; libvfio-user should_exec_command"),
    Rule("read-state", "MIG_DATA_READ only in PRE_COPY or STOP_COPY",
         "PROTOCOL.md section 4; vfio-user.rst \"VFIO_USER_MIG_DATA_READ\""),
    Rule("xfer-size", "MIG_DATA_READ/WRITE and REGION_READ/WRITE sizes within the server's "
         "max_data_xfer_size",
         "PROTOCOL.md section 4 (size must not exceed the peer's max_data_xfer_size)"),
    Rule("drain", "the STOP_COPY stream is read to its end (a reply shorter than asked) "
         "before the device leaves STOP_COPY, otherwise device state is lost",
         "vfio-user.rst \"VFIO_USER_MIG_DATA_READ\" (read until no more migration data "
         "remains); PROTOCOL.md section 4"),
    Rule("past-end", "after the end of the STOP_COPY stream (a short reply) the client stops "
         "reading; reads already in flight may still come (at most a pipeline's worth)",
         "vfio-user.rst \"VFIO_USER_MIG_DATA_READ\" (size less than requested: no more "
         "migration data to read); PROTOCOL.md section 4"),
    Rule("write-state", "MIG_DATA_WRITE only in RESUMING",
         "PROTOCOL.md section 4; vfio-user.rst \"VFIO_USER_MIG_DATA_WRITE\""),
    Rule("whole-stream", "the destination is given the whole STOP_COPY stream, in order, in "
         "RESUMING before RESUMING -> STOP",
         "PROTOCOL.md sections 4 and 5 (the stream is validated when RESUMING ends)"),
    Rule("same-state", "after RESUMING -> STOP the destination device's state equals the "
         "source's at the end of STOP_COPY", "PROTOCOL.md section 5"),
    Rule("log-before-precopy", "a client with DMA regions mapped starts dirty logging before "
         "the device enters PRE_COPY, so every page the device writes is known",
         "PROTOCOL.md section 3 (DMA_LOGGING_START); kernel vfio.h "
         "VFIO_DEVICE_FEATURE_DMA_LOGGING_START"),
    Rule("bitmap", "a DMA_LOGGING_REPORT asks for a power-of-two page size and its argsz "
         "holds the bitmap: 8 + 24 + ceil(ceil(length / page_size) / 64) * 8 bytes",
         "PROTOCOL.md section 3, \"Dirty bitmap (erratum)\""),
    Rule("resend", "every page the device dirtied is reported (and so re-sent) before the "
         "switchover: no dirty page is left unreported when the source leaves STOP_COPY or "
         "logging stops", "PROTOCOL.md section 3 (DMA_LOGGING_REPORT, read-and-clear)"),
    Rule("log-stop", "dirty logging started for a migration is stopped before the client "
         "lets go of the source", "PROTOCOL.md section 3 (DMA_LOGGING_STOP)"),
    Rule("dma-answered", "every DMA_READ/DMA_WRITE the server sends is answered, also while "
         "the client waits for its own reply", "PROTOCOL.md section 2 (DMA_READ, DMA_WRITE: "
         "server -> client); vfio-user.rst \"VFIO_USER_DMA_READ\""),
    Rule("error-reset", "a device left in ERROR by a failed transition is reset "
         "(DEVICE_RESET) before the client uses it again or lets go of it",
         "PROTOCOL.md section 5 (DEVICE_RESET returns a device in ERROR to RUNNING); kernel "
         "vfio.h VFIO_DEVICE_STATE_ERROR"),
    Rule("no-hang", "the client never hangs: a server that fails, refuses or disconnects "
         "ends in an error or a recovery, in bounded time",
         "PROTOCOL.md sections 4 and 5 (errors are signalled by the reply's error bit); "
         "vfio-user.rst \"Connection drop\""),
    Rule("no-crash", "the client never crashes on anything a server may send",
         "PROTOCOL.md sections 1-5"),
    Rule("migrates", "a device that behaves as the spec allows is migrated: the client "
         "completes the migration and reports success",
         "PROTOCOL.md sections 4 and 5 (unpadded replies, DMA while waiting, endless dirtying "
         "are all allowed)"),
    Rule("reports-failure", "a migration whose transition failed, whose stream was refused or "
         "whose server went away is not reported as a success",
         "PROTOCOL.md section 5 (a failed arc leaves the device in the last state reached or "
         "in ERROR); vfio-user.rst \"Connection drop\""),
)}


def spec_of(name: str) -> str:
    """A finding's ``spec`` text: the rule, then its section."""
    rule = RULES[name]
    return f"{rule.text} ({rule.spec})"


__all__ = ["RULES", "Rule", "spec_of"]
