"""``check --random`` fanned out over worker processes or a Dask cluster (``--executor``).

The sequences of a random run are independent: sequence ``i`` of seed ``S`` is the same list of
operations wherever it runs (:func:`~.explore.draw_ops`). A :class:`RandomJob` is a range of
sequence indices; each job builds its own checker on a fresh :class:`~.target.SpawnTarget` of
the same command (so only ``--spawn`` targets fan out: one running server reached by
``--socket`` cannot serve concurrent sequences with a state of their own), learns the server's
regions and stream once, and runs its range. Jobs go through
:func:`vfio_user_mig.simulator.executor.run_batched`; their reports are merged into one in
index order, so the summary does not depend on which job finished first.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vfio_user_mig.check.explore import (
    Tally,
    explore_indices,
    learn_world,
    summarize,
    world_figures,
)
from vfio_user_mig.check.findings import Report
from vfio_user_mig.check.session import Checker
from vfio_user_mig.check.target import SpawnTarget


@dataclass(frozen=True)
class RandomJob:
    """Sequences ``start``..``stop - 1`` of run ``seed`` against a spawned server."""

    spawn: str
    seed: int
    start: int
    stop: int
    timeout: float
    profile: str | None
    out_dir: str
    prespawn: bool = True


@dataclass
class JobResult:
    """A job's report and what its tally found (picklable, for any executor)."""

    start: int
    report: Report
    tally: Tally
    regions: int
    stream_bytes: int | None


def run_job(job: RandomJob) -> JobResult:
    """Run one job in this process (a worker's)."""
    profile = None
    if job.profile:
        from vfio_user_mig.check.profiles import get_profile

        profile = get_profile(job.profile)
    target = SpawnTarget(job.spawn, prespawn=job.prespawn)
    checker = Checker(target, timeout=job.timeout, profile=profile)
    try:
        world = learn_world(checker, record=job.start == 0)
        tally = explore_indices(checker, world, job.seed, range(job.start, job.stop),
                                Path(job.out_dir))
    finally:
        target.close()
    return JobResult(job.start, checker.report, tally, *world_figures(world))


def jobs_for(spawn: str, runs: int, seed: int, *, workers: int, timeout: float,
             profile: str | None, out_dir: str, per_job: int | None = None,
             prespawn: bool = True) -> list[RandomJob]:
    """``runs`` sequences cut into jobs (by default about four per worker, at least 10
    sequences each, so the per-job learning sequence stays small against the job)."""
    size = per_job or max(10, -(-runs // max(1, 4 * workers)))
    return [RandomJob(spawn, seed, start, min(start + size, runs), timeout, profile, out_dir,
                      prespawn) for start in range(0, runs, size)]


def run_random_parallel(checker: Checker, spawn: str, runs: int, seed: int, out_dir: str, *,
                        executor: str, scheduler: str | None, workers: int,
                        profile: str | None, per_job: int | None = None,
                        prespawn: bool = True) -> None:
    """Fan ``runs`` random sequences out and merge the results into ``checker.report``."""
    from vfio_user_mig.simulator.executor import run_batched

    jobs = jobs_for(spawn, runs, seed, workers=workers, timeout=checker.timeout,
                    profile=profile, out_dir=out_dir, per_job=per_job, prespawn=prespawn)
    results = sorted(run_batched(run_job, jobs, executor=executor, scheduler=scheduler,
                                 workers=workers, batch_size=1, total=len(jobs)),
                     key=lambda r: r.start)
    merged = Tally()
    regions, stream = 0, None
    for result in results:
        report = checker.report
        report.absorb_counts(result.report)
        report.coverage.merge(result.report.coverage)
        report.findings.extend(result.report.findings)
        report.caps = result.report.caps or report.caps
        for key, finding in result.tally.seen.items():
            merged.seen.setdefault(key, finding)
        merged.files.extend(result.tally.files)
        merged.failed += result.tally.failed
        regions, stream = max(regions, result.regions), result.stream_bytes or stream
    summarize(checker, seed, runs, merged, regions, stream)
    checker.report.extra["random"].update({"executor": executor, "jobs": len(jobs),
                                   "scheduler": scheduler})

