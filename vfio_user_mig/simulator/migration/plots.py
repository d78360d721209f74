"""Pictures of one migration, drawn from its trace alone.

Every function takes trace events: what :func:`~.trace.load` returns for a trace file, or
:attr:`~.driver_types.MigrationResult.trace_events`. matplotlib is imported inside the functions
(with the Agg backend unless an interactive one is already set), so importing this module or
running a migration without ``--plot`` does not import it.

* :func:`draw_timeline`: the source and destination lanes, one bar per state walked (as
  :func:`~.trace.summarize` counts them), the MIG_DEVICE_STATE SETs at the times they happened,
  the ends of the pre-copy rounds, errors, and the downtime window shaded;
* :func:`draw_rounds`: bytes sent per pre-copy round (device stream and guest RAM stacked, the
  stop-copy phase hatched) and the dirty pages sent in each, with the switchover marked;
* :func:`save_migration_figure`: both in one figure, saved as PNG, SVG or PDF.

Events without chunk/ram records (a trace kept with ``keep_chunks=False``) still draw: the
rounds come from ``round`` events; only the stop-copy bytes are then unknown (drawn as 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from vfio_user_mig.model.plot import pyplot
from vfio_user_mig.simulator.migration.trace import Event, summarize

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

#: Fill colour of each state's bar (the saving group warm, like the FSM pictures).
STATE_COLORS: dict[str, str] = {
    "RUNNING": "#8fc98f",
    "RUNNING_P2P": "#b9dfb0",
    "PRE_COPY": "#f6c89f",
    "PRE_COPY_P2P": "#f9dcc0",
    "STOP_COPY": "#e89a5c",
    "STOP": "#b0b8c8",
    "RESUMING": "#9cc3e6",
    "ERROR": "#f4a6a6",
}
DOWNTIME_COLOR = "#d62728"
DEVICE_COLOR = "#4c72b0"
RAM_COLOR = "#55a868"
LANES = (("src", "source"), ("dst", "destination"))


@dataclass
class Segment:
    """One state a side was in, from ``begin`` to ``end`` (ms since the start event)."""

    state: str
    begin: float
    end: float


def _t0(events: list[Event]) -> float:
    start = next((e for e in events if e["ev"] == "start"), None)
    if start is not None:
        return float(start["t"])
    return float(events[0]["t"]) if events else 0.0


def _ms(t: float, t0: float) -> float:
    return (t - t0) * 1000.0


def _end_ms(events: list[Event], t0: float) -> float:
    end = next((e for e in reversed(events) if e["ev"] == "end"), None)
    last = end if end is not None else (events[-1] if events else {"t": t0})
    return _ms(float(last["t"]), t0)


def state_segments(events: list[Event], side: str) -> tuple[list[Segment], float | None]:
    """The states ``side`` walked with their times: the same walk as
    :func:`~.trace.summarize`'s ``source_path``/``destination_path`` (states passed through
    inside one SET have zero length). Second: the time (ms) the state became unknown (a SET
    failed and the state could not be read back), or None."""
    t0 = _t0(events)
    end = _end_ms(events, t0)
    segments: list[Segment] = []
    lost: float | None = None
    for e in events:
        if e["ev"] != "state" or e["side"] != side:
            continue
        t = _ms(float(e["t"]), t0)
        if not segments:
            segments.append(Segment(e["from"], 0.0, end))
        arcs: list[str] = e["arcs"]
        reached = e["reached"]
        if e["ok"]:
            new = arcs[1:]
        elif reached in arcs:
            new = arcs[1 : arcs.index(reached) + 1]
        elif reached is not None:
            new = [reached]
        else:
            segments[-1].end = t
            lost = t
            continue
        for state in new:
            segments[-1].end = t
            segments.append(Segment(state, t, end))
        if new:
            lost = None
    return segments, lost


def _new_axes(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Any, Any]:
    if ax is not None:
        return ax.figure, ax
    plt = pyplot()
    fig, new = plt.subplots(figsize=figsize)
    return fig, new


def draw_timeline(events: list[Event], ax: Axes | None = None) -> Figure:
    """The state timeline of source and destination on ``ax`` (a new figure when None)."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    fig, ax = _new_axes(ax, (11, 3.6))
    summary = summarize(events)
    t0 = _t0(events)
    end = _end_ms(events, t0)
    tail = max(end * 0.04, 1e-3)  # the final states stay: drawn a little past the end
    seen: list[str] = []
    lanes = {side: y for y, (side, _) in enumerate(reversed(LANES))}
    for side, name in LANES:
        y = lanes[side]
        segments, lost = state_segments(events, side)
        if not segments:
            continue
        if lost is None:
            segments[-1].end = end + tail
        for s in segments:
            if s.state not in seen:
                seen.append(s.state)
        ax.barh([y] * len(segments), [s.end - s.begin for s in segments],
                left=[s.begin for s in segments], height=0.5,
                color=[STATE_COLORS.get(s.state, "#dddddd") for s in segments],
                edgecolor="#444444", linewidth=0.8, label=f"_{name} states")
        for s in segments:
            if s.end - s.begin > 0.07 * (end + tail):
                ax.text((s.begin + s.end) / 2, y, s.state, ha="center", va="center", fontsize=8)
        if lost is not None:
            ax.barh([y], [end + tail - lost], left=[lost], height=0.5, color="white",
                    edgecolor="#888888", hatch="//", label="_state unknown")
        # One arc marker per SET instant; SETs at the same time are one walk.
        sets: dict[float, list[str]] = {}
        for e in events:
            if e["ev"] == "state" and e["side"] == side:
                walk = sets.setdefault(_ms(float(e["t"]), t0), [])
                arcs = (list(e["arcs"]) if e["ok"]
                        else [e["from"], f"{e['to']} (errno {e['errno']})"])
                walk.extend(arcs[1:] if walk and walk[-1] == arcs[0] else arcs)
        up = side == "src"
        for i, (t, walk) in enumerate(sorted(sets.items())):
            ax.plot([t, t], [y - 0.32, y + 0.32], color="black", linewidth=1.6, zorder=3)
            right = t > 0.55 * (end + tail)  # late SETs: text to the left of the marker
            ax.annotate("\u2192".join(walk), (t, y + (0.3 if up else -0.3)),
                        xytext=(-3 if right else 3, (5 + 12 * (i % 2)) * (1 if up else -1)),
                        textcoords="offset points", fontsize=7, ha="right" if right else "left",
                        va="bottom" if up else "top")
    for e in events:
        if e["ev"] == "round":
            ax.axvline(_ms(float(e["t"]), t0), color="#777777", linestyle=":", linewidth=0.9)
        elif e["ev"] == "error":
            ax.axvline(_ms(float(e["t"]), t0), color="#a00000", linestyle="--", linewidth=1.0)
    downtime = next((e for e in events if e["ev"] == "downtime"), None)
    handles: list[Any] = [Patch(facecolor=STATE_COLORS.get(s, "#dddddd"), edgecolor="#444444",
                                label=s) for s in seen]
    if downtime is not None:
        lo, hi = _ms(float(downtime["start"]), t0), _ms(float(downtime["end"]), t0)
        label = f"downtime {float(downtime['ms']):.1f} ms"
        handles.append(ax.axvspan(lo, hi, color=DOWNTIME_COLOR, alpha=0.18, zorder=0,
                                  label=label))
        ax.text((lo + hi) / 2, 0.5, label, ha="center", va="center", fontsize=8,
                color=DOWNTIME_COLOR, fontweight="bold")
    handles.append(Line2D([], [], color="black", linewidth=1.6, label="state SET (arcs walked)"))
    if summary["precopy_rounds"]:
        handles.append(Line2D([], [], color="#777777", linestyle=":",
                              label="end of a pre-copy round"))
    if summary["errors"]:
        handles.append(Line2D([], [], color="#a00000", linestyle="--", label="error"))
    ax.set_yticks([lanes[side] for side, _ in LANES], [name for _, name in LANES])
    ax.set_ylabel("device (side)")
    ax.set_ylim(-0.9, 1.9)
    ax.set_xlim(0, end + tail)
    ax.set_xlabel("time (ms)")
    dt = summary["downtime_ms"]
    ax.set_title(f"Migration timeline: {summary['outcome']}, total {summary['total_ms']:.1f} ms, "
                 f"downtime {'-' if dt is None else f'{dt:.1f} ms'}")
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8,
              frameon=False)
    return cast("Figure", fig)


def _byte_unit(n: float) -> tuple[str, int]:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return unit, size
    return "B", 1


def draw_rounds(events: list[Event], ax: Axes | None = None) -> Figure:
    """Bytes per pre-copy round (device stream and guest RAM stacked, the stop-copy phase
    hatched), dirty pages sent per round on a second y axis, and the switchover marked."""
    from matplotlib.patches import Patch

    fig, ax = _new_axes(ax, (11, 4.2))
    rounds = [e for e in events if e["ev"] == "round"]
    xs = [int(r["round"]) for r in rounds]
    stop_dev = sum(int(e["bytes"]) for e in events
                   if e["ev"] == "chunk" and e.get("phase") == "stopcopy")
    stop_ram = sum(int(e["bytes"]) for e in events
                   if e["ev"] == "ram" and e.get("phase") == "stopcopy")
    has_stop = any(e["ev"] == "state" and e["side"] == "src" and e["ok"]
                   and e["to"] == "STOP_COPY" for e in events)
    stop_x = (max(xs) if xs else 0) + 1
    peak = max([int(r["bytes"]) for r in rounds] + [stop_dev + stop_ram, 1])
    unit, size = _byte_unit(peak)
    dev = [int(r["device_bytes"]) / size for r in rounds]
    ram = [int(r["ram_bytes"]) / size for r in rounds]
    ax.bar(xs, dev, color=DEVICE_COLOR, label="device stream (pre-copy)")
    ax.bar(xs, ram, bottom=dev, color=RAM_COLOR, label="guest RAM (pre-copy)")
    handles: list[Any] = [Patch(color=DEVICE_COLOR, label="device stream"),
                          Patch(color=RAM_COLOR, label="guest RAM")]
    if has_stop:
        ax.bar([stop_x], [stop_dev / size], color=DEVICE_COLOR, hatch="//", edgecolor="white",
               label="_device stream (stop-copy)")
        ax.bar([stop_x], [stop_ram / size], bottom=[stop_dev / size], color=RAM_COLOR,
               hatch="//", edgecolor="white", label="_guest RAM (stop-copy)")
        handles.append(Patch(facecolor="#999999", hatch="//", edgecolor="white",
                             label="stop-copy (downtime)"))
    ticks = xs + ([stop_x] if has_stop else [])
    ax.set_xticks(ticks, [str(x) for x in xs] + (["stop-copy"] if has_stop else []))
    ax.set_xlabel("pre-copy round")
    ax.set_ylabel(f"bytes sent ({unit})")
    if ticks:
        ax.set_xlim(min(ticks) - 0.7, max(ticks) + 0.7)
    # Where the policy decided: after the switchover round, or where it gave up.
    last = rounds[-1] if rounds else None
    title_end = "no pre-copy round"
    if last is not None:
        decision = str(last["decision"])
        switched = decision == "switchover"
        mark = ax.axvline(int(last["round"]) + 0.5, color="black" if switched else "#a00000",
                          linestyle="--", linewidth=1.2,
                          label=f"{'switchover' if switched else decision} after round "
                                f"{last['round']}")
        handles.append(mark)
        title_end = str(mark.get_label())
    # Dirty pages sent at the start of each round (round 0 in the trace: the stop-copy).
    twin = ax.twinx()
    dirty = [e for e in events if e["ev"] == "dirty"
             and (int(e["round"]) in xs or (int(e["round"]) == 0 and has_stop))]
    dx = [stop_x if int(e["round"]) == 0 else int(e["round"]) for e in dirty]
    page = next((int(e["bytes"]) // int(e["pages"]) for e in events
                 if e["ev"] == "ram" and e.get("pages")), None)
    handles += twin.plot(dx, [int(e["guest"]) for e in dirty], "o-", color="#8c564b",
                         label="dirty pages, vCPU log")
    handles += twin.plot(dx, [int(e["dma"]) for e in dirty], "s--", color="#dd8452",
                         label="dirty pages, device DMA log")
    twin.set_ylabel("dirty pages sent" + (f" ({page // 1024} KiB pages)" if page else ""))
    twin.set_ylim(bottom=0)
    params = next((e for e in events if e["ev"] == "start"), {})
    ax.set_title(f"Pre-copy rounds ({params.get('policy', '?')} policy): {len(rounds)} "
                 f"round(s), {title_end}")
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.1, 1.0), fontsize=8,
              frameon=False)
    return cast("Figure", fig)


def save_migration_figure(events: list[Event], path: str | Path) -> Path:
    """The timeline above the rounds in one figure, saved to ``path`` (format from the
    suffix: .png, .svg, .pdf)."""
    plt = pyplot()
    out = Path(path)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(12, 7.8),
                                      gridspec_kw={"height_ratios": [1, 1.15]})
    try:
        draw_timeline(events, top)
        draw_rounds(events, bottom)
        params = next((e for e in events if e["ev"] == "start"), {})
        fig.suptitle(f"vfio-user live migration: caps {params.get('caps', '?')}, "
                     f"{params.get('clock', '?')} clock", fontsize=12)
        fig.tight_layout()
        fig.savefig(out, dpi=120, bbox_inches="tight")
    finally:
        plt.close(fig)
    return out


__all__ = ["Segment", "draw_rounds", "draw_timeline", "save_migration_figure", "state_segments"]
