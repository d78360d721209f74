"""Figures of the transport study, drawn from its cells and runs alone.

The CLI (``vfio-user-mig study transport``) and ``notebooks/05-transport`` call the same
functions:

* :func:`draw_latency`: REGION_READ latency (p50 and p99, µs, log scale) against the chunk
  size, main socket vs separate migration-data socket, one panel per transfer phase
  (PRE_COPY of the ``pre_copy`` profile, STOP_COPY of the ``stop_copy`` profile), with the
  idle baseline;
* :func:`draw_latency_cdf`: the distribution of those latencies for one chunk size (largest by
  default) per transport, with the idle baseline;
* :func:`draw_throughput_downtime`: device-stream throughput (MiB/s) and downtime (ms) against
  the chunk size, per transport and profile;
* :func:`save_figures`: all of them as PNG files.

matplotlib is imported inside the functions (Agg unless an inline backend is active).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from vfio_user_mig.model.plot import pyplot
from vfio_user_mig.studies.transport import Run
from vfio_user_mig.studies.transport_results import Cell, chunk_label

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

COLORS = {"main": "#c44e52", "separate": "#4c72b0"}
LABELS = {"main": "main socket", "separate": "separate migration-data socket"}
#: (profile, phase, panel title) of the latency panels.
PANELS = (
    ("pre_copy", "pre_copy", "during PRE_COPY (guest running)"),
    ("stop_copy", "stop_copy", "during STOP_COPY (downtime; region access refused)"),
)
IDLE_COLOR = "#7f7f7f"


def _chunk_axis(ax: Axes, chunks: Sequence[int]) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(chunks), [chunk_label(c) for c in chunks])
    ax.minorticks_off()
    ax.set_xlabel("MIG_DATA_READ/WRITE chunk size")


def _idle_p50(cells: Sequence[Cell], profile: str) -> float | None:
    idle = sorted(c.p50_us for c in cells
                  if c.phase == "idle" and c.profile == profile and c.p50_us is not None)
    return idle[len(idle) // 2] if idle else None


def draw_latency(cells: Sequence[Cell]) -> Figure:
    """p50/p99 REGION_READ latency vs chunk size, per transport; one panel per phase that
    has data (see module docstring)."""
    panels = [p for p in PANELS
              if any(c.profile == p[0] and c.phase == p[1] for c in cells)]
    if not panels:
        raise ValueError("no transfer-phase cells to draw")
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 4.4),
                             layout="constrained", squeeze=False)
    for ax, (profile, phase, title) in zip(axes[0], panels, strict=True):
        chunks = sorted({c.chunk for c in cells if c.profile == profile and c.phase == phase})
        for transport in dict.fromkeys(c.transport for c in cells):
            rows = sorted((c for c in cells if (c.transport, c.profile, c.phase)
                           == (transport, profile, phase)), key=lambda c: c.chunk)
            color = COLORS.get(transport)
            label = LABELS.get(transport, transport)
            ax.plot([c.chunk for c in rows], [c.p50_us for c in rows], "o-", color=color,
                    label=f"{label}: p50")
            ax.plot([c.chunk for c in rows], [c.p99_us for c in rows], "^--", color=color,
                    label=f"{label}: p99")
        idle = _idle_p50(cells, profile)
        if idle is not None:
            ax.axhline(idle, color=IDLE_COLOR, linestyle=":",
                       label=f"idle p50 (no migration): {idle:.0f} µs")
        _chunk_axis(ax, chunks)
        ax.set_yscale("log")
        ax.set_ylabel("REGION_READ latency (µs)")
        ax.set_title(f"4-byte REGION_READ {title}")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
    fig.suptitle("Does migration data on the vfio-user socket block other requests?")
    result: Figure = fig
    return result


def draw_latency_cdf(runs: Sequence[Run], chunk: int | None = None,
                     profile: str = "pre_copy") -> Figure:
    """Cumulative distribution of REGION_READ latency in ``profile``'s transfer phase at
    ``chunk`` (the largest by default), per transport, with the idle baseline."""
    phase = profile
    chosen = [r for r in runs if r.spec.profile == profile]
    if not chosen:
        raise ValueError(f"no runs of profile {profile}")
    size = chunk if chunk is not None else max(r.spec.chunk for r in chosen)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.4), layout="constrained")
    series: dict[str, list[float]] = {}
    idle: list[float] = []
    for r in chosen:
        if r.spec.chunk != size:
            continue
        series.setdefault(r.spec.transport, []).extend(
            lat for p, lat, _e in r.samples if p == phase)
        idle.extend(lat for p, lat, _e in r.samples if p == "idle")
    if not any(series.values()):
        plt.close(fig)
        raise ValueError(f"no {phase} samples at chunk {size}")
    for name, values, color, style in (
        *((LABELS.get(t, t), v, COLORS.get(t), "-") for t, v in series.items()),
        ("idle (no migration)", idle, IDLE_COLOR, ":"),
    ):
        if not values:
            continue
        ordered = sorted(values)
        n = len(ordered)
        ax.step(ordered, [(i + 1) / n for i in range(n)], where="post", color=color,
                linestyle=style, label=f"{name} (n={n})")
    ax.set_xscale("log")
    ax.set_xlabel("REGION_READ latency (µs)")
    ax.set_ylabel("fraction of requests")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"REGION_READ latency during {phase.upper()}, {chunk_label(size)} chunks")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    result: Figure = fig
    return result


def draw_throughput_downtime(cells: Sequence[Cell]) -> Figure:
    """Device-stream throughput and downtime vs chunk size, per transport and profile."""
    rows = [c for c in cells if c.phase == "idle"]  # one row per transport x profile x chunk
    if not rows:
        raise ValueError("no cells to draw")
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.4), layout="constrained")
    chunks = sorted({c.chunk for c in rows})
    styles = {"pre_copy": ("o-", "PRE_COPY profile"), "stop_copy": ("s--", "STOP_COPY only")}
    for transport in dict.fromkeys(c.transport for c in rows):
        for profile in dict.fromkeys(c.profile for c in rows):
            series = sorted((c for c in rows if (c.transport, c.profile) == (transport, profile)),
                            key=lambda c: c.chunk)
            if not series:
                continue
            marker, pname = styles.get(profile, ("x-", profile))
            label = f"{LABELS.get(transport, transport)}, {pname}"
            xs = [c.chunk for c in series]
            left.plot(xs, [c.throughput_mbs for c in series], marker,
                      color=COLORS.get(transport), label=label)
            right.plot(xs, [c.downtime_ms for c in series], marker,
                       color=COLORS.get(transport), label=label)
    for ax in (left, right):
        _chunk_axis(ax, chunks)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    left.set_ylabel("device stream throughput (MiB/s)")
    left.set_title("Migration throughput (source -> VMM -> destination)")
    right.set_yscale("log")
    right.set_ylabel("downtime (ms)")
    right.set_title("Downtime (source stopped until destination running)")
    result: Figure = fig
    return result


def save_figures(cells: Sequence[Cell], runs: Sequence[Run], outdir: str | Path) -> list[Path]:
    """``latency.png``, ``latency-cdf.png`` (when a PRE_COPY profile ran) and
    ``throughput-downtime.png`` in ``outdir``."""
    plt = pyplot()
    out = Path(outdir)
    figures: list[tuple[str, Figure]] = [("latency.png", draw_latency(cells))]
    if any(r.spec.profile == "pre_copy" for r in runs):
        figures.append(("latency-cdf.png", draw_latency_cdf(runs)))
    figures.append(("throughput-downtime.png", draw_throughput_downtime(cells)))
    paths = []
    for name, fig in figures:
        path = out / name
        fig.savefig(path, dpi=90, bbox_inches="tight")
        plt.close(fig)
        paths.append(path)
    return paths


__all__ = ["draw_latency", "draw_latency_cdf", "draw_throughput_downtime", "save_figures"]
