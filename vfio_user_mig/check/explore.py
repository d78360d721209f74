"""Random stateful exploration with the model as the oracle (``check --random N --seed S``).

A run draws ``N`` sequences of abstract operations (:class:`~.oracle.Op`) from a seeded
generator: sequence ``i`` of seed ``S`` is always the same list of ops (the draw depends on
nothing the server says). Each sequence runs on a fresh connection (a fresh process for
``--spawn``) with an :class:`~.oracle.Oracle` that predicts every reply from the model and the
legality table. A sequence that fails is shrunk (delta debugging: drop chunks of ops, then
single ops, while a run of what is left still fails with the same kind and title) and the
minimal sequence is written as a JSON reproducer (seed, ops, the finding and its steps, each
with its Expect) to ``out_dir``; ``check --replay FILE`` runs it again.

Before the sequences, one sequence learns the server's regions and saves one STOP_COPY stream
(so that RESUMING can be fed a stream the device itself produced). Coverage ((state, command)
cells, FSM arcs) goes to the checker's report like any other check's.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vfio_user_mig.check.findings import Finding
from vfio_user_mig.check.oracle import OP_WEIGHTS, SET_WEIGHTS, Op, Oracle, World, learn_regions
from vfio_user_mig.check.session import Checker
from vfio_user_mig.check.steps import Step
from vfio_user_mig.check.target import TargetError
from vfio_user_mig.model import State

DEFAULT_OUT_DIR = "vfio-user-check-failures"
GROUP = "random"
MIN_OPS, MAX_OPS = 4, 24
#: Candidate runs the shrinker may spend on one failure, and seconds.
SHRINK_RUNS = 48
SHRINK_SECONDS = 60.0

_KINDS = tuple(OP_WEIGHTS)
_WEIGHTS = tuple(OP_WEIGHTS.values())


def draw_ops(seed: int, index: int) -> list[Op]:
    """Sequence ``index`` of run ``seed`` (deterministic: same seed, same ops)."""
    rng = random.Random(f"vfio-user-check/{seed}/{index}")
    ops = []
    for _ in range(rng.randint(MIN_OPS, MAX_OPS)):
        kind = rng.choices(_KINDS, _WEIGHTS)[0]
        if kind == "set":
            a = rng.choices(range(len(SET_WEIGHTS)), SET_WEIGHTS)[0]
        else:
            a = rng.randrange(64)
        ops.append(Op(kind, a, rng.randrange(64)))
    return ops


def scratch(checker: Checker) -> Checker:
    """A checker on the same target and options with a report of its own."""
    sub = Checker(checker.target, timeout=checker.timeout,
                  client_max_xfer=checker.client_max_xfer, profile=checker.profile)
    sub.saved_stream = checker.saved_stream
    sub.facts = checker.facts
    return sub


def merge(into: Checker, sub: Checker, findings: bool = True) -> None:
    """Add ``sub``'s counts and coverage (and findings) to ``into``'s report."""
    into.report.absorb_counts(sub.report)
    into.report.coverage.merge(sub.report.coverage)
    if findings:
        into.report.findings.extend(sub.report.findings)
    if sub.report.caps:
        into.report.caps = sub.report.caps


def learn_world(checker: Checker, record: bool = True) -> World:
    """One sequence: the server's regions and, unless the checker has one, a saved stream.
    ``record``: count its checks and findings in ``checker``'s report (a run fanned out over
    jobs records only the first job's, so the totals do not depend on the job count)."""
    sub = scratch(checker)
    world = World()
    try:
        with sub.sequence(GROUP, "learn regions and save a stream") as seq:
            world.regions = learn_regions(seq)
            if seq.state is not None and sub.saved_stream is None:
                seq.goto(State.STOP_COPY)
                seq.goto(State.STOP)
    except TargetError:
        pass
    if record:
        merge(checker, sub)
    if checker.saved_stream is None:
        checker.saved_stream = sub.saved_stream
    world.saved_stream = checker.saved_stream
    return world


def run_ops(checker: Checker, world: World, ops: list[Op], title: str,
            steps: list[Step] | None = None) -> Checker:
    """Run ``ops`` on a fresh connection; the scratch checker holding the outcome. ``steps``,
    when given, receives every message sent (setup included)."""
    sub = scratch(checker)
    with sub.sequence(GROUP, title) as seq:
        try:
            if seq.state is None or seq.caps is None:
                return sub
            oracle = Oracle(seq, world)
            oracle.start()
            for op in ops:
                oracle.apply(op)
        finally:
            if steps is not None:
                steps.extend(seq.steps)
    return sub


def shrink(ops: list[Op], fails: Callable[[list[Op]], bool], budget: int = SHRINK_RUNS,
           seconds: float = SHRINK_SECONDS) -> list[Op]:
    """A 1-minimal sub-list of ``ops`` (within the budget) on which ``fails`` still holds."""
    deadline = time.monotonic() + seconds
    runs = 0

    def attempt(candidate: list[Op]) -> bool:
        nonlocal runs
        if runs >= budget or time.monotonic() > deadline:
            return False
        runs += 1
        return fails(candidate)

    if ops and attempt([]):
        return []
    low, high = 1, len(ops)  # the shortest failing prefix first (what follows cannot matter)
    while low < high:
        mid = (low + high) // 2
        if attempt(ops[:mid]):
            high = mid
        else:
            low = mid + 1
    ops = ops[:high]
    parts = 2
    while len(ops) >= 2 and runs < budget:
        size = -(-len(ops) // parts)
        for start in range(0, len(ops), size):
            rest = ops[:start] + ops[start + size:]
            if rest and attempt(rest):
                ops = rest
                parts = max(parts - 1, 2)
                break
        else:
            if size == 1:
                break
            parts = min(len(ops), parts * 2)
    return ops


def _still_fails(checker: Checker, world: World, key: tuple[str, str], title: str,
                 found: dict[str, Finding]) -> Callable[[list[Op]], bool]:
    def fails(candidate: list[Op]) -> bool:
        try:
            sub = run_ops(checker, world, candidate, title)
        except TargetError:
            return False
        for f in sub.report.findings:
            if f.key() == key:
                found["best"] = f
                return True
        return False
    return fails


def write_reproducer(out_dir: Path, seed: int, index: int, ops: list[Op],
                     finding: Finding) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    slug = "".join(c if c.isalnum() else "-" for c in finding.title.lower()).strip("-")[:60]
    path = out_dir / f"seed{seed}-seq{index}-{finding.kind}-{slug}.json"
    doc: dict[str, Any] = {
        "seed": seed, "sequence": index, "ops": [op.to_json() for op in ops],
        "finding": finding.to_json(), "steps": finding.reproducer,
    }
    path.write_text(json.dumps(doc, indent=1) + "\n")
    return path


@dataclass
class Tally:
    """What a range of random sequences found: distinct findings kept (shrunk), reproducer
    files written, sequences that failed."""

    seen: dict[tuple[str, str], Finding] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    failed: int = 0


def explore_indices(checker: Checker, world: World, seed: int, indices: Iterable[int],
                    out: Path, tally: Tally | None = None) -> Tally:
    """Sequences ``indices`` of run ``seed``: findings and coverage into ``checker.report``,
    the first occurrence of each distinct finding shrunk and written to ``out``."""
    tally = tally if tally is not None else Tally()
    for index in indices:
        ops = draw_ops(seed, index)
        title = f"random seed {seed} sequence {index}"
        try:
            sub = run_ops(checker, world, ops, title)
        except TargetError:
            tally.failed += 1
            continue
        merge(checker, sub, findings=False)
        if not sub.report.findings:
            continue
        tally.failed += 1
        for finding in sub.report.findings:
            key = finding.key()
            if key in tally.seen:
                checker.report.findings.append(finding)
                continue
            found = {"best": finding}
            small = shrink(ops, _still_fails(checker, world, key, title, found))
            best = found["best"]
            tally.seen[key] = best
            checker.report.findings.append(best)
            tally.files.append(str(write_reproducer(out, seed, index, small, best)))
    return tally


def summarize(checker: Checker, seed: int, runs: int, tally: Tally, regions: int,
              stream_bytes: int | None) -> None:
    """``report.extra["random"]``: the run's summary."""
    checker.report.extra["random"] = {
        "seed": seed, "sequences": runs, "failed_sequences": tally.failed,
        "distinct_findings": len(tally.seen), "reproducers": sorted(tally.files),
        "cells_covered": len(checker.report.coverage.cells),
        "arcs_covered": len(checker.report.coverage.arcs),
        "regions_learned": regions, "saved_stream_bytes": stream_bytes,
    }


def world_figures(world: World) -> tuple[int, int | None]:
    """The regions learned and the saved stream's length, for :func:`summarize`."""
    return len(world.regions), (len(world.saved_stream) if world.saved_stream is not None
                                else None)


def run_random(checker: Checker, runs: int, seed: int,
               out_dir: str | Path = DEFAULT_OUT_DIR) -> None:
    """``runs`` random sequences of ``seed`` against ``checker``'s target (module docstring).

    Findings (shrunk, one reproducer file per distinct kind and title) and coverage go to
    ``checker.report``; ``report.extra["random"]`` summarises the run."""
    world = learn_world(checker)
    tally = explore_indices(checker, world, seed, range(runs), Path(out_dir))
    summarize(checker, seed, runs, tally, *world_figures(world))
