"""CPU affinity for campaigns: ``isolation.one_cpu`` keeps a thread and the threads it starts
on one CPU and restores the affinity after; the local executor's pool workers get one CPU
each."""

from __future__ import annotations

import os
import threading

import pytest

from vfio_user_mig.simulator.executor import run_batched
from vfio_user_mig.simulator.migration.isolation import one_cpu

pytestmark = pytest.mark.skipif(
    not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
    reason="needs CPU affinity and at least 2 CPUs",
)


def test_one_cpu_pins_the_thread_and_its_children_then_restores() -> None:
    before = os.sched_getaffinity(0)
    seen: list[set[int]] = []
    with one_cpu():
        inside = os.sched_getaffinity(0)
        thread = threading.Thread(target=lambda: seen.append(os.sched_getaffinity(0)))
        thread.start()
        thread.join()
    assert len(inside) == 1 and inside <= before
    assert seen == [inside]
    assert os.sched_getaffinity(0) == before


def test_one_cpu_restores_after_an_exception() -> None:
    before = os.sched_getaffinity(0)
    with pytest.raises(RuntimeError), one_cpu():
        raise RuntimeError("boom")
    assert os.sched_getaffinity(0) == before


def _affinity(_item: int) -> tuple[int, ...]:
    return tuple(sorted(os.sched_getaffinity(0)))


def test_pool_workers_run_on_one_cpu_each() -> None:
    allowed = os.sched_getaffinity(0)
    results = list(run_batched(_affinity, range(8), workers=2, batch_size=1))
    assert len(results) == 8
    assert all(len(r) == 1 and set(r) <= allowed for r in results)
    assert os.sched_getaffinity(0) == allowed  # the parent is left alone


def test_an_in_process_campaign_runs_on_one_cpu_and_gives_the_caller_its_cpus_back() -> None:
    from vfio_user_mig.simulator.migration.campaign import iter_campaign, run_seed

    allowed = os.sched_getaffinity(0)
    seen = []
    for result in iter_campaign([run_seed(11, i) for i in range(3)], True, 1):
        assert result.ok, result.reason
        seen.append(os.sched_getaffinity(0))  # the campaign is still running
    assert len(seen) == 3
    assert all(len(s) == 1 and s <= allowed for s in seen)
    assert len(set(map(frozenset, seen))) == 1  # pinned once, not moved between runs
    assert os.sched_getaffinity(0) == allowed
