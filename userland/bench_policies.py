"""``llmos bench policies``: scheduling policies on the real trace, in virtual time.

Replays the first N requests of the arrivals trace on a kernel with the sim driver, once per
policy. At the trace's own rate FCFS already queues with 16 sequences a step; ``--rate-scale``
divides arrival times to raise the load further. It reports mean, p50 and p99 end-to-end latency and TTFT, and each policy's mean E2E as a ratio
to FCFS measured in the same run. srpt is given each request's true output length (the
simulator's oracle predictor), as FastServe-style studies do.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import trio
import trio.testing

from llmos.kernel.kernel import open_kernel

from .command import EXIT_FAILURE
from .replay import replay_trace
from .system import SystemOptions, build_config
from .trace import load_requests

POLICIES = ("fcfs", "mlfq", "srpt")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def replay(options: SystemOptions, requests: list[tuple[float, int, int]], seed: int) -> dict[str, Any]:
    """Run the requests at their arrival times under ``options.policy``; latency figures."""
    async with open_kernel(build_config(options)) as kernel:
        policy = kernel.devices["sim0"].scheduler.policy
        hint = getattr(policy, "hint", None)  # srpt: the simulator knows each true length
        results = await replay_trace(kernel, requests, seed, on_spawn=hint)
    e2e = [r.stat["finished_at"] - r.stat["created_at"] for r in results]
    ttft = [r.stat["ttft_s"] for r in results]
    return {
        "e2e_mean_s": statistics.fmean(e2e), "e2e_p50_s": percentile(e2e, 0.5), "e2e_p99_s": percentile(e2e, 0.99),
        "ttft_mean_s": statistics.fmean(ttft), "ttft_p99_s": percentile(ttft, 0.99),
    }


def run_bench_policies(args: argparse.Namespace) -> int:
    """Entry point of ``llmos bench policies``."""
    rows = load_requests("bench policies", args)
    if rows is None:
        return EXIT_FAILURE
    requests = [(t / args.rate_scale, p, d) for t, p, d in rows]
    results: dict[str, Any] = {"requests": len(requests), "rate_scale": args.rate_scale, "max_seqs": args.max_seqs}
    wall = time.perf_counter()
    for policy in POLICIES:
        options = SystemOptions(device="sim", policy=policy, kv_blocks=args.kv_blocks, block_size=16,
                                max_seqs=args.max_seqs, max_batch_tokens=args.max_batch_tokens)
        results[policy] = trio.run(replay, options, requests, args.seed, clock=trio.testing.MockClock(autojump_threshold=0))
    for policy in POLICIES:
        results[policy]["e2e_mean_vs_fcfs"] = results[policy]["e2e_mean_s"] / results["fcfs"]["e2e_mean_s"]
    results["wall_s"] = round(time.perf_counter() - wall, 1)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(f"{len(requests)} trace requests, arrivals x{args.rate_scale}, max_seqs {args.max_seqs} (virtual time)")
        for policy in POLICIES:
            r = results[policy]
            print(f"{policy:5s}  E2E mean {r['e2e_mean_s']:7.2f} s  p50 {r['e2e_p50_s']:7.2f}  p99 {r['e2e_p99_s']:7.2f}  "
                  f"TTFT mean {r['ttft_mean_s']:6.2f} s  E2E vs fcfs {r['e2e_mean_vs_fcfs']:.2f}x")
    return 0
