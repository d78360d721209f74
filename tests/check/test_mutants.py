"""Mutation tests of the checker: each planted server defect of the catalogue
(:mod:`tests.check.mutation.catalogue`) must be caught by the groups it names (or its pinned
random run), and the unmutated server must pass the same groups with no finding.

Every run serves our server in this process (a fresh hosted device per sequence, real
sockets); a mutant is planted into the hosted devices of its own run only. A mutant whose
check is still being built elsewhere is a strict expected failure: once the check lands the
test fails until the mark is removed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.check.mutation.catalogue import GROUPS, KINDS, Mutant, catalogue, markdown
from tests.check.mutation.harness import run_baseline, run_mutant
from vfio_user_mig.check.findings import Kind

MUTANTS = catalogue()


def _param(mutant: Mutant) -> object:
    marks: list[pytest.MarkDecorator] = []
    if mutant.needs:
        # Only a surviving mutant is the expected failure: a planting or checker error fails.
        marks.append(pytest.mark.xfail(strict=True, raises=AssertionError,
                                       reason=f"needs {mutant.needs}"))
    return pytest.param(mutant, id=mutant.name, marks=marks)


@pytest.fixture(autouse=True)
def _quiet_server_log() -> Iterator[None]:
    """Planted defects make the served core log tracebacks: not this test's output."""
    logger = logging.getLogger("vfio_user_mig.server")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    yield
    logger.setLevel(level)


@pytest.mark.parametrize("mutant", [_param(m) for m in MUTANTS])
def test_mutant_is_killed(mutant: Mutant) -> None:
    outcome = run_mutant(mutant)
    assert outcome.killed, f"{mutant.name} survived {outcome.groups_run or 'its random run'}"
    assert mutant.finding_kind in outcome.kinds, (
        f"{mutant.name}: expected a {mutant.finding_kind} finding, got {outcome.titles()}")


def _baselines() -> list[tuple[tuple[str, ...], str, str | None, bool]]:
    """The distinct (groups, device, profile, reconnect) the suite-run mutants use."""
    seen: dict[tuple[tuple[str, ...], str, str | None, bool], None] = {}
    for m in MUTANTS:
        if m.random is None:
            seen[(m.groups, m.device, m.profile, m.reconnect)] = None
    return list(seen)


@pytest.mark.parametrize(("groups", "device", "profile", "reconnect"), _baselines(),
                         ids=lambda v: "+".join(v) if isinstance(v, tuple) else str(v))
def test_unmutated_server_passes_the_same_groups(groups: tuple[str, ...], device: str,
                                                 profile: str | None, reconnect: bool) -> None:
    report = run_baseline(groups, device, profile, reconnect)
    assert [f.title for f in report.findings] == []
    known = [g for g in groups if g in report.coverage.groups]
    assert report.checks > 0 or not known


@pytest.mark.parametrize("run", sorted({m.random for m in MUTANTS if m.random}))
def test_unmutated_server_passes_the_pinned_random_runs(run: tuple[int, int]) -> None:
    from tests.check.mutation.harness import run_checker

    report = run_checker(None, groups=(), random=run)
    assert [f.title for f in report.findings] == []
    assert report.checks > 0


def test_catalogue_page_is_current() -> None:
    page = Path(__file__).parent / "mutation" / "README.md"
    assert page.read_text() == markdown(MUTANTS), (
        "regenerate: python -m tests.check.mutation.catalogue > tests/check/mutation/README.md")


def test_catalogue_covers_every_group_and_kind() -> None:
    assert len(MUTANTS) >= 40
    assert len({m.name for m in MUTANTS}) == len(MUTANTS)
    assert {g for m in MUTANTS for g in m.groups} >= set(GROUPS)
    assert {m.kind for m in MUTANTS} >= {"errno", "state", "data", "hang", "close", "dirty"}
    assert {m.kind for m in MUTANTS} <= set(KINDS)
    assert {m.finding_kind for m in MUTANTS} <= {str(k) for k in Kind}
    assert any(m.random for m in MUTANTS)
    assert all(m.description and m.groups for m in MUTANTS)
