"""``llmos bench dataparallel``: one saturating workload on 1, 2 and 4 sim replicas.

The workload is the first N requests of the arrivals trace (their prompt and output lengths),
all arriving at t = 0, so every replica has work from the first step to the last. Each run
boots a kernel with R sim devices serving one model (``--devices sim,sim,...``); the kernel
routes each process to the least-loaded replica. The run's time T_R is the virtual time from
the first spawn to the last exit, and the speedup over one device is T_1 / T_R. Each replica
has its own KV pool, so R replicas also have R times the memory: fewer preemptions can add to
the speedup, and the figures report them.
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import sys
import time
from contextlib import AsyncExitStack
from typing import Any

import trio
import trio.testing

from llmos.kernel.kernel import open_kernel

from . import libllm
from .command import EXIT_FAILURE, EXIT_USAGE
from .replay import REQUESTS_PER_CONNECTION
from .system import SystemOptions, build_config
from .trace import load_requests

TARGET_SPEEDUP_2 = 1.9  # what two replicas should reach on a saturating workload


async def spawn_all_then_wait(kernel: Any, requests: list[tuple[int, int]], seed: int) -> list[libllm.WaitResult]:
    """Spawn every ``(prompt length, output length)`` now, in list order, then wait for them all.

    One task spawns them one after the other, so the kernel sees them in the same order on
    every run (trio runs concurrently ready tasks in an arbitrary order) and routes them alike.
    """
    rng = random.Random(seed)
    prompts = [[rng.randrange(1, 32000) for _ in range(prompt_len)] for prompt_len, _ in requests]
    results: list[libllm.WaitResult] = []
    async with AsyncExitStack() as stack:
        num_clients = max(1, -(-len(requests) // REQUESTS_PER_CONNECTION))
        clients = [await stack.enter_async_context(libllm.open_client(kernel)) for _ in range(num_clients)]
        pids = [await clients[i % num_clients].spawn(prompt_ids=prompts[i], max_tokens=max(1, output_len), ignore_eos=True)
                for i, (_, output_len) in enumerate(requests)]

        async def wait(index: int) -> None:
            result = await clients[index % num_clients].wait(pids[index])
            assert result is not None  # a blocking wait returns a process
            results.append(result)

        async with trio.open_nursery() as nursery:
            for index in range(len(pids)):
                nursery.start_soon(wait, index)
    return results


async def run_replicas(options: SystemOptions, requests: list[tuple[int, int]], seed: int) -> dict[str, Any]:
    """Run every request at t = 0 on ``options``'s devices; the makespan and per-device figures."""
    async with open_kernel(build_config(options)) as kernel, libllm.open_client(kernel) as llm:
        start = trio.current_time()
        results = await spawn_all_then_wait(kernel, requests, seed)
        makespan = trio.current_time() - start
        devices = await llm.lsdev()
        meminfo = {d["device"]: d for d in (await llm.call("meminfo"))["devices"]}
    per_device = collections.Counter(r.stat["device"] for r in results)
    generated = sum(len(r.output_ids) for r in results)
    return {
        "makespan_s": makespan,
        "generated_tokens": generated,
        "tokens_per_s": generated / makespan if makespan else 0.0,
        "devices": {d["name"]: {"processes": per_device[d["name"]], "steps": d["steps"], "busy_s": d["busy_s"],
                                "utilization": d["utilization"], "preemptions": meminfo[d["name"]]["preemptions"]}
                    for d in devices},
    }


def run_bench_dataparallel(args: argparse.Namespace) -> int:
    """Entry point of ``llmos bench dataparallel``."""
    rows = load_requests("bench dataparallel", args)
    if rows is None:
        return EXIT_FAILURE
    try:
        counts = sorted({int(x) for x in args.replicas.split(",")})
    except ValueError:
        counts = []
    if not counts or counts[0] < 1:
        print(f"llmos bench dataparallel: --replicas {args.replicas}: give positive counts like 1,2,4 (EINVAL)", file=sys.stderr)
        return EXIT_USAGE
    if counts[0] != 1:
        counts.insert(0, 1)  # the speedups are against one device
    requests = [(prompt_len, output_len) for _, prompt_len, output_len in rows]  # all arrive at t = 0
    wall = time.perf_counter()
    runs: dict[str, Any] = {}
    for num in counts:
        options = SystemOptions(devices=["sim"] * num, kv_blocks=args.kv_blocks, block_size=16, max_seqs=args.max_seqs)
        runs[str(num)] = trio.run(run_replicas, options, requests, args.seed,
                                  clock=trio.testing.MockClock(autojump_threshold=0))
    t1 = runs["1"]["makespan_s"]
    speedup = {label: t1 / run["makespan_s"] for label, run in runs.items()}
    figures: dict[str, Any] = {
        "requests": len(requests),
        "workload": "the trace's prompt and output lengths, every request arriving at t=0 (virtual time, sim driver)",
        "kv_blocks_per_device": args.kv_blocks,
        "max_seqs_per_device": args.max_seqs,
        "runs": runs,
        "speedup": speedup,
        "target_speedup_2": TARGET_SPEEDUP_2,
        "meets_target": speedup["2"] >= TARGET_SPEEDUP_2 if "2" in speedup else None,
        "wall_s": round(time.perf_counter() - wall, 1),
    }
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        print(f"{len(requests)} trace requests at t=0, {args.kv_blocks} KV blocks and {args.max_seqs} seqs per device (virtual time)")
        for label, run in runs.items():
            balance = " ".join(f"{name}:{d['processes']}" for name, d in run["devices"].items())
            print(f"{label} device(s): T = {run['makespan_s']:8.2f} s  speedup {speedup[label]:5.2f}x  "
                  f"{run['tokens_per_s']:9.0f} tok/s  processes {balance}")
    return 0
