"""Run the checker against one mutant (or the unmutated server) served in this process.

:func:`run_mutant` plants the mutant into every hosted device the target builds (one per
sequence, :class:`~vfio_user_mig.check.served.ServedTarget`; one for the whole run when the
mutant needs reconnections, :class:`~vfio_user_mig.check.served.ServedSocketTarget`), then
runs the groups the mutant names (``--only``) with its profile, or its pinned random run,
and returns the report (the round trip migrates to the target's ``twin()``, a second
instance carrying the same defect): the mutant is *killed* when the report has a finding.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass

from tests.check.mutation.catalogue import Mutant
from vfio_user_mig.check.explore import run_random
from vfio_user_mig.check.findings import Report
from vfio_user_mig.check.groups import GROUPS, run_suite
from vfio_user_mig.check.profiles import get_profile
from vfio_user_mig.check.served import SERVED_MEM_SIZE, ServedSocketTarget, ServedTarget
from vfio_user_mig.check.session import Checker
from vfio_user_mig.check.target import Target
from vfio_user_mig.simulator.server.hosting import HostedDevice, host_device


@dataclass(frozen=True)
class Outcome:
    """What the checker said about one mutant."""

    mutant: Mutant
    report: Report
    #: The mutant's groups the checker has (a group still being built is missing).
    groups_run: tuple[str, ...]

    @property
    def killed(self) -> bool:
        return bool(self.report.findings)

    @property
    def kinds(self) -> set[str]:
        return {str(f.kind) for f in self.report.findings}

    def titles(self) -> list[str]:
        return sorted({f.title for f in self.report.findings})


def _factory(mutant: Mutant | None, device: str) -> HostedDevice:
    hosted = host_device(device, mem_size=SERVED_MEM_SIZE)
    if mutant is not None:
        mutant.plant(hosted)
    return hosted


def make_target(mutant: Mutant | None, device: str = "migdev", reconnect: bool = False
                ) -> Target:
    """The in-process target serving ``mutant`` (``None``: the unmutated server)."""
    name = f"{device} with mutant {mutant.name}" if mutant else f"{device} (unmutated)"

    def factory() -> HostedDevice:
        return _factory(mutant, device)

    if reconnect:
        return ServedSocketTarget(device, factory=factory)
    return ServedTarget(device, factory=factory, name=name)


def run_checker(mutant: Mutant | None, *, groups: tuple[str, ...], device: str = "migdev",
                profile: str | None = None, random: tuple[int, int] | None = None,
                reconnect: bool = False, timeout: float = 1.0) -> Report:
    """Run ``groups`` (or the random run) against ``mutant`` on ``device``; the report."""
    target = make_target(mutant, device, reconnect)
    checker = Checker(target, timeout=timeout,
                      profile=get_profile(profile) if profile else None)
    try:
        if random is not None:
            runs, seed = random
            with tempfile.TemporaryDirectory() as out:
                run_random(checker, runs, seed, out_dir=out)
        else:
            known = {g for g in groups if g in GROUPS}
            if known:
                run_suite(checker, known)
    finally:
        target.close()
    return checker.report


def run_mutant(mutant: Mutant) -> Outcome:
    """The checker's verdict on ``mutant`` (module docstring)."""
    report = run_checker(mutant, groups=mutant.groups, device=mutant.device,
                         profile=mutant.profile, random=mutant.random,
                         reconnect=mutant.reconnect, timeout=mutant.timeout)
    groups_run = () if mutant.random else tuple(g for g in mutant.groups if g in GROUPS)
    return Outcome(mutant, report, groups_run)


def run_baseline(groups: tuple[str, ...], device: str, profile: str | None,
                 reconnect: bool = False) -> Report:
    """The unmutated server under the same groups (it must show no finding)."""
    return run_checker(None, groups=groups, device=device, profile=profile,
                       reconnect=reconnect)


__all__ = ["Outcome", "make_target", "run_baseline", "run_checker", "run_mutant"]
