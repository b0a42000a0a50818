"""Run a workload on the real kernel in virtual time: ``run_simulation(SimConfig) -> SimResult``.

There is no second scheduler here. The runner boots the same kernel ``llmos boot`` boots (the
same step planner, policies, KV-cache manager and supervisor) with one ``sim`` device whose
cost model stands for the simulated model on the simulated hardware, under
``trio.testing.MockClock``, so a trace of an hour runs in seconds. Requests enter through the
``spawn`` syscall at their arrival times, one session per tenant, as programs would; when a
process ends, the runner reaps it and turns the kernel's own process record (its times, token
timestamps and accounting) into a ``RequestRecord``.

Determinism: requests are spawned by one task in arrival order, prompts and sampling seeds
derive from the seed, and trio's scheduling order is seeded and made independent of memory
addresses (``_deterministic_trio``), so the same config gives the same records, byte for byte
once written, in a fresh process or after other simulations in the same one. Everything at
one instant (its arrivals, then its timeline sample) happens in one task step, so the plan
made at that instant sees all of it, whether runs are planned step by step or many at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import trio
import trio.testing

from llmos.drivers.sim import SimDriver
from llmos.kernel import params
from llmos.kernel.errors import KernelError
from llmos.kernel.kernel import DeviceConfig, KernelConfig, open_kernel
from llmos.kernel.policy import POLICIES
from llmos.kernel.preemption import PreemptionMode
from llmos.kernel.process import Process
from llmos.kernel.scheduler import SchedulerConfig

from .costmodel import cost_model_spec, make_cost_model
from .devices import PRESETS as DEVICE_PRESETS
from .errors import SimError
from .models import load_model_shape
from .records import Request, RequestRecord, SimResult, TimelineSample
from .workloads import WorkloadSpec, make_workload, prompt_token_ids, workload_spec_from_dict

GPU_MEMORY_UTILIZATION = 0.9  # share of device memory for weights + KV (vLLM's default)
DEVICE_NAME = "sim0"


@dataclass
class SimConfig:
    """One simulation: the workload, the system under test and what to sample."""

    workload: WorkloadSpec = field(default_factory=WorkloadSpec)
    seed: int = 0  # workload draws, prompts, sampling seeds and trio's task order
    policy: str = "fcfs"  # a kernel scheduling policy (kernel/policy.py POLICIES)
    model: str = "llama-2-7b"  # a model preset or a Hugging Face config.json / checkpoint dir
    device: str = "a100"  # a device preset, a device spec JSON, or a profile from calibrate
    kv_blocks: int | None = None  # None: what the device's memory holds after the weights
    block_size: int = params.BLOCK_SIZE  # tokens per KV block
    swap_blocks: int | None = None  # host swap space in blocks; None: as many as kv_blocks
    max_seqs: int = 256  # sequences per step (vLLM's max_num_seqs default)
    max_batch_tokens: int = params.MAX_BATCH_TOKENS  # token budget per step (chunked prefill)
    preemption: str = "auto"  # swap, recompute or auto
    prefix_cache: bool = True
    max_steps: int = 4096  # decode steps one plan may cover (kernel/horizon.py); 1 plans every step
    min_residency_steps: int = params.MIN_RESIDENCY_STEPS  # steps an admitted process is safe from arrivals
    sample_interval_s: float = 1.0  # virtual seconds between timeline samples

    def to_dict(self) -> dict[str, Any]:
        """Plain data (the workload as a nested map), for result files and sweep points."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SimConfig:
        """The inverse of ``to_dict``; unknown keys are an EINVAL naming them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SimError("EINVAL", f"unknown simulation setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        values = dict(data)
        workload = values.get("workload", {})
        if isinstance(workload, dict):
            values["workload"] = workload_spec_from_dict(workload)
        elif not isinstance(workload, WorkloadSpec):
            raise SimError("EINVAL", "workload must be a map of workload settings")
        return cls(**values)

    def check(self) -> None:
        """Raise SimError EINVAL for a setting the kernel would refuse, with a sentence."""
        if self.policy not in POLICIES:
            raise SimError("EINVAL", f"unknown policy {self.policy!r}; known: {', '.join(sorted(POLICIES))}")
        try:
            PreemptionMode(self.preemption)
        except ValueError:
            raise SimError("EINVAL", f"preemption must be swap, recompute or auto, not {self.preemption!r}") from None
        for name, lo in (("block_size", 1), ("max_seqs", 1), ("max_batch_tokens", 1), ("max_steps", 1),
                         ("min_residency_steps", 0)):
            value = getattr(self, name)
            if type(value) is not int or value < lo:
                raise SimError("EINVAL", f"{name} must be an integer >= {lo}, not {value!r}")
        for name in ("kv_blocks", "swap_blocks"):
            value = getattr(self, name)
            if value is not None and (type(value) is not int or value < (1 if name == "kv_blocks" else 0)):
                raise SimError("EINVAL", f"{name} must be a positive integer or unset, not {value!r}")
        if not isinstance(self.sample_interval_s, (int, float)) or self.sample_interval_s <= 0:
            raise SimError("EINVAL", f"sample_interval_s must be > 0, not {self.sample_interval_s!r}")


def kv_blocks_for(config: SimConfig) -> int:
    """The KV pool: as configured, or what the device's memory holds after the weights."""
    if config.kv_blocks is not None:
        return config.kv_blocks
    shape = load_model_shape(config.model)
    spec = DEVICE_PRESETS.get(config.device)
    if spec is None:
        return params.NUM_KV_BLOCKS  # a profile or spec file: no memory figure to go by
    free = spec.memory_bytes * GPU_MEMORY_UTILIZATION - shape.weight_bytes
    blocks = int(free // (shape.kv_bytes_per_token * config.block_size))
    if blocks < 1:
        raise SimError("ENOMEM", f"{config.model} ({shape.weight_bytes / 1e9:.1f} GB of weights) does not fit in "
                                 f"{config.device}'s {spec.memory_bytes / 1e9:.0f} GB")
    return blocks


def kernel_config(config: SimConfig, num_requests: int) -> KernelConfig:
    """The kernel a simulation boots: one sim device standing for the model on the device."""
    config.check()
    shape = load_model_shape(config.model)
    cost = cost_model_spec(config.model, config.device)
    make_cost_model(cost)  # refuse a bad spec here, with its own message, not at boot
    kv_blocks = kv_blocks_for(config)
    device = DeviceConfig(
        name=DEVICE_NAME,
        driver=SimDriver,
        model=shape.name,
        load_args={"cost": cost, "vocab_size": shape.vocab_size, "kv_bytes_per_token": shape.kv_bytes_per_token},
        num_kv_blocks=kv_blocks,
        block_size=config.block_size,
        num_swap_blocks=kv_blocks if config.swap_blocks is None else config.swap_blocks,
        prefix_cache=config.prefix_cache,
    )
    scheduler = SchedulerConfig(config.max_batch_tokens, config.max_seqs, PreemptionMode(config.preemption),
                                config.max_steps, config.min_residency_steps)
    # Every request may be alive at once under overload: the table must hold them all.
    return KernelConfig([device], policy=config.policy, scheduler=scheduler, max_processes=num_requests + 16)


def sampling_seed(seed: int, request_id: int) -> int:
    """A process's sampling seed: a pure function of the simulation seed and the request."""
    digest = hashlib.blake2b(f"{seed}:{request_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def record_of(request: Request, proc: Process) -> RequestRecord:
    """The request's record, from the kernel's process record (times relative to the start)."""
    status = proc.exit_status
    return RequestRecord(
        request_id=request.request_id,
        pid=proc.pid,
        tenant=request.tenant,
        nice=request.nice,
        prompt_tokens=len(proc.prompt_ids),
        output_tokens=len(proc.output_ids),
        arrival_s=proc.created_at,
        first_scheduled_s=proc.started_at,
        first_token_s=proc.first_token_at,
        completion_s=proc.finished_at,
        token_times_s=proc.token_times,
        preemptions=proc.acct.num_preemptions,
        swaps=proc.acct.num_swaps,
        recomputed_tokens=proc.acct.num_recomputed_tokens,
        prefix_hit_tokens=proc.acct.prefix_cache_hits,
        deadline_s=proc.deadline,
        exit_reason=status.reason.value if status else "",
        errno=status.errno if status else None,
    )


async def simulate(config: SimConfig, requests: list[Request],
                   kernel_cfg: KernelConfig | None = None) -> SimResult:
    """Run ``requests`` on a kernel built from ``config``; call under a MockClock.

    ``kernel_cfg`` replaces the kernel ``kernel_config(config)`` would boot: with a real
    driver's device, under trio's real clock, the same requests run for real, spawned and
    recorded exactly as simulated ones (``llmos bench fidelity`` compares the two). Its first
    device serves the requests; prompts use that device's vocabulary.
    """
    if kernel_cfg is None:
        kernel_cfg = kernel_config(config, len(requests))
    device_name = kernel_cfg.devices[0].name
    timeline: list[TimelineSample] = []
    records: list[RequestRecord | None] = [None] * len(requests)
    async with open_kernel(kernel_cfg) as kernel:
        # The kernel's clock starts at boot; a simulation's times are relative to the first
        # possible arrival, which is now.
        start = trio.current_time()
        scheduler = kernel.devices[device_name].scheduler
        vocab = kernel.devices[device_name].vocab_size
        sessions = {t: kernel.table.open_session(0, t) for t in sorted({r.tenant for r in requests})}
        request_of: dict[int, Request] = {}
        done = trio.Event()
        pending = [0]  # requests spawned and not yet collected, plus those still to spawn
        pending[0] = len(requests)
        spawned = {t: trio.Event() for t in sessions}

        async def spawn(request: Request) -> None:
            args: dict[str, Any] = {
                "prompt_ids": prompt_token_ids(request, config.seed, vocab),
                "max_tokens": request.output_len,
                "ignore_eos": True,
                "seed": sampling_seed(config.seed, request.request_id),
                "nice": request.nice,
            }
            if request.slo_s is not None:
                args["deadline_s"] = request.slo_s
            reply = await kernel.syscall(sessions[request.tenant], "spawn", args)
            request_of[reply["pid"]] = request
            spawned[request.tenant].set()

        def sample() -> None:
            scheduler.settle()  # the steps of a multi-step run that have ended by now
            slots, held = scheduler.kv.table_fill()
            seqs, tokens = scheduler.last_batch
            timeline.append(TimelineSample(
                time_s=trio.current_time() - start,
                running=scheduler.num_running,
                waiting=scheduler.num_waiting,
                batch_seqs=seqs,
                batch_tokens=tokens,
                kv_blocks_used=scheduler.kv.num_blocks - scheduler.kv.num_free_blocks,
                kv_blocks_total=scheduler.kv.num_blocks,
                kv_utilization=held / slots if slots else 0.0,
            ))

        async def until(when: float) -> None:
            # Sleep only into the future: a sleep until now still yields, and the scheduler
            # could then plan between two arrivals of one instant (or an arrival and its sample).
            if when > trio.current_time():
                await trio.sleep_until(when)

        async def feed() -> None:
            # Arrivals and timeline samples from one task, in time order, so that everything
            # at one instant happens before anyone else runs: the plan made at an instant sees
            # all its arrivals, and a sample sees them too (two tasks would race for it).
            sample_at = start
            for request in requests:
                arrival = start + request.arrival_s
                while sample_at < arrival:
                    await until(sample_at)
                    sample()
                    sample_at += config.sample_interval_s
                await until(arrival)
                await spawn(request)
            while True:
                await until(sample_at)
                sample()
                sample_at += config.sample_interval_s

        async def collect(tenant: str) -> None:
            session = sessions[tenant]
            while pending[0]:
                try:
                    proc = await kernel.table.wait(session.pid, None)
                except KernelError:  # ECHILD: nothing of this tenant is alive; wait for a spawn
                    spawned[tenant] = trio.Event()
                    await spawned[tenant].wait()
                    continue
                assert proc is not None
                request = request_of.pop(proc.pid)
                record = record_of(request, proc)
                _shift(record, start)
                records[request.request_id] = record
                pending[0] -= 1
                if not pending[0]:
                    done.set()

        if requests:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(feed)
                for tenant in sessions:
                    nursery.start_soon(collect, tenant)
                await done.wait()
                nursery.cancel_scope.cancel()
        simulated_s = trio.current_time() - start
        device = scheduler.meminfo()
        device.update(steps=scheduler.stats.num_steps, driver_calls=scheduler.stats.num_driver_calls,
                      steps_modeled=scheduler.stats.num_steps_modeled,
                      tokens=scheduler.stats.num_tokens, busy_s=scheduler.stats.busy_s)
    final = [r for r in records if r is not None]
    return SimResult(config.to_dict(), final, timeline, simulated_s, device["steps"], device["driver_calls"], 0.0, device)


def _shift(record: RequestRecord, start: float) -> None:
    """Make a record's kernel-clock times relative to the simulation's start."""
    for name in ("arrival_s", "first_scheduled_s", "first_token_s", "completion_s", "deadline_s"):
        value = getattr(record, name)
        if value is not None:
            setattr(record, name, value - start)
    record.token_times_s = [t - start for t in record.token_times_s]


def run_simulation(config: SimConfig, requests: list[Request] | None = None) -> SimResult:
    """Simulate ``config`` (its workload, or ``requests`` if given) in virtual time.

    Raises SimError for a bad configuration or workload (errno and a sentence).
    """
    config.check()
    if requests is None:
        requests = make_workload(config.workload, config.seed)
    wall = time.perf_counter()
    with _deterministic_trio(config.seed):
        result = trio.run(simulate, config, requests, clock=trio.testing.MockClock(autojump_threshold=0))
    result.wall_s = time.perf_counter() - wall
    return result


@contextlib.contextmanager
def _deterministic_trio(seed: int) -> Iterator[None]:
    """Make trio order the tasks woken at one instant the same way on every run of ``seed``.

    Equal-time events (two arrivals in one instant, an arrival as a step ends) resolve in the
    order trio runs the woken tasks. Trio shuffles each batch of runnable tasks with a
    module-level Random, which we seed; but tasks whose deadlines expire together enter the
    batch ordered by the ``id()`` of their cancel scopes, a memory address, so a second
    simulation in the same process (a sweep worker, a benchmark) could break a tie the other
    way. Trio's switch for deterministic tests (what pytest-trio sets under Hypothesis) sorts
    each batch by task creation order before the seeded shuffle. Both are private API: if a
    trio release renames them, runs stay correct, only less repeatable.
    """
    import trio._core._run as trio_run

    rng = getattr(trio_run, "_r", None)
    if rng is not None and hasattr(rng, "seed"):
        rng.seed(seed)
    had_switch = hasattr(trio_run, "_ALLOW_DETERMINISTIC_SCHEDULING")
    saved = getattr(trio_run, "_ALLOW_DETERMINISTIC_SCHEDULING", False)
    if had_switch:
        trio_run._ALLOW_DETERMINISTIC_SCHEDULING = True
    try:
        yield
    finally:
        if had_switch:
            trio_run._ALLOW_DETERMINISTIC_SCHEDULING = saved
