"""Round robin with a quantum in tokens.

Processes are ordered by when they joined the back of the queue: first by arrival (creation
time, then pid, for processes first seen together), and again each time one has been served
``quantum`` tokens (prefill and decode tokens alike) since it last moved, when it goes behind
everyone queued. No aging: every process reaches the head within one round of the others'
quanta, so none starves.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import count

from .. import params
from ..policy import BasePolicy
from ..process import Process, ProcState


class RoundRobin(BasePolicy):
    """By queue ticket; a process that used up its quantum takes a fresh ticket (the back)."""

    name = "rr"

    def __init__(self, quantum: int = params.RR_QUANTUM_TOKENS) -> None:
        if quantum < 1:
            raise ValueError(f"quantum must be at least 1 token, not {quantum}")
        self.quantum = quantum
        self._tickets = count()
        self._ticket: dict[int, int] = {}  # pid -> position in the queue (lower runs first)
        self._served: dict[int, int] = {}  # pid -> tokens served since it last took a ticket

    def rank(self, procs: Sequence[Process], now: float) -> list[Process]:
        for proc in sorted(procs, key=lambda p: (p.created_at, p.pid)):
            if proc.pid not in self._ticket:
                self._join(proc.pid)
        return sorted(procs, key=lambda p: self._ticket[p.pid])

    def on_step(self, procs: Sequence[Process], tokens_by_pid: Mapping[int, int], now: float) -> None:
        for proc in procs:
            if proc.state is ProcState.ZOMBIE or proc.pid not in self._ticket:
                continue
            self._served[proc.pid] += tokens_by_pid.get(proc.pid, 0)
            if self._served[proc.pid] >= self.quantum:
                self._join(proc.pid)  # quantum used up: to the back

    def on_exit(self, proc: Process, now: float) -> None:
        self._ticket.pop(proc.pid, None)
        self._served.pop(proc.pid, None)

    def _join(self, pid: int) -> None:
        self._ticket[pid] = next(self._tickets)
        self._served[pid] = 0
