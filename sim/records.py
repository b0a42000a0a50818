"""What a simulation takes in and gives out: requests, per-request records, timeline samples.

These dataclasses are the contract between the workload layer (``workloads.py`` makes
``Request`` lists), the runner (``runner.py`` turns them into processes of a real kernel and
fills ``RequestRecord`` and ``TimelineSample``), and the metrics, plots and sweeps that read a
``SimResult``. Times are seconds of virtual (kernel) time since the simulation started.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Request:
    """One request of a workload, before it becomes a process."""

    request_id: int  # index in the workload, 0-based, in arrival order
    arrival_s: float  # when it is spawned
    prompt_len: int  # prompt tokens (>= 1)
    output_len: int  # tokens it generates (>= 1); it runs to this length (ignore_eos)
    tenant: str = "default"  # whose request it is (vtc fairness, per-tenant metrics, prefix salts)
    nice: int = 0  # -20..19, lower is more important (the priority policy)
    slo_s: float | None = None  # end-to-end deadline relative to arrival (edf), or None
    # Mooncake-style prefix identity: block i of the prompt is determined by hash_ids[i], so two
    # requests that share leading hash ids share that prompt prefix (and the prefix cache sees it).
    hash_ids: tuple[int, ...] = ()


@dataclass
class RequestRecord:
    """What happened to one request, filled in by the runner from the kernel's process record."""

    request_id: int
    pid: int
    tenant: str
    nice: int
    prompt_tokens: int
    output_tokens: int  # tokens actually generated
    arrival_s: float
    first_scheduled_s: float | None  # first admitted to a batch
    first_token_s: float | None
    completion_s: float | None
    token_times_s: list[float] = field(default_factory=list)  # time each generated token appeared
    preemptions: int = 0
    swaps: int = 0  # preemptions that swapped it out (the rest recomputed)
    recomputed_tokens: int = 0
    prefix_hit_tokens: int = 0
    deadline_s: float | None = None  # absolute, from the request's slo_s
    exit_reason: str = ""  # "length", "stop", "signal", "error"
    errno: str | None = None  # set when exit_reason is "error"

    @property
    def ttft_s(self) -> float | None:
        """Time to first token: arrival to the first generated token."""
        return None if self.first_token_s is None else self.first_token_s - self.arrival_s

    @property
    def e2e_s(self) -> float | None:
        """End-to-end latency: arrival to completion."""
        return None if self.completion_s is None else self.completion_s - self.arrival_s

    @property
    def tpot_s(self) -> float | None:
        """Time per output token after the first (mean inter-token gap); None below 2 tokens."""
        if len(self.token_times_s) < 2:
            return None
        return (self.token_times_s[-1] - self.token_times_s[0]) / (len(self.token_times_s) - 1)

    @property
    def gaps_s(self) -> list[float]:
        """Every inter-token gap."""
        return [b - a for a, b in itertools.pairwise(self.token_times_s)]


@dataclass(frozen=True)
class TimelineSample:
    """The device's state at one instant, sampled every ``SimConfig.sample_interval_s``.

    Inside a multi-step run (kernel/horizon.py) the sample sees the steps that have ended;
    the KV blocks of the step in progress are taken when it is applied, so occupancy can lag
    a one-step run's by that step. Requests' records never differ.
    """

    time_s: float
    running: int  # processes holding KV blocks
    waiting: int  # processes waiting for admission (ready or swapped)
    batch_seqs: int  # sequences in the most recent step
    batch_tokens: int  # tokens computed in the most recent step
    kv_blocks_used: int
    kv_blocks_total: int
    kv_utilization: float  # fraction of the block tables' token slots holding tokens (a shared block once per table)


@dataclass
class SimResult:
    """Everything one simulation produced."""

    config: dict[str, Any]  # the SimConfig as plain data (for reports and reproducibility)
    records: list[RequestRecord]  # one per request, in request_id order
    timeline: list[TimelineSample]
    simulated_s: float  # virtual time from start to the last completion
    num_steps: int  # device steps (each decode of a multi-step run counts)
    num_driver_calls: int  # step calls to the driver (a multi-step call counts once)
    wall_s: float  # host wall time the simulation took
    device: dict[str, Any] = field(default_factory=dict)  # the device's counters (meminfo, stats)
