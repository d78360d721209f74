"""The batch executor (local) and the streaming campaign summary with its coverage."""

from __future__ import annotations

import os
import random

import pytest

from vfio_user_mig.model import VFIO_USER_CAPS, MigrationCaps, State
from vfio_user_mig.simulator.executor import (
    ExecutorError,
    _call_batch_forked,
    auto_batch_size,
    run_batched,
)
from vfio_user_mig.simulator.migration.campaign import RunResult, run_campaign
from vfio_user_mig.simulator.migration.campaign_stats import (
    ALL_ARCS,
    MAX_FAILURES,
    CampaignStats,
    RunCoverage,
)


def test_batch_sizes_stay_within_bounds_and_spread_small_counts() -> None:
    assert auto_batch_size(1_000_000, 2) == 500
    assert auto_batch_size(1_000_000, 400) == 313
    assert auto_batch_size(200, 2) == 50
    assert auto_batch_size(12, 2) == 6  # both workers get some
    assert auto_batch_size(0, 4) == 1


@pytest.mark.parametrize("workers", [1, 3])
def test_local_executor_yields_every_result(workers: int) -> None:
    got = list(run_batched(abs, range(-100, 0), workers=workers, batch_size=7))
    assert sorted(got) == list(range(1, 101))


def test_errors_of_the_function_and_of_the_arguments_propagate() -> None:
    with pytest.raises(ValueError, match="invalid literal"):
        list(run_batched(int, ["1", "x", "3"], workers=2, batch_size=1))
    with pytest.raises(ExecutorError, match="unknown executor"):
        run_batched(abs, [1], executor="ray")
    with pytest.raises(ExecutorError, match="needs --executor dask"):
        run_batched(abs, [1], scheduler="tcp://127.0.0.1:1")


def test_a_forked_batch_runs_in_another_process() -> None:
    assert _call_batch_forked(abs, [-1, -2]) == [1, 2]
    pids = _call_batch_forked(_pid, [0])
    assert pids[0] != os.getpid()
    with pytest.raises(ValueError):
        _call_batch_forked(int, ["x"])


def _pid(_: int) -> int:
    return os.getpid()


def test_coverage_counts_the_arcs_up_to_the_state_reached() -> None:
    cov = RunCoverage(VFIO_USER_CAPS)
    cov.set_state(State.RUNNING, int(State.STOP_COPY), State.STOP_COPY)
    cov.set_state(State.STOP_COPY, int(State.RESUMING), State.STOP)  # failed on STOP->RESUMING
    cov.set_state(State.STOP, int(State.STOP), State.STOP)
    cov.set_state(State.STOP, 8, State.STOP)  # not a state
    cov.set_state(State.STOP_COPY, int(State.PRE_COPY), State.STOP_COPY)  # refused
    cov.set_state(State.STOP, int(State.RUNNING), None)  # lost with its connection
    cov.probe(State.STOP, "REGION_READ")
    assert dict(cov.arcs) == {"RUNNING->STOP": 1, "STOP->STOP_COPY": 1, "STOP_COPY->STOP": 1}
    assert dict(cov.cells) == {"STOP/REGION_READ": 1}
    p2p = RunCoverage(MigrationCaps(3))  # STOP_COPY|P2P: RUNNING -> STOP via RUNNING_P2P
    p2p.set_state(State.RUNNING, int(State.STOP), State.STOP)
    assert dict(p2p.arcs) == {"RUNNING->RUNNING_P2P": 1, "RUNNING_P2P->STOP": 1}


def _result(seed: int, ok: bool) -> RunResult:
    return RunResult(seed, ok, "" if ok else f"broke {seed}", "failed" if seed % 3 else
                     "verified", f"{'truncate' if seed % 2 else 'none'} dst at 1", seed % 5 == 0,
                     0.01, 1, 3, "main" if seed % 4 else "separate",
                     {ALL_ARCS[seed % 4]: 1}, {f"STOP/C{seed % 3}": 2})


def test_the_summary_does_not_depend_on_completion_order() -> None:
    results = [_result(s, ok=s % 7 != 0) for s in range(300)]
    summaries = []
    for order in range(3):
        random.Random(order).shuffle(results)
        stats = CampaignStats(1, True, 2)
        for r in results:
            stats.add(r)
        summaries.append(stats.to_json())
    assert summaries[0] == summaries[1] == summaries[2]
    data = summaries[0]
    assert (data["runs"], data["failed"]) == (300, 43)
    assert [f["seed"] for f in data["failures"]] == list(range(0, 300, 7))
    cov = data["coverage"]
    assert cov["arcs_exercised"] == 4 and cov["arcs_total"] == len(ALL_ARCS)
    assert cov["cells"] == {"STOP": {"C0": 200, "C1": 200, "C2": 200}}
    assert cov["fault_kinds"] == {"none": {"drawn": 150, "fired": 30},
                                  "truncate": {"drawn": 150, "fired": 30}}


def test_failures_kept_are_bounded_to_the_smallest_seeds() -> None:
    stats = CampaignStats(1, True, 1)
    seeds = list(range(MAX_FAILURES + 500))
    random.Random(5).shuffle(seeds)
    for s in seeds:
        stats.add(_result(s, ok=False))
    assert stats.failed_count == MAX_FAILURES + 500
    kept = stats.failed
    assert len(kept) == MAX_FAILURES and [r.seed for r in kept] == list(range(MAX_FAILURES))
    assert stats.to_json()["failures_kept"] == MAX_FAILURES


def test_a_campaign_reports_coverage() -> None:
    data = run_campaign(20, 5, faults=True).to_json()
    cov = data["coverage"]
    assert cov["arcs_exercised"] >= 5 and sum(cov["arcs"].values()) > 20
    assert cov["cells_exercised"] >= 5
    assert sum(row["drawn"] for row in cov["fault_kinds"].values()) == 20
    assert sum(cov["outcomes"].values()) == 20
