"""The ``vfio-user-mig check`` command: point the checker at a server and report.

Exit status: 0 when the server shows no finding, 1 when it shows at least one, 2 when the
arguments are wrong or the server cannot be started or reached at all, 128 + the signal's
number when SIGTERM, SIGINT or SIGHUP stopped the run. A stopped run still stops every server
it spawned (:func:`~vfio_user_mig.check.target.stop_all`) and still writes its report
(``--json``, ``--markdown``, or the summary): what was checked so far, marked
``"interrupted": "SIGTERM"`` (or the signal that stopped it).
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

from vfio_user_mig.check.bounds import declared_size, stream_bounds
from vfio_user_mig.check.findings import Report
from vfio_user_mig.check.session import Checker
from vfio_user_mig.check.target import (
    SocketTarget,
    SpawnTarget,
    Target,
    TargetError,
    stop_all,
)
from vfio_user_mig.cli import command
from vfio_user_mig.simulator.executor import ExecutorError, add_executor_args


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


#: The signals that stop a run cleanly (module docstring).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class Interrupted(BaseException):
    """A stop signal arrived (a BaseException: no ``except Exception`` swallows it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextmanager
def stop_signals_raise() -> Iterator[None]:
    """While inside, the first stop signal raises :class:`Interrupted` in the main thread;
    later ones are ignored (the cleanup that follows is bounded). Handlers restored after."""
    fired: list[int] = []

    def handler(signum: int, _frame: FrameType | None) -> None:
        if not fired:
            fired.append(signum)
            raise Interrupted(signum)

    old: dict[int, Callable[[int, FrameType | None], Any] | int | None] = {}
    for sig in STOP_SIGNALS:
        old[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for number, previous in old.items():
            signal.signal(number, previous if previous is not None else signal.SIG_DFL)


def make_target(args: argparse.Namespace) -> Target:
    if args.spawn:
        return SpawnTarget(args.spawn, prespawn=not args.no_prespawn)
    return SocketTarget(args.socket)


def coverage_totals(report: Report) -> dict[str, Any]:
    """Covered and possible (state, command) cells and FSM arcs for the server's caps."""
    from vfio_user_mig.model import MigrationCaps
    from vfio_user_mig.model.graph import transition_graph
    from vfio_user_mig.protocol.gating import CLIENT_COMMANDS

    names = report.caps.get("migration") if report.caps else None
    if not names:
        return {}
    caps = MigrationCaps(0)
    for name in names:
        caps |= MigrationCaps[name]
    graph = transition_graph(caps)
    cells = {(s.name, c.name) for s in graph.nodes for c in CLIENT_COMMANDS}
    arcs = {(a.name, b.name) for a, b in graph.edges}
    return {
        "cells_covered": len(cells & set(report.coverage.cells)),
        "cells_total": len(cells),
        "arcs_covered": len(arcs & set(report.coverage.arcs)),
        "arcs_total": len(arcs),
        "arcs_missed": sorted(f"{a}->{b}" for a, b in arcs - set(report.coverage.arcs)),
    }


def human_summary(report: Report, elapsed: float) -> str:
    data = report.to_json()
    lines = [f"server: {report.server}"]
    caps = report.caps or {}
    if caps:
        lines.append(f"version {caps.get('version')}, migration caps: "
                     f"{', '.join(caps.get('migration') or []) or 'none'}")
    lines.append(f"{data['checks']} checks, {data['passed']} passed, "
                 f"{len(data['findings'])} distinct finding(s) "
                 f"({data['finding_count']} occurrences) in {elapsed:.1f} s")
    totals = data.get("coverage", {}).get("totals") or {}
    if totals:
        lines.append(f"coverage: {totals['cells_covered']}/{totals['cells_total']} "
                     f"(state, command) cells, {totals['arcs_covered']}/{totals['arcs_total']} "
                     "FSM arcs")
    for finding in report.distinct():
        lines.append(f"  [{finding.kind}] {finding.title}")
        lines.append(f"      expected {finding.expected}; observed {finding.observed}")
        if finding.spec:
            lines.append(f"      rule: {finding.spec}")
    for advisory in report.advisories:
        lines.append(f"  advisory ({advisory['count']}x, no rule broken): {advisory['title']}")
    diff = report.extra.get("differential")
    if isinstance(diff, dict) and "summary" in diff:
        lines.append(f"differential: {diff['summary']}")
    return "\n".join(lines)


def run_check(args: argparse.Namespace, started: list[Checker] | None = None) -> Report:
    """Run what the arguments ask for and return the report (``started`` receives the
    checker, whose report is the partial one when the run is interrupted)."""
    profile = None
    if args.profile:
        from vfio_user_mig.check.profiles import get_profile

        profile = get_profile(args.profile)
    target = make_target(args)
    checker = Checker(target, timeout=args.timeout, profile=profile)
    if args.peer_socket:
        checker.peer = SocketTarget(args.peer_socket)
    if started is not None:
        started.append(checker)
    # Reachable at all? If not there is nothing to check: an error (exit 2), not a finding.
    # The same connection learns the device's declared size: the streams' bounds scale with it.
    declared = declared_size(target.begin(), args.timeout)
    target.end()
    checker.stream_limit, checker.stream_seconds = stream_bounds(
        declared, args.stream_limit << 20 if args.stream_limit else None)
    try:
        if args.replay:
            from vfio_user_mig.check.replay import replay

            replay(checker, Path(args.replay))
            return checker.report
        if args.against:
            from vfio_user_mig.check.differential import run_differential

            reference = SpawnTarget(args.against, prespawn=not args.no_prespawn)
            try:
                return run_differential(target, reference, runs=args.random or 100,
                                        seed=args.seed, timeout=args.timeout)
            finally:
                reference.close()
        if not args.no_suite:
            from vfio_user_mig.check.groups import run_suite

            run_suite(checker, set(args.only) if args.only else None)
        if args.random and (args.executor != "local" or args.workers > 1):
            from vfio_user_mig.check.parallel import run_random_parallel

            run_random_parallel(checker, args.spawn, args.random, args.seed, args.out_dir,
                                executor=args.executor, scheduler=args.scheduler,
                                workers=args.workers, profile=args.profile,
                                per_job=args.batch_size, prespawn=not args.no_prespawn)
        elif args.random:
            from vfio_user_mig.check.explore import run_random

            run_random(checker, args.random, args.seed, Path(args.out_dir))
        return checker.report
    finally:
        target.close()


def cmd_check(args: argparse.Namespace) -> int:
    """Check a vfio-user server against the model and the spec (module docstring)."""
    if bool(args.spawn) == bool(args.socket):
        print("vfio-user-mig check: give exactly one of --socket PATH or --spawn 'CMD {socket}'",
              file=sys.stderr)
        return 2
    if args.random and (args.executor != "local" or args.workers > 1) and not args.spawn:
        print("vfio-user-mig check: --random over workers or Dask needs --spawn: one running "
              "server cannot give concurrent sequences a state of their own", file=sys.stderr)
        return 2
    if args.peer_socket and not args.socket:
        print("vfio-user-mig check: --peer-socket goes with --socket (with --spawn the round "
              "trip starts its second instance itself)", file=sys.stderr)
        return 2
    started = time.monotonic()
    checkers: list[Checker] = []
    interrupted: Interrupted | None = None
    # The report's coverage totals need networkx: imported before a stop signal can raise,
    # since an import cut short by Interrupted leaves a package half-bound in sys.modules.
    import networkx  # noqa: F401
    try:
        with stop_signals_raise():
            try:
                report = run_check(args, checkers)
            except Interrupted as exc:
                interrupted = exc
                report = (checkers[0].report if checkers
                          else Report(server=args.spawn or args.socket, caps={}))
            finally:
                stop_all()
    except (TargetError, ValueError, OSError, ExecutorError) as exc:
        print(f"vfio-user-mig check: {exc}", file=sys.stderr)
        return 2
    if interrupted is not None:
        report.extra["interrupted"] = str(interrupted)
    elapsed = time.monotonic() - started
    report.extra["elapsed_s"] = round(elapsed, 3)
    report.coverage.totals = coverage_totals(report)
    if args.markdown:
        from vfio_user_mig.check.markdown import render_markdown

        Path(args.markdown).write_text(render_markdown(report))
    if args.junit:
        from vfio_user_mig.check.junit import write_check_junit

        write_check_junit(report, args)
    if args.json:
        print(report.dumps())
    else:
        print(human_summary(report, elapsed))
        if interrupted is not None:
            print(f"interrupted by {interrupted}: the report is partial")
    if interrupted is not None:
        return 128 + interrupted.signum
    return 1 if report.findings else 0


@command("check", "check any vfio-user server against the migration model and the spec: "
         "a conformance and bug-finding suite with reproducers")
def _configure_check(p: argparse.ArgumentParser) -> None:
    where = p.add_mutually_exclusive_group()
    where.add_argument("--socket", metavar="PATH",
                       help="a running server's socket, reconnected for each sequence")
    where.add_argument("--spawn", metavar="'CMD ... {socket} ...'",
                       help="start a fresh server for each sequence, {socket} replaced by a "
                            "fresh path; the process is stopped after the sequence")
    p.add_argument("--peer-socket", metavar="PATH",
                   help="with --socket: a second instance of the same server, the destination "
                        "of the round-trip group (without it that group is skipped)")
    p.add_argument("--stream-limit", type=_positive_int, default=None, metavar="MIB",
                   help="MiB one saving phase may send before its stream is reported as "
                        "endless (default: 64, or 4 times the sum of the device's region "
                        "sizes when larger)")
    p.add_argument("--no-prespawn", action="store_true",
                   help="with --spawn: start each server only when its sequence begins (by "
                        "default the next two start while the current sequence runs; use "
                        "this for servers that cannot run twice at once)")
    p.add_argument("--timeout", type=_positive_float, default=2.0,
                   help="seconds a request may wait for its reply before it is a hang "
                        "(default 2)")
    p.add_argument("--only", action="append", metavar="GROUP",
                   help="run only this group of the suite (repeatable): fsm, gating, feature, "
                        "dma, migdata, reset, disconnect, malformed, roundtrip")
    p.add_argument("--no-suite", action="store_true",
                   help="skip the deterministic suite (e.g. with --random)")
    p.add_argument("--random", type=int, default=0, metavar="N",
                   help="also run N random sequences with the model as the oracle")
    p.add_argument("--seed", type=int, default=0, help="seed of --random (default 0)")
    p.add_argument("--workers", type=_positive_int, default=1,
                   help="--random over this many worker processes (with --spawn; default 1)")
    add_executor_args(p, "random sequences", "about four jobs per worker, at least 10 each")
    p.add_argument("--out-dir", default="vfio-user-check-failures",
                   help="where --random writes each shrunk failing sequence as JSON")
    p.add_argument("--replay", metavar="FILE",
                   help="run a reproducer again (a file written by --random, or --json output)")
    p.add_argument("--profile", metavar="NAME",
                   help="device stimulus profile: migdev or lvu-sample (checks that every "
                        "page the device writes is reported dirty)")
    p.add_argument("--against", metavar="'CMD ... {socket} ...'",
                   help="differential mode: send the same sequences to this reference server "
                        "too and report every difference in reply")
    p.add_argument("--markdown", metavar="FILE", help="also write a report for people")
    p.add_argument("--junit", metavar="FILE",
                   help="also write JUnit XML for CI systems: one test case per check, each "
                        "failure with its rule and a reproducer file beside FILE")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(handler=cmd_check)
