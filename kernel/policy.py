"""Scheduling policies: a policy only ranks processes; the step planner builds the batch.

A policy is a small object with ``rank(procs, now) -> list`` (most important first). Issue-level
policies (priority, rr, mlfq, srpt, vtc, edf) each live in a module of their own and register in
``POLICIES``; adding one is one module plus one registry line.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from .process import Process


class Policy(Protocol):
    """Orders runnable processes; the planner serves them in this order."""

    name: str

    def rank(self, procs: Sequence[Process], now: float) -> list[Process]:
        """Return ``procs`` most important first."""
        ...


class FCFS:
    """First come, first served: by creation time, then pid. Never starves anyone."""

    name = "fcfs"

    def rank(self, procs: Sequence[Process], now: float) -> list[Process]:
        return sorted(procs, key=lambda p: (p.created_at, p.pid))


POLICIES: dict[str, type] = {
    "fcfs": FCFS,
}


def make_policy(name: str) -> Policy:
    """Instantiate the policy registered as ``name``; ValueError lists the known ones."""
    try:
        return POLICIES[name]()
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; known: {', '.join(sorted(POLICIES))}") from None
