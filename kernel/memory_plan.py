"""The memory half of the step planner: admission, growth, preemption, swap, KV quotas.

``DeviceScheduler`` (scheduler.py) plans a step by walking processes in policy order; each
process that needs memory comes here. ``_admit`` gives a waiting process its blocks (swapping
it in, hitting the prefix cache), ``_make_room`` grows a running one, and both preempt the
lowest-ranked running processes (``_victims_below``; throttled ones first) when blocks run out,
swapping them out or dropping their blocks to recompute (``preemption.py`` picks). An arrival
evicts only processes that have run ``min_residency_steps`` since their admission, and only if
its policy lets it (``may_preempt``): both keep an overloaded device from thrashing. A tenant's
KV-block quota is kept here too, like a cgroup's memory.max (``_keep_kv_quota``).

A mixin rather than an object of its own: these methods read and change the plan being built
(``_chosen``, ``_rank``, ``_ops``) and the run queues in the middle of the planner's loop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import params
from .batch import SeqChunk
from .kv_manager import KVCacheManager
from .policy import Policy
from .preemption import choose_swap
from .process import ExitReason, ExitStatus, Process, ProcState
from .proctable import ProcessTable

if TYPE_CHECKING:
    from collections.abc import Callable

    from .scheduler import DeviceStats, SchedulerConfig, TenantLimiter


class MemoryPlanning:
    """Memory decisions of ``DeviceScheduler``; see the module docstring."""

    # Provided by DeviceScheduler:
    device: str
    kv: KVCacheManager
    policy: Policy
    config: SchedulerConfig
    stats: DeviceStats
    kv_bytes_per_token: int
    limiter: TenantLimiter | None
    _table: ProcessTable
    _running: list[Process]
    _ready: list[Process]
    _swap_handles: dict[int, int]
    _admitted_at: dict[int, int]
    _ops: list[tuple[str, dict[str, Any], int | None]]
    _preempted_now: set[int]
    _chosen: list[Process]
    _chunks: list[SeqChunk]
    _rank: dict[int, int]
    _throttled: set[int]
    _clock: Callable[[], float]
    _salt_of: Callable[[str], bytes]

    if TYPE_CHECKING:
        def finish(self, proc: Process, status: ExitStatus, at: float | None = None) -> None: ...

        def _wake(self) -> None: ...

    def _reserve(self) -> int:
        return int(self.kv.num_blocks * params.ADMISSION_RESERVE)

    def _admit(self, proc: Process, budget: int) -> int | None:
        """Give a waiting process its memory and make it RUNNING.

        Returns the tokens to compute this step, 0 if the process ended instead (ENOMEM), or
        None if memory is short (it keeps waiting; a swapped process stays swapped out).
        """
        if self.kv.blocks_for(proc.num_tokens) > self.kv.num_blocks:
            self.finish(proc, ExitStatus(ExitReason.ERROR, errno="ENOMEM", message=(
                f"needs {self.kv.blocks_for(proc.num_tokens)} KV blocks but device {self.device} has "
                f"{self.kv.num_blocks} in all")))
            return 0
        # The reserve keeps room for running processes to grow into; with none running it
        # would only stop a process that needs nearly the whole pool from ever starting.
        reserve = self._reserve() if self._running else 0
        if self.kv.swap_slots(proc.pid):
            handle = self._swap_handles.get(proc.pid)
            if handle is None or len(self.kv.swap_slots(proc.pid)) + reserve > self.kv.num_blocks:
                # Its swap copy is lost (the swap-out never ran), or it could never come back
                # while the reserve is kept: recompute it instead.
                self._drop_swap(proc)
            else:
                # Swap in only once the step's whole allocation fits: a process holding its
                # swapped-in blocks while it waits for one more could, with others doing the
                # same, hold the whole pool with nobody running.
                slots = len(self.kv.swap_slots(proc.pid))
                needed = max(slots, self.kv.blocks_for(proc.num_computed + min(proc.num_tokens - proc.num_computed, budget)))
                while not self.kv.can_allocate(slots, reserve):
                    if not self._reclaim_idle(slots, proc):
                        return None  # it waits for its own blocks, evicting no running process
                while not self.kv.can_allocate(needed, reserve):
                    if not self._evict_for_admission(proc, needed):
                        return None
                pairs = self.kv.swap_in(proc.pid, reserve=reserve)
                assert pairs is not None  # checked above
                del self._swap_handles[proc.pid]
                self._ops.append(("swap_in", {"blocks": [d for _, d in pairs], "handle": handle}, proc.pid))
        salt = self._salt_of(proc.tenant)
        first = not self.kv.table_len(proc.pid)
        start = self._admission_start(proc)
        num_tokens = start + min(proc.num_tokens - start, budget)
        allocation = self.kv.allocate(proc.pid, proc.tokens, num_tokens, salt, reserve=reserve)
        while allocation is None:
            if not self._evict_for_admission(proc, self.kv.blocks_for(num_tokens)):
                return None
            allocation = self.kv.allocate(proc.pid, proc.tokens, num_tokens, salt, reserve=reserve)
        if allocation.blocks_to_zero:
            self._ops.append(("zero_blocks", {"blocks": allocation.blocks_to_zero}, None))
        if first and allocation.num_cached_tokens > proc.num_computed:
            proc.acct.prefix_cache_hits += allocation.num_cached_tokens - proc.num_computed
            proc.num_computed = allocation.num_cached_tokens
        pairs = self.kv.prepare_write(proc.pid, proc.num_computed, num_tokens)
        if pairs is None:
            return None
        if pairs:
            self._ops.append(("copy_blocks", {"src": [s for s, _ in pairs], "dst": [d for _, d in pairs]}, None))
        self._ready.remove(proc)
        self._running.append(proc)
        self._admitted_at[proc.pid] = self.stats.num_steps
        self._table.set_state(proc, ProcState.RUNNING)
        if proc.started_at is None:
            proc.started_at = self._clock()
        return min(proc.num_tokens - proc.num_computed, budget)

    def _admission_start(self, proc: Process) -> int:
        """Where an admission's chunk starts: after what ``proc`` computed, or after its cached
        prefix on a first allocation (the prefix cache computes those tokens for it)."""
        if self.kv.table_len(proc.pid):
            return proc.num_computed
        return max(proc.num_computed, self.kv.cached_prefix(proc.tokens, self._salt_of(proc.tenant)))

    def _evict_for_admission(self, proc: Process, num_blocks: int) -> bool:
        """Free memory for waiting ``proc``: idle processes' blocks (``_reclaim_idle``), else the
        lowest-ranked victim it may take (a more important arrival takes memory from the least). False if
        there is neither."""
        if self._reclaim_idle(num_blocks, proc):
            return True
        victims = self._victims_below(proc, settled_only=True)
        if not self._may_preempt(proc):
            victims = [p for p in victims if p.pid in self._throttled]  # idle ones only
        if not victims:
            return False
        self._preempt(victims[-1])
        return True

    def _make_room(self, proc: Process, num_new: int) -> bool:
        """Grow a running process's table for ``num_new`` tokens, preempting others if needed.

        Returns False if ``proc`` itself had to be preempted (or ended with ENOMEM).
        """
        salt = self._salt_of(proc.tenant)
        num_tokens = proc.num_computed + num_new
        if self.limiter is not None and self.limiter.kv_limited and not self._keep_kv_quota(proc, num_tokens):
            return False
        while True:
            if self.kv.blocks_for(num_tokens) <= self.kv.table_len(proc.pid):
                # The common decode step: the table already covers the new token.
                pairs = self.kv.prepare_write(proc.pid, proc.num_computed, num_tokens)
                if pairs is not None:
                    break
            allocation = self.kv.allocate(proc.pid, proc.tokens, num_tokens, salt)
            if allocation is not None and allocation.blocks_to_zero:
                self._ops.append(("zero_blocks", {"blocks": allocation.blocks_to_zero}, None))
            pairs = None if allocation is None else self.kv.prepare_write(proc.pid, proc.num_computed, num_tokens)
            if pairs is not None:
                break
            if self._reclaim_idle(self.kv.blocks_for(num_tokens), proc):
                continue
            victims = self._victims_below(proc)
            if not victims:
                if not self._chosen and self.kv.blocks_for(num_tokens) > self.kv.num_blocks:
                    self.finish(proc, ExitStatus(ExitReason.ERROR, errno="ENOMEM", message=(
                        f"grew past the {self.kv.num_blocks} KV blocks of device {self.device}")))
                else:
                    self._preempt(proc)
                return False
            self._preempt(victims[-1])
        if pairs:
            self._ops.append(("copy_blocks", {"src": [s for s, _ in pairs], "dst": [d for _, d in pairs]}, None))
        return True

    def _reclaim_idle(self, needed: int, below: Process, tenant: str | None = None) -> bool:
        """Free blocks no step is using, for ``below`` (of ``tenant``'s processes only, if
        given): stopped processes' (they recompute on SIGCONT), then those of waiting processes
        ranked below ``below`` that hold some (forked children not admitted yet; they recompute,
        mostly from the prefix cache). Idle holders give back before anyone running is
        preempted; otherwise a waiting process could wait forever for blocks that waiting
        processes behind it hold. True if any process gave its blocks back."""
        kv = self.kv
        lowest = len(self._rank)
        mine = self._rank.get(below.pid, lowest)
        stopped = [p for p in self._table if p.device == self.device and p.state is ProcState.STOPPED]
        # Few waiting processes hold blocks (an overloaded device queues thousands): filter first.
        waiting = [p for p in self._ready if p.state is ProcState.READY and kv.table_len(p.pid)
                   and p is not below and self._rank.get(p.pid, lowest) > mine]
        waiting.sort(key=lambda p: self._rank.get(p.pid, lowest), reverse=True)  # the lowest-ranked first
        freed = 0
        dropped = False
        for proc in stopped + waiting:
            if freed >= needed:
                break
            if tenant in (None, proc.tenant) and kv.table_len(proc.pid):
                freed += kv.free(proc.pid)
                proc.acct.num_recomputed_tokens += proc.num_computed
                proc.num_computed = 0
                # Memory came free after admission may have closed: the next step may admit
                # someone (a multi-step run must not be planned over it), and a waiting process
                # that gave its blocks back is not admitted again in this plan.
                self._preempted_now.add(proc.pid)
                dropped = True
        return dropped

    def _preempt(self, proc: Process) -> None:
        """Take ``proc``'s blocks: swap them out or drop them, and queue it for re-admission."""
        bytes_per_block = self.kv_bytes_per_token * self.kv.block_size
        tokens_per_s = self.stats.num_tokens / self.stats.busy_s if self.stats.busy_s else params.PREFILL_TOKENS_PER_S
        pairs = None
        if choose_swap(self.config.preemption, self.kv.table_len(proc.pid), bytes_per_block, proc.num_computed, tokens_per_s):
            pairs = self.kv.swap_out(proc.pid)  # None if the swap space is full: recompute instead
        if proc in self._chosen:
            # Planned earlier in this step (decodes are planned first): out of the batch again
            # (the planner gives its tokens back to the step's budget, ``_budget_left``).
            index = self._chosen.index(proc)
            del self._chosen[index]
            del self._chunks[index]
        proc.acct.num_preemptions += 1
        self.stats.num_preemptions += 1
        self._running.remove(proc)
        self._admitted_at.pop(proc.pid, None)
        self._ready.append(proc)
        self._preempted_now.add(proc.pid)
        if pairs is not None:
            self.stats.num_swaps += 1
            proc.acct.num_swaps += 1
            # The tenant travels so a driver that swaps to disk encrypts under that tenant's key.
            self._ops.append(("swap_out", {"blocks": [b for b, _ in pairs], "tenant": proc.tenant}, proc.pid))
            self._table.set_state(proc, ProcState.SWAPPED)
        else:
            self.stats.num_recomputes += 1
            self._recompute_later(proc)

    def _drop_swap(self, proc: Process) -> None:
        """Give up a swapped process's host copy; it recomputes from its tokens."""
        handle = self._swap_handles.pop(proc.pid, None)
        if handle is not None:
            self._ops.append(("swap_free", {"handle": handle}, None))
        self._recompute_later(proc)

    def _recompute_later(self, proc: Process, drop: Callable[[int], int] | None = None) -> None:
        """Drop ``proc``'s KV (``kv.free``, or ``drop``) and make it READY: it recomputes from its tokens."""
        (drop or self.kv.free)(proc.pid)
        proc.acct.num_recomputed_tokens += proc.num_computed
        proc.num_computed = 0
        self._table.set_state(proc, ProcState.READY)

    def _release(self, proc: Process) -> None:
        handle = self._swap_handles.pop(proc.pid, None)
        if handle is not None:
            self._ops.append(("swap_free", {"handle": handle}, None))
            self._wake()
        self.kv.free(proc.pid)

    def _may_preempt(self, proc: Process) -> bool:
        """The policy's ``may_preempt`` (yes for a policy written before the hook existed)."""
        hook = getattr(self.policy, "may_preempt", None)
        return hook is None or hook(proc)

    def _victims_below(self, proc: Process, settled_only: bool = False) -> list[Process]:
        """Running processes ranked below ``proc``, lowest last, those already planned into this
        step's batch included (decodes are planned first; a victim leaves the batch, or a more
        important process would wait on a less important one's memory); then, whatever their
        rank, those whose tenant's token rate keeps them from running (they would hold their
        blocks idle), so they are preempted first.

        ``settled_only`` (an admission asking): only processes admitted at least
        ``config.min_residency_steps`` device steps ago. Without that guarantee a policy whose
        ranks move (rr's rotation, mlfq's demotions) thrashes under overload: each arrival
        evicts a process that has just paid to come back, which soon evicts another, and the
        device spends its steps recomputing (or swapping) instead of generating.
        """
        mine = self._rank.get(proc.pid, len(self._rank))
        settled_by = self.stats.num_steps - self.config.min_residency_steps
        victims = [p for p in self._running if p is not proc
                   and self._rank.get(p.pid, len(self._rank)) > mine and p.pid not in self._throttled
                   and not (settled_only and self._admitted_at.get(p.pid, -1 << 62) > settled_by)]
        victims.sort(key=lambda p: self._rank.get(p.pid, len(self._rank)))
        if self._throttled:
            idle = [p for p in self._running if p.pid in self._throttled and p is not proc]
            victims += sorted(idle, key=lambda p: self._rank.get(p.pid, len(self._rank)))
        return victims

    def _over_kv_quota(self, proc: Process, num_tokens: int) -> bool:
        """Whether covering ``num_tokens`` would take ``proc``'s tenant past its KV-block quota:
        the blocks its table grows by, and the copies of shared (forked) blocks it writes into,
        which stay held by the others."""
        more = (self.kv.blocks_for(num_tokens) - self.kv.table_len(proc.pid)
                + self.kv.num_copies_to_write(proc.pid, proc.num_computed, num_tokens))
        if more <= 0:
            return False
        room = self.limiter.kv_room(proc.tenant) if self.limiter is not None else None
        return room is not None and more > room

    def _fits_kv_quota(self, proc: Process, num_tokens: int) -> bool:
        """Whether covering ``num_tokens`` keeps ``proc``'s tenant within its KV quota, once the
        tenant's idle processes have given back their blocks if they must (``_reclaim_idle``).
        Admissions ask this; a growing process also evicts lesser siblings (``_keep_kv_quota``)."""
        while self._over_kv_quota(proc, num_tokens):
            if not self._reclaim_idle(self.kv.blocks_for(num_tokens), proc, tenant=proc.tenant):
                return False
        return True

    def _end_if_over_quota(self, proc: Process) -> bool:
        """End ``proc`` with ENOMEM if its whole sequence needs more blocks than its tenant's quota."""
        quota = self.limiter.kv_quota(proc.tenant) if self.limiter is not None else None
        needed = self.kv.blocks_for(proc.num_tokens)
        if quota is None or needed <= quota:
            return False
        self.finish(proc, ExitStatus(ExitReason.ERROR, errno="ENOMEM", message=(
            f"needs {needed} KV blocks, over tenant {proc.tenant!r}'s quota of {quota}")))
        return True

    def _keep_kv_quota(self, proc: Process, num_tokens: int) -> bool:
        """Make room within ``proc``'s tenant's KV quota to cover ``num_tokens``, like memory.max:
        preempt the tenant's own lower-ranked processes. False if ``proc`` had to wait instead
        (preempted) or end (it alone needs more than the quota)."""
        while not self._fits_kv_quota(proc, num_tokens):  # the tenant's idle processes give back first
            mine = self._rank.get(proc.pid, len(self._rank))
            siblings = [p for p in self._running if p.tenant == proc.tenant and p is not proc
                        and self._rank.get(p.pid, len(self._rank)) > mine]
            if siblings:
                self._preempt(max(siblings, key=lambda p: self._rank.get(p.pid, len(self._rank))))
                continue
            quota = self.limiter.kv_quota(proc.tenant) if self.limiter is not None else None
            if quota is not None and self.kv.blocks_for(num_tokens) > quota:
                self.finish(proc, ExitStatus(ExitReason.ERROR, errno="ENOMEM", message=(
                    f"needs {self.kv.blocks_for(num_tokens)} KV blocks, over tenant {proc.tenant!r}'s quota of {quota}")))
            else:
                self._preempt(proc)  # its tenant's higher-ranked processes keep the quota
            return False
        return True
