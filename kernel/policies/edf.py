"""Earliest deadline first: the process whose deadline comes soonest runs first.

``Process.deadline`` is an absolute kernel time; a process without one ranks as if its deadline
were +inf, so it runs after every process with a deadline, FCFS among its kind.

No aging. EDF is optimal on one resource: if any order meets every deadline of a feasible set,
EDF's does. Aging would let a later deadline overtake an earlier one and so miss deadlines that
EDF meets. Processes without a deadline can wait as long as deadline work keeps arriving; give
them a (far) deadline if they must finish.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ..policy import BasePolicy
from ..process import Process


class EDF(BasePolicy):
    """By deadline (none = +inf), then creation time, then pid. Stateless."""

    name = "edf"

    def rank(self, procs: Sequence[Process], now: float) -> list[Process]:
        def key(p: Process) -> tuple[float, float, int]:
            return (math.inf if p.deadline is None else p.deadline, p.created_at, p.pid)

        return sorted(procs, key=key)
