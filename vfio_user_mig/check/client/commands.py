"""The ``vfio-user-mig check-client`` command: referee a vfio-user client and report.

Exit status: 0 when the client shows no finding in any scenario, 1 when it shows at least
one, 2 when the arguments are wrong or nothing could be run.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from vfio_user_mig.check.client.report import add_session, new_report
from vfio_user_mig.check.client.runner import RunSpec, run_scenario, serve_dst
from vfio_user_mig.check.commands import _positive_float
from vfio_user_mig.check.findings import Report
from vfio_user_mig.check.junit import write_junit
from vfio_user_mig.cli import command, size_arg
from vfio_user_mig.simulator.referee.record import Session
from vfio_user_mig.simulator.referee.scenarios import SCENARIOS


def _spec(args: argparse.Namespace, run: str | None) -> RunSpec:
    return RunSpec(run=run, socket=args.socket, dst_socket=args.dst_socket,
                   device=args.device, mem_size=args.device_mem, timeout=args.timeout,
                   samples_client=args.samples_client)


def _summary(report: Report, elapsed: float) -> str:
    lines = [report.server, f"{report.checks} checks, {report.passed} passed, "
             f"{len(report.distinct())} distinct finding(s) in {elapsed:.1f} s"]
    for what in report.extra.get("scenarios", []):
        lines.append(f"  {what['scenario']:15} seed {what['seed']}: {what['outcome']} "
                     f"(exit {what.get('exit')}); expected: {what['expected']}")
        if what.get("output_tail"):
            last = what["output_tail"].strip().splitlines()[-3:]
            lines += [f"      client printed: {line}" for line in last]
    for error in report.extra.get("referee_errors", []):
        lines.append(f"  referee error (that run says nothing of the client): {error}")
    for f in report.distinct():
        lines.append(f"  [{f.kind}] {f.title}")
        lines.append(f"      expected {f.expected}; observed {f.observed}")
        lines.append(f"      rule: {f.spec}")
    for advisory in report.advisories:
        lines.append(f"  advisory (no rule broken): {advisory['title']}")
    return "\n".join(lines)



def replay(args: argparse.Namespace, report: Report, out: Path | None) -> None:
    """``--replay FILE``: the recorded scenario and seed played again against the client;
    the new session's client requests are compared with the recorded ones."""
    recorded = Session.load(Path(args.replay))
    spec = _spec(args, args.run)
    if not (args.run or args.samples_client):
        spec.run = recorded.meta.get("run")
        spec.samples_client = recorded.meta.get("samples_client")
    if not (spec.run or spec.samples_client or spec.socket):
        raise ValueError(f"{args.replay}: no client command recorded: give --run")
    spec.device = recorded.device
    spec.mem_size = int(recorded.meta.get("mem_size", spec.mem_size))
    session = run_scenario(spec, recorded.scenario, recorded.seed)
    add_session(report, session, out)

    def labels(s: Session) -> list[str]:
        from vfio_user_mig.check.steps import request_label

        return [f"{c.role} {request_label(e.data)}" for c in s.conns for e in c.events
                if e.direction == "c2s" and len(e.data) >= 16]

    old, new = labels(recorded), labels(session)
    same = next((i for i, (a, b) in enumerate(zip(old, new, strict=False)) if a != b),
                min(len(old), len(new)))
    report.extra["replay"] = {
        "file": args.replay, "scenario": recorded.scenario, "seed": recorded.seed,
        "recorded_outcome": recorded.outcome, "outcome": session.outcome,
        "recorded_requests": len(old), "requests": len(new), "same_until": same,
        "identical": old == new,
    }


def cmd_check_client(args: argparse.Namespace) -> int:
    """Referee a vfio-user client (module docstring)."""
    if args.serve_dst:
        return serve_dst(args.serve_dst, args.scenario[0] if args.scenario else "clean",
                         args.seed, args.device, args.device_mem, args.timeout,
                         Path(args.session_out or "dst-session.json"))
    if not (args.run or args.socket or args.samples_client or args.replay):
        print("vfio-user-mig check-client: give --run 'CMD {socket} ...', --samples-client "
              "PATH, --socket PATH (a client started by hand) or --replay FILE",
              file=sys.stderr)
        return 2
    names = args.scenario or list(SCENARIOS)
    out = Path(args.out_dir) if args.out_dir else None
    client = args.run or args.samples_client or args.replay or f"by hand on {args.socket}"
    report = new_report(client, args.device)
    started = time.monotonic()
    try:
        if args.replay:
            replay(args, report, out)
        else:
            for name in names:
                add_session(report, run_scenario(_spec(args, args.run), name, args.seed), out)
        if args.junit:
            write_junit(report, args.junit, package="check-client")
    except (ValueError, OSError) as exc:
        print(f"vfio-user-mig check-client: {exc}", file=sys.stderr)
        return 2
    elapsed = time.monotonic() - started
    report.extra["elapsed_s"] = round(elapsed, 3)
    if args.markdown:
        from vfio_user_mig.check.markdown import render_markdown

        Path(args.markdown).write_text(render_markdown(report))
    print(report.dumps() if args.json else _summary(report, elapsed))
    if report.extra.get("referee_errors"):
        return 2
    return 1 if report.findings else 0


@command("check-client", "referee a vfio-user client: our server serves it, records the "
         "session, misbehaves per scenario, and judges every request against the model and "
         "the spec")
def _configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", metavar="'CMD ... {socket} ... {dst_socket}'",
                   help="the client command; {socket} is the source referee's socket, "
                        "{dst_socket} the destination's")
    p.add_argument("--socket", metavar="PATH",
                   help="listen here as the source (without --run: wait for a client "
                        "started by hand)")
    p.add_argument("--dst-socket", metavar="PATH", help="listen here as the destination")
    p.add_argument("--samples-client", metavar="PATH",
                   help="libvfio-user's samples/client: copied to a temporary directory "
                        "next to a 'server' that runs our destination referee")
    p.add_argument("--scenario", action="append", choices=list(SCENARIOS),
                   help="run only this scenario (repeatable; default all): "
                        + ", ".join(SCENARIOS))
    p.add_argument("--seed", type=int, default=0, help="scenario seed (default 0)")
    p.add_argument("--device", choices=("migdev", "lvu-sample"), default="migdev",
                   help="the device the referee hosts (default migdev)")
    p.add_argument("--device-mem", type=size_arg, default=1 << 20,
                   help="device memory size (default 1M)")
    p.add_argument("--timeout", type=_positive_float, default=30.0,
                   help="seconds a scenario may take before the client counts as hung "
                        "(default 30)")
    p.add_argument("--out-dir", metavar="DIR",
                   help="save each scenario's recorded session here (for --replay)")
    p.add_argument("--replay", metavar="FILE",
                   help="play a recorded session's scenario and seed again against the "
                        "client (--run, or the recorded command)")
    p.add_argument("--markdown", metavar="FILE", help="also write a report for people")
    p.add_argument("--junit", metavar="FILE", help="also write JUnit XML (check's writer)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--serve-dst", metavar="PATH", help=argparse.SUPPRESS)
    p.add_argument("--session-out", metavar="FILE", help=argparse.SUPPRESS)
    p.set_defaults(handler=cmd_check_client)
