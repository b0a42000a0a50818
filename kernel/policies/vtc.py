"""Virtual Token Counter: a fair share of served tokens per tenant (Sheng et al. 2024,
"Fairness in Serving Large Language Models", OSDI).

Each tenant has a counter of the weighted tokens it was served: ``w_in`` per prompt token
computed, ``w_out`` per token generated. Processes rank by their tenant's counter, lowest
first, FCFS within a tenant (and between tenants with equal counters). Served work therefore
flows to whichever backlogged tenant has had least, and for two tenants backlogged over an
interval their weighted service differs by a bounded amount (the paper's 2U, with U the most
one tenant can be charged while the other waits: w_in x the longest prompt + w_out x the
step's token budget).

The lift rule: a tenant is backlogged while it has a runnable process (waiting or running; a
tenant being served is not idle). When a tenant becomes backlogged, its counter is raised to
the lowest counter of the tenants that were already backlogged, or, if none was, to the
counter of the last tenant to go idle; it is never lowered. So idle time earns no credit:
a tenant cannot save up service and then monopolise the device.

Charges come from ``on_step``. A prompt token is charged once: prefix-cache hits and tokens
recomputed after a preemption are not charged again (the tenant did not ask for them twice).

No aging: counters already bound how long any backlogged tenant waits, and aging would break
that bound. Within a tenant, order is FCFS.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .. import params
from ..policy import BasePolicy, split_served
from ..process import Process, ProcState


class VTC(BasePolicy):
    """By tenant counter, then creation time, then pid."""

    name = "vtc"

    def __init__(self, w_in: float = params.VTC_INPUT_WEIGHT, w_out: float = params.VTC_OUTPUT_WEIGHT) -> None:
        if w_in < 0 or w_out < 0:
            raise ValueError(f"token weights must not be negative: w_in={w_in}, w_out={w_out}")
        self.w_in = w_in
        self.w_out = w_out
        self.counters: dict[str, float] = {}  # tenant -> weighted tokens served (after lifts)
        self._backlogged: set[str] = set()  # tenants present in the last rank call
        self._last_idle_counter = 0.0  # counter of the tenant(s) that went idle last
        self._prompt_charged: dict[int, int] = {}  # pid -> prompt positions charged so far

    def rank(self, procs: Sequence[Process], now: float) -> list[Process]:
        present = {p.tenant for p in procs}
        gone = self._backlogged - present
        if gone:
            self._last_idle_counter = max(self.counters[t] for t in gone)
        staying = self._backlogged & present
        floor = min((self.counters[t] for t in staying), default=self._last_idle_counter)
        for tenant in sorted(present - self._backlogged):
            self.counters[tenant] = max(self.counters.get(tenant, 0.0), floor)
        self._backlogged = present
        return sorted(procs, key=lambda p: (self.counters[p.tenant], p.created_at, p.pid))

    def on_step(self, procs: Sequence[Process], tokens_by_pid: Mapping[int, int], now: float) -> None:
        for proc in procs:
            if proc.state is ProcState.ZOMBIE:
                continue
            num_tokens = tokens_by_pid.get(proc.pid, 0)
            _, num_sampled = split_served(proc, num_tokens)
            prompt_end = min(proc.num_computed + num_tokens, len(proc.prompt_ids))
            charged = self._prompt_charged.get(proc.pid, 0)
            num_new_prompt = max(0, prompt_end - max(proc.num_computed, charged))
            self._prompt_charged[proc.pid] = max(charged, prompt_end)
            charge = self.w_in * num_new_prompt + self.w_out * num_sampled
            self.counters[proc.tenant] = self.counters.get(proc.tenant, 0.0) + charge

    def on_exit(self, proc: Process, now: float) -> None:
        self._prompt_charged.pop(proc.pid, None)
