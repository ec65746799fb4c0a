"""CPU seconds spent, for figures that hold on a shared machine (wall clock moves with whatever
else runs; a process's CPU time much less): this process's (``spent``: its threads, such as
SQLite's writer, and its waited-for children) and a PostgreSQL backend's (``backend_cpu``, read
from /proc: the server runs on this machine). ``Meter`` adds them up over a block."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

_TICKS = os.sysconf("SC_CLK_TCK")


def spent() -> float:
    """CPU seconds (user + system) of this process so far, its children included."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def backend_cpu(pid_or_conn: Any) -> float:
    """CPU seconds (user + system) of a process so far: a pid, or a psycopg connection (its
    server backend); 0.0 when /proc does not show it."""
    pid = pid_or_conn if isinstance(pid_or_conn, int) else pid_or_conn.info.backend_pid
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime


class Meter:
    """CPU seconds of this process and of ``pids`` (a callable giving them, asked at entry and
    at exit, so backends opened meanwhile count from zero) spent in a ``with`` block: the
    total in ``seconds``, added to over every use of the same meter."""

    def __init__(self, pids: Any = None) -> None:
        self.pids = pids or (lambda: [])
        self.seconds = 0.0
        self._start: tuple[float, dict[int, float]] = (0.0, {})

    def __enter__(self) -> Meter:
        others = {pid: backend_cpu(pid) for pid in self.pids()}
        self._start = (spent(), others)  # this process's last: asking for pids is not counted
        return self

    def __exit__(self, *_: object) -> None:
        own0, others0 = self._start
        own1 = spent()
        others1 = {pid: backend_cpu(pid) for pid in self.pids()}
        self.seconds += own1 - own0
        self.seconds += sum(s - others0.get(pid, 0.0) for pid, s in others1.items())
