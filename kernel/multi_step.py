"""The multi-step half of the device scheduler: runs of decode steps in one driver call.

A modeled-time driver (sim, npu) can run several decode steps of a batch in one call when the
planner proves they would be planned alike (``horizon.py``: ``lookahead_steps``). Here the
scheduler asks for such a run (``_plan_lookahead``), lets its modeled time pass on the
kernel's clock while watching for events that cut it (``_pass_modeled_time``), applies its
steps in order, exits included (``_settle``, ``_apply_decodes``), and sizes the next request
from how far recent runs got (``_learn_horizon``).

A mixin of ``DeviceScheduler`` (scheduler.py), like memory_plan.py: these methods share the
run queues, the plan being built and the step counters with the planner.
"""

from __future__ import annotations

from operator import itemgetter
from typing import TYPE_CHECKING, Any

import trio

from .batch import StepBatch, StepResult
from .horizon import Horizon, lookahead_steps
from .kv_manager import KVCacheManager
from .policy import Policy, is_stateless
from .process import SIGTERM_EXIT, ExitReason, ExitStatus, Process, ProcState

if TYPE_CHECKING:
    from collections.abc import Callable

    from .scheduler import DeviceStats, SchedulerConfig, TenantLimiter

HORIZON_BUDGET_MIN = 8  # steps a multi-step plan may always ask for
HORIZON_BUDGET_MAX = 1 << 16  # above any driver's max_steps: the driver's limit then rules


class MultiStepRuns:
    """Multi-step runs of ``DeviceScheduler``; see the module docstring."""

    # Provided by DeviceScheduler:
    kv: KVCacheManager
    policy: Policy
    config: SchedulerConfig
    stats: DeviceStats
    limiter: TenantLimiter | None
    modeled_time: bool
    shape_batches: bool
    driver_max_steps: int
    last_batch: tuple[int, int]
    _horizon: Horizon | None
    _horizon_sleep: trio.CancelScope | None
    _horizon_budget: int
    _work: trio.Event
    _in_flight: set[int]
    _ops: list[tuple[str, dict[str, Any], int | None]]
    _chosen: list[Process]
    _running: list[Process]
    _ready: list[Process]
    _rank: dict[int, int]
    _preempted_now: set[int]
    _admission_blocked: bool
    _clock: Callable[[], float]
    _salt_of: Callable[[str], bytes]

    if TYPE_CHECKING:
        def apply(self, procs: list[Process], batch: StepBatch, result: StepResult, now: float | None = None) -> None: ...

        def finish(self, proc: Process, status: ExitStatus, at: float | None = None) -> None: ...

        def _charge(self, served: dict[str, int], now: float) -> None: ...

    async def _pass_modeled_time(self, horizon: Horizon) -> None:
        """Let a modeled-time result's steps pass on the kernel's clock, then apply them.

        An event (arrival, signal, fork) during the steps ends them with the step in progress,
        as a one-step loop would replan after it (see ``horizon.py``). The event's ``_wake``
        cuts the run and moves this sleep's deadline to the new end (``_cut_run``): the loop
        wakes once, when the kept steps are over, not once for the event and again at the end.
        """
        self._horizon = horizon
        try:
            if self._work.is_set():
                horizon.cut(self._clock())  # an event came while the driver was computing the run
            with trio.CancelScope(deadline=horizon.end) as self._horizon_sleep:
                await trio.sleep_forever()
        finally:
            self._in_flight = set()
            self._horizon = None
            self._horizon_sleep = None
        self._learn_horizon(horizon)
        self._settle(horizon, horizon.num_steps)

    def _cut_run(self) -> None:
        """An event now: a multi-step run in progress ends with the step now running."""
        horizon, sleep = self._horizon, self._horizon_sleep
        if horizon is not None and sleep is not None:
            horizon.cut(self._clock())
            sleep.deadline = horizon.end

    def _learn_horizon(self, horizon: Horizon) -> None:
        """Size the next run's request from this one, like TCP's slow start: a run that kept
        every step it planned doubles the budget; one cut short asks for twice what it kept.
        Only the driver's wasted work changes: any length gives the same results."""
        if horizon.num_planned <= 1:
            return
        if horizon.num_steps >= horizon.num_planned:
            self._horizon_budget = min(2 * self._horizon_budget, HORIZON_BUDGET_MAX)
        else:
            self._horizon_budget = min(max(HORIZON_BUDGET_MIN, 2 * horizon.num_steps), HORIZON_BUDGET_MAX)

    def settle(self) -> None:
        """Apply the steps of a multi-step run in progress that have ended by now.

        Signals and forks call this first, so that they act on the state a one-step loop
        would show at this instant.
        """
        horizon = self._horizon
        if horizon is None:
            return
        now = self._clock()
        done = horizon.steps_done_by(now)
        self._settle(horizon, done)
        if 0 < done == horizon.step_at(now) < horizon.num_steps:
            # Inside step `done`, whose plan a one-step loop has made: it took the step's new
            # blocks then. Take them now too, so that what comes next (an exit freeing its
            # blocks, a fork sharing them) sees the pool a one-step loop shows at this instant.
            self._take_step_blocks(horizon, done)

    def _take_step_blocks(self, horizon: Horizon, step: int) -> None:
        """Take the blocks that step ``step`` (>= 1) of ``horizon`` writes into, in batch order,
        for the processes still in it; once taken, applying the step finds them there."""
        kv = self.kv
        for proc, num_steps in zip(horizon.procs, horizon.seq_steps, strict=True):
            if num_steps <= step or proc.state is ProcState.ZOMBIE:
                continue
            # Steps before `step` are applied: the step writes position num_computed.
            num_tokens = proc.num_computed + 1
            if kv.blocks_for(num_tokens) > kv.table_len(proc.pid):
                self._take_run_block(proc, num_tokens)

    def _take_run_block(self, proc: Process, num_tokens: int) -> None:
        """Grow ``proc``'s table to ``num_tokens`` inside a run (lookahead_steps checked the
        run's blocks are free, so running out is a bug)."""
        allocation = self.kv.allocate(proc.pid, proc.tokens, num_tokens, self._salt_of(proc.tenant))
        if allocation is None:
            raise RuntimeError(f"pid {proc.pid}: no KV block for a multi-step run that was checked to fit")
        if allocation.blocks_to_zero:
            self._ops.append(("zero_blocks", {"blocks": allocation.blocks_to_zero}, None))

    def _settle(self, horizon: Horizon, num_steps: int) -> None:
        """Apply ``horizon``'s steps up to ``num_steps`` that are not applied yet."""
        if horizon.num_applied == 0 and num_steps > 0:
            first = horizon.first
            self.apply(horizon.procs, horizon.batch, StepResult(first.tokens, first.elapsed_s, first.wall_s), horizon.ends[0])
            horizon.num_applied = 1
        if num_steps <= horizon.num_applied:
            return
        if is_stateless(self.policy):
            # In segments that end where a sequence leaves the run, so that what happens at
            # a step (an exit, the blocks it frees, the blocks taken after) happens in order.
            begin = horizon.num_applied
            for end in sorted({n for n in horizon.seq_steps if begin < n < num_steps} | {num_steps}):
                self._apply_decodes(horizon, begin, end)
                begin = end
        else:
            for step in range(horizon.num_applied, num_steps):
                # Every process in the step, as apply() shows a one-step loop's (a stopped one
                # included: it was served; policies skip those that ended).
                in_step = [p for p, n in zip(horizon.procs, horizon.seq_steps, strict=True) if n > step]
                self.policy.on_step(in_step, {p.pid: 1 for p in in_step}, horizon.ends[step])
                self._apply_decodes(horizon, step, step + 1)
        horizon.num_applied = num_steps

    def _apply_decodes(self, horizon: Horizon, first_step: int, stop_step: int) -> None:
        """Record decode steps [first_step, stop_step) of a horizon (step 0 went through apply)."""
        # Callers pass ranges in which no sequence leaves the run (it may leave at the end).
        in_run = [i for i, n in enumerate(horizon.seq_steps) if n > first_step]
        num = stop_step - first_step
        elapsed = sum(horizon.elapsed[first_step:stop_step])
        times = horizon.ends[first_step:stop_step]
        self.stats.num_steps += num
        self.stats.num_tokens += num * len(in_run)
        self.stats.busy_s += elapsed
        self.last_batch = (len(in_run), len(in_run))
        kv = self.kv
        block_size = kv.block_size
        ended_at = horizon.ends[stop_step - 1]
        served: dict[str, int] = {}  # tokens per tenant, charged once per tenant below
        ending: list[tuple[Process, ExitStatus, float | None]] = []  # exits at the segment's last step
        blocks: list[tuple[int, int, int, Process, int]] = []  # (step, cache?, batch order, proc, tokens)
        running = ProcState.RUNNING
        # This loop runs for every sequence of every multi-step run: locals, attributes read once.
        for index in in_run:
            proc = horizon.procs[index]
            if proc.state is not running:
                if proc.state is ProcState.ZOMBIE or not kv.table_len(proc.pid):
                    continue  # ended: its tokens of these steps are dropped
                if proc.state is ProcState.STOPPED:
                    # Stopped during this segment's first step (the stop cut the run there). As
                    # apply() in a one-step loop: the step's plan took its block, the step's
                    # work is cached, and its token is dropped (drawn again after SIGCONT).
                    proc.acct.time_running_s += elapsed  # it was served in that step, as apply() counts
                    proc.acct.num_steps += num
                    position = proc.num_computed
                    blocks.append((0, 0, len(blocks), proc, position + 1))
                    if (position + 1) % block_size == 0:
                        blocks.append((0, 1, len(blocks), proc, position + 1))
                    if proc.pending_term:  # a SIGTERM came first: apply() ends it at the step's end
                        ending.append((proc, SIGTERM_EXIT, ended_at))
                    continue
                # Stopped and continued within the step: apply() keeps its token, and so do we.
            acct = proc.acct
            acct.time_running_s += elapsed
            acct.num_steps += num
            before = proc.num_computed
            proc.num_computed = computed = before + num
            output = proc.output_ids
            output += horizon.tokens(index, first_step, stop_step)
            served[proc.tenant] = served.get(proc.tenant, 0) + num
            proc.token_times += times
            # Blocks to take (at a step's plan) and to cache (once a step filled them), by the
            # step relative to this segment; run below in a one-step loop's order.
            for position in range(-(-before // block_size) * block_size, computed, block_size):
                blocks.append((position - before, 0, len(blocks), proc, position + 1))
            for end in range((before // block_size + 1) * block_size, computed + 1, block_size):
                blocks.append((end - 1 - before, 1, len(blocks), proc, end))
            proc.notify()
            if proc.stop_ids and output[-1] in proc.stop_ids:
                ending.append((proc, ExitStatus(ExitReason.STOP, message="sampled a stop token"), ended_at))
            elif len(output) >= proc.max_tokens:
                ending.append((proc, ExitStatus(ExitReason.LENGTH, message=f"reached max_tokens={proc.max_tokens}"), ended_at))
            elif proc.pending_term and stop_step == horizon.num_steps:
                ending.append((proc, SIGTERM_EXIT, None))
        # The pool's state must evolve as in a one-step loop, or which cached blocks get evicted,
        # and so later prefix hits, would differ: at each step every sequence's new block is
        # taken (the step's plan), then every block the step filled is cached (its apply), in
        # batch order; exits free their blocks after the segment's last step.
        blocks.sort(key=itemgetter(0, 1, 2))
        for _, cache, _, proc, num_tokens in blocks:
            if cache:
                kv.commit_full_blocks(proc.pid, proc.tokens, num_tokens)
            elif -(-num_tokens // block_size) > kv.table_len(proc.pid):  # not taken yet (settle may have)
                self._take_run_block(proc, num_tokens)
        for proc, status, at in ending:
            self.finish(proc, status, at)
        self._charge(served, ended_at)

    def _plan_lookahead(self, batch: StepBatch) -> list[int] | None:
        """Steps each sequence may take in this driver call (``horizon.py``); None: one step."""
        if not (self.modeled_time and self.shape_batches):
            return None
        if self.limiter is not None and (self.limiter.rate_limited or self.limiter.kv_limited):
            # A multi-step run would not stop when a tenant's bucket runs dry or its processes
            # grow past its KV quota: with either configured, plan one step at a time (exact,
            # at the cost of multi-step).
            return None
        if self._ready and self.kv.enable_prefix_cache and any(len(c.token_ids) > 1 for c in batch.seqs):
            # This step ends a prompt and caches its blocks: a waiting process that shares them
            # may fit at the next step through the prefix cache, though it did not fit now.
            return None
        limit = min(self.config.max_steps, self.driver_max_steps, self._horizon_budget)
        seq_steps = lookahead_steps(self._chosen, batch, self.kv, limit, len(self._running),
                                    self._waiting_may_enter(), not self._ready)
        return seq_steps if max(seq_steps) > 1 else None

    def _waiting_may_enter(self) -> bool:
        """Whether a waiting process might join the batch in a later step of this plan's horizon.

        Not if none waits. Nor if the policy's ranking never changes (``static_rank``), every
        waiting process ranks below every running one (so none can preempt its way in), and
        admission stopped at a process memory or seats could not take: during a multi-step run
        the running processes only grow, so memory only shrinks and seats stay taken.
        """
        if not self._ready:
            return False
        if self._preempted_now:
            # Memory was freed after admission may have closed (a growing process preempted
            # itself or a victim), and a victim may come back through its cached blocks: the
            # next step may admit someone.
            return True
        if not (getattr(self.policy, "static_rank", False) and self._admission_blocked):
            return True
        lowest_running = max((self._rank[p.pid] for p in self._running), default=-1)
        return any(self._rank.get(p.pid, -1) < lowest_running for p in self._ready)
