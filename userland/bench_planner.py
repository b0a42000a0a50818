"""``llmos bench planner``: the kernel's own time per step, beside the CPU engine's step time.

The planner's overhead is everything a step costs outside the driver: ranking, block
allocation, building the batch, encoding it, applying the result. It is measured with N
processes decoding on a sim driver whose cost model is zero (so the loop runs flat out and
all its time is the kernel's), at N = 32, 128 and 512. The peer, measured in the same run, is
the CPU engine's step time on the default model for a batch of 32 decodes at a 256-token
context. Target: overhead at 32 processes <= 5% of that step.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import torch
import trio

from llmos.drivers.cpu import DEFAULT_MODEL_DIR
from llmos.drivers.engine import TorchEngine
from llmos.kernel.batch import SamplingParams, SeqChunk, StepBatch
from llmos.kernel.kernel import open_kernel

from . import libllm
from .system import SystemOptions, build_config

SIZES = (32, 128, 512)
TARGET_FRACTION = 0.05


async def kernel_overhead(num_procs: int, num_steps: int) -> dict[str, Any]:
    """Per-step wall time of a kernel whose driver costs nothing, with ``num_procs`` decoding."""
    options = SystemOptions(device="sim", kv_blocks=num_procs * 20, block_size=16,
                            max_seqs=num_procs, max_batch_tokens=max(2048, num_procs))
    config = build_config(options)
    config.devices[0].load_args = {"step_s": 0.0, "token_s": 0.0}
    async with open_kernel(config) as kernel, libllm.open_client(kernel) as llm:
        scheduler = kernel.devices["sim0"].scheduler
        pids = [await llm.spawn(prompt_ids=[1 + i % 100] * 200, max_tokens=60_000, seed=i) for i in range(num_procs)]
        while scheduler.stats.num_steps < 5 or any(p.num_computed < 200 for p in scheduler._running):
            await trio.sleep(0.01)  # wait until every process is decoding
        inside: list[float] = []
        plan, apply = scheduler.plan, scheduler.apply

        def timed_plan() -> Any:
            start = time.perf_counter()
            try:
                return plan()
            finally:
                inside.append(time.perf_counter() - start)

        def timed_apply(*args: Any) -> None:
            start = time.perf_counter()
            apply(*args)
            if inside:  # the step in flight when timing began was planned untimed
                inside[-1] += time.perf_counter() - start

        scheduler.plan, scheduler.apply = timed_plan, timed_apply  # type: ignore[method-assign]
        first, started = scheduler.stats.num_steps, time.perf_counter()
        while scheduler.stats.num_steps - first < num_steps:
            await trio.sleep(0.005)
        wall = time.perf_counter() - started
        steps = scheduler.stats.num_steps - first
        for pid in pids:
            await llm.kill(pid, "SIGKILL")
    return {
        "processes": num_procs,
        "steps": steps,
        "step_wall_ms": 1000 * wall / steps,  # kernel + IPC + the zero-cost sim driver
        "planner_ms": 1000 * statistics.median(inside),  # plan + apply alone
    }


def engine_step_ms(batch_size: int = 32, context: int = 256, repeats: int = 20) -> float:
    """Median step time of the CPU engine on the default model: ``batch_size`` decodes."""
    engine = TorchEngine()
    engine.load_model(DEFAULT_MODEL_DIR)
    blocks = -(-context // 16)
    engine.init_kv(batch_size * blocks, 16)
    batch = StepBatch([SeqChunk(i, [5], context - 1, list(range(i * blocks, (i + 1) * blocks)), True,
                                SamplingParams(temperature=0.0)) for i in range(batch_size)], 16)
    times = []
    for i in range(repeats + 3):
        start = time.perf_counter()
        engine.step(batch)
        if i >= 3:
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def run_bench_planner(args: argparse.Namespace) -> int:
    """Entry point of ``llmos bench planner``."""
    torch.set_num_threads(2)
    rows = [trio.run(kernel_overhead, n, args.steps) for n in SIZES]
    engine_ms = engine_step_ms()
    at_32 = rows[0]["step_wall_ms"]
    result = {"engine_step_ms_batch32": engine_ms, "rows": rows, "overhead_fraction_at_32": at_32 / engine_ms,
              "target_fraction": TARGET_FRACTION, "meets_target": at_32 / engine_ms <= TARGET_FRACTION}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"cpu engine step, 32 decodes at 256 tokens, default model: {engine_ms:.2f} ms")
        for r in rows:
            print(f"{r['processes']:4d} processes: kernel per step {r['step_wall_ms']:.3f} ms "
                  f"(plan+apply {r['planner_ms']:.3f} ms) = {r['step_wall_ms'] / engine_ms:.1%} of the engine step")
    return 0
