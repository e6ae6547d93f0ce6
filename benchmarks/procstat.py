"""Processor time of local processes and of the whole machine, read from Linux's /proc."""

from __future__ import annotations

import os
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_stat(pid: int) -> tuple[int, str, float]:
    """Return a process's parent, command name and processor seconds so far (user and system)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name is in parentheses and may itself hold spaces and parentheses.
    name = stat[stat.index("(") + 1 : stat.rindex(")")]
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[1]), name, (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def machine_busy_s() -> float:
    """Processor seconds the whole machine has spent outside idle and I/O wait since boot."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / CLOCK_TICKS
