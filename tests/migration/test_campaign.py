"""Randomized campaigns: seeded runs with faults, the invariants, replay, workers."""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vfio_user_mig.model import ALL_CAPS, MigrationCaps, State
from vfio_user_mig.protocol.gating import gate
from vfio_user_mig.simulator.client.api import Client
from vfio_user_mig.simulator.migration import campaign
from vfio_user_mig.simulator.migration.campaign import (
    Predictor,
    Scenario,
    draw,
    run_campaign,
    run_scenario,
)
from vfio_user_mig.simulator.migration.faults import FAULT_KINDS, Fault, driver_arcs
from vfio_user_mig.simulator.server.hosting import host_device
from vfio_user_mig.simulator.server.io import serve_socketpair
from vfio_user_mig.wire.constants import Command

#: Larger campaigns on demand: VFIO_USER_MIG_CAMPAIGN_RUNS=5000 pytest tests/migration
EXTRA_RUNS = int(os.environ.get("VFIO_USER_MIG_CAMPAIGN_RUNS", "0"))


def test_campaign_of_300_seeded_runs_with_faults() -> None:
    result = run_campaign(300, 1, faults=True)
    data = result.to_json()
    assert data["runs"] == 300
    assert data["failed"] == 0, data["failures"][:5]
    kinds = data["fault_kinds"]
    assert set(FAULT_KINDS) <= set(kinds)
    assert all(row["fired"] > 0 for k, row in kinds.items() if k != "none")
    assert data["outcomes"].get("verified", 0) > 50 and data["outcomes"].get("failed", 0) > 50
    # About a quarter of the runs carry migration data on the separate socket.
    separate = data["transports"]["separate"]
    assert 40 <= separate["runs"] <= 110 and separate["passed"] == separate["runs"]


@pytest.mark.skipif(EXTRA_RUNS == 0, reason="set VFIO_USER_MIG_CAMPAIGN_RUNS for a big one")
def test_large_campaign_on_demand() -> None:
    result = run_campaign(EXTRA_RUNS, 7, faults=True, workers=2)
    assert not result.failed, [(r.seed, r.reason) for r in result.failed[:5]]


def test_scenarios_are_deterministic_and_replayable() -> None:
    assert draw(123, True) == draw(123, True)
    assert draw(123, False).fault is None
    a, b = run_scenario(draw(1_000_007, True)), run_scenario(draw(1_000_007, True))
    assert (a.ok, a.outcome, a.fault, a.fired) == (b.ok, b.outcome, b.fault, b.fired)
    assert campaign.replay_command(5, True) == "vfio-user-mig simulate --replay 5 --faults"


def test_workers_give_the_same_results() -> None:
    runs: dict[int, list[campaign.RunResult]] = {1: [], 2: []}
    summaries = {w: run_campaign(12, 3, faults=True, workers=w, progress=runs[w].append,
                                 batch_size=2).to_json() for w in runs}
    key = {w: sorted((r.seed, r.ok, r.outcome, r.fault, r.arcs, r.cells) for r in runs[w])
           for w in runs}
    assert key[1] == key[2] and len(key[1]) == 12
    for s in summaries.values():
        del s["elapsed_s"], s["runs_per_s"], s["workers"]
    assert summaries[1] == summaries[2]


def test_predictor_follows_the_model() -> None:
    caps = MigrationCaps(5)  # STOP_COPY|PRE_COPY
    p = Predictor(caps)
    assert p.predict("src", State.STOP_COPY, int(State.PRE_COPY)) == (22, State.STOP_COPY)
    assert p.predict("src", State.RUNNING, 8) == (22, State.RUNNING)
    assert p.predict("src", State.ERROR, int(State.RUNNING)) == (22, State.ERROR)
    assert p.predict("src", State.RESUMING, int(State.RUNNING)) == (22, State.ERROR)
    p.injected["src"][(State.PRE_COPY, State.RUNNING)] = (5, False)  # PRE_COPY->RUNNING->STOP
    assert p.predict("src", State.PRE_COPY, int(State.STOP)) == (5, State.PRE_COPY)
    assert p.predict("src", State.PRE_COPY, int(State.STOP)) == (None, State.STOP)  # consumed


def test_invariants_catch_a_server_that_disagrees_with_the_model(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A campaign must fail when the server misbehaves: make STOP_COPY -> PRE_COPY 'legal' in
    the predictor only, and a run that asks for it reports a violation."""
    real = Predictor.predict

    def wrong(self: Predictor, side: str, cur: State, target: int) -> tuple[int | None, State]:
        if cur is State.STOP_COPY and target == State.PRE_COPY:
            return None, State.PRE_COPY
        return real(self, side, cur, target)

    monkeypatch.setattr(Predictor, "predict", wrong)
    sc = draw(1, False)
    sc = Scenario(**{**sc.__dict__, "caps": MigrationCaps(5),
                     "src_requests": (int(State.STOP_COPY), int(State.PRE_COPY)),
                     "probes": (2, 2)})
    r = run_scenario(sc)
    assert not r.ok and "model says" in r.reason


_sizes = st.sampled_from([1 << 14, 1 << 15, 1 << 16])


@st.composite
def scenarios(draw_: st.DrawFn) -> Scenario:
    caps = draw_(st.sampled_from(ALL_CAPS))
    device_mem = draw_(_sizes)
    chunk = draw_(st.sampled_from([4096, 16384]))
    kind = draw_(st.sampled_from((None, *FAULT_KINDS)))
    side = draw_(st.sampled_from(("src", "dst")))
    fault: Fault | None = None
    if kind in ("truncate", "bitflip"):
        fault = Fault(kind, "dst", at=draw_(st.integers(0, device_mem // chunk + 2)),
                      bit=draw_(st.integers(0, 1 << 20)))
    elif kind == "device_action":
        fault = Fault(kind, side, arc=draw_(st.sampled_from(driver_arcs(side, caps))),
                      errno=draw_(st.sampled_from((5, 12, 16, 22))), broken=draw_(st.booleans()))
    elif kind is not None:
        side = {"server_disconnect": "src", "dst_crash": "dst"}.get(kind, side)
        fault = Fault(kind, side, at=draw_(st.integers(0, 40)), delay=0.0005)
    states = st.sampled_from([int(s) for s in State] + [8])
    requests = tuple(draw_(st.lists(states, max_size=5)))
    return Scenario(
        seed=draw_(st.integers(0, 2**32)), caps=caps, device_mem=device_mem,
        guest_mem=draw_(st.sampled_from([16, 32])) * 4096, chunk=chunk,
        bandwidth=float(16 << 20),
        dirty_rate=float(draw_(st.sampled_from([0, 1, 4, 24]))) * (1 << 20),
        policy=draw_(st.sampled_from(("qemu", "iterations", "dirty-rate"))),
        iterations=draw_(st.integers(1, 3)), downtime_limit=draw_(st.sampled_from((0.002, 0.3))),
        src_requests=requests, dst_requests=tuple(draw_(st.lists(states, max_size=2))),
        probes=tuple(draw_(st.lists(st.integers(0, 4), min_size=len(requests),
                                    max_size=len(requests)))),
        fault=fault, mig_data_socket=draw_(st.booleans()))


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_invariants_hold_for_any_scenario(sc: Scenario) -> None:
    r = run_scenario(sc)
    assert r.ok, (sc.describe(), r.reason)


def test_device_memory_written_under_an_unread_record_tail() -> None:
    """Regression (campaign replay seed 1000012): StreamEncoder.read kept views of the shadow
    in its output while the next record's take() rewrote them (CRC mismatch downstream)."""
    from vfio_user_mig.simulator.device import MigDev

    src, dst = MigDev(mem_size=16384), MigDev(mem_size=16384)
    try:
        src.region_write(2, 0, b"A" * 16384, 0)
        src.on_arc(State.RUNNING, State.PRE_COPY)
        dst.on_arc(State.RUNNING, State.STOP)
        dst.on_arc(State.STOP, State.RESUMING)
        dst.mig_data_write(src.mig_data_read(16384))
        src.region_write(2, 3 * 4096 + 4025, b"B" * 16, 0)  # inside the record's unread tail
        dst.mig_data_write(src.mig_data_read(16384))
    finally:
        src.close()
        dst.close()


# ----- the probes: each one checks something real, counted after checking ----------------------
@contextmanager
def _probe_run(state: State) -> Iterator[tuple[campaign._Run, Client]]:
    """A campaign run's checker and a client of a fresh migdev server in ``state``."""
    hosted = host_device("migdev", mem_size=1 << 14)
    server_sock, client_sock = socket.socketpair()
    thread, stop = serve_socketpair(hosted.core, server_sock)
    client = Client(client_sock, timeout=5.0)
    try:
        client.negotiate()
        if state is not State.RUNNING:
            client.set_state(state)
        yield campaign._Run(Scenario(**{**draw(1, False).__dict__, "caps": MigrationCaps(5)})), \
            client
    finally:
        client.close()
        thread.join(5)
        stop.set()
        server_sock.close()
        hosted.close()


PROBE_NAMES = [c.name for c in campaign._PROBES]


@pytest.mark.parametrize("state", [State.RUNNING, State.STOP, State.RESUMING, State.PRE_COPY],
                         ids=lambda s: s.name)
@pytest.mark.parametrize("which", range(len(campaign._PROBES)), ids=PROBE_NAMES)
def test_every_probe_checks_the_server_and_counts_after(state: State, which: int) -> None:
    command = campaign._PROBES[which]
    with _probe_run(state) as (run, client):
        for _ in range(6):  # MIG_DATA_WRITE: past the 4-byte record prefix too
            before = run.checks
            run.probe(client, client.get_state(), which)
            assert run.violations == []
            accepted_reset = command == Command.DEVICE_RESET and gate(state, command) is None
            assert run.checks - before == (2 if accepted_reset else 1)
            if accepted_reset:
                assert client.get_state() is State.RUNNING
                break


@pytest.fixture
def mutant_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """Servers made meanwhile let every command through in STOP (the model's gate is kept)."""
    from vfio_user_mig.simulator.server import core as server_core

    real = server_core.gate_table

    def open_stop(caps: MigrationCaps | int) -> dict[tuple[int, int], int | None]:
        table = real(caps)
        return {k: None if k[0] == int(State.STOP) else v for k, v in table.items()}

    monkeypatch.setattr(server_core, "gate_table", open_stop)


@pytest.mark.parametrize("which", [campaign._PROBES.index(Command.DEVICE_GET_INFO),
                                   campaign._PROBES.index(Command.DEVICE_RESET)],
                         ids=["DEVICE_GET_INFO", "DEVICE_RESET"])
def test_a_probe_reports_a_mutant_server(mutant_server: None, which: int) -> None:
    command = campaign._PROBES[which]
    with _probe_run(State.STOP) as (run, client):
        run.probe(client, State.STOP, which)
    assert run.violations[0] == f"{command.name} in STOP: errno None, gate says 22"
    # and the whole campaign run reports it
    sc = Scenario(**{**draw(1, False).__dict__, "caps": MigrationCaps(5),
                     "src_requests": (int(State.STOP),), "probes": (which,)})
    r = run_scenario(sc)
    assert not r.ok and f"{command.name} in STOP: errno None, gate says 22" in r.reason


def test_campaign_runs_with_the_heap_frozen_and_gives_it_back() -> None:
    """run_campaign hides the objects alive before it from the cyclic collector while it
    runs (gc.freeze) and unfreezes them at the end, even when a caller had not frozen any."""
    import gc

    assert gc.get_freeze_count() == 0
    seen: list[int] = []
    result = run_campaign(2, 5, faults=True, progress=lambda r: seen.append(gc.get_freeze_count()))
    assert result.runs == 2 and not result.failed
    assert len(seen) == 2 and all(n > 0 for n in seen)
    assert gc.get_freeze_count() == 0


def test_known_path_is_the_models_answer() -> None:
    """The cached path the campaign's predictor and the driver ask for: transition_path's
    answer for every request, ``None`` exactly where it refuses (with EINVAL)."""
    from vfio_user_mig.model import InvalidTransition, known_path, transition_path

    for caps in ALL_CAPS:
        for cur in State:
            for target in State:
                try:
                    want: tuple[State, ...] | None = transition_path(cur, target, caps)
                except InvalidTransition as exc:
                    want = None
                    assert exc.errno == errno.EINVAL  # a refusal always carries EINVAL
                assert known_path(cur, target, caps) == want
