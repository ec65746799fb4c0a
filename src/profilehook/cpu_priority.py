"""The applier process's CPU priority: idle while it keeps up, ahead of other idle work when not.

Measured on two cores shared with the load generator (benchmarks/README.md): a child at nice 10
that used 30 % of a CPU still cost the server 15-20 % of its requests, because the scheduler
lets a niced task run as soon as it wakes. Under Linux's ``SCHED_IDLE`` policy it runs only on
a CPU nothing else wants, and the server kept its rate. But an idle-priority task on a machine
that is never idle would never run: so when the oldest event it applies is older than
``CATCH_UP_AFTER_S`` the applier takes the ordinary policy at nice 10 again, and goes back to
idle once it has caught up.

An unprivileged process may leave ``SCHED_IDLE`` only if ``RLIMIT_NICE`` allows nice 10 (root
may always): where it could not come back, the idle policy is never taken and nice 10 is all.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource

log = logging.getLogger(__name__)

NICENESS = 10  # the ordinary policy's priority: below the server, ~1/10 of a contended core
CATCH_UP_AFTER_S = 5.0  # lag that takes the applier out of the idle policy
IDLE_AGAIN_BELOW_S = 0.5  # lag under which it goes back to it


class ApplierPriority:
    """Call ``start`` once, then ``follow(lag_s)`` with the applier's current lag."""

    def __init__(self) -> None:
        self.idle = False
        self._can_idle = False

    def start(self) -> None:
        with contextlib.suppress(OSError):
            os.nice(NICENESS)
        self._can_idle = hasattr(os, "SCHED_IDLE") and _may_return_to_nice(NICENESS)
        self._set_idle(True)

    def follow(self, lag_s: float) -> None:
        if self.idle and lag_s > CATCH_UP_AFTER_S:
            log.info("applier %.1fs behind: taking ordinary CPU priority to catch up", lag_s)
            self._set_idle(False)
        elif not self.idle and lag_s < IDLE_AGAIN_BELOW_S:
            self._set_idle(True)

    def _set_idle(self, idle: bool) -> None:
        if not self._can_idle:
            return
        policy = os.SCHED_IDLE if idle else os.SCHED_OTHER
        try:
            os.sched_setscheduler(0, policy, os.sched_param(0))
        except OSError as exc:
            log.warning("applier: cannot change CPU policy (%s)", exc)
            self._can_idle = False
            return
        self.idle = idle


def _may_return_to_nice(nice: int) -> bool:
    """Whether leaving SCHED_IDLE for ``nice`` is allowed (Linux's ``can_nice``)."""
    if os.geteuid() == 0:
        return True
    soft, _ = resource.getrlimit(resource.RLIMIT_NICE)
    return soft == resource.RLIM_INFINITY or 20 - nice <= soft
