"""Writing a study's files: CSV, Markdown summary and figures into one directory.

This is the one module of :mod:`vfio_user_mig.studies` that depends on both the results and
their figures (figures depend on the data they draw, never the reverse); the CLI
(``vfio-user-mig study``) calls it.

* :func:`write_convergence_study`: the convergence study (``results.csv``, ``summary.md``,
  the figures of :mod:`~vfio_user_mig.studies.figures`);
* :func:`write_transport_study`: the transport study (``results.csv``, ``samples.csv``,
  ``summary.md``, the figures of :mod:`~vfio_user_mig.studies.transport_figures`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vfio_user_mig.studies import convergence, transport, transport_figures, transport_results
from vfio_user_mig.studies import figures as convergence_figures


def write_convergence_study(cells: Sequence[convergence.Cell], outdir: str | Path, *,
                            figures: bool = True) -> dict[str, Any]:
    """Write ``results.csv``, ``summary.md`` and the figures (PNG) into ``outdir``; returns
    ``{"csv": path, "summary": path, "figures": [paths]}``."""
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    csv_path = convergence.write_csv(cells, out / "results.csv")
    md_path = out / "summary.md"
    md_path.write_text(convergence.summary_markdown(cells))
    written: list[str] = []
    if figures:
        written = [str(p) for p in convergence_figures.save_figures(cells, out)]
    return {"csv": str(csv_path), "summary": str(md_path), "figures": written}


def write_transport_study(runs: Sequence[transport.Run], outdir: str | Path, *,
                          figures: bool = True) -> dict[str, Any]:
    """Write results.csv, samples.csv, summary.md and (unless ``figures`` is false) the
    figures into ``outdir``; returns their paths."""
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    cells = transport_results.aggregate(runs)
    csv_path = transport_results.write_csv(cells, out / "results.csv")
    samples_path = transport_results.write_samples(runs, out / "samples.csv")
    summary = out / "summary.md"
    summary.write_text(transport_results.summary_markdown(cells))
    paths: list[str] = []
    if figures:
        paths = [str(p) for p in transport_figures.save_figures(cells, runs, out)]
    return {"csv": str(csv_path), "samples": str(samples_path), "summary": str(summary),
            "figures": paths}


__all__ = ["write_convergence_study", "write_transport_study"]
