"""Priority scheduling by nice (lower is more important), FCFS among equals, with aging.

Aging applies: without it a steady stream of nice -5 work would keep a nice 10 process waiting
forever. A process's effective nice improves by one level per ``aging_s`` seconds it has
waited, where waiting is its age less the device time it spent in steps
(``policy.time_waiting``). Waiting never decreases, so a process that earned a boost keeps it
while it runs and finishes instead of trickling one token per promotion. A process that is in
every step gains nothing, so among processes served alike, nice alone decides.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from .. import params
from ..policy import BasePolicy, time_waiting
from ..process import Process


class Priority(BasePolicy):
    """By effective nice = nice - floor(waiting / aging_s), then creation time, then pid."""

    name = "priority"

    def __init__(self, aging_s: float = params.PRIORITY_AGING_S) -> None:
        if aging_s <= 0:
            raise ValueError(f"aging_s must be positive, not {aging_s}")
        self.aging_s = aging_s

    def effective_nice(self, proc: Process, now: float) -> int:
        """``proc.nice`` improved by one level per ``aging_s`` seconds of waiting."""
        return proc.nice - math.floor(time_waiting(proc, now) / self.aging_s)

    def rank(self, procs: Sequence[Process], now: float) -> list[Process]:
        return sorted(procs, key=lambda p: (self.effective_nice(p, now), p.created_at, p.pid))
