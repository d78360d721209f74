"""A small migrating vfio-user client with defects planted on request (for check-client tests).

``python planted_client.py [--defect NAME] SRC_SOCKET DST_SOCKET`` migrates the device behind
SRC_SOCKET to the one behind DST_SOCKET with our client library, as a VMM does: VERSION, one
DMA region (a memfd), dirty logging, PRE_COPY read until a short reply, a dirty report,
STOP_COPY read to the end, a final report after the device stopped, STOP, logging stopped;
the destination RESUMING, every chunk written, STOP, RUNNING. Exit 0 on success, 1 on any
refused request or lost connection. Each defect breaks one client rule (PROTOCOL.md sections
3 and 4):

* ``past-end``: keeps reading the STOP_COPY stream after its end;
* ``leave-early``: leaves STOP_COPY without reading its stream;
* ``ignore-report``: skips the dirty report after the device stopped;
* ``skip-last-chunk``: does not write the stream's last chunk to the destination;
* ``no-log-stop``: never stops dirty logging on the source.
"""

from __future__ import annotations

import argparse
import os
import sys

from vfio_user_mig.model import State
from vfio_user_mig.simulator.client.api import Client
from vfio_user_mig.simulator.client.io import VfioUserError
from vfio_user_mig.simulator.transport import connect_unix

CHUNK = 64 * 1024
PAGE = 4096
RAM = 64 * PAGE
DEFECTS = ("past-end", "leave-early", "ignore-report", "skip-last-chunk", "no-log-stop")


def read_until_short(client: Client, most: int = 1 << 30) -> list[bytes]:
    """Chunks until a short reply, or ``most`` chunks (a pre-copy pass that never catches up
    is cut short: the client switches over anyway)."""
    chunks = []
    for _ in range(most):
        data = client.mig_data_read(CHUNK)
        if data:
            chunks.append(data)
        if len(data) < CHUNK:
            break
    return chunks


def migrate(src: Client, dst: Client, defect: str | None) -> None:
    ram = os.memfd_create("planted-guest", os.MFD_CLOEXEC)
    os.ftruncate(ram, RAM)
    try:
        src.dma_map(0, RAM, fd=ram)
    finally:
        os.close(ram)
    src.dma_logging_start(PAGE)
    src.set_state(State.PRE_COPY)
    chunks = read_until_short(src, most=32)
    src.dma_logging_report(0, RAM, PAGE)
    src.set_state(State.STOP_COPY)
    if defect != "leave-early":
        chunks += read_until_short(src)
    if defect == "past-end":
        for _ in range(12):
            src.mig_data_read(CHUNK)
    if defect != "ignore-report":
        src.dma_logging_report(0, RAM, PAGE)
    src.set_state(State.STOP)
    if defect != "no-log-stop":
        src.dma_logging_stop()
    dst.set_state(State.RESUMING)
    if defect == "skip-last-chunk":
        chunks = chunks[:-1]
    for chunk in chunks:
        dst.mig_data_write(chunk)
    dst.set_state(State.STOP)
    dst.set_state(State.RUNNING)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--defect", choices=DEFECTS)
    parser.add_argument("src")
    parser.add_argument("dst")
    args = parser.parse_args()
    try:
        with connect_unix(args.src, 10) as s, connect_unix(args.dst, 10) as d:
            src, dst = Client(s, timeout=10), Client(d, timeout=10)
            src.negotiate()
            dst.negotiate()
            migrate(src, dst, args.defect)
    except (VfioUserError, OSError) as exc:
        print(f"planted client: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
