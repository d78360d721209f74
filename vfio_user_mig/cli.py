"""The ``vfio-user-mig`` command line.

Every command that reports prints human text by default and one JSON object on stdout with
``--json``. Commands are small functions registered in :data:`COMMANDS`; heavy modules
(matplotlib, the simulator) are imported inside the command that needs them.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from vfio_user_mig.model import VFIO_USER_CAPS, InvalidTransition, MigrationCaps, State
from vfio_user_mig.model.graph import caps_label, graph_summary, parse_caps

Handler = Callable[[argparse.Namespace], int]


def caps_arg(text: str) -> MigrationCaps:
    try:
        return parse_caps(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def state_arg(text: str) -> State:
    key = text.strip().upper().replace("-", "_")
    if key in State.__members__:
        return State[key]
    if key.isdigit() and int(key) in State._value2member_map_:
        return State(int(key))
    names = ", ".join(State.__members__)
    raise argparse.ArgumentTypeError(f"unknown state {text!r} (one of {names})")


def _emit(args: argparse.Namespace, payload: dict[str, Any], human: str) -> None:
    if getattr(args, "json", False):
        print(json.dumps(payload, indent=None, sort_keys=False))
    else:
        print(human)


def _add_caps(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--caps", type=caps_arg, default=VFIO_USER_CAPS,
        help="capability set, e.g. stop_copy,pre_copy (default, vfio-user), stop_copy, "
             "stop_copy,p2p, all",
    )


def _add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def cmd_graph(args: argparse.Namespace) -> int:
    """Draw the FSM (PNG/SVG/PDF via matplotlib) or print it as Mermaid or DOT text."""
    from pathlib import Path

    from vfio_user_mig.model import render

    fmt = args.format
    if fmt is None:
        fmt = Path(args.output).suffix.lstrip(".").lower() if args.output else "png"
    if fmt in ("mermaid", "dot"):
        text = render.to_mermaid(args.caps) if fmt == "mermaid" else render.to_dot(args.caps)
        if args.output:
            Path(args.output).write_text(text + "\n")
        _emit(args, {"format": fmt, "text": text, "output": args.output}, text)
        return 0
    from vfio_user_mig.model.plot import save_graph

    out = Path(args.output or f"fsm.{fmt}")
    if out.suffix.lstrip(".").lower() != fmt:
        out = out.with_suffix(f".{fmt}")
    save_graph(args.caps, out)
    summary = graph_summary(args.caps)
    _emit(args, {"format": fmt, "output": str(out), **summary},
          f"wrote {out} ({len(summary['states'])} states, {len(summary['arcs'])} direct arcs, "
          f"caps {summary['caps']})")
    return 0


def cmd_table(args: argparse.Namespace) -> int:
    """Print the cur x target matrix of complex transitions."""
    from vfio_user_mig.model import render

    caps_list = list(_all_caps()) if args.all else [args.caps]
    if args.json:
        print(json.dumps({"tables": [render.path_matrix(c) for c in caps_list]}))
    else:
        print("\n\n".join(render.format_matrix(c) for c in caps_list))
    return 0


def cmd_path(args: argparse.Namespace) -> int:
    """Print one complex transition with the Mealy action of each arc (exit 1 if refused)."""
    from vfio_user_mig.model import render

    info = render.describe_path(args.cur, args.target, args.caps)
    _emit(args, info, render.format_path(args.cur, args.target, args.caps))
    return 0 if info["ok"] else 1


def cmd_prove(args: argparse.Namespace) -> int:
    """Check the proof suite; exit 1 when an outcome differs from its expectation."""
    from vfio_user_mig.model import ALL_CAPS
    from vfio_user_mig.proofs import mutants, report, suite
    from vfio_user_mig.proofs.fsm_theorems import MODEL

    if args.matrix:
        matrix = suite.mutation_matrix()
        if args.json:
            print(json.dumps({"matrix": matrix}))
        else:
            print(report.render_matrix(matrix))
        return 0
    caps_list = list(ALL_CAPS) if args.caps is None else [args.caps]
    name = args.mutant or "model"
    known = [*mutants.FSM_IMPLEMENTATIONS, *mutants.SESSION_MUTANTS]
    if args.mutant is not None and args.mutant not in known:
        print(f"vfio-user-mig prove: unknown mutant {args.mutant!r} (one of {', '.join(known)})",
              file=sys.stderr)
        return 2
    fut = mutants.FSM_IMPLEMENTATIONS.get(name, MODEL)
    session = mutants.SESSION_MUTANTS.get(name)
    theorems = suite.default_suite(caps_list, fut, session=session,
                                   protocol=not args.fsm_only)
    result = suite.run_suite(suite.select(theorems, args.only or []), name)
    if args.markdown:
        from pathlib import Path

        Path(args.markdown).write_text(report.render_markdown(result) + "\n")
    if args.json:
        print(report.render_json(result))
    else:
        print(report.render_text(result))
        if args.markdown:
            print(f"wrote {args.markdown}")
    return 0 if result.ok else 1


def _all_caps() -> tuple[MigrationCaps, ...]:
    from vfio_user_mig.model import ALL_CAPS

    return ALL_CAPS


COMMANDS: dict[str, tuple[Handler, str, Callable[[argparse.ArgumentParser], None]]] = {}


def command(name: str, help_text: str) -> Callable[
    [Callable[[argparse.ArgumentParser], None]], Callable[[argparse.ArgumentParser], None]
]:
    """Register a sub-command: decorate the function that adds its arguments; the handler is
    set with ``parser.set_defaults(handler=...)`` inside it."""

    def register(
        configure: Callable[[argparse.ArgumentParser], None],
    ) -> Callable[[argparse.ArgumentParser], None]:
        COMMANDS[name] = (_no_handler, help_text, configure)
        return configure

    return register


def _no_handler(args: argparse.Namespace) -> int:  # pragma: no cover - set_defaults overrides
    return 2


@command("graph", "draw the migration FSM (png/svg/pdf) or print it as mermaid/dot")
def _configure_graph(p: argparse.ArgumentParser) -> None:
    _add_caps(p)
    p.add_argument("-o", "--output", help="output file (default fsm.png); suffix picks format")
    p.add_argument("--format", choices=["png", "svg", "pdf", "mermaid", "dot"])
    _add_json(p)
    p.set_defaults(handler=cmd_graph)


@command("table", "print the matrix of complex transitions (cur x target)")
def _configure_table(p: argparse.ArgumentParser) -> None:
    _add_caps(p)
    p.add_argument("--all", action="store_true", help="all four capability sets")
    _add_json(p)
    p.set_defaults(handler=cmd_table)


@command("path", "print one complex transition with the action of each arc")
def _configure_path(p: argparse.ArgumentParser) -> None:
    p.add_argument("cur", type=state_arg, help="current state, e.g. RUNNING")
    p.add_argument("target", type=state_arg, help="requested state, e.g. STOP_COPY")
    _add_caps(p)
    _add_json(p)
    p.set_defaults(handler=cmd_path)


def size_arg(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    try:
        if t and t[-1] in units:
            return int(float(t[:-1]) * units[t[-1]])
        return int(t, 0)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"bad size {text!r} (e.g. 16M, 4096)") from exc


class _Stopped(BaseException):
    """Raised by ``serve``'s SIGINT/SIGTERM handler (in the main thread, where the server
    runs) to leave a blocking wait at once; a ``BaseException`` so that no ``except
    Exception`` on the way mistakes it for an error. ``finally`` blocks still release the
    connection, the device and the socket."""


def cmd_serve(args: argparse.Namespace) -> int:
    """Run a vfio-user server on a UNIX socket until SIGINT/SIGTERM (or ``--max-connections``).

    Human output: one "serving ..." line once the socket accepts connections, one summary line
    at exit. ``--json``: exactly one JSON object on stdout, at exit (socket, device, device_mem,
    caps, pid, connections, requests, errors, dma_messages, final_state, stopped_by); the
    "serving ..." line then goes to stderr. Exit status 0 after a clean stop, 2 for bad
    arguments (including a device memory size the device refuses), 1 when the socket cannot
    be created. The socket file is removed at exit.
    """
    import logging
    import signal
    import threading

    from vfio_user_mig.simulator.device.errors import DeviceError
    from vfio_user_mig.simulator.server.hosting import host_device
    from vfio_user_mig.simulator.server.io import UnixServer
    from vfio_user_mig.simulator.server.types import ServerConfig

    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(message)s")
    try:
        hosted = host_device(args.device, mem_size=args.device_mem, caps=args.caps,
                             config=ServerConfig(
                                 strict_spec=args.strict_spec,
                                 experimental_mig_data_socket=args.experimental_mig_data_socket))
    except (DeviceError, ValueError) as exc:
        print(f"vfio-user-mig serve: {exc}", file=sys.stderr)
        return 2
    core = hosted.core
    try:
        server = UnixServer(core, args.socket, verbose=args.verbose,
                            max_connections=args.max_connections)
    except OSError as exc:
        hosted.close()
        print(f"vfio-user-mig serve: cannot listen on {args.socket}: {exc}", file=sys.stderr)
        return 1
    stopped_by: list[str] = []

    def on_signal(signum: int, _frame: object) -> None:
        stopped_by.append(signal.Signals(signum).name)
        server.stop_event.set()
        if len(stopped_by) == 1:  # stop at once, not at the next poll of the socket
            raise _Stopped

    old: dict[signal.Signals, Any] = {}
    try:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                old[sig] = signal.signal(sig, on_signal)
        print(f"serving {args.device} ({args.device_mem} bytes of device memory, caps "
              f"{caps_label(args.caps)}) on {args.socket}, pid {os.getpid()}",
              file=sys.stderr if args.json else sys.stdout, flush=True)
        server.serve_forever()
    except _Stopped:
        pass
    finally:
        for restored, handler in old.items():
            signal.signal(restored, handler)
        hosted.close()
        with contextlib.suppress(OSError):
            os.unlink(args.socket)
    reason = stopped_by[0] if stopped_by else "max-connections"
    summary = {"socket": args.socket, "device": args.device, "device_mem": args.device_mem,
               "caps": caps_label(args.caps), "pid": os.getpid(),
               "connections": server.connections, **core.stats,
               "final_state": core.state.name, "stopped_by": reason}
    _emit(args, summary, f"served {server.connections} connection(s); "
          f"{core.stats['requests']} requests, {core.stats['errors']} errors; "
          f"final state {core.state.name}; stopped by {reason}")
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _device_names() -> list[str]:
    from vfio_user_mig.simulator.device import DEVICES

    return sorted(DEVICES)


@command("serve", "run a vfio-user server with an emulated device on a UNIX socket until "
         "SIGINT/SIGTERM or --max-connections")
def _configure_serve(p: argparse.ArgumentParser) -> None:
    p.add_argument("--socket", required=True, help="socket path (created with mode 0600)")
    p.add_argument("--device", choices=_device_names(), default="migdev")
    p.add_argument("--device-mem", type=size_arg, default=16 << 20,
                   help="device memory (BAR2) size, a power of two (default 16M)")
    _add_caps(p)
    p.add_argument("--strict-spec", action="store_true",
                   help="send what the spec text says where libvfio-user differs")
    p.add_argument("--experimental-mig-data-socket", action="store_true",
                   help="agree to a client's x-mig-data-socket capability: MIG_DATA_READ/WRITE "
                        "on a separate socket (an extension not in vfio-user)")
    p.add_argument("--max-connections", type=_positive_int, default=None,
                   help="exit after serving this many connections (one at a time)")
    p.add_argument("-v", "--verbose", action="store_true", help="log every request")
    p.add_argument("--json", action="store_true",
                   help="print exactly one JSON object on stdout, at exit: socket, device, "
                        "device_mem, caps, pid, connections, requests, errors, dma_messages, "
                        "final_state, stopped_by (the 'serving' line goes to stderr; the "
                        "server is ready once the socket path exists)")
    p.set_defaults(handler=cmd_serve)


@command("prove", "check the theorems of the FSM and the protocol exhaustively")
def _configure_prove(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--caps", type=caps_arg, default=None,
        help="check the FSM theorems for this capability set only (default: all four)",
    )
    p.add_argument("--markdown", metavar="FILE", help="also write a Markdown report to FILE")
    p.add_argument("--only", action="append", metavar="PATTERN",
                   help="only theorems whose name matches (glob or substring; repeatable)")
    p.add_argument("--fsm-only", action="store_true", help="skip the protocol theorems")
    p.add_argument("--mutant", metavar="NAME",
                   help="check a seeded mutant instead of the model: kernel-unfixed, "
                        "missing-blocked-arc, p2p-as-non-p2p, wrong-tie-break, off-by-one-bound, "
                        "no-dirty-resend, leaky-save-session (or the correct kernel-fixed)")
    p.add_argument("--matrix", action="store_true",
                   help="print which theorems each seeded mutant breaks")
    _add_json(p)
    p.set_defaults(handler=cmd_prove)


#: Modules that register further sub-commands with :func:`command` when imported.
COMMAND_MODULES: tuple[str, ...] = (
    "vfio_user_mig.simulator.migration.commands",
    "vfio_user_mig.studies.commands",
    "vfio_user_mig.check.commands",
    "vfio_user_mig.check.client.commands",
)


DIST_NAME = "vfio-user-mig"


def package_version() -> str:
    """The package's version, whose one source is ``version`` in ``pyproject.toml``.

    Run from a source tree (the package beside its ``pyproject.toml``), that file is read;
    installed (a wheel, an editable install), the installed distribution's metadata, which the
    build copied from it. ``"unknown"`` when neither is there."""
    import importlib.metadata
    import tomllib
    from pathlib import Path

    pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
    try:
        project = tomllib.loads(pyproject.read_text()).get("project", {})
    except (OSError, ValueError):
        project = {}
    if project.get("name") == DIST_NAME and isinstance(project.get("version"), str):
        return str(project["version"])
    try:
        return importlib.metadata.version(DIST_NAME)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class _VersionAction(argparse.Action):
    """``--version``: print ``vfio-user-mig VERSION`` and exit 0 (computed only when asked)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS,
                 default: str = argparse.SUPPRESS, help: str | None = None) -> None:
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        print(f"{parser.prog} {package_version()}")
        parser.exit()


def _columns() -> int:
    """The terminal's width as ``shutil.get_terminal_size`` finds it (``COLUMNS``, else the
    terminal of stdout, else 80), without importing :mod:`shutil` and what it imports."""
    with contextlib.suppress(KeyError, ValueError):
        columns = int(os.environ["COLUMNS"])
        if columns > 0:
            return columns
    try:
        return os.get_terminal_size(sys.__stdout__.fileno()).columns or 80  # type: ignore[union-attr]
    except (AttributeError, ValueError, OSError):
        return 80


class _Formatter(argparse.HelpFormatter):
    """argparse's formatter, told the width: argparse makes one per ``add_argument`` to check
    the argument, and one that must find the width itself imports :mod:`shutil` (a sixth of
    a server's imports) for it."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:
        super().__init__(prog, indent_increment, max_help_position,
                         _columns() - 2 if width is None else width)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The argument parser with every registered command; with ``only`` (a command this
    module registers itself, e.g. ``serve``), that command alone, without importing the
    command modules (a server starts faster)."""
    parser = argparse.ArgumentParser(
        prog="vfio-user-mig",
        description="The executable model of vfio-user live migration (migration v2).",
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action=_VersionAction,
                        help="print the package version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    if only is None or only not in COMMANDS:
        for module in COMMAND_MODULES:
            importlib.import_module(module)
    for name, (_handler, help_text, configure) in COMMANDS.items():
        if only is None or only not in COMMANDS or name == only:
            configure(sub.add_parser(name, help=help_text, description=help_text,
                                     formatter_class=_Formatter))
    return parser


def _command_name(argv: Sequence[str]) -> str | None:
    """The sub-command ``argv`` names (its first word that is not an option), if any."""
    return next((a for a in argv if not a.startswith("-")), None)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``vfio-user-mig`` console script."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(only=_command_name(argv))
    args = parser.parse_args(argv)
    try:
        code: int = args.handler(args)
    except InvalidTransition as exc:
        print(f"vfio-user-mig: {exc}", file=sys.stderr)
        return 1
    return code


#: Commands whose process skips the interpreter's teardown once :func:`main` returned.
QUICK_EXIT = frozenset({"serve"})


def console() -> None:
    """The process entry (the ``vfio-user-mig`` script and ``python -m vfio_user_mig.cli``):
    :func:`main`, then exit with its code. A server (:data:`QUICK_EXIT`) leaves with
    ``os._exit`` after flushing its output: by then it removed its socket file and closed its
    device, and finalising every module and object would add a sixth to its life (the
    checker starts one per sequence)."""
    argv = sys.argv[1:]
    code = main(argv)
    if _command_name(argv) in QUICK_EXIT:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


__all__ = ["COMMANDS", "build_parser", "caps_label", "command", "console", "main",
           "package_version"]

if __name__ == "__main__":  # pragma: no cover
    # Run the package's module, not this ``__main__`` copy: command modules register
    # themselves with ``vfio_user_mig.cli.command``, so only that module's table is complete.
    from vfio_user_mig.cli import console as _package_console

    _package_console()
