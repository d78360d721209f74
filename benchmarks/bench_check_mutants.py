"""The checker's kill rate over the catalogue of planted server defects.

* ``check_mutant_kill_rate``: the share of the mutants of ``tests/check/mutation`` (realistic
  server defects planted into our own server, served in this process) that ``vfio-user-mig
  check`` catches: each mutant is run against the groups it names (or its pinned random run)
  and is *killed* when the report has a finding. ``value`` = killed / total (unit ``ratio``),
  ``baseline`` 1.0 (every mutant killed), ``ratio`` = value / baseline. ``quick`` changes
  nothing: the catalogue runs in seconds.

The human list (mutant, groups, killed or survived, with the first finding's title) goes to
stderr, so that ``benchmarks/run.py --json`` still prints one object on stdout. The figure is
a count, not a timing: it is stable from run to run.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:  # the catalogue lives in the test tree
    sys.path.insert(0, str(_ROOT))

from tests.check.mutation.catalogue import catalogue  # noqa: E402
from tests.check.mutation.harness import run_mutant  # noqa: E402


def run(quick: bool) -> dict[str, dict[str, float | str | int | None]]:
    server_log = logging.getLogger("vfio_user_mig.server")
    level = server_log.level
    server_log.setLevel(logging.CRITICAL)  # planted defects log tracebacks
    killed = 0
    lines: list[str] = []
    mutants = catalogue()
    started = time.perf_counter()
    try:
        for mutant in mutants:
            where = (f"random {mutant.random[0]} seed {mutant.random[1]}" if mutant.random
                     else "+".join(mutant.groups))
            outcome = run_mutant(mutant)
            killed += outcome.killed
            verdict = "killed " if outcome.killed else "SURVIVED"
            detail = outcome.titles()[0] if outcome.killed else f"needs {mutant.needs}"
            lines.append(f"  {verdict}  {mutant.name:36} {where:24} {detail}")
    finally:
        server_log.setLevel(level)
    elapsed = time.perf_counter() - started
    total = len(mutants)
    print(f"check mutants: {killed}/{total} killed in {elapsed:.1f} s", file=sys.stderr)
    print("\n".join(lines), file=sys.stderr)
    rate = killed / total if total else 0.0
    return {
        "check_mutant_kill_rate": {
            "value": round(rate, 4),
            "unit": "ratio",
            "baseline": 1.0,
            "ratio": round(rate, 4),
            "killed": killed,
            "total": total,
            "note": "planted server defects caught by vfio-user-mig check "
                    "(tests/check/mutation)",
        },
    }


if __name__ == "__main__":
    print(json.dumps(run("--quick" in sys.argv)))
