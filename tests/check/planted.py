"""Our server with one planted defect, for the checker's own tests (never shipped).

:func:`plant` patches a hosted device in this process; run as a program it serves one on a
socket until SIGTERM, so that ``check --spawn`` can start it::

    python -m tests.check.planted DEFECT SOCKET [DEVICE [MEMORY_BYTES]]

Defects:

* ``endless``: in STOP_COPY every MIG_DATA_READ returns all the bytes asked for: the stream
  never ends (PROTOCOL.md section 4);
* ``corrupt-page``: the saved stream carries one flipped byte at :data:`CORRUPT_AT`
  (lvu-sample: of the STOP_COPY stream, in BAR1's second page; migdev: of the whole save,
  which its own integrity checks refuse at RESUMING -> STOP);
* ``wrong-register``: the restore leaves BAR0 SCRATCH off by one (migdev) or BAR0's deadline
  an hour late (lvu-sample) after a successful RESUMING -> STOP.
* ``wrong-memory``: the restore flips a byte of device memory (migdev's BAR2) at
  :data:`WRONG_MEMORY_AT` after a successful RESUMING -> STOP;
* ``none``: no defect (the control).
"""

from __future__ import annotations

import signal
import sys
from functools import partial
from typing import Any

from vfio_user_mig.model import MigrationCaps, State
from vfio_user_mig.model.states import VFIO_USER_CAPS
from vfio_user_mig.simulator.device.base import Device
from vfio_user_mig.simulator.device.regs import Reg
from vfio_user_mig.simulator.server.hosting import HostedDevice, host_device
from vfio_user_mig.simulator.server.io import UnixServer

DEFECTS = ("none", "endless", "corrupt-page", "wrong-register", "wrong-memory")
#: Device memory offset ``wrong-memory`` flips after the restore (migdev).
WRONG_MEMORY_AT = 0x2345
#: Stream offset of the byte ``corrupt-page`` flips (lvu-sample: BAR1 offset 0x1800).
CORRUPT_AT = 0x1800
MEM = 64 << 10


def plant(hosted: HostedDevice, defect: str) -> None:
    """Patch ``hosted.device`` (this instance only) with ``defect`` (module docstring)."""
    dev: Any = hosted.device
    if defect == "none":
        return
    read, on_arc = dev.mig_data_read, dev.on_arc
    # The server reads through mig_data_read_parts; the planted read paths below replace
    # mig_data_read, so this instance gets the base device's parts (one part, their bytes).
    if defect in ("endless", "corrupt-page"):
        dev.mig_data_read_parts = partial(Device.mig_data_read_parts, dev)
    if defect == "endless":
        def endless(max_size: int) -> bytes:
            data = read(max_size)
            if dev.mig_state is State.STOP_COPY:
                return data + bytes(max_size - len(data))
            return data  # type: ignore[no-any-return]
        dev.mig_data_read = endless
    elif defect == "corrupt-page":
        # Offsets count from the start of the save (PRE_COPY then STOP_COPY, one stream);
        # lvu-sample's stream restarts at each saving state (INTEROP.md), so there from
        # STOP_COPY's first byte.
        restarts = not hasattr(dev, "_regs")
        seen: dict[str, Any] = {"sent": 0, "state": None}

        def corrupt(max_size: int) -> bytes:
            state = dev.mig_state
            if state is not seen["state"] and (restarts or seen["state"] is None):
                seen["sent"] = 0
            seen["state"] = state
            data = bytearray(read(max_size))
            start = seen["sent"]
            seen["sent"] = start + len(data)
            if (state is State.STOP_COPY or not restarts) and (
                    start <= CORRUPT_AT < start + len(data)):
                data[CORRUPT_AT - start] ^= 0x40
            return bytes(data)
        dev.mig_data_read = corrupt
    elif defect == "wrong-register":
        def wrong(src: State, dst: State) -> None:
            on_arc(src, dst)
            if src is State.RESUMING and dst is State.STOP:
                if hasattr(dev, "_regs"):
                    dev._regs[Reg.SCRATCH] ^= 1
                else:
                    dev._bar0 += 3600
        dev.on_arc = wrong
    elif defect == "wrong-memory":
        def flip(src: State, dst: State) -> None:
            on_arc(src, dst)
            if src is State.RESUMING and dst is State.STOP:
                dev._mm[WRONG_MEMORY_AT] ^= 1
        dev.on_arc = flip
    else:
        raise ValueError(f"unknown defect {defect!r} (one of {', '.join(DEFECTS)})")


def hosted(defect: str, device: str = "migdev", caps: MigrationCaps = VFIO_USER_CAPS,
           mem: int = MEM) -> HostedDevice:
    """A device of ``mem`` bytes with ``defect`` planted."""
    out = host_device(device, mem_size=mem, caps=caps)
    plant(out, defect)
    return out


def main(argv: list[str]) -> int:
    defect, path = argv[0], argv[1]
    device = argv[2] if len(argv) > 2 else "migdev"
    served = hosted(defect, device, mem=int(argv[3], 0) if len(argv) > 3 else MEM)
    server = UnixServer(served.core, path)
    signal.signal(signal.SIGTERM, lambda *_: server.stop_event.set())
    try:
        server.serve_forever()
    finally:
        served.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
