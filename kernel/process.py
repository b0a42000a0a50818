"""The LLM process: one inference job, its state machine, exit status and accounting.

States (DESIGN.md, Processes)::

    NEW --admit--> READY --schedule--> RUNNING --finish/kill--> ZOMBIE --wait--> (reaped)
                     ^                   |  |
                     +----preempt--------+  +--SIGSTOP--> STOPPED --SIGCONT--> READY
                     +----swap in----- SWAPPED <--preempt (swap)--+

READY processes hold no KV blocks; RUNNING ones do; SWAPPED ones have theirs in host memory;
STOPPED ones keep what they had until SIGCONT.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, overload

import trio

from .batch import SamplingParams


class ProcState(enum.Enum):
    NEW = "NEW"
    READY = "READY"
    RUNNING = "RUNNING"
    SWAPPED = "SWAPPED"
    STOPPED = "STOPPED"
    ZOMBIE = "ZOMBIE"


class Signal(enum.Enum):
    SIGKILL = 9  # end now; cannot be caught
    SIGTERM = 15  # end at the next step boundary
    SIGCONT = 18  # resume a stopped process
    SIGSTOP = 19  # stop scheduling; keep its memory

    @classmethod
    def parse(cls, value: Any) -> Signal:
        """Accept ``"SIGKILL"``, ``"KILL"``, ``"kill"`` or ``9``; raise ValueError otherwise."""
        if isinstance(value, int) and not isinstance(value, bool):
            return cls(value)
        if isinstance(value, str):
            name = value.upper()
            return cls[name if name.startswith("SIG") else "SIG" + name]
        raise ValueError(value)


class ExitReason(enum.Enum):
    STOP = "stop"  # sampled a stop token
    LENGTH = "length"  # reached max_tokens
    SIGNAL = "signal"  # killed by a signal
    ERROR = "error"  # the kernel ended it with an errno (ENOMEM, EIO, ...)


@dataclass(frozen=True)
class ExitStatus:
    """Why a process ended."""

    reason: ExitReason
    signal: Signal | None = None
    errno: str | None = None
    message: str = ""

    def to_wire(self) -> dict[str, Any]:
        return {
            "reason": self.reason.value,
            "signal": self.signal.name if self.signal else None,
            "errno": self.errno,
            "message": self.message,
        }


# How a process that a SIGTERM ended at a step boundary exits (a frozen value: shared).
SIGTERM_EXIT = ExitStatus(ExitReason.SIGNAL, signal=Signal.SIGTERM, message="killed by SIGTERM")


@dataclass
class Accounting:
    """Per-process counters, like a Unix rusage."""

    time_queued_s: float = 0.0  # time in READY or SWAPPED, waiting for the device
    time_running_s: float = 0.0  # device time of the steps this process took part in
    num_steps: int = 0  # steps this process took part in
    num_preemptions: int = 0
    num_swaps: int = 0  # preemptions that swapped it out (the others dropped its KV to recompute)
    num_recomputed_tokens: int = 0  # tokens whose KV was computed again after a preemption
    swap_bytes: int = 0
    prefix_cache_hits: int = 0  # prompt tokens served from the prefix cache

    def to_wire(self) -> dict[str, Any]:
        return dict(self.__dict__)


class TokenView(Sequence[int]):
    """``prompt + output`` as one read-only sequence without concatenating them.

    The KV-cache manager reads a process's tokens block by block (hashing, prefix lookup);
    building the whole list for that, every time a block fills, would copy the sequence over
    and over.
    """

    __slots__ = ("_prompt", "_output")

    def __init__(self, prompt: list[int], output: list[int]) -> None:
        self._prompt = prompt
        self._output = output

    def __len__(self) -> int:
        return len(self._prompt) + len(self._output)

    @overload
    def __getitem__(self, index: int) -> int: ...

    @overload
    def __getitem__(self, index: slice) -> list[int]: ...

    def __getitem__(self, index: int | slice) -> int | list[int]:
        split = len(self._prompt)
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step != 1:
                return (self._prompt + self._output)[index]
            if stop <= split:
                return self._prompt[start:stop]
            if start >= split:
                return self._output[start - split : stop - split]
            return self._prompt[start:] + self._output[: stop - split]
        if index < 0:
            index += len(self)
        return self._prompt[index] if index < split else self._output[index - split]


@dataclass(eq=False)  # a process is an identity: compared by ``is``, never field by field
class Process:
    """One LLM process. Fields are grouped by who changes them."""

    # Identity: fixed at spawn.
    pid: int
    ppid: int
    session: int  # pid of the connection that may wait for it (its owner)
    uid: int
    tenant: str
    model: str
    device: str
    prompt_ids: list[int]
    max_tokens: int
    sampling: SamplingParams
    stop_ids: frozenset[int]
    created_at: float
    deadline: float | None = None  # absolute kernel time, or None
    detached: bool = False  # survives its session's disconnect (nohup)

    # Changed by syscalls (nice, kill) and the scheduler.
    nice: int = 0
    nice_floor: int = 0  # the lowest nice its priority capability lets its owner set again
    caps: dict[str, str] = field(default_factory=dict)  # kind -> capability handle (kernel/process_caps.py)
    state: ProcState = ProcState.NEW
    pending_term: bool = False  # SIGTERM seen; ends at the next step boundary
    state_since: float = 0.0  # kernel time of the last state change (for accounting)

    # Changed by the scheduler only.
    output_ids: list[int] = field(default_factory=list)
    token_times: list[float] = field(default_factory=list)  # kernel time each output token appeared
    num_computed: int = 0  # tokens of prompt+output whose KV is in the cache
    started_at: float | None = None  # first scheduled
    first_token_at: float | None = None
    finished_at: float | None = None
    exit_status: ExitStatus | None = None
    acct: Accounting = field(default_factory=Accounting)

    # Wake-up for blocked readers: made when a reader asks for it, set by the next notify().
    _changed: trio.Event | None = field(default=None, repr=False)

    @property
    def tokens(self) -> TokenView:
        """Prompt followed by the generated tokens, as a view: nothing is copied."""
        return TokenView(self.prompt_ids, self.output_ids)

    @property
    def all_ids(self) -> list[int]:
        """Prompt followed by the generated tokens: the sequence the KV cache holds."""
        return self.prompt_ids + self.output_ids

    def token_slice(self, start: int, stop: int) -> list[int]:
        """``all_ids[start:stop]`` without building all_ids (the planner calls this every step)."""
        split = len(self.prompt_ids)
        if stop <= split:
            return self.prompt_ids[start:stop]
        if start >= split:
            return self.output_ids[start - split : stop - split]
        return self.prompt_ids[start:] + self.output_ids[: stop - split]

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def alive(self) -> bool:
        return self.state is not ProcState.ZOMBIE

    @property
    def output_changed(self) -> trio.Event:
        """An event the next change of output or state sets (readers wait on it)."""
        if self._changed is None:
            self._changed = trio.Event()
        return self._changed

    def notify(self) -> None:
        """Wake everyone blocked on this process's output or exit."""
        if self._changed is not None:  # most tokens have no reader waiting: no event to make
            self._changed.set()
            self._changed = None

    def summary(self) -> dict[str, Any]:
        """The row ``ps`` shows."""
        return {
            "pid": self.pid,
            "ppid": self.ppid,
            "uid": self.uid,
            "tenant": self.tenant,
            "state": self.state.value,
            "nice": self.nice,
            "model": self.model,
            "device": self.device,
            "prompt_tokens": len(self.prompt_ids),
            "generated_tokens": len(self.output_ids),
            "max_tokens": self.max_tokens,
        }

    def stat(self, now: float) -> dict[str, Any]:
        """Everything ``stat`` reports; times are kernel-clock seconds."""
        info = self.summary()
        info.update(
            session=self.session,
            created_at=self.created_at,
            started_at=self.started_at,
            first_token_at=self.first_token_at,
            finished_at=self.finished_at,
            deadline=self.deadline,
            ttft_s=None if self.first_token_at is None else self.first_token_at - self.created_at,
            age_s=(self.finished_at if self.finished_at is not None else now) - self.created_at,
            num_computed=self.num_computed,
            sampling={
                "temperature": self.sampling.temperature,
                "top_k": self.sampling.top_k,
                "top_p": self.sampling.top_p,
                "seed": self.sampling.seed,
            },
            stop_ids=sorted(self.stop_ids),
            exit=None if self.exit_status is None else self.exit_status.to_wire(),
            accounting=self.acct.to_wire(),
        )
        return info
