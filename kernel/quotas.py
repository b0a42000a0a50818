"""Tenant quotas, enforced in the kernel from a cached copy of the resources service's table.

The resources service (services/resources.py) owns the quotas and keeps them on disk; the
kernel fetches them at boot and again after each ``quota_set`` (which passes through the
kernel anyway), so enforcing them never costs an IPC round trip:

- processes and KV blocks: at spawn (``QuotaKeeper.admit``). Over quota, the spawn is refused
  with EAGAIN, or, where the tenant's quota says ``over_quota = "queue"``, the process is
  created and held in state NEW until the tenant is back under quota (re-checked whenever a
  process exits or a quota changes).
- KV blocks as processes grow (``kv_room``, through the schedulers' ``limiter`` hook), like a
  cgroup's memory.max: a tenant at its quota cannot take another block; the planner preempts
  the tenant's own lowest-ranked process to make room, never another tenant's, and admits none
  of its waiting processes until they fit. A process that alone needs more than the quota
  ends with ENOMEM.
- tokens per second: a token bucket per tenant, charged per generated token by the device
  schedulers (their ``limiter`` hook); a tenant whose bucket is empty has its processes
  skipped by the planner until it refills, and they are the first the planner preempts when
  another process needs memory: blocks of a process that may not run are better used by one
  that may.

It also counts, per tenant, the tokens generated and their recent rate: the telemetry of
``usage``.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import trio

from .errors import KernelError
from .process import Process, ProcState
from .proctable import ProcessTable

RATE_WINDOW_S = 5.0  # tokens/s in ``usage`` is measured over the last this many seconds
BUCKET_EPSILON = 1e-9  # a bucket this close to empty counts as refilled (float rounding)
OVER_QUOTA_MODES = ("refuse", "queue")


@dataclass
class Quota:
    """One tenant's limits; None: no limit on that resource."""

    tenant: str
    processes: int | None = None  # live processes (NEW held ones excluded)
    kv_blocks: int | None = None  # KV blocks held by its processes, over all devices; shared ones once
    tokens_per_s: float | None = None  # generated tokens per second, long-run
    burst: float | None = None  # bucket size, in tokens (None: one second's worth)
    over_quota: str = "refuse"  # "refuse" (EAGAIN) or "queue" (held NEW until it fits)

    @classmethod
    def from_wire(cls, raw: dict[str, Any]) -> Quota:
        return cls(str(raw["tenant"]), raw.get("processes"), raw.get("kv_blocks"), raw.get("tokens_per_s"),
                   raw.get("burst"), str(raw.get("over_quota") or "refuse"))

    def to_wire(self) -> dict[str, Any]:
        return {"tenant": self.tenant, "processes": self.processes, "kv_blocks": self.kv_blocks,
                "tokens_per_s": self.tokens_per_s, "burst": self.burst, "over_quota": self.over_quota}


class TokenBucket:
    """``rate`` tokens per second, up to ``burst`` saved; charges may drive it into debt.

    Invariant: over any interval the tokens charged are at most burst + rate * interval plus
    the last step's batch (a step is charged after it ran, so the bucket can go negative).
    """

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.level = burst
        self.updated = now

    def _refill(self, now: float) -> None:
        if now > self.updated:
            self.level = min(self.burst, self.level + (now - self.updated) * self.rate)
            self.updated = now

    def ready_at(self, now: float) -> float | None:
        """None if tokens may be generated now; else when the bucket is out of debt."""
        self._refill(now)
        if self.level > -BUCKET_EPSILON:
            return None
        return now + (-self.level) / self.rate if self.rate > 0 else math.inf

    def charge(self, num_tokens: int, now: float) -> None:
        self._refill(now)
        self.level -= num_tokens


class QuotaKeeper:
    """The kernel's cached quotas, token buckets, held spawns and per-tenant token counters.

    Args:
        table: the process table (live processes per tenant).
        tenant_blocks: KV blocks a tenant holds now, over all devices, shared blocks once.
        submit: queue a held process for admission on its device.
    """

    def __init__(self, table: ProcessTable, tenant_blocks: Callable[[str], int],
                 submit: Callable[[Process], None]) -> None:
        self._table = table
        self._tenant_blocks = tenant_blocks
        self._submit = submit
        self.quotas: dict[str, Quota] = {}
        self._buckets: dict[str, TokenBucket] = {}
        self._held: dict[str, collections.deque[Process]] = {}  # tenant -> held NEW processes, FIFO
        self._changed = trio.Event()  # a quota changed: held processes may fit now
        self.tokens: collections.Counter[str] = collections.Counter()  # generated per tenant, ever
        self._recent: dict[str, collections.deque[list[float]]] = {}  # tenant -> [time, tokens] in the window

    # -- the cache ---------------------------------------------------------------------------

    def load(self, quotas: Iterable[dict[str, Any]], now: float) -> None:
        """Replace the cache with the service's table (at boot)."""
        self.quotas = {}
        self._buckets = {}
        for raw in quotas:
            self.update(raw, now)

    def update(self, raw: dict[str, Any], now: float) -> None:
        """Cache one tenant's quota as the service stored it; its bucket starts full."""
        quota = Quota.from_wire(raw)
        self.quotas[quota.tenant] = quota
        self._buckets.pop(quota.tenant, None)
        if quota.tokens_per_s is not None:
            burst = quota.burst if quota.burst is not None else max(1.0, quota.tokens_per_s)
            self._buckets[quota.tenant] = TokenBucket(quota.tokens_per_s, burst, now)
        self._changed.set()
        self._changed = trio.Event()

    @property
    def rate_limited(self) -> bool:
        """Whether any tenant has a token rate (the schedulers then plan one step at a time)."""
        return bool(self._buckets)

    @property
    def kv_limited(self) -> bool:
        """Whether any tenant has a KV-block quota (checked as processes grow)."""
        return any(q.kv_blocks is not None for q in self.quotas.values())

    def kv_quota(self, tenant: str) -> int | None:
        """``tenant``'s KV-block quota, or None."""
        quota = self.quotas.get(tenant)
        return None if quota is None else quota.kv_blocks

    def kv_room(self, tenant: str) -> int | None:
        """KV blocks ``tenant`` may still take (negative: over), or None without a KV quota."""
        limit = self.kv_quota(tenant)
        return None if limit is None else limit - self._tenant_blocks(tenant)  # O(devices)

    # -- processes and KV blocks at spawn ------------------------------------------------------

    def use(self, tenant: str) -> tuple[int, int]:
        """(live processes not held, KV blocks held) of ``tenant``."""
        held = self._held.get(tenant, ())
        live = [p for p in self._table if p.tenant == tenant and p.alive and p not in held]
        return len(live), self._tenant_blocks(tenant)

    def over_quota(self, tenant: str, more: int = 1) -> str | None:
        """Why ``more`` new processes of ``tenant`` would be over its quota, or None."""
        quota = self.quotas.get(tenant)
        if quota is None:
            return None
        num_procs, num_blocks = self.use(tenant)
        if quota.processes is not None and num_procs + more > quota.processes:
            return f"tenant {tenant!r} is at its quota of {quota.processes} processes ({num_procs} live)"
        if quota.kv_blocks is not None and num_blocks >= quota.kv_blocks:
            return f"tenant {tenant!r} holds {num_blocks} KV blocks, its quota is {quota.kv_blocks}"
        return None

    def precheck(self, op: str, proc: Process) -> None:
        """EAGAIN now if ``admit`` would refuse ``proc`` (changes nothing; a held one passes)."""
        quota = self.quotas.get(proc.tenant)
        if quota is not None and quota.over_quota != "queue":
            reason = self.over_quota(proc.tenant)
            if reason is not None:
                raise KernelError("EAGAIN", f"{op}: {reason}")

    def admit(self, op: str, proc: Process) -> bool:
        """Whether a new process may be submitted now; False: it is held (queue mode).

        Raises:
            KernelError: EAGAIN naming the tenant, the quota and the use (refuse mode).
        """
        quota = self.quotas.get(proc.tenant)
        held = self._held.get(proc.tenant)
        reason = self.over_quota(proc.tenant)
        if reason is None and not held:  # nobody queued ahead of it
            return True
        if quota is None or quota.over_quota != "queue":
            raise KernelError("EAGAIN", f"{op}: {reason}")
        self._held.setdefault(proc.tenant, collections.deque()).append(proc)
        return False

    async def release_held(self, exited: Callable[[], trio.Event]) -> None:
        """Forever: when a process exits or a quota changes, submit the held processes that fit."""
        while True:
            for tenant, queue in list(self._held.items()):
                while queue and (queue[0].pid not in self._table.procs or queue[0].state is not ProcState.NEW):
                    queue.popleft()  # killed (or stopped and continued) while held
                while queue and self.over_quota(tenant) is None:
                    proc = queue.popleft()
                    self._submit(proc)
                if not queue:
                    del self._held[tenant]
            exit_event, changed = exited(), self._changed
            async with trio.open_nursery() as nursery:
                for event in (exit_event, changed):
                    nursery.start_soon(_set_then_cancel, event, nursery.cancel_scope)

    def num_held(self, tenant: str) -> int:
        return len(self._held.get(tenant, ()))

    # -- tokens per second: the schedulers' hook -------------------------------------------------

    def allows(self, tenant: str, now: float) -> float | None:
        """None if ``tenant`` may generate tokens now; else the time its bucket refills."""
        bucket = self._buckets.get(tenant)
        return None if bucket is None else bucket.ready_at(now)

    def charge(self, tenant: str, num_tokens: int, now: float) -> None:
        """``tenant`` generated ``num_tokens`` tokens at ``now``."""
        bucket = self._buckets.get(tenant)
        if bucket is not None:
            bucket.charge(num_tokens, now)
        self.tokens[tenant] += num_tokens
        recent = self._recent.setdefault(tenant, collections.deque())
        if recent and recent[-1][0] == now:
            recent[-1][1] += num_tokens
        else:
            recent.append([now, num_tokens])
        while recent and recent[0][0] <= now - RATE_WINDOW_S:
            recent.popleft()

    # -- telemetry -------------------------------------------------------------------------------

    def tenant_usage(self, now: float, uptime: float) -> dict[str, dict[str, Any]]:
        """Per tenant: live processes, held ones, KV blocks, tokens, tokens/s over the window."""
        tenants = set(self.quotas) | set(self.tokens) | {p.tenant for p in self._table if p.alive}
        window = min(RATE_WINDOW_S, uptime) or 1.0
        rows = {}
        for tenant in sorted(tenants):
            num_procs, num_blocks = self.use(tenant)
            recent = self._recent.get(tenant, ())
            rows[tenant] = {
                "tenant": tenant,
                "processes": num_procs,
                "held": self.num_held(tenant),
                "kv_blocks": num_blocks,
                "tokens": self.tokens[tenant],
                "tokens_per_s": sum(n for t, n in recent if t > now - RATE_WINDOW_S) / window,
            }
        return rows


async def _set_then_cancel(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()
