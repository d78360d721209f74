"""Migration traces: JSON-lines events, and the summary computed from them.

Every event is a flat JSON object with ``t`` (seconds on the migration clock) and ``ev``:

==============  =============================================================================
``start``       parameters: caps, policy, sizes, clock kind, bandwidth, dirty rate
``state``       one MIG_DEVICE_STATE SET: ``side`` (src/dst), ``from``, ``to``, ``arcs`` (the
                model's path as state names), ``ok``, ``errno``, ``reached`` (state after)
``chunk``       one migration data chunk relayed: ``phase`` (precopy/stopcopy), ``round``,
                ``bytes``
``ram``         guest RAM pages sent: ``phase``, ``round``, ``pages``, ``bytes``
``dirty``       dirty pages learned: ``round``, ``guest`` (VMM tracking), ``dma`` (device
                DMA_LOGGING_REPORT)
``round``       end of a pre-copy round: ``round``, ``bytes``, ``device_bytes``, ``ram_bytes``,
                ``seconds``, ``pending``, ``bandwidth``, ``dirty_rate``, ``decision``, ``reason``
``switchover``  ``reason``: the policy's decision (or ``no pre-copy``)
``downtime``    ``start``, ``end``, ``ms``: source stopped until destination running
``verify``      ``src_digest``, ``dst_digest``, ``device_ok``, ``ram_ok``
``error``       ``where``, ``errno``, ``message``
``recovery``    ``side``, ``action``, ``ok``
``end``         ``outcome`` (verified / failed / not_converged / unverified), ``ok``
==============  =============================================================================

:func:`summarize` turns a list of events into the summary the CLI prints; it reads nothing
but the trace, so a trace file can be summarised later (:func:`load`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

Event = dict[str, Any]


class Trace:
    """Collects events in memory and optionally writes each as one JSON line to ``path``.

    ``keep_chunks=False`` keeps ``chunk`` and ``ram`` events out of memory (still written to
    the file) and only their totals in :attr:`chunk_totals`, so memory stays bounded.
    """

    def __init__(self, path: str | Path | None = None, *, keep_chunks: bool = True) -> None:
        self.events: list[Event] = []
        self.keep_chunks = keep_chunks
        self.chunk_totals: dict[str, int] = {}
        self._file: IO[str] | None = open(path, "w") if path is not None else None  # noqa: SIM115

    def emit(self, t: float, ev: str, **fields: Any) -> Event:
        """Record one event."""
        event: Event = {"t": round(t, 9), "ev": ev, **fields}
        if self._file is not None:
            self._file.write(json.dumps(event, separators=(",", ":")) + "\n")
        if self.keep_chunks or ev not in ("chunk", "ram"):
            self.events.append(event)
        else:
            key = f"{ev}:{fields.get('phase', 'ram')}:{fields.get('round', 0)}"
            self.chunk_totals[key] = self.chunk_totals.get(key, 0) + int(fields.get("bytes", 0))
        return event

    def close(self) -> None:
        """Close the file, if any."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def summary(self) -> dict[str, Any]:
        """:func:`summarize` of the events (plus the totals of dropped chunk events)."""
        return summarize(self.events, self.chunk_totals)


def load(path: str | Path) -> list[Event]:
    """Events of a trace file."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _path_of(events: Iterable[Event], side: str) -> list[str]:
    """The states walked by ``side``: the first ``from``, then the arcs each SET completed."""
    walked: list[str] = []
    for e in events:
        if e["ev"] != "state" or e["side"] != side:
            continue
        if not walked:
            walked.append(e["from"])
        arcs: list[str] = e["arcs"]
        reached = e["reached"]
        if e["ok"]:
            walked.extend(arcs[1:])
        elif reached in arcs:
            walked.extend(arcs[1 : arcs.index(reached) + 1])
        elif reached is not None:
            walked.append(reached)
    return walked


def summarize(events: list[Event], chunk_totals: dict[str, int] | None = None) -> dict[str, Any]:
    """The migration summary, computed from the trace alone."""
    totals = dict(chunk_totals or {})
    start = next((e for e in events if e["ev"] == "start"), {"t": 0.0})
    end = next((e for e in reversed(events) if e["ev"] == "end"), None)
    rounds = [e for e in events if e["ev"] == "round"]
    for e in events:
        if e["ev"] in ("chunk", "ram"):
            key = f"{e['ev']}:{e.get('phase', 'ram')}:{e.get('round', 0)}"
            totals[key] = totals.get(key, 0) + int(e["bytes"])
    stream = sum(v for k, v in totals.items() if k.startswith("chunk:"))
    ram = sum(v for k, v in totals.items() if k.startswith("ram:"))
    stopcopy_device = sum(v for k, v in totals.items() if k.startswith("chunk:stopcopy"))
    stopcopy_ram = sum(v for k, v in totals.items() if k.startswith("ram:stopcopy"))
    downtime = next((e for e in events if e["ev"] == "downtime"), None)
    verify = next((e for e in events if e["ev"] == "verify"), None)
    switch = next((e for e in events if e["ev"] == "switchover"), None)
    errors = [e for e in events if e["ev"] == "error"]
    end_t = end["t"] if end is not None else (events[-1]["t"] if events else 0.0)
    verified = bool(verify and verify["device_ok"] and verify["ram_ok"])
    return {
        "outcome": end["outcome"] if end is not None else "incomplete",
        "ok": bool(end and end["ok"]),
        "verified": verified,
        "device_verified": bool(verify and verify["device_ok"]),
        "ram_verified": bool(verify and verify["ram_ok"]),
        "src_digest": verify["src_digest"] if verify else None,
        "dst_digest": verify["dst_digest"] if verify else None,
        "total_ms": round((end_t - start["t"]) * 1000, 3),
        "downtime_ms": round(downtime["ms"], 3) if downtime else None,
        "precopy_rounds": len(rounds),
        "rounds": [
            {k: r[k] for k in ("round", "bytes", "device_bytes", "ram_bytes", "seconds",
                               "pending", "decision")}
            for r in rounds
        ],
        "stopcopy_bytes": stopcopy_device + stopcopy_ram,
        "bytes_transferred": stream + ram,
        "stream_bytes": stream,
        "ram_bytes": ram,
        "switchover": switch["reason"] if switch else None,
        "source_path": _path_of(events, "src"),
        "destination_path": _path_of(events, "dst"),
        "errors": [{k: e.get(k) for k in ("where", "errno", "message")} for e in errors],
        "params": {k: v for k, v in start.items() if k not in ("t", "ev")},
    }


__all__ = ["Event", "Trace", "load", "summarize"]
