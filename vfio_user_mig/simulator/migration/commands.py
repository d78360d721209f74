"""CLI sub-commands of the migration layer (``migrate``, ``simulate``), registered on import.

Heavy modules are imported inside the handlers; this module only builds the parsers.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from vfio_user_mig.cli import caps_arg, command, size_arg
from vfio_user_mig.model import VFIO_USER_CAPS, caps_label
from vfio_user_mig.simulator.executor import add_executor_args

_POLICIES = ("qemu", "iterations", "dirty-rate")


def _rate_arg(text: str) -> float | None:
    """A rate in bytes/s (``64M``, ``1G``, ``4096``), or ``none``/``0`` for unlimited."""
    t = text.strip().lower().removesuffix("/s")
    if t in ("none", "inf", "unlimited", "0"):
        return None
    return float(size_arg(t))


def _human(n: float | None) -> str:
    if n is None:
        return "-"
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows)


# ----- migrate ------------------------------------------------------------------------------
def render_migration(summary: dict[str, Any], limit_ms: float) -> str:
    """The human summary of a migration (a short table and the state paths)."""
    params = summary["params"]
    head = (f"migration {summary['outcome']} (caps {params.get('caps')}, "
            f"policy {params.get('policy')}, {params.get('clock')} clock, "
            f"link {_human(params.get('bandwidth'))}/s)")
    rows = [["round", "device", "guest RAM", "sent", "time", "pending after", "decision"]]
    for r in summary["rounds"]:
        rows.append([str(r["round"]), _human(r["device_bytes"]), _human(r["ram_bytes"]),
                     _human(r["bytes"]), f"{r['seconds'] * 1000:.1f} ms", _human(r["pending"]),
                     r["decision"]])
    if summary["downtime_ms"] is not None:
        rows.append(["stop-copy", "", "", _human(summary["stopcopy_bytes"]),
                     f"{summary['downtime_ms']:.1f} ms", "", "downtime"])
    lines = [head, _table(rows)]
    downtime = summary["downtime_ms"]
    lines.append(
        f"total {summary['total_ms']:.1f} ms, downtime "
        f"{'-' if downtime is None else f'{downtime:.1f} ms'} (limit {limit_ms:.0f} ms), "
        f"{summary['precopy_rounds']} pre-copy round(s), {_human(summary['bytes_transferred'])} "
        f"transferred ({_human(summary['stream_bytes'])} device stream, "
        f"{_human(summary['ram_bytes'])} guest RAM)")
    if summary["src_digest"] is None or summary["dst_digest"] is None:
        lines.append("verified: no (the migration did not complete)")
    else:
        lines.append(f"verified: {'yes' if summary['verified'] else 'NO'} (destination device "
                     f"digest {'==' if summary['device_verified'] else '!='} source digest at "
                     f"stop, guest RAM {'identical' if summary['ram_verified'] else 'differs'})")
    if summary["switchover"]:
        lines.append(f"switchover: {summary['switchover']}")
    if "mig_data_channel" in params:
        sides = params["mig_data_channel"]
        lines.append("migration data: separate socket (x-mig-data-socket) on "
                     + (", ".join(sides) if sides else "neither side (not offered)"))
    for err in summary["errors"]:
        lines.append(f"error: {err['message']} (errno {err['errno']})")
    lines.append("source:      " + " -> ".join(summary["source_path"]))
    lines.append("destination: " + " -> ".join(summary["destination_path"]))
    return "\n".join(lines)


def cmd_migrate(args: argparse.Namespace) -> int:
    """Run one live migration and print its summary."""
    from vfio_user_mig.simulator.migration.session import MigrateOptions, migrate

    opts = MigrateOptions(
        device_mem=args.device_mem, guest_mem=args.guest_mem, dirty_rate=args.dirty_rate or 0.0,
        bandwidth=args.bandwidth, downtime_limit=args.downtime_limit / 1000.0,
        policy=args.policy, iterations=args.iterations, max_rounds=args.max_rounds,
        caps=args.caps, seed=args.seed, trace=args.trace, isolation=args.isolation,
        src_socket=args.src_socket, dst_socket=args.dst_socket, clock=args.clock,
        chunk=args.chunk, keep_chunk_events=args.device_mem <= (256 << 20),
        size_query=args.experimental_size_query,
        mig_data_socket=args.experimental_mig_data_socket,
    )
    try:
        result = migrate(opts)
    except (OSError, ValueError) as exc:
        print(f"vfio-user-mig migrate: {exc}", file=sys.stderr)
        return 2
    s = result.summary
    if args.plot:
        from vfio_user_mig.simulator.migration.plots import save_migration_figure

        try:
            save_migration_figure(result.trace_events, args.plot)
        except (OSError, ValueError) as exc:
            print(f"vfio-user-mig migrate: --plot {args.plot}: {exc}", file=sys.stderr)
            return 2
    if args.json:
        payload = {k: s[k] for k in (
            "verified", "outcome", "total_ms", "downtime_ms", "precopy_rounds",
            "bytes_transferred", "stream_bytes", "ram_bytes", "stopcopy_bytes", "rounds",
            "switchover", "source_path", "destination_path", "src_digest", "dst_digest",
            "device_verified", "ram_verified", "errors", "params")}
        payload["trace"] = args.trace
        if args.plot:
            payload["plot"] = args.plot
        print(json.dumps(payload))
    else:
        print(render_migration(s, args.downtime_limit))
        if args.trace:
            print(f"trace: {args.trace}")
        if args.plot:
            print(f"plot: {args.plot}")
    return 0 if result.ok else 1


@command("migrate", "live-migrate the emulated device (and guest RAM) between two servers")
def _configure_migrate(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device-mem", type=size_arg, default=16 << 20,
                   help="device memory (BAR2) size, a power of two (default 16M)")
    p.add_argument("--guest-mem", type=size_arg, default=64 << 20,
                   help="guest RAM size (default 64M)")
    p.add_argument("--dirty-rate", type=_rate_arg, default=24.0 * (1 << 20),
                   help="bytes/s the guest dirties while pre-copy runs (default 24M; 0: idle)")
    p.add_argument("--bandwidth", type=_rate_arg, default=64.0 * (1 << 20),
                   help="migration link cap in bytes/s (default 64M; none: unlimited)")
    p.add_argument("--downtime-limit", type=float, default=300.0, metavar="MS",
                   help="downtime limit in ms for the qemu and dirty-rate policies (default 300)")
    p.add_argument("--policy", choices=_POLICIES, default="qemu",
                   help="switchover policy: qemu (pending < bandwidth x downtime limit), "
                        "iterations (fixed count), dirty-rate (observed dirty rate)")
    p.add_argument("--iterations", type=int, default=3,
                   help="pre-copy rounds for --policy iterations (default 3)")
    p.add_argument("--max-rounds", type=int, default=30,
                   help="give up (not converged) after this many rounds (default 30)")
    p.add_argument("--caps", type=caps_arg, default=VFIO_USER_CAPS,
                   help=f"capability set (default {caps_label(VFIO_USER_CAPS)}; e.g. stop_copy); "
                        "with external servers: without pre_copy the driver does not use "
                        "PRE_COPY even when the device offers it")
    p.add_argument("--seed", type=int, default=0, help="seed of the content and the workload")
    p.add_argument("--trace", metavar="FILE", help="write the JSON-lines trace to FILE")
    p.add_argument("--plot", metavar="FILE",
                   help="draw the state timeline and the pre-copy rounds to FILE (.png, .svg)")
    p.add_argument("--isolation", choices=("thread", "process"), default="thread",
                   help="run the two servers as threads (default) or separate processes")
    p.add_argument("--src-socket", metavar="PATH",
                   help="migrate between two external vfio-user servers (with --dst-socket)")
    p.add_argument("--dst-socket", metavar="PATH")
    p.add_argument("--clock", choices=("sim", "real"), default="sim",
                   help="simulated clock (default: the link advances time) or wall clock")
    p.add_argument("--chunk", type=size_arg, default=1 << 20,
                   help="MIG_DATA_READ size (default 1M)")
    p.add_argument("--experimental-size-query", action="store_true",
                   help="ask the source device for its pending bytes (MIG_DATA_SIZE, an "
                        "extension not in vfio-user; hosted servers only) and use them "
                        "for the switchover decision instead of the estimate")
    p.add_argument("--experimental-mig-data-socket", action="store_true",
                   help="carry MIG_DATA_READ/WRITE on a separate socket negotiated at VERSION "
                        "(x-mig-data-socket, an extension not in vfio-user); servers that do "
                        "not offer it keep the main socket")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(handler=cmd_migrate)


# ----- simulate -----------------------------------------------------------------------------
def render_coverage(cov: dict[str, Any]) -> list[str]:
    """The coverage lines of a campaign summary: arcs, (state, command) cells, faults."""
    arcs = ", ".join(f"{a} {n}" for a, n in cov["arcs"].items()) or "none"
    lines = [f"coverage: {cov['arcs_exercised']}/{cov['arcs_total']} FSM arcs, "
             f"{cov['cells_exercised']}/{cov['cells_total']} (state, command) cells, "
             f"{sum(1 for k in cov['fault_kinds'] if k != 'none')} fault kind(s), "
             f"{len(cov['outcomes'])} outcome(s)",
             f"arcs walked: {arcs}"]
    if cov["arcs_missing"]:
        lines.append(f"arcs never walked: {', '.join(cov['arcs_missing'])}")
    if cov["cells"]:
        commands = list(next(iter(cov["cells"].values())))
        rows = [["probes in state", *commands]]
        for state, row in cov["cells"].items():
            rows.append([state, *(str(row[c]) for c in commands)])
        lines.append(_table(rows))
    return lines


def render_campaign(data: dict[str, Any]) -> str:
    """The human summary of a campaign."""
    rows = [["fault", "runs", "fired", "passed"]]
    for kind, row in data["fault_kinds"].items():
        rows.append([kind, str(row["runs"]), str(row["fired"]), str(row["passed"])])
    outcomes = ", ".join(f"{k} {v}" for k, v in data["outcomes"].items())
    where = (f"Dask cluster at {data['scheduler']}" if data.get("scheduler")
             else f"{data['workers']} worker(s), {data.get('executor', 'local')} executor")
    lines = [
        f"{data['runs']} runs (seed {data['seed']}, faults {'on' if data['faults'] else 'off'}, "
        f"{where}): {data['passed']} passed, "
        f"{data['failed']} failed in {data['elapsed_s']:.1f} s ({data['runs_per_s']} runs/s), "
        f"{data['checks']} invariant checks",
        f"migrations: {outcomes}",
        _table(rows),
    ]
    if "coverage" in data:
        lines += render_coverage(data["coverage"])
    for f in data["failures"]:
        lines.append(f"FAILED seed {f['seed']} ({f['fault']}): {f['reason']}")
        lines.append(f"  replay: {f['replay']}")
    if data["failed"] > len(data["failures"]):
        lines.append(f"... {data['failed'] - len(data['failures'])} more failure(s) not kept "
                     "(see --out)")
    return "\n".join(lines)


def cmd_simulate(args: argparse.Namespace) -> int:
    """Run a randomized campaign (or replay one run)."""
    from vfio_user_mig.simulator.migration import campaign

    if args.replay is not None:
        sc = campaign.draw(args.replay, args.faults)
        r = campaign.run_scenario(sc, trace=args.trace)
        if args.json:
            print(json.dumps({"seed": r.seed, "ok": r.ok, "reason": r.reason,
                              "outcome": r.outcome, "fault": r.fault, "fired": r.fired,
                              "scenario": sc.describe(), "elapsed_s": round(r.elapsed, 3),
                              "arcs": r.arcs, "cells": r.cells}))
        else:
            print(f"seed {r.seed}: {sc.describe()}")
            print(f"migration {r.outcome}, fault fired: {'yes' if r.fired else 'no'}, "
                  f"{r.checks} checks, {r.elapsed * 1000:.0f} ms")
            print("PASSED" if r.ok else f"FAILED: {r.reason}")
            if args.trace:
                print(f"trace: {args.trace}")
        return 0 if r.ok else 1
    if args.runs < 0 or args.workers < 1 or (args.batch_size is not None
                                              and args.batch_size < 1):
        print("vfio-user-mig simulate: --runs must be >= 0, --workers and --batch-size >= 1",
              file=sys.stderr)
        return 2
    return _campaign(args)


def _campaign(args: argparse.Namespace) -> int:
    from vfio_user_mig.simulator.executor import ExecutorError
    from vfio_user_mig.simulator.migration import campaign
    from vfio_user_mig.simulator.migration.campaign_stats import replay_command, run_record

    try:
        out = open(args.out, "w") if args.out else None  # noqa: SIM115 - closed below
    except OSError as exc:
        print(f"vfio-user-mig simulate: --out {args.out}: {exc}", file=sys.stderr)
        return 2
    bar: Any = None
    if not args.json and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=args.runs, unit="run", file=sys.stderr, dynamic_ncols=True,
                   smoothing=0.1)
    failed = 0

    def progress(r: campaign.RunResult) -> None:
        nonlocal failed
        if out is not None:
            out.write(json.dumps(run_record(r, args.faults)) + "\n")
        if not r.ok:
            failed += 1
            text = (f"FAILED seed {r.seed} ({r.fault}): {r.reason}\n"
                    f"  replay: {replay_command(r.seed, args.faults)}")
            if bar is not None:
                bar.write(text, file=sys.stderr)
            else:
                print(text, file=sys.stderr, flush=True)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(failed=failed, refresh=False)

    try:
        result = campaign.run_campaign(args.runs, args.seed, faults=args.faults,
                                       workers=args.workers, progress=progress,
                                       executor=args.executor, scheduler=args.scheduler,
                                       batch_size=args.batch_size)
    except ExecutorError as exc:
        print(f"vfio-user-mig simulate: {exc}", file=sys.stderr)
        return 2
    finally:
        if bar is not None:
            bar.close()
        if out is not None:
            out.close()
    data = result.to_json()
    if args.json:
        print(json.dumps(data))
    else:
        print(render_campaign(data))
        if args.out:
            print(f"runs: {args.out}")
    return 0 if not data["failed"] else 1


@command("simulate", "randomized client/server migration campaigns, with faults")
def _configure_simulate(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runs", type=int, default=100, help="number of runs (default 100)")
    p.add_argument("--seed", type=int, default=0, help="campaign seed (default 0)")
    p.add_argument("--faults", action="store_true",
                   help="inject one random fault per run (disconnects, corrupted or truncated "
                        "stream, failing device action, destination crash, slow peer)")
    p.add_argument("--workers", type=int, default=1,
                   help="worker processes (default 1; with --executor dask and no --scheduler: "
                        "the local cluster's workers)")
    add_executor_args(p, "runs", "50 to 500")
    p.add_argument("--out", metavar="FILE.jsonl",
                   help="write one JSON line per run (as runs complete: seed, ok, outcome, "
                        "fault, arcs, cells, replay command of a failure)")
    p.add_argument("--replay", type=int, metavar="SEED",
                   help="run only the run with this seed (as printed for a failure)")
    p.add_argument("--trace", metavar="FILE", help="with --replay: write the run's trace")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(handler=cmd_simulate)


__all__ = ["cmd_migrate", "cmd_simulate", "render_campaign",
           "render_coverage", "render_migration"]
