"""The per-device scheduler: iteration-level batching (continuous batching, chunked prefill).

Every step the planner builds one ``StepBatch`` under a token budget and a sequence cap:
first the running processes (decodes before prefill chunks, in policy order), then new
admissions from the ready queue while budget and blocks last. When blocks run out it preempts
(drops the victim's blocks; it recomputes later). The policy only ranks; this module plans.

The step itself is a call to the device's driver through the name server; if the driver
crashes mid-step every process on the device loses its KV cache and is recomputed, so no
process is lost and, sampling being stateless, none changes its result.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import trio

from . import params
from .batch import SamplingParams, SeqChunk, StepBatch, StepResult
from .errors import KernelError
from .memory import BlockPool
from .names import NameServer
from .policy import Policy
from .process import ExitReason, ExitStatus, Process, ProcState, Signal
from .proctable import ProcessTable

log = logging.getLogger(__name__)


@dataclass
class SchedulerConfig:
    """Per-device scheduling limits."""

    max_batch_tokens: int = params.MAX_BATCH_TOKENS  # tokens per step (decodes + prefill chunks)
    max_seqs: int = params.MAX_SEQS  # sequences per step


@dataclass
class DeviceStats:
    """Counters ``lsdev`` and ``meminfo`` show."""

    num_steps: int = 0
    num_tokens: int = 0  # tokens computed (prefill + decode)
    busy_s: float = 0.0  # device time spent in steps
    num_preemptions: int = 0
    num_driver_crashes: int = 0


class DeviceScheduler:
    """Runs the step loop of one device."""

    def __init__(
        self,
        device: str,
        endpoint: str,
        pool: BlockPool,
        table: ProcessTable,
        names: NameServer,
        policy: Policy,
        config: SchedulerConfig,
    ) -> None:
        self.device = device
        self.endpoint = endpoint
        self.pool = pool
        self.policy = policy
        self.config = config
        self.stats = DeviceStats()
        self._table = table
        self._names = names
        self._running: list[Process] = []  # admitted, hold blocks, in admission order
        self._ready: list[Process] = []  # waiting for admission
        self._in_flight: set[int] = set()  # pids in the step now on the device
        self._work = trio.Event()
        self._clock: Callable[[], float] = trio.current_time

    # -- what syscalls call ------------------------------------------------------------------

    def submit(self, proc: Process) -> None:
        """Queue a new (or continued) process for admission."""
        self._table.set_state(proc, ProcState.READY)
        self._ready.append(proc)
        self._wake()

    def signal(self, proc: Process, sig: Signal) -> None:
        """Deliver a signal; it takes effect at the next step boundary at the latest."""
        if sig is Signal.SIGKILL or (sig is Signal.SIGTERM and proc.pid not in self._in_flight):
            self.finish(proc, ExitStatus(ExitReason.SIGNAL, signal=sig, message=f"killed by {sig.name}"))
        elif sig is Signal.SIGTERM:
            proc.pending_term = True
        elif sig is Signal.SIGSTOP and proc.state in (ProcState.READY, ProcState.RUNNING, ProcState.NEW):
            self._forget(proc)
            self._table.set_state(proc, ProcState.STOPPED)  # keeps its blocks until memory is short
        elif sig is Signal.SIGCONT and proc.state is ProcState.STOPPED:
            self.submit(proc)

    def finish(self, proc: Process, status: ExitStatus) -> None:
        """End ``proc``: free its blocks and make it a zombie."""
        self._forget(proc)
        self.pool.release(proc.pid)
        self._table.exit(proc, status)

    def runnable(self) -> int:
        """Processes this device still has to serve."""
        return len(self._running) + len(self._ready)

    # -- the loop ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Plan and run steps forever; sleeps while there is nothing to do."""
        generation = 0  # the driver instance whose KV cache our block tables describe
        while True:
            endpoint = await self._names.wait_ready(self.endpoint, timeout=float("inf"))
            if endpoint.generation != generation:
                if generation:
                    # A new driver instance: the old one's KV storage died with it.
                    self.stats.num_driver_crashes += 1
                    self.reset_kv()
                generation = endpoint.generation
            planned = self.plan()
            if planned is None:
                self._work = trio.Event()
                await self._work.wait()
                continue
            batch, procs = planned
            self._in_flight = {p.pid for p in procs}
            client = endpoint.client
            try:
                if client is None:
                    raise KernelError("EIO", f"driver {self.endpoint} is restarting")
                reply = await client.call("step", batch.to_wire())
            except KernelError as error:
                self._in_flight = set()
                driver_died = error.errno == "EIO" and (client is None or client.closed)
                if not driver_died:
                    self._fail(procs, error)
                continue  # a crashed driver: the next turn sees the new generation and recomputes
            self._in_flight = set()
            try:
                result = StepResult.from_wire(reply)
                if len(result.tokens) != len(procs):
                    raise ValueError(f"{len(result.tokens)} tokens for {len(procs)} sequences")
            except (KeyError, TypeError, ValueError) as exc:
                self._fail(procs, KernelError("EIO", f"driver {self.endpoint} returned a malformed step result: {exc}"))
                continue
            self.apply(procs, batch, result)

    def plan(self) -> tuple[StepBatch, list[Process]] | None:
        """Build the next batch, or None if no process can run."""
        now = self._clock()
        budget = self.config.max_batch_tokens
        chunks: list[SeqChunk] = []
        chosen: list[Process] = []
        ranked = self.policy.rank(self._running, now)
        ranked.sort(key=lambda p: p.num_tokens - p.num_computed > 1)  # decodes first (stable)
        for proc in ranked:
            if len(chunks) >= self.config.max_seqs or budget <= 0:
                break
            if proc.state is not ProcState.RUNNING:
                continue  # preempted as a victim earlier in this loop
            num_new = min(proc.num_tokens - proc.num_computed, budget)
            if not self._make_room(proc, proc.num_computed + num_new, chosen):
                continue
            chunks.append(self._chunk(proc, num_new))
            chosen.append(proc)
            budget -= num_new
        for proc in self.policy.rank(self._ready, now):
            if len(chunks) >= self.config.max_seqs or budget <= 0:
                break
            num_new = min(proc.num_tokens - proc.num_computed, budget)
            if not self._admit(proc, num_new):
                break  # head of line waits for memory; later ones do not jump it
            chunks.append(self._chunk(proc, num_new))
            chosen.append(proc)
            budget -= num_new
        if not chunks:
            return None
        return StepBatch(chunks, self.pool.block_size), chosen

    def apply(self, procs: list[Process], batch: StepBatch, result: StepResult) -> None:
        """Record a finished step: progress, sampled tokens, exits."""
        self.stats.num_steps += 1
        self.stats.num_tokens += batch.num_tokens
        self.stats.busy_s += result.elapsed_s
        now = self._clock()
        for proc, chunk, token in zip(procs, batch.seqs, result.tokens, strict=True):
            if proc.state is ProcState.ZOMBIE:
                continue  # killed while the step ran; its blocks are already free
            proc.acct.time_running_s += result.elapsed_s
            proc.acct.num_steps += 1
            proc.num_computed = chunk.context_len
            if chunk.sample and proc.state is ProcState.STOPPED:
                # Stopped while this step ran: drop the token so nothing appears after
                # kill -STOP returned. Sampling is stateless, so after SIGCONT the same token
                # is drawn again from the last position, whose KV we rewrite identically.
                proc.num_computed -= 1
                continue
            if chunk.sample and token is not None:
                proc.output_ids.append(int(token))
                if proc.first_token_at is None:
                    proc.first_token_at = now
                proc.notify()
                if token in proc.stop_ids:
                    self.finish(proc, ExitStatus(ExitReason.STOP, message="sampled a stop token"))
                elif len(proc.output_ids) >= proc.max_tokens:
                    self.finish(proc, ExitStatus(ExitReason.LENGTH, message=f"reached max_tokens={proc.max_tokens}"))
            if proc.pending_term and proc.alive:
                self.finish(proc, ExitStatus(ExitReason.SIGNAL, signal=Signal.SIGTERM, message="killed by SIGTERM"))

    def reset_kv(self) -> None:
        """Every KV block of this device is gone (driver restarted): recompute everyone."""
        for proc in list(self._running):
            self._preempt(proc)
        for proc in list(self._table):
            if proc.device == self.device and proc.state is ProcState.STOPPED and proc.num_computed:
                self.pool.release(proc.pid)
                proc.acct.num_recomputed_tokens += proc.num_computed
                proc.num_computed = 0

    # -- helpers -----------------------------------------------------------------------------

    def _chunk(self, proc: Process, num_new: int) -> SeqChunk:
        start = proc.num_computed
        sample = start + num_new == proc.num_tokens
        sampling = proc.sampling
        sampling = SamplingParams(sampling.temperature, sampling.top_k, sampling.top_p, sampling.seed, len(proc.output_ids))
        return SeqChunk(
            seq_id=proc.pid,
            token_ids=proc.all_ids[start : start + num_new],
            start_pos=start,
            block_table=list(self.pool.table(proc.pid)),
            sample=sample,
            sampling=sampling,
        )

    def _admit(self, proc: Process, num_new: int) -> bool:
        """Give a ready process its blocks and make it RUNNING; False if memory is short."""
        needed = self.pool.blocks_for(proc.num_computed + num_new)
        if needed > self.pool.num_blocks:
            self.finish(proc, ExitStatus(
                ExitReason.ERROR, errno="ENOMEM",
                message=f"needs {needed} KV blocks but device {self.device} has {self.pool.num_blocks} in all",
            ))
            return True  # it is gone; the next one may be admitted
        num_tokens = proc.num_computed + num_new
        if not self.pool.ensure(proc.pid, num_tokens):
            if not (self._reclaim_stopped(needed) and self.pool.ensure(proc.pid, num_tokens)):
                return False
        self._ready.remove(proc)
        self._running.append(proc)
        self._table.set_state(proc, ProcState.RUNNING)
        if proc.started_at is None:
            proc.started_at = self._clock()
        return True

    def _make_room(self, proc: Process, num_tokens: int, protected: list[Process]) -> bool:
        """Ensure ``proc`` has blocks for ``num_tokens``, preempting others; False if it was preempted."""
        while not self.pool.ensure(proc.pid, num_tokens):
            if self._reclaim_stopped(self.pool.blocks_for(num_tokens)):
                continue
            victims = [p for p in self._running if p is not proc and p not in protected]
            if not victims:
                if not protected and self.pool.blocks_for(num_tokens) > self.pool.num_blocks:
                    self.finish(proc, ExitStatus(
                        ExitReason.ERROR, errno="ENOMEM",
                        message=f"grew past the {self.pool.num_blocks} KV blocks of device {self.device}",
                    ))
                else:
                    self._preempt(proc)
                return False
            self._preempt(self.policy.rank(victims, self._clock())[-1])
        return True

    def _reclaim_stopped(self, needed: int) -> bool:
        """Drop the blocks of stopped processes (they recompute on SIGCONT); True if any freed."""
        freed = 0
        for proc in self._table:
            if freed >= needed:
                break
            if proc.device == self.device and proc.state is ProcState.STOPPED and self.pool.table(proc.pid):
                freed += self.pool.release(proc.pid)
                proc.acct.num_recomputed_tokens += proc.num_computed
                proc.num_computed = 0
        return freed > 0

    def _preempt(self, proc: Process) -> None:
        """Drop ``proc``'s blocks and send it back to the ready queue (recompute later)."""
        self.pool.release(proc.pid)
        proc.acct.num_recomputed_tokens += proc.num_computed
        proc.acct.num_preemptions += 1
        self.stats.num_preemptions += 1
        proc.num_computed = 0
        self._running.remove(proc)
        self._table.set_state(proc, ProcState.READY)
        self._ready.append(proc)

    def _forget(self, proc: Process) -> None:
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
