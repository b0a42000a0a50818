"""The per-device scheduler: iteration-level batching (continuous batching, chunked prefill).

Every step the planner builds one ``StepBatch`` under a token budget and a sequence cap:
first the running processes (decodes before prefill chunks, in policy order), then admissions
from the ready queue while budget and blocks last. Memory comes from the device's
``KVCacheManager``; when it runs out the planner preempts the lowest-ranked running process,
swapping it out or dropping its blocks to recompute later (``preemption.py`` picks; the
memory decisions live in ``memory_plan.py``; runs of several steps in one driver call, in
``multi_step.py``). The policy only ranks; this module plans.

A plan is the batch plus the driver work that must precede it, in order: swap-outs of victims
before their blocks are reused, zeroing of blocks that change tenant, copy-on-write copies,
swap-ins. The step is a call to the device's driver through the name server; if the driver
dies (mid-step or idle), its KV storage died with it and every process on the device is
recomputed, so none is lost and, sampling being stateless, none changes its result.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from . import params
from .batch import SamplingParams, SeqChunk, StepBatch, StepResult
from .errors import KernelError
from .horizon import Horizon
from .kv_manager import KVCacheManager
from .memory_plan import MemoryPlanning
from .multi_step import HORIZON_BUDGET_MIN, MultiStepRuns
from .names import NameServer
from .policy import Policy, is_stateless
from .preemption import PreemptionMode
from .process import SIGTERM_EXIT, ExitReason, ExitStatus, Process, ProcState, Signal
from .proctable import ProcessTable

log = logging.getLogger(__name__)


@dataclass
class SchedulerConfig:
    """Per-device scheduling limits."""

    max_batch_tokens: int = params.MAX_BATCH_TOKENS  # tokens per step (decodes + prefill chunks)
    max_seqs: int = params.MAX_SEQS  # sequences per step
    preemption: PreemptionMode = PreemptionMode.AUTO  # swap, recompute, or the cheaper of the two
    max_steps: int = 1  # decode steps one plan may cover on a modeled-time driver (horizon.py)
    # Device steps after its admission during which an arrival may not evict a process (memory_plan.py).
    min_residency_steps: int = params.MIN_RESIDENCY_STEPS


class TenantLimiter(Protocol):
    """The hook through which tenant token rates reach the planner (kernel/quotas.py)."""

    @property
    def rate_limited(self) -> bool:
        """Some tenant has a rate: plan one step at a time (see ``_plan_lookahead``)."""

    def allows(self, tenant: str, now: float) -> float | None:
        """None if ``tenant`` may be scheduled now; else when it may again."""

    @property
    def kv_limited(self) -> bool:
        """Some tenant has a KV-block quota: check ``kv_room`` before a table grows."""

    def kv_quota(self, tenant: str) -> int | None:
        """``tenant``'s KV-block quota, or None."""

    def kv_room(self, tenant: str) -> int | None:
        """KV blocks ``tenant`` may still take (negative: over), or None without a KV quota."""

    def charge(self, tenant: str, num_tokens: int, now: float) -> None:
        """``tenant`` generated ``num_tokens`` tokens at ``now``."""


@dataclass
class DeviceStats:
    """Counters ``uname`` and ``meminfo`` show."""

    num_steps: int = 0
    num_driver_calls: int = 0  # step calls (a multi-step call covers several steps)
    num_steps_modeled: int = 0  # steps the driver was asked for (an event may cut a run short)
    num_tokens: int = 0  # tokens computed (prefill + decode)
    busy_s: float = 0.0  # device time spent in steps
    num_preemptions: int = 0
    num_swaps: int = 0  # preemptions that swapped the victim out
    num_recomputes: int = 0  # preemptions that dropped the victim's blocks
    swap_bytes: int = 0  # bytes moved to and from host swap
    num_driver_crashes: int = 0
    num_internal_errors: int = 0  # scheduler bugs survived (their processes ended with EIO)


@dataclass
class _Plan:
    batch: StepBatch | None  # None: only driver work this turn (e.g. freeing a swap handle)
    procs: list[Process]
    ops: list[tuple[str, dict[str, Any], int | None]] = field(default_factory=list)  # (op, args, pid)
    seq_steps: list[int] | None = None  # multi-step: steps each sequence takes (num_steps = max)

    @property
    def num_steps(self) -> int:
        """Steps the driver runs: the batch, then decodes of the sequences still in it."""
        return max(self.seq_steps) if self.seq_steps else 1


class DeviceScheduler(MemoryPlanning, MultiStepRuns):
    """Runs the step loop of one device."""

    def __init__(
        self,
        device: str,
        endpoint: str,
        kv: KVCacheManager,
        table: ProcessTable,
        names: NameServer,
        policy: Policy,
        config: SchedulerConfig,
        salt_of: Callable[[str], bytes],
    ) -> None:
        self.device = device
        self.endpoint = endpoint
        self.kv = kv
        self.policy = policy
        self.config = config
        self.stats = DeviceStats()
        self.kv_bytes_per_token = params.DEFAULT_KV_BYTES_PER_TOKEN  # set from load_model's reply
        # What the driver said of itself in load_model's reply (adopt_driver_info):
        self.modeled_time = False  # it models time: the kernel lets each step's time pass
        self.driver_max_steps = 1  # most steps it runs in one call
        # Steps the next multi-step plan asks for at most, learnt from how far the last runs
        # got before an event cut them (see _learn_horizon): a driver models every step asked
        # for, and asking for hundreds when arrivals cut runs after a few wastes nearly all.
        self._horizon_budget = HORIZON_BUDGET_MIN
        self.shape_batches = False  # it wants batch shapes only (no token ids or block tables)
        self.last_batch = (0, 0)  # (sequences, tokens) of the latest step, for telemetry
        self._salt_of = salt_of
        self._table = table
        self._names = names
        self._running: list[Process] = []  # admitted, hold blocks, in admission order
        self._ready: list[Process] = []  # waiting for admission (READY or SWAPPED)
        self._swap_handles: dict[int, int] = {}  # pid -> the driver's handle for its swapped KV
        self._admitted_at: dict[int, int] = {}  # running pid -> stats.num_steps when it was admitted
        # Driver work not yet sent, in the order it must run: (op, args, pid it concerns).
        # Invariant: everything here runs before the next step; nothing is ever dropped.
        self._ops: list[tuple[str, dict[str, Any], int | None]] = []
        self._preempted_now: set[int] = set()  # victims of the plan being built: not re-admitted in it
        self._chosen: list[Process] = []  # processes in the batch being built, in order
        self._chunks: list[SeqChunk] = []  # their chunks
        self._rank: dict[int, int] = {}  # pid -> position in this plan's ranking
        self._in_flight: set[int] = set()  # pids in the step now on the device
        self._work = trio.Event()
        self._clock: Callable[[], float] = trio.current_time
        self._horizon: Horizon | None = None  # a multi-step result whose time is passing
        self._horizon_sleep: trio.CancelScope | None = None  # the loop's sleep until its end
        self._admission_blocked = False  # the last plan's admissions stopped at memory or seats
        # Tenant token rates (kernel/quotas.py); None: no limits. The planner skips a tenant
        # it does not allow until ``_throttled_until``, when the loop wakes to plan again.
        self.limiter: TenantLimiter | None = None
        self._throttled_until = float("inf")
        self._throttled: set[int] = set()  # running pids the limiter keeps out of this plan

    # -- what syscalls call ------------------------------------------------------------------

    @property
    def num_running(self) -> int:
        """Processes holding KV blocks and taking steps."""
        return len(self._running)

    @property
    def num_waiting(self) -> int:
        """Processes waiting for admission (READY or SWAPPED)."""
        return len(self._ready)

    def adopt_driver_info(self, info: dict[str, Any]) -> None:
        """Take the driver's self-description from its load_model reply."""
        self.kv_bytes_per_token = int(info.get("kv_bytes_per_token") or params.DEFAULT_KV_BYTES_PER_TOKEN)
        self.modeled_time = bool(info.get("modeled_time", False))
        self.driver_max_steps = max(1, int(info.get("max_steps", 1)))
        self.shape_batches = bool(info.get("shape_batches", False))

    def submit(self, proc: Process) -> None:
        """Queue a new, continued or forked process for admission."""
        swapped = bool(self.kv.swap_slots(proc.pid))
        self._table.set_state(proc, ProcState.SWAPPED if swapped else ProcState.READY)
        self._ready.append(proc)
        self._wake()

    def signal(self, proc: Process, sig: Signal) -> None:
        """Deliver a signal; it takes effect at the next step boundary at the latest."""
        self.settle()
        self._wake()  # a multi-step run in progress ends with the step now running
        if sig is Signal.SIGKILL or (sig is Signal.SIGTERM and proc.pid not in self._in_flight):
            self.finish(proc, ExitStatus(ExitReason.SIGNAL, signal=sig, message=f"killed by {sig.name}"))
        elif sig is Signal.SIGTERM:
            proc.pending_term = True
        elif sig is Signal.SIGSTOP and proc.state in (ProcState.READY, ProcState.RUNNING, ProcState.SWAPPED, ProcState.NEW):
            self._forget(proc)
            self._table.set_state(proc, ProcState.STOPPED)  # keeps its blocks until memory is short
        elif sig is Signal.SIGCONT and proc.state is ProcState.STOPPED:
            self.submit(proc)

    def end(self, proc: Process, status: ExitStatus) -> None:
        """End ``proc`` now with ``status``, as SIGKILL would (a multi-step run stops at this step)."""
        self.settle()
        self._wake()
        self.finish(proc, status)

    def fork(self, parent: Process, children: list[Process]) -> None:
        """Let ``children`` share the parent's computed KV blocks copy-on-write, then queue them."""
        self.settle()
        if self.kv.table(parent.pid):
            self.kv.fork(parent.pid, [c.pid for c in children])
            for child in children:
                child.num_computed = parent.num_computed
        for child in children:
            self.submit(child)

    def finish(self, proc: Process, status: ExitStatus, at: float | None = None) -> None:
        """End ``proc``: free its blocks and swap, and make it a zombie (``at``: when, if not now)."""
        was_alive = proc.alive
        self._forget(proc)
        self._release(proc)
        self._table.exit(proc, status, at)
        if was_alive:
            self.policy.on_exit(proc, self._clock() if at is None else at)  # exactly once: srpt learns its length
            if self._ready:
                # Its blocks are free: plan again, even if this plan (which may be the one that
                # ended it, with ENOMEM) has nothing to run; otherwise the waiting sleep forever.
                self._wake()

    def meminfo(self) -> dict[str, Any]:
        """The device's memory figures plus its preemption counters."""
        info = self.kv.meminfo()
        info.update(
            device=self.device,
            block_size=self.kv.block_size,
            preemptions=self.stats.num_preemptions,
            swaps=self.stats.num_swaps,
            recomputes=self.stats.num_recomputes,
            swap_bytes=self.stats.swap_bytes,
            preemption_mode=self.config.preemption.value,
        )
        return info

    # -- the loop ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Plan and run steps forever; sleeps while there is nothing to do.

        A bug in planning or accounting must not take the kernel down with it: the processes
        this device was serving end with EIO, the error is logged, and the device goes on
        serving new processes.
        """
        generation = 0  # the driver instance whose KV cache our block tables describe
        while True:
            endpoint = await self._names.wait_ready(self.endpoint, timeout=float("inf"))
            if endpoint.generation != generation:
                if generation:
                    # A new driver instance: the old one's KV storage died with it.
                    self.stats.num_driver_crashes += 1
                    self.reset_kv()
                generation = endpoint.generation
            try:
                await self._turn(endpoint)
            except Exception as exc:
                log.exception("device %s: internal scheduler error", self.device)
                self.stats.num_internal_errors += 1
                self._in_flight = set()
                error = KernelError("EIO", f"internal scheduler error on {self.device}: {type(exc).__name__}: {exc}")
                self._fail(list(self._running) + list(self._ready), error)

    async def _turn(self, endpoint: Any) -> None:
        """One plan and its step, or a wait for work."""
        self._work = trio.Event()  # before planning: an event from here on is not missed
        plan = self.plan()
        if plan is None:
            with trio.move_on_at(self._throttled_until):  # inf unless a tenant's bucket is refilling
                await self._work.wait()
            return
        self._in_flight = {p.pid for p in plan.procs}
        client = endpoint.client
        try:
            if client is None:
                raise KernelError("EIO", f"driver {self.endpoint} is restarting")
            lost: set[int] = set()
            for op, args, pid in plan.ops:
                try:
                    reply = await client.call(op, args)
                except KernelError as error:
                    if client.closed or op not in ("swap_free", "swap_out", "swap_in"):
                        raise
                    # A swap that failed (disk full, a damaged swap file) costs its own process
                    # a recompute, never the batch: a failed swap_out leaves no handle (the
                    # victim recomputes when admitted), a failed swap_in loses the KV now.
                    log.warning("device %s: %s failed: %s", self.device, op, error)
                    if op == "swap_in" and pid is not None:
                        lost.add(pid)
                        self._lose_kv(pid)
                    continue
                self._record_op(op, pid, reply)
            if lost:
                plan = self._without(plan, lost)
            if plan.batch is None:
                return
            multi = plan.seq_steps if plan.num_steps > 1 else None
            args = plan.batch.to_shape_wire(multi) if self.shape_batches else plan.batch.to_wire()
            if multi:
                args["num_steps"] = plan.num_steps
            started = self._clock()
            self.stats.num_driver_calls += 1
            self.stats.num_steps_modeled += plan.num_steps
            reply = await client.call("step", args)
        except KernelError as error:
            self._in_flight = set()
            driver_died = error.errno == "EIO" and (client is None or client.closed)
            if not driver_died:
                self._fail(plan.procs, error)
            return  # a crashed driver: the next turn sees the new generation and recomputes
        try:
            result = StepResult.from_wire(reply)
            if len(result.tokens) != len(plan.procs):
                raise ValueError(f"{len(result.tokens)} tokens for {len(plan.procs)} sequences")
            if not 1 <= result.num_steps <= plan.num_steps:
                raise ValueError(f"{result.num_steps} steps where {plan.num_steps} were asked")
        except (KeyError, TypeError, ValueError) as exc:
            self._in_flight = set()
            self._fail(plan.procs, KernelError("EIO", f"driver {self.endpoint} returned a malformed step result: {exc}"))
            return
        if not self.modeled_time:
            self._in_flight = set()
            self.apply(plan.procs, plan.batch, result)
            return
        await self._pass_modeled_time(Horizon(plan.procs, plan.batch, result, started, plan.seq_steps))

    def _lose_kv(self, pid: int) -> None:
        """A swap-in of ``pid`` failed: drop its (untrustworthy) blocks; it recomputes from its tokens."""
        proc = self._table.procs.get(pid)
        if proc is None or not proc.alive:
            self.kv.lose(pid)
            return
        if proc in self._running:
            self._running.remove(proc)
            self._ready.append(proc)
        self._in_flight.discard(pid)
        self._recompute_later(proc, self.kv.lose)
        self._wake()

    def _without(self, plan: _Plan, pids: set[int]) -> _Plan:
        """``plan`` with the sequences of ``pids`` taken out of its batch (None if none is left)."""
        assert plan.batch is not None
        keep = [i for i, p in enumerate(plan.procs) if p.pid not in pids]
        if not keep:
            return _Plan(None, [], [])
        # One step only: the lookahead assumed the lost process running, not waiting.
        return _Plan(StepBatch([plan.batch.seqs[i] for i in keep], plan.batch.block_size),
                     [plan.procs[i] for i in keep], [])

    def _record_op(self, op: str, pid: int | None, reply: Any) -> None:
        """Book-keeping for a driver op that just ran (the handle and bytes of a swap-out)."""
        if op != "swap_out" or pid is None:
            return
        self.stats.swap_bytes += 2 * reply["bytes"]  # out now, in later
        proc = self._table.procs.get(pid)
        if proc is None or not proc.alive:
            self._ops.append(("swap_free", {"handle": reply["handle"]}, None))  # killed meanwhile
            return
        self._swap_handles[pid] = reply["handle"]
        proc.acct.swap_bytes += 2 * reply["bytes"]

    def plan(self) -> _Plan | None:
        """Build the next batch and the driver work before it, or None if no process can run.

        Running and waiting processes are ranked together by the policy; the top ``max_seqs``
        make the batch, decodes first, then prefill chunks in the budget left. So a more
        important arrival gets into the very next step: it pushes lower-ranked processes out
        of the batch and, when memory is short, preempts the lowest-ranked of them.
        """
        now = self._clock()
        budget = self.config.max_batch_tokens
        chunks: list[SeqChunk] = []
        self._chunks = chunks
        self._chosen = []
        self._preempted_now = set()
        ranked = self.policy.rank(self._running + self._ready, now)
        self._rank = {p.pid: i for i, p in enumerate(ranked)}
        # The policy picks who is in the batch (the top max_seqs); within it decodes go first,
        # so prefill chunks only ever take the budget that decodes leave (stall-free batching).
        # Processes below the top fill seats that the top could not use (memory).
        top = ranked[: self.config.max_seqs]
        decoding: list[Process] = []
        others: list[Process] = []
        running = ProcState.RUNNING
        for p in top:  # decoding: running with only its last sampled token left to compute
            if p.state is running and len(p.prompt_ids) + len(p.output_ids) - p.num_computed == 1:
                decoding.append(p)
            else:
                others.append(p)
        order = decoding + others + ranked[self.config.max_seqs :]
        admitting = True  # the first waiting process that cannot get memory closes admission
        kv = self.kv
        # Only a configured token rate can throttle anyone: otherwise skip the per-process check.
        limiter = self.limiter if self.limiter is not None and self.limiter.rate_limited else None
        self._throttled_until = float("inf")
        self._throttled = set() if limiter is None else {
            p.pid for p in self._running if limiter.allows(p.tenant, now) is not None}
        kv_limited = self.limiter is not None and self.limiter.kv_limited
        quota_full: set[str] = set()  # tenants whose next waiting process did not fit their KV quota
        unvisited_running = len(self._running)  # an overestimate once victims leave: safe
        for proc in order:
            if len(chunks) >= self.config.max_seqs or budget <= 0:
                break
            is_running = proc.state is running
            if is_running:
                unvisited_running -= 1
            elif not admitting and unvisited_running <= 0 and limiter is None:
                break  # only waiting processes are left, and admission has closed: an overloaded
                # device may queue thousands, and this loop runs every step
            if proc.pid in self._preempted_now:
                continue  # preempted as a victim earlier in this loop
            if limiter is not None and (ready_at := limiter.allows(proc.tenant, now)) is not None:
                self._throttled_until = min(self._throttled_until, ready_at)
                continue  # its tenant is over its token rate: it keeps its place and its blocks
            if is_running:
                left = proc.num_tokens - proc.num_computed
                num_new = min(left, budget)
                if left == 1 and kv.can_write_in_place(proc.pid, proc.num_computed):
                    # The common case, a decode whose block is already there: no memory work.
                    chunks.append(self._decode_chunk(proc))
                    self._chosen.append(proc)
                    budget -= 1
                    continue
                planned = len(chunks)
                grown = self._make_room(proc, num_new)
                budget = self._budget_left(budget, planned)
                if not grown:
                    continue
            elif admitting:
                if kv_limited and (proc.tenant in quota_full or not self._fits_kv_quota(
                        proc, min(proc.num_tokens, self._admission_start(proc) + budget))):
                    # Its tenant is at its KV-block quota: it and the tenant's later arrivals
                    # wait (other tenants may still enter), unless it could never fit.
                    if proc.tenant not in quota_full:
                        quota_full.add(proc.tenant)
                        self._end_if_over_quota(proc)
                    continue
                planned = len(chunks)
                admitted = self._admit(proc, budget)
                budget = self._budget_left(budget, planned)
                if admitted is None:
                    admitting = False  # later arrivals do not jump the head of the line
                    continue
                if not admitted:
                    continue  # it ended (ENOMEM)
                num_new = admitted
            else:
                continue
            chunks.append(self._chunk(proc, num_new))
            self._chosen.append(proc)
            budget -= num_new
        # Whether the waiting processes could not get in for lack of memory or seats (not of
        # token budget, which the next step has again): the lookahead's question.
        self._admission_blocked = not admitting or len(chunks) >= self.config.max_seqs
        if not chunks:
            ops, self._ops = self._ops, []
            return _Plan(None, [], ops) if ops else None
        batch = StepBatch(chunks, self.kv.block_size)
        seq_steps = self._plan_lookahead(batch)
        ops, self._ops = self._ops, []
        return _Plan(batch, self._chosen, ops, seq_steps)

    def apply(self, procs: list[Process], batch: StepBatch, result: StepResult, now: float | None = None) -> None:
        """Record a finished step: progress, sampled tokens, exits, newly cacheable blocks.

        ``now`` is when the step ended (default: the kernel's clock).
        """
        now = self._clock() if now is None else now
        if not is_stateless(self.policy):
            # First, while num_computed and output_ids still describe the state before the
            # step: stateful policies (rr, mlfq, vtc) split what was served into prompt and output.
            self.policy.on_step(procs, {c.seq_id: len(c.token_ids) for c in batch.seqs}, now)
        elapsed = result.elapsed_s
        block_size = batch.block_size
        self.stats.num_steps += 1
        self.stats.num_tokens += batch.num_tokens
        self.stats.busy_s += elapsed
        self.last_batch = (len(batch.seqs), batch.num_tokens)
        served: dict[str, int] = {}  # sampled tokens per tenant, charged once per tenant below
        zombie, stopped = ProcState.ZOMBIE, ProcState.STOPPED
        # This loop runs for every sequence of every step: locals, and each attribute read once.
        for proc, chunk, token in zip(procs, batch.seqs, result.tokens, strict=True):
            state = proc.state
            if state is zombie:
                continue  # killed while the step ran; its blocks are already free
            acct = proc.acct
            acct.time_running_s += elapsed
            acct.num_steps += 1
            start = chunk.start_pos
            proc.num_computed = context = start + len(chunk.token_ids)
            if context // block_size > start // block_size:
                # A block filled up this step: it may now be shared through the prefix cache.
                self.kv.commit_full_blocks(proc.pid, proc.tokens, context)
            if chunk.sample and state is stopped:
                # Stopped while this step ran: drop the token so nothing appears after
                # kill -STOP returned. Sampling is stateless, so after SIGCONT the same token
                # is drawn again from the last position, whose KV we rewrite identically.
                proc.num_computed -= 1
                if proc.pending_term:
                    self.finish(proc, SIGTERM_EXIT, now)
                continue
            if chunk.sample and token is not None:
                output = proc.output_ids
                output.append(int(token))
                served[proc.tenant] = served.get(proc.tenant, 0) + 1
                proc.token_times.append(now)
                if proc.first_token_at is None:
                    proc.first_token_at = now
                proc.notify()
                if token in proc.stop_ids:
                    self.finish(proc, ExitStatus(ExitReason.STOP, message="sampled a stop token"), now)
                elif len(output) >= proc.max_tokens:
                    self.finish(proc, ExitStatus(ExitReason.LENGTH, message=f"reached max_tokens={proc.max_tokens}"), now)
            if proc.pending_term and proc.alive:
                self.finish(proc, SIGTERM_EXIT, now)
        self._charge(served, now)

    def _charge(self, served: dict[str, int], now: float) -> None:
        """Tell the tenant limiter what each tenant generated in a step (one call per tenant)."""
        if self.limiter is not None:
            for tenant, num_tokens in served.items():
                self.limiter.charge(tenant, num_tokens, now)

    def reset_kv(self) -> None:
        """Every KV block and swapped copy of this device is gone: recompute everyone."""
        self.kv.reset()
        self._swap_handles.clear()
        self._ops.clear()  # work queued for the dead instance (freeing its swap handles) is moot
        for proc in self._table:
            if proc.device == self.device and proc.alive:
                proc.acct.num_recomputed_tokens += proc.num_computed
                proc.num_computed = 0
                if proc in self._running:
                    proc.acct.num_preemptions += 1
                    self._running.remove(proc)
                    self._ready.append(proc)
                if proc.state in (ProcState.RUNNING, ProcState.SWAPPED):
                    self._table.set_state(proc, ProcState.READY)

    # -- batch chunks --------------------------------------------------------------------------

    def _decode_chunk(self, proc: Process) -> SeqChunk:
        """``_chunk(proc, 1)`` for a decoding process, built directly (the planner's hot path)."""
        s = proc.sampling
        output = proc.output_ids
        # The one token left to compute is the sequence's last: the latest sampled one, or
        # the prompt's last if nothing was sampled yet.
        return SeqChunk(proc.pid, output[-1:] if output else proc.prompt_ids[-1:], proc.num_computed,
                        [] if self.shape_batches else self.kv.table(proc.pid), True,
                        SamplingParams(s.temperature, s.top_k, s.top_p, s.seed, len(output)))

    def _chunk(self, proc: Process, num_new: int) -> SeqChunk:
        start = proc.num_computed
        s = proc.sampling
        return SeqChunk(
            seq_id=proc.pid,
            token_ids=proc.token_slice(start, start + num_new),
            start_pos=start,
            block_table=[] if self.shape_batches else self.kv.table(proc.pid),  # shapes carry no tables
            sample=start + num_new == proc.num_tokens,
            sampling=SamplingParams(s.temperature, s.top_k, s.top_p, s.seed, len(proc.output_ids)),
        )

    def _budget_left(self, budget: int, planned: int) -> int:
        """The step's token budget after a memory call that may have preempted processes already
        planned into it (their chunks left the batch): ``planned`` is how many chunks it had."""
        if len(self._chunks) == planned:
            return budget
        return self.config.max_batch_tokens - sum(len(c.token_ids) for c in self._chunks)

    def _forget(self, proc: Process) -> None:
        self._admitted_at.pop(proc.pid, None)
        if proc in self._running:
            self._running.remove(proc)
        if proc in self._ready:
            self._ready.remove(proc)

    def _fail(self, procs: list[Process], error: KernelError) -> None:
        """The driver refused the step: end its processes with the driver's errno."""
        log.warning("device %s refused a step: %s", self.device, error)
        for proc in procs:
            if proc.alive:
                self.finish(proc, ExitStatus(ExitReason.ERROR, errno=error.errno, message=error.message))

    def _wake(self) -> None:
        self._work.set()
        self._cut_run()
