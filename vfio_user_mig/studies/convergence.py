"""The pre-copy convergence study: a sweep through the real simulator.

Every cell of the grid (bandwidth x dirty rate x downtime limit x device state size x
switchover policy, optionally with the experimental size query) is one real migration
(:func:`~vfio_user_mig.simulator.migration.session.migrate`: two servers, two guests, a
workload, the driver) on the simulated clock, so the times are those of the link, not of this
machine. Each cell reports, like QEMU's migration predictor: the outcome (``verified``,
``not_converged`` when the switchover policy gave up, ``failed`` otherwise), the total time and
the downtime (ms of simulated time), the pre-copy rounds, the bytes sent, and whether the
downtime exceeded the limit.

Size query (``size_query``): vfio-user has no way to ask the device how much state it still
has to send (the kernel's VFIO has ``MIG_DATA_SIZE`` and ``PRECOPY_INFO``), so the driver
estimates it. The policies listed in :attr:`Grid.size_query_policies` run every cell a second
time with the experimental MIG_DATA_SIZE feature (the device's pending bytes replace the
estimate); those cells are labelled ``<policy>+size-query`` and have ``size_query`` set, and
the summary compares their downtime-over-limit rate with the same policy without the query.

* :class:`Grid` describes a sweep; :data:`QUICK_GRID` (a few seconds) and
  :data:`DEFAULT_GRID` (well under a minute on two cores) are the two the CLI offers;
* :func:`run_grid` runs it (on worker processes or a Dask cluster through
  :func:`~vfio_user_mig.simulator.executor.run_batched`) and returns :class:`Cell` rows;
* :func:`write_csv` and :func:`summary_markdown` write the results; figures come from
  :mod:`vfio_user_mig.studies.figures` (the same functions the notebook calls), which imports
  this module (never the reverse); :func:`vfio_user_mig.studies.output.write_convergence_study`
  writes all of them.
"""

from __future__ import annotations

import csv
import itertools
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

MIB = 1 << 20

#: Cell outcomes, in the order the tables and charts show them.
OUTCOMES = ("verified", "not_converged", "failed")


@dataclass(frozen=True)
class Grid:
    """The axes of a sweep (every combination is one migration)."""

    bandwidths: tuple[float, ...]
    """Link caps, bytes/s."""
    dirty_rates: tuple[float, ...]
    """Bytes/s the guest dirties during pre-copy."""
    downtime_limits: tuple[float, ...]
    """Seconds."""
    device_mems: tuple[int, ...]
    """Device memory (the device state), bytes; a power of two."""
    policies: tuple[str, ...] = ("qemu", "dirty-rate", "iterations")
    guest_mem: int = 4 * MIB
    max_rounds: int = 8
    iterations: int = 3
    seed: int = 0
    size_query_policies: tuple[str, ...] = ()
    """Policies (of :attr:`policies`) whose cells also run with the size query."""
    chunk: int = 1 << 20
    """MIG_DATA_READ size (a pre-copy round reads at most max(guest RAM, 64 chunks))."""

    def _runs(self) -> list[tuple[str, bool]]:
        return [(p, q) for p in self.policies
                for q in ((False, True) if p in self.size_query_policies else (False,))]

    def specs(self) -> list[CellSpec]:
        """Every cell, in a stable order."""
        return [
            CellSpec(policy, dev, limit, bw, dr, self.guest_mem, self.max_rounds,
                     self.iterations, self.seed, size_query=query, chunk=self.chunk)
            for (policy, query), dev, limit, bw, dr in itertools.product(
                self._runs(), self.device_mems, self.downtime_limits, self.bandwidths,
                self.dirty_rates)
        ]

    @property
    def size(self) -> int:
        """Number of cells."""
        return (len(self.bandwidths) * len(self.dirty_rates) * len(self.downtime_limits)
                * len(self.device_mems) * len(self._runs()))


#: A few seconds: 2 bandwidths x 2 dirty rates x 1 limit x 1 device size x 2 policies.
QUICK_GRID = Grid(
    bandwidths=(16 * MIB, 64 * MIB),
    dirty_rates=(4 * MIB, 32 * MIB),
    downtime_limits=(0.05,),
    device_mems=(1 * MIB,),
    policies=("qemu", "dirty-rate"),
    max_rounds=5,
)

#: Well under a minute on two cores: 4 x 4 x 2 x 2 x (3 + 1) = 256 migrations (the qemu
#: policy with and without the size query).
DEFAULT_GRID = Grid(
    bandwidths=(16 * MIB, 32 * MIB, 64 * MIB, 256 * MIB),
    dirty_rates=(4 * MIB, 16 * MIB, 32 * MIB, 64 * MIB),
    downtime_limits=(0.03, 0.3),
    device_mems=(1 * MIB, 4 * MIB),
    size_query_policies=("qemu",),
)


@dataclass(frozen=True)
class CellSpec:
    """The parameters of one cell."""

    policy: str
    device_mem: int
    downtime_limit: float
    bandwidth: float
    dirty_rate: float
    guest_mem: int = 4 * MIB
    max_rounds: int = 8
    iterations: int = 3
    seed: int = 0
    size_query: bool = False
    """Use the experimental MIG_DATA_SIZE (the device's pending bytes) for the switchover."""
    chunk: int = 1 << 20

    @property
    def label(self) -> str:
        """The policy as the results name it: ``qemu`` or ``qemu+size-query``."""
        return f"{self.policy}+size-query" if self.size_query else self.policy


@dataclass(frozen=True)
class Cell:
    """The result of one cell (one row of ``results.csv``)."""

    policy: str
    """The policy label (:attr:`CellSpec.label`: ``+size-query`` when the query was used)."""
    size_query: bool
    device_mem: int
    downtime_limit_ms: float
    bandwidth: float
    dirty_rate: float
    outcome: str
    converged: bool
    total_ms: float
    downtime_ms: float | None
    over_limit: bool | None
    """Downtime above the limit (None when the migration did not reach stop-copy)."""
    rounds: int
    bytes: int
    stopcopy_bytes: int
    reason: str

    @property
    def key(self) -> tuple[str, int, float]:
        """(policy, device_mem, downtime_limit_ms): one heatmap."""
        return (self.policy, self.device_mem, self.downtime_limit_ms)


COLUMNS = tuple(f.name for f in fields(Cell))


def run_cell(spec: CellSpec) -> Cell:
    """One migration through the real simulator (simulated clock)."""
    from vfio_user_mig.simulator.migration.session import MigrateOptions, migrate

    opts = MigrateOptions(
        device_mem=spec.device_mem, guest_mem=spec.guest_mem, dirty_rate=spec.dirty_rate,
        bandwidth=spec.bandwidth, downtime_limit=spec.downtime_limit, policy=spec.policy,
        iterations=spec.iterations, max_rounds=spec.max_rounds, seed=spec.seed, clock="sim",
        keep_chunk_events=False, size_query=spec.size_query, chunk=spec.chunk,
    )
    result = migrate(opts)
    s = result.summary
    outcome = result.outcome if result.outcome in ("verified", "not_converged") else "failed"
    downtime = s["downtime_ms"]
    limit_ms = round(spec.downtime_limit * 1000, 3)
    if outcome == "verified":
        reason = s["switchover"] or ""
    elif result.error is not None:
        reason = str(result.error)
    else:
        reason = result.outcome
    return Cell(
        policy=spec.label, size_query=spec.size_query, device_mem=spec.device_mem,
        downtime_limit_ms=limit_ms,
        bandwidth=spec.bandwidth, dirty_rate=spec.dirty_rate, outcome=outcome,
        converged=outcome == "verified", total_ms=float(s["total_ms"]),
        downtime_ms=None if downtime is None else float(downtime),
        over_limit=None if downtime is None else bool(downtime > limit_ms),
        rounds=int(s["precopy_rounds"]), bytes=int(s["bytes_transferred"]),
        stopcopy_bytes=int(s["stopcopy_bytes"]), reason=reason,
    )


def _indexed_cell(item: tuple[int, CellSpec]) -> tuple[int, Cell]:
    return item[0], run_cell(item[1])


def run_grid(grid: Grid, *, workers: int = 1, progress: Callable[[Cell], None] | None = None,
             executor: str = "local", scheduler: str | None = None,
             batch_size: int | None = None) -> list[Cell]:
    """Every cell of ``grid``, in :meth:`Grid.specs` order whatever the completion order;
    ``progress`` sees each cell as it completes. ``executor``/``scheduler``/``workers``: see
    :func:`~vfio_user_mig.simulator.executor.run_batched` (cells are whole migrations, so
    batches are small: at most 8 cells)."""
    from vfio_user_mig.simulator.executor import auto_batch_size, run_batched

    specs = grid.specs()
    workers = max(1, min(workers, len(specs)))
    size = batch_size or auto_batch_size(len(specs), workers, low=1, high=8)
    cells: list[Cell | None] = [None] * len(specs)
    for index, cell in run_batched(_indexed_cell, list(enumerate(specs)), executor=executor,
                                   scheduler=scheduler, workers=workers, batch_size=size):
        cells[index] = cell
        if progress is not None:
            progress(cell)
    return [c for c in cells if c is not None]


# ----- output -------------------------------------------------------------------------------
def _csv_value(v: Any) -> Any:
    if v is None:
        return ""
    return v


def write_csv(cells: Iterable[Cell], path: str | Path) -> Path:
    """``results.csv``: one row per cell, the columns of :class:`Cell`."""
    out = Path(path)
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(COLUMNS))
        writer.writeheader()
        for cell in cells:
            writer.writerow({k: _csv_value(v) for k, v in asdict(cell).items()})
    return out


def rate_label(rate: float) -> str:
    """``64 MiB/s``."""
    return f"{rate / MIB:g} MiB/s"


def size_label(n: float) -> str:
    """``4 MiB``."""
    return f"{n / MIB:g} MiB"


def cell_text(cell: Cell) -> str:
    """A table cell: ``total / downtime ms`` (``!`` when over the limit), or the failure."""
    if cell.outcome == "not_converged":
        return f"did not converge ({cell.rounds} rounds)"
    if cell.outcome == "failed":
        return "FAILED"
    downtime = "-" if cell.downtime_ms is None else f"{cell.downtime_ms:.0f}"
    mark = " !" if cell.over_limit else ""
    return f"{cell.total_ms:.0f} / {downtime}{mark}"


def _md_table(rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(rows[0]) + " |", "|" + "|".join("---" for _ in rows[0]) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return out


def policy_stats(cells: Sequence[Cell]) -> list[dict[str, Any]]:
    """Per policy: cells, verified within / over the limit, not converged, failed, medians."""
    stats = []
    for policy in dict.fromkeys(c.policy for c in cells):
        mine = [c for c in cells if c.policy == policy]
        ok = [c for c in mine if c.outcome == "verified"]
        stats.append({
            "policy": policy,
            "cells": len(mine),
            "within_limit": sum(1 for c in ok if not c.over_limit),
            "over_limit": sum(1 for c in ok if c.over_limit),
            "not_converged": sum(1 for c in mine if c.outcome == "not_converged"),
            "failed": sum(1 for c in mine if c.outcome == "failed"),
            "median_total_ms": statistics.median(c.total_ms for c in ok) if ok else None,
            "median_downtime_ms": (statistics.median(c.downtime_ms or 0.0 for c in ok)
                                   if ok else None),
        })
    return stats


def size_query_stats(cells: Sequence[Cell]) -> list[dict[str, Any]]:
    """For each policy run with the size query: its cells without and with it (cells,
    verified over the limit, the over-limit rate, not converged, median downtime); empty when
    no cell used the query."""
    out: list[dict[str, Any]] = []
    for label in dict.fromkeys(c.policy for c in cells if c.size_query):
        base = label.removesuffix("+size-query")
        for query, name in ((False, base), (True, label)):
            mine = [c for c in cells if c.policy == name and c.size_query == query]
            ok = [c for c in mine if c.outcome == "verified"]
            over = sum(1 for c in ok if c.over_limit)
            out.append({
                "policy": base, "size_query": query, "cells": len(mine), "over_limit": over,
                "over_limit_rate": over / len(mine) if mine else 0.0,
                "not_converged": sum(1 for c in mine if c.outcome == "not_converged"),
                "median_downtime_ms": (statistics.median(c.downtime_ms or 0.0 for c in ok)
                                       if ok else None),
            })
    return out


def summary_markdown(cells: Sequence[Cell], title: str = "Convergence study") -> str:
    """``summary.md``: per device size, a table (rows: bandwidth x dirty rate; columns: policy
    x downtime limit) of ``total / downtime`` in ms of simulated time, with explicit
    "did not converge" cells; then the policy comparison."""
    lines = [f"# {title}", "",
             f"{len(cells)} migrations on the simulated clock; each cell: total ms / downtime "
             "ms (`!`: downtime above the limit), or *did not converge* (the switchover policy "
             "gave up after the rounds shown).", ""]
    keys = list(dict.fromkeys((c.policy, c.downtime_limit_ms) for c in cells))
    for dev in dict.fromkeys(c.device_mem for c in cells):
        lines += [f"## Device state {size_label(dev)}", ""]
        head = ["bandwidth", "dirty rate"] + [f"{p} @ {lim:g} ms" for p, lim in keys]
        rows = [head]
        mine = [c for c in cells if c.device_mem == dev]
        for bw in dict.fromkeys(c.bandwidth for c in mine):
            for dr in dict.fromkeys(c.dirty_rate for c in mine):
                row = [rate_label(bw), rate_label(dr)]
                for p, lim in keys:
                    match = [c for c in mine if c.bandwidth == bw and c.dirty_rate == dr
                             and c.policy == p and c.downtime_limit_ms == lim]
                    row.append(cell_text(match[0]) if match else "")
                rows.append(row)
        lines += [*_md_table(rows), ""]
    lines += ["## Switchover policies", ""]
    rows = [["policy", "cells", "verified within limit", "verified over limit",
             "did not converge", "failed", "median total ms", "median downtime ms"]]
    for s in policy_stats(cells):
        rows.append([s["policy"], str(s["cells"]), str(s["within_limit"]),
                     str(s["over_limit"]), str(s["not_converged"]), str(s["failed"]),
                     "-" if s["median_total_ms"] is None else f"{s['median_total_ms']:.0f}",
                     "-" if s["median_downtime_ms"] is None
                     else f"{s['median_downtime_ms']:.0f}"])
    lines += _md_table(rows)
    query = size_query_stats(cells)
    if query:
        lines += ["", "## Size query (experimental MIG_DATA_SIZE)", "",
                  "The same cells with the pending device bytes estimated by the driver "
                  "(vfio-user has no way to ask) and reported by the device (the kernel's "
                  "`MIG_DATA_SIZE`, an experimental extension here). Over-limit rate: verified "
                  "cells whose downtime exceeded the limit, over the cells.", ""]
        rows = [["policy", "size query", "cells", "verified over limit", "over-limit rate",
                 "did not converge", "median downtime ms"]]
        for q in query:
            rows.append([q["policy"], "yes" if q["size_query"] else "no", str(q["cells"]),
                         str(q["over_limit"]), f"{q['over_limit_rate']:.1%}",
                         str(q["not_converged"]),
                         "-" if q["median_downtime_ms"] is None
                         else f"{q['median_downtime_ms']:.0f}"])
        lines += _md_table(rows)
    return "\n".join(lines) + "\n"


__all__ = [
    "COLUMNS",
    "DEFAULT_GRID",
    "OUTCOMES",
    "QUICK_GRID",
    "Cell",
    "CellSpec",
    "Grid",
    "cell_text",
    "policy_stats",
    "rate_label",
    "run_cell",
    "run_grid",
    "size_label",
    "size_query_stats",
    "summary_markdown",
    "write_csv",
]
