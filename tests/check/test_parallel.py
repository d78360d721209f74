"""``check --random`` gives the same run whatever the executor: one process, forked workers
or a local Dask cluster (same checks, findings, failed sequences and coverage)."""

from __future__ import annotations

import functools
import importlib.util
import json
import subprocess
import sys

import pytest

SERVE = f"{sys.executable} -m vfio_user_mig.cli serve --device-mem 1M --socket {{socket}}"


def random_run(*extra: str) -> dict[str, object]:
    proc = subprocess.run(
        [sys.executable, "-m", "vfio_user_mig.cli", "check", "--spawn", SERVE, "--no-suite",
         "--random", "12", "--seed", "4", "--json", *extra],
        capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode in (0, 1), proc.stderr
    data: dict[str, object] = json.loads(proc.stdout)
    return data


@functools.cache
def one_process() -> dict[str, object]:
    """The reference run, made once for every executor compared with it."""
    return random_run()


def summary(data: dict[str, object]) -> tuple[object, ...]:
    cov = data["coverage"]
    rnd = data["random"]
    assert isinstance(cov, dict) and isinstance(rnd, dict)
    return (data["checks"], data["passed"], data["finding_count"],
            rnd["failed_sequences"], cov["cells"], cov["arcs"])


def test_workers_give_the_same_run_as_one_process(tmp_path: object) -> None:
    one = one_process()
    two = random_run("--workers", "2", "--batch-size", "3")
    assert summary(one) == summary(two)
    assert one["checks"] > 100  # type: ignore[operator]
    assert two["random"]["jobs"] == 4  # type: ignore[index]


@pytest.mark.skipif(importlib.util.find_spec("distributed") is None,
                    reason="distributed (the cluster extra) is not installed")
def test_dask_gives_the_same_run_as_one_process() -> None:
    assert summary(random_run("--executor", "dask", "--workers", "2")) == summary(one_process())


def test_fan_out_needs_a_spawn_target(tmp_path: object) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "vfio_user_mig.cli", "check", "--socket", "/nonexistent.sock",
         "--random", "4", "--workers", "2"], capture_output=True, text=True, timeout=60,
        check=False)
    assert proc.returncode == 2 and "needs --spawn" in proc.stderr
