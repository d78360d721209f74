"""Figures of the convergence study, drawn from its :class:`~.convergence.Cell` rows alone.

The CLI (``vfio-user-mig study convergence``) and the notebook call the same functions:

* :func:`draw_heatmaps`: one heatmap per downtime limit of a metric (``total_ms`` or
  ``downtime_ms``) over bandwidth x dirty rate, for one policy and device size; cells that did
  not converge are hatched and labelled, cells whose downtime exceeded the limit are outlined;
* :func:`draw_policy_comparison`: per switchover policy, how many cells were verified within
  the limit, verified over it, did not converge, or failed (stacked bars);
* :func:`save_figures`: all of them as PNG files.

matplotlib is imported inside the functions (Agg unless an inline backend is active).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vfio_user_mig.model.plot import pyplot
from vfio_user_mig.studies.convergence import Cell, policy_stats, rate_label, size_label

if TYPE_CHECKING:
    from matplotlib.figure import Figure

METRICS = {"total_ms": "total time", "downtime_ms": "downtime"}
NOT_CONVERGED_COLOR = "#bbbbbb"
FAILED_COLOR = "#f4a6a6"
OVER_LIMIT_COLOR = "#d62728"
OUTCOME_BARS = (
    ("within_limit", "verified, downtime within limit", "#55a868"),
    ("over_limit", "verified, downtime over limit", "#e89a5c"),
    ("not_converged", "did not converge", "#8c8c8c"),
    ("failed", "failed", "#d62728"),
)


def _axis(values: Sequence[float]) -> list[float]:
    return sorted(dict.fromkeys(values))


def draw_heatmaps(cells: Sequence[Cell], metric: str = "total_ms", *,
                  policy: str | None = None, device_mem: int | None = None) -> Figure:
    """Heatmaps of ``metric`` (ms) over bandwidth (x) x dirty rate (y), one panel per downtime
    limit, for ``policy`` and ``device_mem`` (default: the first in ``cells``)."""
    from matplotlib.colors import LogNorm
    from matplotlib.patches import Patch, Rectangle

    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r} (one of {', '.join(METRICS)})")
    if not cells:
        raise ValueError("no cells to draw")
    policy = policy if policy is not None else cells[0].policy
    device_mem = device_mem if device_mem is not None else cells[0].device_mem
    mine = [c for c in cells if c.policy == policy and c.device_mem == device_mem]
    if not mine:
        raise ValueError(f"no cells for policy {policy!r} and device {device_mem}")
    bws = _axis([c.bandwidth for c in mine])
    drs = _axis([c.dirty_rate for c in mine])
    limits = _axis([c.downtime_limit_ms for c in mine])
    values = [getattr(c, metric) for c in mine if c.outcome == "verified"]
    positive = [v for v in values if v is not None and v > 0]
    lo = min(positive) if positive else 1.0
    hi = max(positive) if positive else 10.0
    vmin = max(lo, 0.1)
    norm = LogNorm(vmin=vmin, vmax=max(hi, lo * 10))
    plt = pyplot()
    fig, axes = plt.subplots(1, len(limits), figsize=(max(4.6 * len(limits) + 1.2, 7.5), 4.4),
                             squeeze=False, layout="constrained")
    image: Any = None
    for ax, limit in zip(axes[0], limits, strict=True):
        grid = [[math.nan] * len(bws) for _ in drs]
        for c in mine:
            if c.downtime_limit_ms != limit:
                continue
            x, y = bws.index(c.bandwidth), drs.index(c.dirty_rate)
            value = getattr(c, metric)
            if c.outcome == "verified" and value is not None:
                grid[y][x] = max(float(value), vmin)
                ax.text(x, y, f"{value:.0f}", ha="center", va="center", fontsize=8,
                        color="black", bbox={"boxstyle": "round,pad=0.15", "fc": "white",
                                             "alpha": 0.6, "lw": 0})
                if c.over_limit:
                    ax.add_patch(Rectangle((x - 0.47, y - 0.47), 0.94, 0.94, fill=False,
                                           ec=OVER_LIMIT_COLOR, lw=2.5))
            else:
                dnc = c.outcome == "not_converged"
                ax.add_patch(Rectangle((x - 0.5, y - 0.5), 1, 1, hatch="xx",
                                       fc=NOT_CONVERGED_COLOR if dnc else FAILED_COLOR,
                                       ec="white", lw=0.5))
                ax.text(x, y, "did not\nconverge" if dnc else "failed", ha="center",
                        va="center", fontsize=8, fontweight="bold")
        image = ax.imshow(grid, origin="lower", cmap="viridis", norm=norm, aspect="auto")
        ax.set_xticks(range(len(bws)), [f"{b / (1 << 20):g}" for b in bws])
        ax.set_yticks(range(len(drs)), [f"{d / (1 << 20):g}" for d in drs])
        ax.set_xlim(-0.5, len(bws) - 0.5)
        ax.set_ylim(-0.5, len(drs) - 0.5)
        ax.set_xlabel("bandwidth (MiB/s)")
        ax.set_ylabel("guest dirty rate (MiB/s)")
        ax.set_title(f"downtime limit {limit:g} ms")
    bar = fig.colorbar(image, ax=list(axes[0]), shrink=0.9)
    bar.set_label(f"{METRICS[metric]} (ms, simulated clock)")
    handles = [Patch(fc=NOT_CONVERGED_COLOR, hatch="xx", ec="white", label="did not converge"),
               Patch(fill=False, ec=OVER_LIMIT_COLOR, lw=2.5, label="downtime over limit")]
    if any(c.outcome == "failed" for c in mine):
        handles.append(Patch(fc=FAILED_COLOR, hatch="xx", ec="white", label="failed"))
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=8)
    fig.suptitle(f"Pre-copy {METRICS[metric]} over bandwidth x dirty rate\n"
                 f"(policy {policy}, device state {size_label(device_mem)})")
    result: Figure = fig
    return result


def draw_policy_comparison(cells: Sequence[Cell]) -> Figure:
    """Stacked bars per switchover policy: cells verified within / over the downtime limit,
    not converged, failed."""
    if not cells:
        raise ValueError("no cells to draw")
    stats = policy_stats(cells)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2), layout="constrained")
    names = [s["policy"] for s in stats]
    bottom = [0] * len(stats)
    for key, label, color in OUTCOME_BARS:
        heights = [int(s[key]) for s in stats]
        ax.bar(names, heights, bottom=bottom, color=color, label=label,
               hatch="xx" if key == "not_converged" else None, edgecolor="white")
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    for i, s in enumerate(stats):
        med = s["median_total_ms"]
        text = "-" if med is None else f"median total {med:.0f} ms"
        ax.text(i, bottom[i], text, ha="center", va="bottom", fontsize=8)
    ax.set_ylim(0, max(bottom) * 1.12 + 1)
    ax.set_xlabel("switchover policy")
    ax.set_ylabel("grid cells (migrations)")
    ax.set_title(f"Switchover policies over {len(cells)} migrations\n"
                 f"({len({c.device_mem for c in cells})} device sizes, "
                 f"{len({c.downtime_limit_ms for c in cells})} downtime limits)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    result: Figure = fig
    return result


def save_figures(cells: Sequence[Cell], outdir: str | Path) -> list[Path]:
    """Every figure of the study as PNG in ``outdir``: ``heatmap-<metric>-<policy>-<dev>.png``
    per policy and device size, and ``policies.png``."""
    plt = pyplot()
    out = Path(outdir)
    paths: list[Path] = []
    for policy in dict.fromkeys(c.policy for c in cells):
        for dev in dict.fromkeys(c.device_mem for c in cells if c.policy == policy):
            for metric in METRICS:
                fig = draw_heatmaps(cells, metric, policy=policy, device_mem=dev)
                path = out / f"heatmap-{metric.removesuffix('_ms')}-{policy}-{dev >> 20}M.png"
                fig.savefig(path, dpi=90, bbox_inches="tight")
                plt.close(fig)
                paths.append(path)
    fig = draw_policy_comparison(cells)
    path = out / "policies.png"
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)
    paths.append(path)
    return paths


__all__ = ["METRICS", "draw_heatmaps", "draw_policy_comparison", "rate_label", "save_figures"]
