"""CLI sub-command ``study`` (registered on import by vfio_user_mig.cli).

``vfio-user-mig study convergence -o DIR [--quick] [--json]`` sweeps bandwidth x dirty rate x
downtime limit x device state size x switchover policy through the real simulator (simulated
clock) and writes ``results.csv``, ``summary.md`` and the figures into DIR.

``vfio-user-mig study transport -o DIR [--quick] [--json]`` measures REGION_READ latency,
migration throughput and downtime with migration data on the main socket vs the experimental
migration-data socket, for chunk sizes 4 KiB to 1 MiB (wall clock), and writes
``results.csv``, ``samples.csv``, ``summary.md`` (with its conclusion) and the figures.

Heavy modules are imported inside the handlers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from vfio_user_mig.cli import command
from vfio_user_mig.simulator.executor import add_executor_args


def cmd_study(args: argparse.Namespace) -> int:
    """Run a study and write its results."""
    if args.study == "transport":
        return _transport(args)
    from vfio_user_mig.studies import convergence, output

    grid = convergence.QUICK_GRID if args.quick else convergence.DEFAULT_GRID
    if args.seed is not None:
        from dataclasses import replace

        grid = replace(grid, seed=args.seed)
    from vfio_user_mig.simulator.executor import ExecutorError

    workers = args.workers if args.workers is not None else min(2, os.cpu_count() or 1)
    if workers < 1 or (args.batch_size is not None and args.batch_size < 1):
        print("vfio-user-mig study: --workers and --batch-size must be >= 1", file=sys.stderr)
        return 2
    start = time.monotonic()
    try:
        cells = convergence.run_grid(grid, workers=workers, executor=args.executor,
                                     scheduler=args.scheduler, batch_size=args.batch_size)
        paths = output.write_convergence_study(cells, args.output,
                                               figures=not args.no_figures)
    except (OSError, ValueError, ExecutorError) as exc:
        print(f"vfio-user-mig study: {exc}", file=sys.stderr)
        return 2
    converged = sum(1 for c in cells if c.converged)
    payload = {
        "study": args.study, "grid": "quick" if args.quick else "default",
        "cells": len(cells), "converged": converged,
        "not_converged": sum(1 for c in cells if c.outcome == "not_converged"),
        "failed": sum(1 for c in cells if c.outcome == "failed"),
        "over_limit": sum(1 for c in cells if c.over_limit),
        "executor": args.executor,
        "elapsed_s": round(time.monotonic() - start, 3), **paths,
    }
    _report(args, payload, convergence.summary_markdown(cells),
            f"{len(cells)} cells ({converged} converged)")
    return 1 if payload["failed"] else 0


def _report(args: argparse.Namespace, payload: dict[str, object], markdown: str,
            what: str) -> None:
    """Print ``payload`` as JSON, or the Markdown summary and what was written where."""
    if args.json:
        print(json.dumps(payload))
        return
    files = [str(payload[k]) for k in ("csv", "samples", "summary") if k in payload]
    figures = payload.get("figures")
    count = len(figures) if isinstance(figures, list) else 0
    print(markdown, end="")
    print(f"\n{what} in {payload['elapsed_s']:.1f} s; wrote {', '.join(files)} and {count} "
          f"figure(s) in {args.output}")


def _transport(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from vfio_user_mig.studies import output, transport, transport_results

    if args.executor != "local" or args.scheduler is not None:
        print("vfio-user-mig study: the transport study measures wall-clock time and runs "
              "locally, one migration at a time (no --executor dask)", file=sys.stderr)
        return 2
    grid = transport.QUICK_GRID if args.quick else transport.DEFAULT_GRID
    if args.seed is not None:
        grid = replace(grid, seed=args.seed)
    start = time.monotonic()
    bar = None
    if not args.json and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=len(grid.specs()), unit="migration", file=sys.stderr)
    try:
        runs = transport.run_grid(grid, (lambda _i, _n: bar.update()) if bar else None)
        paths = output.write_transport_study(runs, args.output, figures=not args.no_figures)
    except (OSError, ValueError) as exc:
        print(f"vfio-user-mig study: {exc}", file=sys.stderr)
        return 2
    finally:
        if bar is not None:
            bar.close()
    cells = transport_results.aggregate(runs)
    failed = [r for r in runs if not r.verified]
    payload = {
        "study": "transport", "grid": "quick" if args.quick else "default",
        "runs": len(runs), "verified": len(runs) - len(failed),
        "cells": [dict(vars(c)) for c in cells],
        "conclusion": transport_results.conclusion(cells),
        "elapsed_s": round(time.monotonic() - start, 3), **paths,
    }
    _report(args, payload, transport_results.summary_markdown(cells),
            f"{len(runs)} migrations ({payload['verified']} verified)")
    return 1 if failed else 0


@command("study", "studies through the real simulator (convergence: bandwidth x dirty rate x "
                  "downtime limit sweep; transport: main vs separate migration-data socket)")
def _configure_study(p: argparse.ArgumentParser) -> None:
    p.add_argument("study", choices=("convergence", "transport"), help="which study")
    p.add_argument("-o", "--output", required=True, metavar="DIR",
                   help="directory for the CSV file(s), summary.md and the figures (PNG)")
    p.add_argument("--quick", action="store_true",
                   help="a small grid (a few seconds)")
    p.add_argument("--workers", type=int,
                   help="worker processes for convergence (default: up to 2; with --executor "
                        "dask and no --scheduler: the local cluster's workers); the transport "
                        "study always runs one migration at a time (it measures time)")
    add_executor_args(p, "convergence cells", "1 to 8")
    p.add_argument("--seed", type=int, help="seed of content and workload (default 0)")
    p.add_argument("--no-figures", action="store_true", help="only results.csv and summary.md")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(handler=cmd_study)


__all__ = ["cmd_study"]
