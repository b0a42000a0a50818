"""Skip-join multi-level feedback queue, as in FastServe (Wu et al. 2023).

There are ``num_levels`` FIFO queues; level ``i`` has a quantum of ``base_quantum * 2**i``
tokens and the last level has none (nothing is demoted below it). Higher levels run first,
FIFO within a level. Costs are in generated-token units: a prompt token costs
``prefill_weight``, every other computed token 1.

- Skip-join: a new process joins the highest level whose quantum exceeds its prefill cost
  (``prefill_weight`` x its prompt tokens not yet computed), not the top: a long prompt would
  use up the top quanta in its first step anyway, so it skips them, and short jobs keep them.
- Demotion: when the tokens a process was served in its level exceed the level's quantum, it
  goes to the back of the next level down and starts that level's count at 0.
- Aging applies: MLFQ starves long jobs while short ones keep arriving, so a process in a
  lower level that has not been served for ``starvation_s`` seconds moves up one level, to the
  back, with a fresh count and a fresh clock (FastServe promotes to the top at once). One level
  at a time, because under overload nearly everyone waits that long: promoting them all to
  the top made the top a FIFO of the starved and erased what MLFQ is for. A process at the
  bottom reaches the top after ``(num_levels - 1) * starvation_s`` unserved.
- A promoted process evicts nobody (``may_preempt``) until it is served: it enters when memory
  frees, ahead of those ranked below it. Its rank comes from waiting, not from being short;
  when promoted processes took memory from running ones, each of those soon aged and took it
  back: under 1.5x load on the Azure trace the device spent more steps recomputing evicted KV
  than generating (1,671 preemptions for 600 requests, 571 tokens/s against fcfs's 1,001).

``rank`` updates state: a first-seen process joins, and starving ones are promoted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import count

from .. import params
from ..policy import BasePolicy, split_served
from ..process import Process, ProcState


@dataclass
class _Entry:
    level: int  # 0 is the top (runs first)
    ticket: int  # position in its level's FIFO (lower runs first); renewed on every move
    served: float  # tokens (weighted) served since it joined this level
    last_served_at: float  # kernel time of its last step, or its creation time
    aged: bool = False  # promoted for starving and not served since: waits for memory, takes none


class MLFQ(BasePolicy):
    """By (level, ticket in level)."""

    name = "mlfq"

    def __init__(
        self,
        num_levels: int = params.MLFQ_NUM_LEVELS,
        base_quantum: int = params.MLFQ_BASE_QUANTUM_TOKENS,
        prefill_weight: float = params.MLFQ_PREFILL_WEIGHT,
        starvation_s: float = params.MLFQ_STARVATION_S,
    ) -> None:
        if num_levels < 1 or base_quantum < 1 or prefill_weight < 0 or starvation_s <= 0:
            raise ValueError("mlfq needs num_levels >= 1, base_quantum >= 1, prefill_weight >= 0, "
                             "starvation_s > 0")
        self.num_levels = num_levels
        self.prefill_weight = prefill_weight
        self.starvation_s = starvation_s
        # quanta[i] for every level but the last, which never demotes.
        self.quanta = [base_quantum * 2**i for i in range(num_levels - 1)]
        self._tickets = count()
        self._entries: dict[int, _Entry] = {}  # pid -> its place

    def level_of(self, pid: int) -> int | None:
        """The level ``pid`` is queued in, or None if this policy has not seen it."""
        entry = self._entries.get(pid)
        return None if entry is None else entry.level

    def join_level(self, proc: Process) -> int:
        """Skip-join: the first level whose quantum exceeds ``proc``'s remaining prefill cost."""
        cost = self.prefill_weight * max(0, len(proc.prompt_ids) - proc.num_computed)
        for level, quantum in enumerate(self.quanta):
            if quantum > cost:
                return level
        return self.num_levels - 1

    def rank(self, procs: Sequence[Process], now: float) -> list[Process]:
        for proc in sorted(procs, key=lambda p: (p.created_at, p.pid)):
            entry = self._entries.get(proc.pid)
            if entry is None:
                self._entries[proc.pid] = _Entry(self.join_level(proc), next(self._tickets), 0.0,
                                                 proc.created_at)
            elif entry.level > 0 and now - entry.last_served_at >= self.starvation_s:
                self._move(entry, entry.level - 1)
                entry.last_served_at = now  # promoted: the starvation clock starts again
                entry.aged = True
        return sorted(procs, key=lambda p: (self._entries[p.pid].level, self._entries[p.pid].ticket))

    def on_step(self, procs: Sequence[Process], tokens_by_pid: Mapping[int, int], now: float) -> None:
        for proc in procs:
            entry = self._entries.get(proc.pid)
            if entry is None or proc.state is ProcState.ZOMBIE:
                continue
            num_tokens = tokens_by_pid.get(proc.pid, 0)
            num_prompt, _ = split_served(proc, num_tokens)
            entry.served += self.prefill_weight * num_prompt + (num_tokens - num_prompt)
            entry.last_served_at = now
            entry.aged = False
            if entry.level < len(self.quanta) and entry.served > self.quanta[entry.level]:
                self._move(entry, entry.level + 1)

    def on_exit(self, proc: Process, now: float) -> None:
        self._entries.pop(proc.pid, None)

    def may_preempt(self, proc: Process) -> bool:
        """Not while ``proc`` holds a rank it got by aging and has not been served since."""
        entry = self._entries.get(proc.pid)
        return entry is None or not entry.aged

    def _move(self, entry: _Entry, level: int) -> None:
        """To the back of ``level``, with a fresh count."""
        entry.level = level
        entry.ticket = next(self._tickets)
        entry.served = 0.0
