"""Atheris harness for ``wire.decode`` and the ``Framer`` (docs/SECURITY.md).

The first input byte selects the target: even -> ``decode`` of the rest as one message; odd ->
the ``Framer`` fed the rest cut at the position given by the second byte. Oracles:
:func:`fuzz.targets.wire_decode` and :func:`fuzz.targets.framer_stream`.
Run: see fuzz/README.md (``python fuzz/fuzz_wire.py -atheris_runs=100000``).
"""

from __future__ import annotations

import sys

import _driver  # puts the repo root on sys.path

try:
    import atheris
except ImportError:  # the plain driver needs no instrumentation
    atheris = None

if atheris is not None and "--plain" not in sys.argv and "--seeds" not in sys.argv:
    with atheris.instrument_imports(include=["vfio_user_mig", "fuzz"]):
        from fuzz.seeds import VERSION, seed_messages
        from fuzz.targets import framer_stream, wire_decode
else:
    from fuzz.seeds import VERSION, seed_messages
    from fuzz.targets import framer_stream, wire_decode


def test_one_input(data: bytes) -> None:
    if not data:
        return
    if data[0] & 1 == 0:
        wire_decode(data[1:])
    else:
        cut = data[1] if len(data) > 1 else 0
        framer_stream(data[2:], (cut, cut * 7), max_size=4096)


SEEDS = [bytes([k]) + m for m in [*seed_messages(), VERSION] for k in (0, 1)]

if __name__ == "__main__":
    _driver.main("fuzz_wire", test_one_input, SEEDS)
