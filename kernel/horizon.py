"""Multi-step decoding: one plan and one driver call for many decode steps, with no change in results.

Most steps of a long simulation are the same batch of decodes again: nobody arrives, nobody
finishes, nobody waits. Planning each of them, and sending each to the driver, is where a
simulator's time goes. When the planner can prove that the next k steps would be planned
identically, it asks the driver for all k at once (``step`` with ``num_steps``: vLLM calls this
multi-step scheduling), and the kernel lets the steps' modeled time pass on its own clock.

The proof (``lookahead_steps``): every process of the batch is decoding after the first step,
every running process is in it, no waiting process can get in (none waits, or the policy's
ranking is static, all of them rank below the running ones and admission stopped for lack of
memory or seats, which running processes only use up further), nobody reaches its ``max_tokens`` before the last step, and the pool has the
free blocks all k steps need (so no step needs a preemption). The blocks themselves are taken
as the steps are applied, in the order a one-step loop takes them, so which cached prefix
blocks get evicted is the same too; an event inside a step (a kill, a fork, a sample of the
pool) first takes the blocks of the step in progress, which a one-step loop took at its plan.
Later steps therefore carry no block tables: only drivers without KV storage (sim, which takes
batch shapes) run more than one step per call.

Processes that reach their length inside the run leave it there when nobody waits at all: the
driver is told each sequence's step count, and the steps after one ends are modeled without it.

What the proof cannot see coming, an arrival or a signal, ends the horizon early: the kernel
waits on its wake-up event while the modeled time passes, and at an event keeps the steps up to
the one in progress and drops the rest (``Horizon.cut``), just as a one-step loop would have
replanned after that step. A sampled stop token cuts the horizon the same way before any time
passes. Sampling is stateless (``SamplingParams``), so the dropped steps' tokens are exactly the
ones a later step samples again. The result is the same schedule, token for token and second for
second, as planning every step; tests/kernel/test_horizon.py checks that metric for metric.
"""

from __future__ import annotations

import itertools
import sys
from array import array
from bisect import bisect_left
from collections.abc import Sequence

from .batch import StepBatch, StepResult
from .kv_manager import KVCacheManager
from .process import Process


def lookahead_steps(
    procs: Sequence[Process], batch: StepBatch, kv: KVCacheManager, limit: int, num_running: int,
    waiting_may_enter: bool, none_waiting: bool,
) -> list[int]:
    """How many steps each sequence of ``batch`` is certain to take, starting with it.

    Returns one count per sequence (all 1: plan again after this step). A sequence takes
    part in steps ``0 .. count-1``; the run lasts ``max(counts)`` steps. Sequences that reach
    their ``max_tokens`` leave the run early only when ``none_waiting`` (nobody is waiting at
    all, so the blocks and the seat they free change no plan); otherwise the run ends with the
    first of them.

    ``procs`` are the batch's processes in order; ``num_running`` counts the device's running
    processes; ``waiting_may_enter`` says whether a waiting process could join the batch at a
    later step (the scheduler knows its policy and admission); ``limit`` caps the answer.
    Allocates nothing.
    """
    ones = [1] * len(procs)
    if limit <= 1 or waiting_may_enter or num_running != len(procs):
        return ones
    seqs = batch.seqs
    if not all(c.sample for c in seqs):
        return ones  # a prefill chunk continues next step: a different batch
    if any(p.pending_term for p in procs):
        return ones  # a SIGTERM arrived while it was on the device: it ends after this step
    # Step 0 samples one token, each later step one more: a sequence's own limit.
    own = [p.max_tokens - len(p.output_ids) for p in procs]
    steps = min(limit, max(own) if none_waiting else min(own))
    if steps <= 1:
        return ones
    num_free = kv.num_free_blocks
    size = kv.block_size
    table_len = kv.table_len
    # A sequence's steps 1..n-1 write positions context .. context+n-2: its table must hold
    # context+n-1 tokens. Rows: (context, own limit, tokens its table holds now).
    rows = [(c.start_pos + len(c.token_ids), o, table_len(p.pid) * size) for p, c, o in zip(procs, seqs, own, strict=True)]

    def blocks_needed(k: int) -> int:
        # Blocks freed by sequences that finish are not counted on.
        return sum(-(-(c + (k if k < o else o) - 1 - held) // size) for c, o, held in rows
                   if c + (k if k < o else o) - 1 > held)

    if blocks_needed(steps) > num_free:
        lo, hi = 1, steps  # blocks_needed(lo) == 0 <= num_free < blocks_needed(hi)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if blocks_needed(mid) <= num_free else (lo, mid)
        steps = lo
    return [min(steps, o) for o in own]


class Horizon:
    """A multi-step result while its modeled time passes: which steps are done, which remain."""

    def __init__(self, procs: list[Process], batch: StepBatch, result: StepResult, started_at: float,
                 seq_steps: list[int] | None = None) -> None:
        self.procs = procs
        self.batch = batch
        self.first = result  # step 0, applied through the scheduler's ordinary apply
        self.elapsed = [result.elapsed_s, *result.more_elapsed_s]
        self.ends = list(itertools.accumulate(self.elapsed, initial=started_at))[1:]  # end time of each step
        self._more = array("i")
        self._more.frombytes(result.more_tokens)
        if sys.byteorder != "little":
            self._more.byteswap()
        self._stride = len(self.elapsed) - 1  # tokens per sequence in _more
        self.num_planned = len(self.elapsed)  # steps the driver ran
        # Steps each sequence takes part in (it leaves the run after them: it has finished).
        self.seq_steps = [min(n, self.num_planned) for n in seq_steps] if seq_steps else [self.num_planned] * len(procs)
        self.num_steps = self.num_planned  # steps kept; cut() lowers it
        self.num_applied = 0  # steps already applied to the processes
        self._cut_at_stop_tokens()

    @property
    def end(self) -> float:
        """When the last kept step ends."""
        return self.ends[self.num_steps - 1]

    def tokens(self, index: int, first_step: int, stop_step: int) -> list[int]:
        """Sequence ``index``'s tokens of steps [first_step, stop_step), all >= 1."""
        base = index * self._stride - 1
        return self._more[base + first_step : base + stop_step].tolist()

    def steps_done_by(self, now: float) -> int:
        """Kept steps that have ended at ``now``."""
        return min(self.num_steps, bisect_left(self.ends, now + 1e-12))

    def step_at(self, now: float) -> int:
        """The step running at ``now``: the first whose end is not before it (an instant at a
        step's end belongs to that step, as ``cut`` has it)."""
        return bisect_left(self.ends, now)

    def cut(self, now: float) -> None:
        """An event at ``now``: keep the steps up to the one in progress, drop the rest."""
        self.num_steps = min(self.num_steps, self.step_at(now) + 1)

    def _cut_at_stop_tokens(self) -> None:
        # A process that samples a stop token ends there, and the batch after it is smaller:
        # the horizon ends with the earliest such step (step 0's token included).
        for index, proc in enumerate(self.procs):
            if proc.stop_ids and self.first.tokens[index] in proc.stop_ids:
                self.num_steps = 1
                return
            if proc.stop_ids and self._stride:
                row = self.tokens(index, 1, min(self.num_steps, self.seq_steps[index]))
                for offset, token in enumerate(row):
                    if token in proc.stop_ids:
                        self.num_steps = min(self.num_steps, 1 + offset + 1)
                        break
