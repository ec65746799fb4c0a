"""CPU time of a process, for figures that hold on a shared machine (per CPU-second).

cpu_seconds(pid=None) -> float   user + system seconds of a process and its waited-for
                                 children (None: this one, every thread included)
with Meter(pid=None) as m: ...   then m.cpu_s and m.wall_s of the block
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from types import TracebackType

_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU seconds of process ``pid`` (None: this process, all its threads) and
    of its children it has waited for; /proc/<pid>/stat for another process."""
    if pid is None or pid == os.getpid():
        t = os.times()  # (process_time: finer than the clock ticks of os.times)
        return time.process_time() + t.children_user + t.children_system
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / _TICKS  # utime, stime, cutime, cstime


class Meter:
    """CPU seconds (``cpu_seconds``) and wall seconds spent inside the ``with`` block."""

    cpu_s: float = 0.0
    wall_s: float = 0.0

    def __init__(self, pid: int | None = None):
        self.pid = pid

    def __enter__(self) -> Meter:
        self._cpu0, self._t0 = cpu_seconds(self.pid), time.perf_counter()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cpu_s = cpu_seconds(self.pid) - self._cpu0
        self.wall_s = time.perf_counter() - self._t0
