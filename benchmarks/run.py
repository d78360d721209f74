"""Run every benchmark: ``python benchmarks/run.py [--quick] [--json] [--peer SOCKET |
--peer-spawn 'CMD {socket}'] [NAME ...]``.

Each ``benchmarks/bench_*.py`` module defines ``run(quick: bool) -> dict[str, dict]`` mapping a
stable benchmark name to ``{"value", "unit", "baseline", "ratio"}``; the baseline is measured
in the same run (these machines are noisy, so goals are stated as ratios). With ``--json`` the
merged mapping is printed as one JSON object; otherwise a table.

``--peer``/``--peer-spawn`` give another vfio-user server (e.g. libvfio-user's C
``samples/server``) to modules that compare against one (``bench_peer``: they set
``ACCEPTS_PEER``); without them those benchmarks report ``{"skipped": reason}`` and the table
says so.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

HERE = Path(__file__).resolve().parent


def _load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_all(quick: bool, only: list[str], peer: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the selected benchmark modules and merge their results."""
    results: dict[str, Any] = {}
    for path in sorted(HERE.glob("bench_*.py")):
        if only and path.stem.removeprefix("bench_") not in only:
            continue
        module = _load(path)
        if getattr(module, "ACCEPTS_PEER", False):
            results.update(module.run(quick, **(peer or {})))
        else:
            results.update(module.run(quick))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs (smoke test)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--peer", metavar="SOCKET",
                        help="a listening vfio-user server to compare ours against")
    parser.add_argument("--peer-spawn", metavar="CMD",
                        help="command starting such a server per measurement ({socket}: path)")
    parser.add_argument("--peer-region", type=int, default=1,
                        help="the peer's region read 4 bytes at offset 0 (default 1)")
    parser.add_argument("only", nargs="*", help="module names (wire, server, ...) to run")
    args = parser.parse_args(argv)
    peer = {"peer": args.peer, "peer_spawn": args.peer_spawn, "peer_region": args.peer_region}
    results = run_all(args.quick, args.only, peer)
    if args.json:
        print(json.dumps(results))
        return 0
    print(f"{'benchmark':28} {'value':>14} {'unit':10} {'baseline':>14} {'ratio':>8}")
    for name, r in results.items():
        if "skipped" in r:
            print(f"{name:28} skipped: {r['skipped']}")
            continue
        base = r.get("baseline")
        ratio = r.get("ratio")
        print(f"{name:28} {r['value']:>14.4g} {r['unit']:10} "
              f"{(f'{base:.4g}' if isinstance(base, float | int) else '-'):>14} "
              f"{(f'{ratio:.3f}' if isinstance(ratio, float | int) else '-'):>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
