"""``llmos bench sim``: how fast the simulator runs a real trace, and what multi-step runs buy.

Simulates the first N requests of the arrivals trace (llama-2-7b on an a100, fcfs, the
``llmos sim`` defaults) twice in one process: planning every step (``--max-steps 1``, the
peer) and with multi-step runs (``kernel/horizon.py``, the default), then checks that both
gave the same records and timeline, float for float (a multi-step run must change nothing
but speed), and prints the wall time, simulated steps per wall second and driver calls of each,
with the speed-up. The two runs alternate ``--rounds`` times, so a change in the machine's
speed favours neither; each figure is the best of its rounds.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .command import EXIT_FAILURE


def _run(requests: int, trace: str, max_steps: int | None) -> Any:
    """One simulation of the trace's first ``requests``; ``max_steps`` None: SimConfig's default."""
    from llmos.sim.runner import SimConfig, run_simulation
    from llmos.sim.workloads import WorkloadSpec

    config = SimConfig(workload=WorkloadSpec(trace=trace, num_requests=requests))
    if max_steps is not None:
        config.max_steps = max_steps
    return run_simulation(config)


def bench_sim(requests: int, trace: str, rounds: int) -> dict[str, Any]:
    """Both runs ``rounds`` times, alternating; their figures and whether they agree."""
    best: dict[str, Any] = {}
    agree = True
    for _ in range(rounds):
        results = {name: _run(requests, trace, max_steps) for name, max_steps in (("one_step", 1), ("multi_step", None))}
        one, multi = results["one_step"], results["multi_step"]
        agree = agree and one.records == multi.records and one.timeline == multi.timeline
        for name, result in results.items():
            if name not in best or result.wall_s < best[name]["wall_s"]:
                best[name] = {"wall_s": result.wall_s, "steps": result.num_steps, "driver_calls": result.num_driver_calls,
                              "steps_per_wall_s": result.num_steps / result.wall_s if result.wall_s else 0.0}
    return {
        "requests": requests,
        "rounds": rounds,
        "identical": agree,
        **best,
        "speedup": best["one_step"]["wall_s"] / best["multi_step"]["wall_s"],
    }


def run_bench_sim(args: argparse.Namespace) -> int:
    """Entry point of ``llmos bench sim``."""
    if args.requests < 1 or args.rounds < 1:
        print("llmos bench sim: EINVAL: --requests and --rounds must be at least 1", file=sys.stderr)
        return EXIT_FAILURE
    from llmos.sim.errors import SimError

    try:
        figures = bench_sim(args.requests, args.trace, args.rounds)
    except SimError as error:
        print(f"llmos bench sim: {error.errno}: {error.message}", file=sys.stderr)
        return EXIT_FAILURE
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        print(f"{figures['requests']} trace requests, best of {figures['rounds']} round(s):")
        for name in ("one_step", "multi_step"):
            f = figures[name]
            print(f"  {name:10s} {f['wall_s']:7.2f} s  {f['steps']:7d} steps  {f['driver_calls']:7d} driver calls  "
                  f"{f['steps_per_wall_s']:8.0f} steps/s")
        print(f"  speed-up {figures['speedup']:.2f}x; results identical: {'yes' if figures['identical'] else 'NO'}")
    if not figures["identical"]:
        print("llmos bench sim: EIO: the multi-step run's records differ from the one-step loop's", file=sys.stderr)
        return EXIT_FAILURE
    return 0
