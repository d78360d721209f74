"""The deterministic suite that ``vfio-user-mig check`` runs by default, as groups.

Each group is a function of the :class:`~vfio_user_mig.check.session.Checker` that opens its
own sequences and records checks and findings on ``checker.report``; expectations derive from
the model (:mod:`vfio_user_mig.model`, :mod:`vfio_user_mig.protocol.gating`) and the spec
(PROTOCOL.md), never from a second table. :data:`GROUPS` lists them in running order
(``fsm`` first: it saves the STOP_COPY stream the RESUMING checks load);
:func:`run_suite` runs all of them or those named by ``--only``.
"""

from __future__ import annotations

from collections.abc import Callable

from vfio_user_mig.check.findings import Finding, Kind
from vfio_user_mig.check.groups import (
    disconnect,
    dma,
    feature,
    fsm,
    gating,
    malformed,
    migdata,
    reset,
    roundtrip,
)
from vfio_user_mig.check.session import Checker
from vfio_user_mig.check.target import TargetError

GROUPS: dict[str, Callable[[Checker], None]] = {
    "fsm": fsm.run,
    "gating": gating.run,
    "feature": feature.run,
    "dma": dma.run,
    "migdata": migdata.run,
    "reset": reset.run,
    "disconnect": disconnect.run,
    "malformed": malformed.run,
    "roundtrip": roundtrip.run,
}


def run_suite(checker: Checker, only: set[str] | None = None) -> None:
    """Run the groups named in ``only`` (all when ``None``), in :data:`GROUPS` order.

    Raises ``ValueError`` for an unknown group name. A group whose server cannot be reached
    any more (:class:`TargetError`) ends; the next group still runs."""
    unknown = set(only or ()) - set(GROUPS)
    if unknown:
        raise ValueError(f"unknown group(s) {', '.join(sorted(unknown))} "
                         f"(one of {', '.join(GROUPS)})")
    for name, run in GROUPS.items():
        if only is None or name in only:
            try:
                run(checker)
            except TargetError as exc:
                checker.report.extra.setdefault("errors", []).append(f"{name}: {exc}")
                checker.report.checks += 1
                checker.report.findings.append(Finding(
                    kind=Kind.CRASH, title="the server cannot be reached any more",
                    commands=[], expected="a server that accepts a new connection",
                    observed=str(exc), spec="the server was reachable when the run began",
                    group=name))


__all__ = ["GROUPS", "run_suite"]
