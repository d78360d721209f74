"""Shared entry point of the harnesses: atheris when installed, else a plain random driver.

``python fuzz/fuzz_X.py [libFuzzer args]`` runs atheris (coverage-guided);
``python fuzz/fuzz_X.py --plain N [--seed S]`` runs N random mutations of the seeds without
atheris (no coverage guidance, same oracle); ``--seeds DIR`` writes the seed corpus to DIR.
Both print the number of inputs run; a failing input is saved as ``crash-<sha1>``.
"""

from __future__ import annotations

import hashlib
import os
import random
import sys
import time
from collections.abc import Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def _mutate(rng: random.Random, seeds: list[bytes]) -> bytes:
    data = bytearray(b"".join(rng.choice(seeds) for _ in range(rng.randint(1, 4))))
    for _ in range(rng.randint(0, 6)):
        kind = rng.randrange(5)
        if kind == 0 and data:
            data[rng.randrange(len(data))] = rng.randrange(256)
        elif kind == 1 and len(data) >= 4:
            at = rng.randrange(len(data) - 3) & ~3
            value = rng.choice([0, 1, 15, 16, 17, 0xFFFF, 0x100020, 0x100021, 0x7FFFFFFF,
                                0xFFFFFFFF, rng.getrandbits(32)])
            data[at : at + 4] = value.to_bytes(4, "little")
        elif kind == 2:
            del data[rng.randrange(len(data) + 1) :]
        elif kind == 3:
            at = rng.randrange(len(data) + 1)
            data[at:at] = rng.randbytes(rng.randrange(1, 24))
        else:
            data = bytearray(rng.randbytes(rng.randrange(64)))
    return bytes(data)


def main(name: str, test_one_input: Callable[[bytes], None], seeds: list[bytes]) -> None:
    args = sys.argv[1:]
    if args[:1] == ["--seeds"]:
        os.makedirs(args[1], exist_ok=True)
        for i, seed in enumerate(seeds):
            with open(os.path.join(args[1], f"seed-{i:03d}"), "wb") as f:
                f.write(seed)
        print(f"{name}: wrote {len(seeds)} seeds to {args[1]}")
        return
    if args[:1] == ["--plain"]:
        runs = int(args[1])
        rng = random.Random(int(args[3]) if args[2:3] == ["--seed"] else 0)
        start = time.monotonic()
        for i in range(runs):
            data = seeds[i] if i < len(seeds) else _mutate(rng, seeds)
            try:
                test_one_input(data)
            except BaseException:
                path = f"crash-{hashlib.sha1(data).hexdigest()}"
                with open(path, "wb") as f:
                    f.write(data)
                print(f"{name}: input {i} failed, saved as {path}", file=sys.stderr)
                raise
        print(f"{name}: {runs} inputs (plain random driver) in "
              f"{time.monotonic() - start:.1f} s, no failure")
        return
    import atheris  # optional dependency: pip install atheris

    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
