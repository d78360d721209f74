"""Campaigns on a real Dask cluster: a ``dask scheduler`` and two ``dask worker`` processes on
127.0.0.1 give the same runs, passes, failures and coverage as the local executor.

Skipped only when ``distributed`` is not importable; the error path without it is tested
whatever is installed (a subprocess hides the package)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CLI = [sys.executable, "-c", "import sys; from vfio_user_mig.cli import main; sys.exit(main())"]
RUNS, SEED = 200, 3
#: A run's seed decides all of its record but its time, whatever the executor: a crashing
#: server answers every message sent before the crash (``Endpoint.crash``), so where a run
#: fails, its rounds, checks and arcs do not depend on thread timing.
SUMMARY_FIELDS = ("runs", "passed", "failed", "seed", "faults", "outcomes", "fault_kinds",
                  "transports", "failures", "failures_kept")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group, SIGKILL it if it is still there after 5 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


@pytest.fixture(scope="module")
def scheduler(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The address of a scheduler with two single-threaded workers (separate processes)."""
    distributed = pytest.importorskip("distributed")
    tmp = tmp_path_factory.mktemp("dask")
    sched_file = tmp / "scheduler.json"
    procs: list[subprocess.Popen[bytes]] = []
    log = (tmp / "cluster.log").open("wb")
    try:
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
             "--port", "0", "--no-dashboard", "--scheduler-file", str(sched_file)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        deadline = time.monotonic() + 30
        while not sched_file.exists() or not sched_file.read_text().strip():
            assert procs[0].poll() is None, "dask scheduler exited"
            assert time.monotonic() < deadline, "dask scheduler did not start"
            time.sleep(0.1)
        address = json.loads(sched_file.read_text())["address"]
        for _ in range(2):
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads",
                 "1", "--host", "127.0.0.1", "--no-dashboard"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        with distributed.Client(address, timeout="20s") as client:
            client.wait_for_workers(2, timeout=40)
            assert len(client.nthreads()) == 2
        yield address
    finally:
        for proc in reversed(procs):
            _stop(proc)
        log.close()


def _simulate(tmp: Path, name: str, *extra: str) -> tuple[dict[str, Any], dict[int, Any]]:
    """``simulate --runs RUNS --seed SEED --faults --json --out``: (summary, records by seed)."""
    out = tmp / f"{name}.jsonl"
    proc = subprocess.run(
        [*CLI, "simulate", "--runs", str(RUNS), "--seed", str(SEED), "--faults", "--json",
         "--out", str(out), *extra], capture_output=True, text=True, timeout=120)
    assert proc.returncode in (0, 1), proc.stderr
    summary = json.loads(proc.stdout)
    records = {}
    for line in out.read_text().splitlines():
        record = json.loads(line)
        record.pop("elapsed_s")  # everything else of a run is fixed by its seed
        records[record["seed"]] = record
    return summary, records


def test_campaign_on_a_dask_cluster_equals_the_local_one(scheduler: str,
                                                         tmp_path: Path) -> None:
    local, local_runs = _simulate(tmp_path, "local", "--workers", "2")
    dask, dask_runs = _simulate(tmp_path, "dask", "--executor", "dask", "--scheduler",
                                scheduler, "--workers", "2", "--batch-size", "25")
    assert (dask["executor"], dask["scheduler"]) == ("dask", scheduler)
    assert (local["executor"], local["scheduler"]) == ("local", None)
    assert (dask["runs"], dask["passed"], dask["failed"]) == (
        local["runs"], local["passed"], local["failed"]) and local["runs"] == RUNS
    assert len(local_runs) == RUNS and dask_runs == local_runs  # every run's outcome
    assert {k: dask[k] for k in SUMMARY_FIELDS} == {k: local[k] for k in SUMMARY_FIELDS}
    cov = {name: s["coverage"] for name, s in (("local", local), ("dask", dask))}
    assert cov["dask"] == cov["local"]  # arcs, cells, faults, outcomes: every count
    assert cov["local"]["arcs_exercised"] >= 10 and cov["local"]["cells_exercised"] >= 20


def test_run_batched_on_the_cluster_propagates_results_and_errors(scheduler: str) -> None:
    from vfio_user_mig.simulator.executor import run_batched

    got = sorted(run_batched(abs, range(-40, 0), executor="dask", scheduler=scheduler,
                             batch_size=7))
    assert got == list(range(1, 41))
    with pytest.raises(ValueError, match="invalid literal"):
        list(run_batched(int, ["1", "x"], executor="dask", scheduler=scheduler,
                         batch_size=1))


def test_convergence_grid_on_the_cluster_equals_the_local_one(scheduler: str) -> None:
    from vfio_user_mig.studies.convergence import QUICK_GRID, run_grid

    local = run_grid(QUICK_GRID, workers=2)
    assert run_grid(QUICK_GRID, executor="dask", scheduler=scheduler, batch_size=3) == local
    assert len(local) == QUICK_GRID.size


def test_without_distributed_dask_is_refused_with_the_install_hint() -> None:
    code = ("import sys; sys.modules['distributed'] = None\n"
            "from vfio_user_mig.cli import main\n"
            "sys.exit(main(['simulate', '--runs', '3', '--executor', 'dask']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2
    assert "pip install 'vfio-user-mig[cluster]'" in proc.stderr
    assert proc.stdout == ""
