"""Atheris harness for the server core fed arbitrary byte streams (docs/SECURITY.md).

Input layout: byte 0 = options (bit 0: send the VERSION first; bits 1-2: number of memfds
sent with the first bytes), bytes 1-2 = where the stream is cut (two receives), the rest =
the stream. Oracle: :func:`fuzz.targets.server_stream` (one reply per command with its id and
errno, only valid messages out, no fd leak, valid device state, still serving afterwards).
Run: see fuzz/README.md (``python fuzz/fuzz_server.py -atheris_runs=100000``).
"""

from __future__ import annotations

import logging
import sys

import _driver  # puts the repo root on sys.path

try:
    import atheris
except ImportError:  # the plain driver needs no instrumentation
    atheris = None

if atheris is not None and "--plain" not in sys.argv and "--seeds" not in sys.argv:
    with atheris.instrument_imports(include=["vfio_user_mig", "fuzz"]):
        from fuzz.seeds import seed_messages
        from fuzz.targets import server_stream
else:
    from fuzz.seeds import seed_messages
    from fuzz.targets import server_stream

logging.disable(logging.CRITICAL)  # internal-error logs would flood the fuzzer output


def test_one_input(data: bytes) -> None:
    if len(data) < 3:
        return
    options, cut = data[0], int.from_bytes(data[1:3], "little")
    server_stream(data[3:], negotiate=bool(options & 1), nfds=(options >> 1) & 3, cuts=(cut,))


SEEDS = [bytes([1, 5, 0]) + m for m in seed_messages()] + [bytes([3, 0, 0]) + seed_messages()[10]]

if __name__ == "__main__":
    _driver.main("fuzz_server", test_one_input, SEEDS)
