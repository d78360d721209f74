"""Pinned runs of the benchmark's campaign (seed 11, faults): what each run did and decided.

Optimising the campaign's harness (the driver, the clients, the workload, the per-run set-up)
must not change its scenarios: the same seed draws the same scenario, which makes the same
requests, probes and faults, migrates the same bytes over the same simulated time and ends
with the same verdict. One run per (outcome, fault kind, fired, transport) class of the first
400 runs is pinned here: the run's verdict and counters, the trace summary's byte counts and
simulated times (:func:`~vfio_user_mig.simulator.migration.trace.summarize`), and a digest of
the FSM arcs walked and (state, command) cells probed (:class:`RunCoverage`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from vfio_user_mig.simulator.migration.campaign import draw, run_scenario, run_seed
from vfio_user_mig.simulator.migration.trace import load, summarize

#: index, ok, outcome, fault, fired, rounds, checks, transport, stream bytes, RAM bytes,
#: downtime ms, total ms, digest of (arcs, cells)
PINNED = [
    (0, True, "failed", "server_disconnect src at 15", True, 1, 14, "main", 16894, 139264, None, 37.351, "54ba3df913c8"),  # noqa: E501
    (1, True, "verified", "slow_peer dst at 19", False, 1, 16, "main", 16894, 65536, 0.272, 1.268, "5d97b15610a8"),  # noqa: E501
    (2, True, "verified", "dst_crash dst at 16", False, 2, 9, "main", 16894, 90112, 6.121, 25.752, "8b85fbd4b19f"),  # noqa: E501
    (3, True, "failed", "device_action src STOP->STOP_COPY errno 5 broken", True, 1, 3, "separate", 0, 262144, None, 62.52, "960019b402bd"),  # noqa: E501
    (4, True, "failed", "bitflip dst at 0", True, 1, 13, "main", 33310, 454656, None, 116.68, "e9ec632eb24c"),  # noqa: E501
    (5, True, "verified", "bitflip dst at 1", False, 1, 10, "main", 33310, 372736, 8.877, 24.522, "bbda43a21a04"),  # noqa: E501
    (6, True, "failed", "device_action src PRE_COPY_P2P->STOP_COPY errno 5 broken", True, 3, 6, "main", 32906, 81920, None, 27.477, "503efa0c32fe"),  # noqa: E501
    (9, True, "failed", "client_disconnect src at 2", True, 0, 4, "main", 0, 0, None, 0.0, "5e20e55e141a"),  # noqa: E501
    (13, True, "failed", "dst_crash dst at 7", True, 1, 19, "main", 33310, 176128, None, 3.341, "6f1823337ee5"),  # noqa: E501
    (14, True, "verified", "client_disconnect src at 21", False, 1, 20, "main", 16894, 266240, 5.124, 67.644, "1229b3aad165"),  # noqa: E501
    (16, True, "verified", "server_disconnect src at 50", False, 3, 20, "main", 66142, 262144, 0.044, 19.647, "3d2c52fc39c9"),  # noqa: E501
    (17, True, "verified", "slow_peer dst at 8", True, 1, 21, "main", 33310, 380928, 9.366, 25.011, "3116485922bd"),  # noqa: E501
    (18, True, "verified", "truncate dst at 3", False, 1, 21, "main", 66142, 438272, 14.76, 30.405, "fa113fe8bef6"),  # noqa: E501
    (21, True, "failed", "dst_crash dst at 0", True, 0, 21, "separate", 0, 0, None, 0.0, "eb1669035e9c"),  # noqa: E501
    (24, True, "failed", "bitflip dst at 0", True, 1, 13, "separate", 33310, 65536, None, 5.952, "e072375697ae"),  # noqa: E501
    (27, True, "verified", "client_disconnect dst at 12", False, 1, 10, "separate", 66142, 65536, 0.044, 7.989, "fc0d78aca659"),  # noqa: E501
    (33, True, "verified", "none", False, 1, 14, "main", 131806, 65536, 0.026, 3.161, "5738db254119"),  # noqa: E501
    (35, True, "verified", "none", False, 1, 16, "separate", 66142, 139264, 0.572, 12.663, "1747c4eada8f"),  # noqa: E501
    (42, True, "failed", "truncate dst at 9", True, 1, 8, "main", 131806, 282624, None, 25.482, "5b0efc334aa2"),  # noqa: E501
    (43, True, "verified", "slow_peer src at 7", True, 2, 6, "separate", 140070, 417792, 3.074, 34.411, "ffc953f30411"),  # noqa: E501
    (48, True, "verified", "server_disconnect src at 30", False, 1, 6, "separate", 33310, 266240, 2.43, 18.075, "fbf5fca807fe"),  # noqa: E501
    (50, True, "verified", "bitflip dst at 3", False, 2, 14, "separate", 131806, 65536, 7.916, 11.843, "e6db793eddb1"),  # noqa: E501
    (62, True, "verified", "dst_crash dst at 21", False, 1, 16, "separate", 131806, 458752, 19.995, 35.64, "f72cbff01405"),  # noqa: E501
    (71, True, "not_converged", "truncate dst at 1", True, 8, 12, "main", 230290, 1548288, None, 28.443, "93f910665666"),  # noqa: E501
    (77, True, "failed", "truncate dst at 0", True, 1, 20, "separate", 33310, 65536, None, 23.667, "22cad80e4ab0"),  # noqa: E501
    (98, True, "not_converged", "none", False, 6, 15, "main", 0, 1048576, None, 16.925, "346237488d77"),  # noqa: E501
    (131, True, "verified", "truncate dst at 9", False, 1, 18, "separate", 33310, 131072, 8.122, 39.392, "bc93040382a4"),  # noqa: E501
    (138, True, "failed", "client_disconnect src at 52", True, 6, 15, "separate", 0, 315392, None, 75.655, "b9e8958d1cab"),  # noqa: E501
    (199, True, "failed", "server_disconnect src at 7", True, 0, 23, "separate", 0, 131072, None, 31.27, "dc781f9cc272"),  # noqa: E501
    (206, True, "not_converged", "none", False, 8, 7, "separate", 448698, 1572864, None, 484.378, "00f08e69da59"),  # noqa: E501
    (278, True, "not_converged", "bitflip dst at 18", True, 3, 6, "main", 181070, 360448, None, 130.228, "9f9e35a56df8"),  # noqa: E501
    (337, True, "not_converged", "truncate dst at 2", False, 8, 14, "main", 0, 1253376, None, 300.968, "0d335fd19ef4"),  # noqa: E501
]


@pytest.mark.parametrize("pin", PINNED, ids=[str(p[0]) for p in PINNED])
def test_benchmark_campaign_runs_are_unchanged(pin: tuple[object, ...], tmp_path: Path) -> None:
    index = int(str(pin[0]))
    path = tmp_path / "trace.jsonl"
    r = run_scenario(draw(run_seed(11, index), True), trace=str(path))
    s = summarize(load(path))
    coverage = hashlib.sha256(json.dumps([r.arcs, r.cells], sort_keys=True).encode())
    got = (index, r.ok, r.outcome, r.fault, r.fired, r.rounds, r.checks, r.transport,
           s["stream_bytes"], s["ram_bytes"], s["downtime_ms"], s["total_ms"],
           coverage.hexdigest()[:12])
    assert got == pin, r.reason
