"""Results of the transport study, computed from its :class:`~.transport.Run` rows alone.

* :class:`Cell` / :func:`aggregate`: one row per transport x profile x chunk x phase, with
  nearest-rank latency percentiles (:func:`percentile`) and the per-run throughput, downtime
  and total time;
* :func:`conclusion`: what the numbers say, as sentences computed from them;
* :func:`summary_markdown`, :func:`write_csv` (``results.csv``) and :func:`write_samples`
  (``samples.csv``, every probe).

Figures are in :mod:`~vfio_user_mig.studies.transport_figures`, which imports this module
(never the reverse).
"""

from __future__ import annotations

import csv
import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from vfio_user_mig.studies.transport import KIB, MIB, PHASES, PROFILES, Run


@dataclass
class Cell:
    """One row of ``results.csv``: a transport x profile x chunk x phase, over the repeats.
    Latencies in µs (nearest-rank percentiles); throughput, downtime and total are per run,
    averaged (throughput) or medians (times), the same on every phase row of the cell."""

    transport: str
    profile: str
    chunk: int
    phase: str
    probes: int
    refused: int
    p50_us: float | None
    p90_us: float | None
    p99_us: float | None
    max_us: float | None
    throughput_mbs: float | None
    downtime_ms: float | None
    total_ms: float | None
    runs: int
    verified: int


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile ``q`` (0..100) of ``values`` (None when empty)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def aggregate(runs: Sequence[Run]) -> list[Cell]:
    """One :class:`Cell` per transport x profile x chunk x phase that has probes."""
    groups: dict[tuple[str, str, int], list[Run]] = {}
    for run in runs:
        s = run.spec
        groups.setdefault((s.transport, s.profile, s.chunk), []).append(run)
    cells = []
    for (transport, profile, chunk), group in groups.items():
        rates = [r.throughput_mbs for r in group if r.throughput_mbs is not None]
        for phase in PHASES:
            lat = [lat for r in group for p, lat, _e in r.samples if p == phase]
            if not lat:
                continue
            refused = sum(1 for r in group for p, _l, e in r.samples if p == phase and e)
            cells.append(Cell(
                transport, profile, chunk, phase, len(lat), refused,
                percentile(lat, 50), percentile(lat, 90), percentile(lat, 99), max(lat),
                statistics.fmean(rates) if rates else None,
                _median([r.downtime_ms for r in group]), _median([r.total_ms for r in group]),
                len(group), sum(r.verified for r in group),
            ))
    order = {p: i for i, p in enumerate(PHASES)}
    cells.sort(key=lambda c: (c.profile, c.chunk, c.transport, order[c.phase]))
    return cells


def chunk_label(n: int) -> str:
    """4 KiB, 1 MiB, ..."""
    return f"{n // MIB} MiB" if n >= MIB else f"{n // KIB} KiB"


def _fmt(v: float | None, digits: int = 0) -> str:
    return "-" if v is None else f"{v:,.{digits}f}"


def _cell(cells: Sequence[Cell], transport: str, profile: str, chunk: int,
          phase: str) -> Cell | None:
    for c in cells:
        if (c.transport, c.profile, c.chunk, c.phase) == (transport, profile, chunk, phase):
            return c
    return None


def _compared_chunk(cells: Sequence[Cell], profile: str, phase: str) -> int | None:
    """The largest chunk size with probes of ``phase`` on both transports."""
    both = [c.chunk for c in cells if (c.transport, c.profile, c.phase) == ("main", profile, phase)
            and c.p99_us is not None
            and (other := _cell(cells, "separate", profile, c.chunk, phase)) is not None
            and other.p99_us is not None]
    return max(both) if both else None


def conclusion(cells: Sequence[Cell]) -> list[str]:
    """What the numbers say, as sentences computed from them (one paragraph each): per
    profile that ran, the latency during its transfer on both transports at the largest chunk
    size where both have probes (or that none fell in the transfer), then throughput and
    downtime at the largest chunk size."""
    out: list[str] = []
    chunks = sorted({c.chunk for c in cells})
    if not chunks:
        return ["No run produced probes."]
    big = chunks[-1]
    for profile in (p for p in PROFILES if any(c.profile == p for c in cells)):
        phase = profile  # the phase in which this profile moves the device state
        where = ("While the guest runs (PRE_COPY)" if phase == "pre_copy" else
                 "During the downtime (STOP_COPY, where the server refuses region access)")
        size = _compared_chunk(cells, profile, phase)
        if size is None:
            out.append(f"{where}: no probe fell inside a transfer on both transports "
                       f"(transfers too short for the probe interval); nothing to compare.")
            continue
        main = _cell(cells, "main", profile, size, phase)
        sep = _cell(cells, "separate", profile, size, phase)
        if main is None or sep is None or not main.p99_us or not sep.p99_us:
            continue  # not reached: _compared_chunk found both with a p99
        ratio = main.p99_us / sep.p99_us
        text = (f"{where} with {chunk_label(size)} chunks, a 4-byte REGION_READ "
                f"took p50 {_fmt(main.p50_us)} µs / p99 {_fmt(main.p99_us)} µs on the main "
                f"socket and p50 {_fmt(sep.p50_us)} µs / p99 {_fmt(sep.p99_us)} µs with the "
                f"separate migration-data socket (p99 {ratio:.1f}x).")
        small = min(c.chunk for c in cells if (c.transport, c.profile, c.phase)
                    == ("main", profile, phase))
        main_small = _cell(cells, "main", profile, small, phase)
        if small < size and main_small is not None and main_small.p99_us is not None:
            text += (f" On the main socket the p99 goes from {_fmt(main_small.p99_us)} µs at "
                     f"{chunk_label(small)} to {_fmt(main.p99_us)} µs at {chunk_label(size)}.")
        idle = _cell(cells, "main", profile, size, "idle")
        if idle is not None and idle.p50_us is not None:
            text += f" Idle (no migration) p50: {_fmt(idle.p50_us)} µs."
        out.append(text)
    for profile in ("pre_copy", "stop_copy"):
        main = _cell(cells, "main", profile, big, "idle")
        sep = _cell(cells, "separate", profile, big, "idle")
        if main is None or sep is None:
            continue
        rate_m, rate_s = main.throughput_mbs, sep.throughput_mbs
        if rate_m and rate_s:
            out.append(
                f"Profile {profile}, {chunk_label(big)} chunks: device stream "
                f"{_fmt(rate_m)} MiB/s (main) vs {_fmt(rate_s)} MiB/s (separate), downtime "
                f"{_fmt(main.downtime_ms, 1)} ms vs {_fmt(sep.downtime_ms, 1)} ms, total "
                f"{_fmt(main.total_ms, 1)} ms vs {_fmt(sep.total_ms, 1)} ms.")
    return out


def summary_markdown(cells: Sequence[Cell], title: str = "Transport study") -> str:
    """The results as Markdown: the latency table, the throughput/downtime table and the
    computed conclusion."""
    lines = [f"# {title}", "",
             "REGION_READ (4 bytes, BAR0) latency in µs while a migration runs; nearest-rank "
             "percentiles over all probes of the cell.", "",
             "| profile | chunk | transport | phase | probes | refused | p50 | p90 | p99 | max |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for c in cells:
        lines.append(f"| {c.profile} | {chunk_label(c.chunk)} | {c.transport} | {c.phase} | "
                     f"{c.probes} | {c.refused} | {_fmt(c.p50_us)} | {_fmt(c.p90_us)} | "
                     f"{_fmt(c.p99_us)} | {_fmt(c.max_us)} |")
    lines += ["", "| profile | chunk | transport | stream MiB/s | downtime ms | total ms | "
              "verified |", "|---|---|---|---:|---:|---:|---:|"]
    for c in cells:
        if c.phase == "idle":
            lines.append(f"| {c.profile} | {chunk_label(c.chunk)} | {c.transport} | "
                         f"{_fmt(c.throughput_mbs)} | {_fmt(c.downtime_ms, 1)} | "
                         f"{_fmt(c.total_ms, 1)} | {c.verified}/{c.runs} |")
    lines += ["", "## Conclusion", ""]
    for paragraph in conclusion(cells):
        lines += [paragraph, ""]
    return "\n".join(lines)


def write_csv(cells: Sequence[Cell], path: str | Path) -> Path:
    """``results.csv``: one row per :class:`Cell`."""
    path = Path(path)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[x.name for x in fields(Cell)])
        writer.writeheader()
        for c in cells:
            writer.writerow({k: ("" if v is None else round(v, 3) if isinstance(v, float) else v)
                             for k, v in asdict(c).items()})
    return path


def write_samples(runs: Sequence[Run], path: str | Path) -> Path:
    """``samples.csv``: every probe (transport, profile, chunk, repeat, phase, latency_us,
    errno)."""
    path = Path(path)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["transport", "profile", "chunk", "repeat", "phase", "latency_us",
                         "errno"])
        for run in runs:
            s = run.spec
            for phase, latency, errno in run.samples:
                writer.writerow([s.transport, s.profile, s.chunk, s.repeat, phase,
                                 round(latency, 1), "" if errno is None else errno])
    return path


__all__ = [
    "Cell",
    "aggregate",
    "chunk_label",
    "conclusion",
    "percentile",
    "summary_markdown",
    "write_csv",
    "write_samples",
]
