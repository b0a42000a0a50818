"""Scheduling policies: a policy only ranks processes; the step planner builds the batch.

A policy is a small object with ``rank(procs, now) -> list`` (most important first) and two
optional hooks, ``on_step`` and ``on_exit``, through which stateful policies learn what the
device served and who finished. Issue-level policies (priority, rr, mlfq, srpt, vtc, edf) each
live in a module of their own under ``policies/`` and register in ``POLICIES``; adding one is
one module plus one registry line.

How the planner drives a policy (``DeviceScheduler``, one policy instance per device)::

    plan():   ranked = policy.rank(running + ready, now)       once per plan, all runnable procs
    apply():  policy.on_step(procs, tokens_by_pid, now)        first thing, before any progress
              ... record progress, sampled tokens, exits ...   is recorded (see on_step)
    finish(): table.exit(proc, status); policy.on_exit(proc, now)   once per process that ends
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from operator import attrgetter
from typing import Protocol

from .process import Process


class Policy(Protocol):
    """Orders runnable processes; the planner serves them in this order."""

    name: str

    def rank(self, procs: Sequence[Process], now: float) -> list[Process]:
        """Return ``procs`` most important first."""
        ...

    def on_step(self, procs: Sequence[Process], tokens_by_pid: Mapping[int, int], now: float) -> None:
        """Account one finished step (see ``BasePolicy.on_step``)."""
        ...

    def on_exit(self, proc: Process, now: float) -> None:
        """Forget (or learn from) a process that ended (see ``BasePolicy.on_exit``)."""
        ...

    def may_preempt(self, proc: Process) -> bool:
        """Whether waiting ``proc`` may take memory from lower-ranked running processes."""
        ...


class BasePolicy:
    """The hooks' default no-ops; subclass it and override ``rank`` and what you need.

    Contract with the planner:

    ``rank(procs, now)`` is called once per plan with every runnable process of the device
    (RUNNING and waiting READY/SWAPPED, never STOPPED or ZOMBIE) and the kernel time. It
    returns the same processes, most important first. It may update per-process state the
    policy keeps (a first-seen process joins a queue; aging promotes), so it must see *all*
    runnable processes each time: a process missing from a call is taken as gone from the
    queue (vtc treats its tenant as idle if no other of its processes is present).

    ``on_step(procs, tokens_by_pid, now)`` is called once per completed step, by
    ``DeviceScheduler.apply``, as its first action, before it records any progress:

    - ``procs``: the step's processes in batch order (``plan.procs``), including any that were
      killed while the step ran (already ZOMBIE; policies ignore those);
    - ``tokens_by_pid``: ``{chunk.seq_id: len(chunk.token_ids) for chunk in batch.seqs}``, the
      tokens whose KV the step computed for each process: a prefill chunk's length, or 1 for a
      decode;
    - ``now``: the kernel time after the step.

    Because nothing is recorded yet, ``proc.num_computed`` is still the chunk's ``start_pos``
    and ``proc.output_ids`` the pre-step tokens, so ``split_served`` can tell prompt tokens and
    sampled tokens apart without the batch.

    ``on_exit(proc, now)`` is called exactly once per process that ends on this device, for any
    reason, by ``DeviceScheduler.finish`` right after ``table.exit`` (so ``proc.exit_status`` is
    set), and only if ``proc`` was alive when ``finish`` began (``table.exit`` ignores a second
    exit; srpt would learn a length twice). Policies drop their per-process state here; srpt
    learns output lengths.
    """

    name = "base"
    static_rank = False  # True if rank order depends only on fixed process fields (fcfs)

    def rank(self, procs: Sequence[Process], now: float) -> list[Process]:
        raise NotImplementedError

    def on_step(self, procs: Sequence[Process], tokens_by_pid: Mapping[int, int], now: float) -> None:
        """Default: a stateless policy ignores what was served."""

    def on_exit(self, proc: Process, now: float) -> None:
        """Default: a stateless policy keeps nothing to forget."""

    def may_preempt(self, proc: Process) -> bool:
        """Default: yes. A waiting process that ranks above running ones preempts them when
        memory is short; a policy whose rank for ``proc`` promises order, not urgency (mlfq's
        aging), says no: ``proc`` then enters first when memory frees, and evicts nobody."""
        return True


def is_stateless(policy: Policy) -> bool:
    """Whether ``policy.on_step`` is the no-op default, so steps need not be shown to it one by one."""
    return getattr(type(policy), "on_step", None) is BasePolicy.on_step


def split_served(proc: Process, num_tokens: int) -> tuple[int, int]:
    """Split one step's ``num_tokens`` for ``proc`` into (prompt tokens, sampled tokens).

    Valid inside ``on_step`` only, while ``proc`` shows its pre-step progress: the chunk
    covered positions ``[num_computed, num_computed + num_tokens)``; those below the prompt's
    length are prompt tokens (recomputed ones included), and a chunk that reaches the end of
    the sequence samples one token (the planner's rule for ``SeqChunk.sample``).
    """
    start = proc.num_computed
    end = start + num_tokens
    num_prompt = max(0, min(end, len(proc.prompt_ids)) - start)
    return num_prompt, int(end == proc.num_tokens)


def time_waiting(proc: Process, now: float) -> float:
    """Seconds ``proc`` has existed without being in a step: its age less its device time.

    This is the waiting that aging rewards; it never decreases, so a boost it earns is kept.
    """
    return max(0.0, now - proc.created_at - proc.acct.time_running_s)


_BY_ARRIVAL = attrgetter("created_at", "pid")  # a C-level sort key: rank runs every step, over every queued process


class FCFS(BasePolicy):
    """First come, first served: by creation time, then pid. Never starves anyone; no aging."""

    name = "fcfs"
    static_rank = True  # a process's rank never changes: the scheduler may plan several steps at once

    def rank(self, procs: Sequence[Process], now: float) -> list[Process]:
        return sorted(procs, key=_BY_ARRIVAL)


# The policy modules import BasePolicy from here, so they are imported after it is defined.
from .policies.edf import EDF  # noqa: E402
from .policies.mlfq import MLFQ  # noqa: E402
from .policies.priority import Priority  # noqa: E402
from .policies.rr import RoundRobin  # noqa: E402
from .policies.srpt import SRPT  # noqa: E402
from .policies.vtc import VTC  # noqa: E402

POLICIES: dict[str, type] = {
    "fcfs": FCFS,
    "priority": Priority,
    "rr": RoundRobin,
    "mlfq": MLFQ,
    "srpt": SRPT,
    "vtc": VTC,
    "edf": EDF,
}


def make_policy(name: str) -> Policy:
    """Instantiate the policy registered as ``name``; ValueError lists the known ones."""
    try:
        return POLICIES[name]()
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; known: {', '.join(sorted(POLICIES))}") from None
