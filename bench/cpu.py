"""Where the machine's CPU went during a measurement, per part of the stack, in cores.

On a 2-core machine the ingest ratios are set by how the cores are shared (the embedder
against PostgreSQL's HNSW insertion, the worker against Valkey), so each run reports it.
Reads ``/proc`` (Linux); elsewhere the report is empty.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PARTS = (  # (part of the command line, part of the stack); the first match wins
    ("spawn_main", "embedding children"),
    ("tansu", "broker"),
    ("valkey", "valkey"),
    ("fluxstream.cli worker", "worker"),
    ("fluxstream.cli serve", "query service"),
)


def _process_times() -> dict[int, tuple[str, float, float]]:
    """pid -> (part, own CPU seconds, CPU seconds of its reaped children)."""
    out = {}
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # exited meanwhile
            continue
        fields = stat.rsplit(")", 1)[1].split()
        own = (int(fields[11]) + int(fields[12])) / _TICKS
        children = (int(fields[13]) + int(fields[14])) / _TICKS
        out[int(entry.name)] = (_part(int(entry.name), command), own, children)
    return out


def _part(pid: int, command: str) -> str:
    if pid == os.getpid():
        return "benchmark"
    if command.startswith("postgres"):
        return "postgres"
    return next((part for needle, part in _PARTS if needle in command), "other")


@dataclass
class CpuMeter:
    """``start()``, run the measurement, ``cores()``: average cores per part over the interval.

    Embedding children this benchmark started and closed count under "embedding children"
    (through the CPU time of its reaped children).
    """

    _before: dict[int, tuple[str, float, float]] = field(default_factory=dict)
    _started: float = 0.0

    def start(self) -> None:
        self._before = _process_times()
        self._started = time.monotonic()

    def cores(self) -> dict[str, float]:
        elapsed = time.monotonic() - self._started
        used: dict[str, float] = {}
        for pid, (part, own, children) in _process_times().items():
            _, own_before, children_before = self._before.get(pid, (part, 0.0, 0.0))
            used[part] = used.get(part, 0.0) + own - own_before
            if pid == os.getpid():
                used["embedding children"] = used.get("embedding children", 0.0) + children - children_before
        return {part: round(seconds / elapsed, 3) for part, seconds in sorted(used.items(), key=lambda kv: -kv[1])
                if seconds / elapsed >= 0.005}
