"""Shortest (predicted) remaining processing time first.

A process's remaining work is its predicted output length less the tokens it has generated;
the least remaining runs first, FCFS among equals. The prediction, capped at ``max_tokens``:

1. a hint given for its pid (``hint(pid, length)``: a trace's known length, a client's guess);
2. else the running mean output length of its tenant's processes that ended on their own
   (stop token or length limit; killed ones say nothing about length);
3. else the running mean over all tenants;
4. else ``max_tokens`` (nothing is known; the pessimistic guess).

A process that outlives its prediction is expected to run as long again: its prediction
becomes ``min(max_tokens, 2 x generated)``.

Aging applies: with short jobs arriving steadily, SRPT would starve a long one forever. Each
second a process has waited (``policy.time_waiting``) takes ``aging_tokens_per_s`` tokens off
its ranking key, so a long job eventually outranks fresh short ones.
"""

from __future__ import annotations

from collections.abc import Sequence

from .. import params
from ..policy import BasePolicy, time_waiting
from ..process import ExitReason, Process


class _Mean:
    """A running mean of output lengths."""

    def __init__(self) -> None:
        self.num = 0
        self.total = 0

    def add(self, value: int) -> None:
        self.num += 1
        self.total += value

    @property
    def value(self) -> float | None:
        return self.total / self.num if self.num else None


class SRPT(BasePolicy):
    """By predicted remaining tokens less the aging credit, then creation time, then pid."""

    name = "srpt"

    def __init__(self, aging_tokens_per_s: float = params.SRPT_AGING_TOKENS_PER_S) -> None:
        if aging_tokens_per_s < 0:
            raise ValueError(f"aging_tokens_per_s must not be negative, not {aging_tokens_per_s}")
        self.aging_tokens_per_s = aging_tokens_per_s
        self._hints: dict[int, int] = {}  # pid -> predicted output length
        self._by_tenant: dict[str, _Mean] = {}  # tenant -> mean output length of finished processes
        self._overall = _Mean()

    def hint(self, pid: int, length: int) -> None:
        """Predict ``length`` output tokens for ``pid`` (kept until it exits)."""
        if length < 0:
            raise ValueError(f"a predicted length must not be negative, not {length}")
        self._hints[pid] = length

    def predicted_len(self, proc: Process) -> float:
        """The predicted output length of ``proc`` (the rules in the module docstring)."""
        predicted: float | None = self._hints.get(proc.pid)
        if predicted is None:
            tenant = self._by_tenant.get(proc.tenant)
            predicted = tenant.value if tenant is not None else None
        if predicted is None:
            predicted = self._overall.value
        if predicted is None:
            predicted = proc.max_tokens
        generated = len(proc.output_ids)
        if generated >= predicted:
            predicted = 2 * generated
        return min(predicted, proc.max_tokens)

    def predicted_remaining(self, proc: Process) -> float:
        return max(0.0, self.predicted_len(proc) - len(proc.output_ids))

    def rank(self, procs: Sequence[Process], now: float) -> list[Process]:
        def key(p: Process) -> tuple[float, float, int]:
            credit = self.aging_tokens_per_s * time_waiting(p, now)
            return (self.predicted_remaining(p) - credit, p.created_at, p.pid)

        return sorted(procs, key=key)

    def on_exit(self, proc: Process, now: float) -> None:
        self._hints.pop(proc.pid, None)
        status = proc.exit_status
        if status is None or status.reason not in (ExitReason.STOP, ExitReason.LENGTH):
            return  # killed or failed: its length says nothing about what it would have been
        length = len(proc.output_ids)
        self._by_tenant.setdefault(proc.tenant, _Mean()).add(length)
        self._overall.add(length)
