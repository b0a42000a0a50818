"""``llmos sim``: run the real kernel in virtual time on a workload; calibrate; sweep.

    llmos sim --trace default --device a100 --model llama-2-7b --policy fcfs --json
    llmos sim --arrivals gamma --rate 8 --cv 2 --num-requests 2000 --policy mlfq --out runs/mlfq
    llmos sim calibrate --device cpu --model default --out cpu.json
    llmos sim --trace default --device cpu.json --model default ...
    llmos sim sweep sweep.toml --out runs/sweep

The simulation itself lives in ``llmos.sim`` (runner, cost models, workloads, metrics, plots,
sweeps); this module is the command line over it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from llmos.kernel import params
from llmos.kernel.errors import KernelError
from llmos.kernel.policy import POLICIES

from .command import EXIT_FAILURE


def add_sim_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``llmos sim``: the workload, the simulated system, and the outputs."""
    from llmos.sim.workloads import add_workload_arguments

    add_workload_arguments(parser)
    system = parser.add_argument_group("simulated system")
    system.add_argument("--model", default="llama-2-7b",
                        help="model preset (llama-2-7b, llama-2-70b, llama-3-8b, mistral-7b, qwen2.5-0.5b, default) "
                             "or a Hugging Face config.json (default %(default)s)")
    system.add_argument("--device", default="a100",
                        help="device preset (a100, h100, h200, npu-phone, cpu), a device spec JSON, or a profile "
                             "from 'llmos sim calibrate' (default %(default)s)")
    system.add_argument("--policy", default="fcfs", choices=sorted(POLICIES), help="scheduling policy (default %(default)s)")
    system.add_argument("--kv-blocks", type=int, default=None, help="KV blocks (default: what the device's memory holds)")
    system.add_argument("--block-size", type=int, default=params.BLOCK_SIZE, help="tokens per KV block (default %(default)s)")
    system.add_argument("--swap-blocks", type=int, default=None, help="host swap space in blocks (default: as many as KV)")
    system.add_argument("--max-seqs", type=int, default=256, help="sequences per step (default %(default)s)")
    system.add_argument("--max-batch-tokens", type=int, default=params.MAX_BATCH_TOKENS,
                        help="token budget per step (default %(default)s)")
    system.add_argument("--preemption", default="auto", choices=["auto", "swap", "recompute"])
    system.add_argument("--no-prefix-cache", action="store_true", help="disable prefix caching")
    system.add_argument("--max-steps", type=int, default=4096,
                        help="decode steps one plan may cover; 1 plans every step (same results, slower)")
    system.add_argument("--min-residency", type=int, default=params.MIN_RESIDENCY_STEPS, metavar="STEPS",
                        help="steps a newly admitted process runs before an arrival may evict it "
                             "(default %(default)s; 0: none, and overloaded rr/mlfq thrash)")
    system.add_argument("--seed", type=int, default=0, help="seed of the workload, prompts and sampling (default 0)")
    out = parser.add_argument_group("outputs")
    out.add_argument("--sample-interval", type=float, default=1.0, help="virtual seconds between timeline samples")
    out.add_argument("--slo-ttft", type=float, default=None, help="TTFT SLO in seconds, for goodput")
    out.add_argument("--slo-tpot", type=float, default=None, help="TPOT SLO in seconds, for goodput")
    out.add_argument("--out", default=None, help="folder for requests.csv, token_times.csv, timeline.csv, summary.json, config.json")
    out.add_argument("--plots", action="store_true", help="with --out: also latency CDF, KV utilization and Gantt PNGs")
    out.add_argument("--json", action="store_true", help="print the summary as JSON")


def add_sim_subcommands(parser: argparse.ArgumentParser) -> None:
    """``llmos sim calibrate`` and ``llmos sim sweep``."""
    sub = parser.add_subparsers(dest="sim_command", metavar="[calibrate|sweep]")
    cal = sub.add_parser("calibrate", help="measure the real cpu driver over batch shapes and fit a cost profile")
    cal.add_argument("--device", default="cpu", choices=["cpu"], help="the real driver to measure (default %(default)s)")
    cal.add_argument("--model", default="default", help="checkpoint directory, or 'default' (default %(default)s)")
    cal.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    cal.add_argument("--repeats", type=int, default=3, help="timings per batch shape; the median is kept")
    cal.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    cal.add_argument("--out", required=True, help="where to write the profile JSON")
    sweep = sub.add_parser("sweep", help="run a grid of simulations in parallel from a TOML file")
    sweep.add_argument("config", help="sweep TOML: [base], [base.workload] and [grid] tables")
    sweep.add_argument("--out", required=True, help="output folder")
    sweep.add_argument("--jobs", type=int, default=None, help="parallel processes (default: CPU count)")
    sweep.add_argument("--no-progress", action="store_true", help="no progress bar")


def sim_config_from_args(args: argparse.Namespace) -> Any:
    """The ``SimConfig`` an ``llmos sim`` command line describes."""
    from llmos.sim.runner import SimConfig
    from llmos.sim.workloads import workload_spec_from_args

    return SimConfig(
        workload=workload_spec_from_args(args),
        seed=args.seed,
        policy=args.policy,
        model=args.model,
        device=args.device,
        kv_blocks=args.kv_blocks,
        block_size=args.block_size,
        swap_blocks=args.swap_blocks,
        max_seqs=args.max_seqs,
        max_batch_tokens=args.max_batch_tokens,
        preemption=args.preemption,
        prefix_cache=not args.no_prefix_cache,
        max_steps=args.max_steps,
        min_residency_steps=args.min_residency,
        sample_interval_s=args.sample_interval,
    )


def write_outputs(result: Any, summary: dict[str, Any], out: Path, plots: bool) -> list[Path]:
    """Write a simulation's files under ``out``; returns their paths."""
    from llmos.sim import metrics

    out.mkdir(parents=True, exist_ok=True)
    written = [out / "requests.csv", out / "token_times.csv", out / "timeline.csv", out / "summary.json", out / "config.json"]
    metrics.write_requests_csv(result.records, written[0])
    metrics.write_token_times_csv(result.records, written[1])
    metrics.write_timeline_csv(result.timeline, written[2])
    metrics.write_summary_json(summary, written[3])
    written[4].write_text(json.dumps(result.config, indent=2, sort_keys=True) + "\n")
    if plots:
        from llmos.sim import plots as sim_plots

        label = result.config["policy"]
        written.append(sim_plots.plot_latency_cdf({label: result.records}, out / "latency_cdf.png"))
        written.append(sim_plots.plot_kv_utilization(result.timeline, out / "kv_utilization.png"))
        written.append(sim_plots.plot_gantt(result.records, out / "gantt.png"))
    return written


def run_sim(args: argparse.Namespace) -> int:
    """Entry point of ``llmos sim`` and its subcommands."""
    try:
        if args.sim_command == "calibrate":
            return _calibrate(args)
        if args.sim_command == "sweep":
            return _sweep(args)
        return _simulate(args)
    except KernelError as exc:  # SimError is one: an errno and a sentence
        print(f"llmos sim: {exc.message} ({exc.errno})", file=sys.stderr)
        return EXIT_FAILURE
    except OSError as exc:
        print(f"llmos sim: {exc.strerror or exc}: {exc.filename or ''} (EIO)", file=sys.stderr)
        return EXIT_FAILURE


def _simulate(args: argparse.Namespace) -> int:
    from llmos.sim import metrics
    from llmos.sim.runner import run_simulation

    config = sim_config_from_args(args)
    if args.plots and not args.out:
        raise KernelError("EINVAL", "--plots needs --out DIR to write the PNGs into")
    result = run_simulation(config)
    summary = metrics.summarize(result, args.slo_ttft, args.slo_tpot)
    if args.out:
        write_outputs(result, summary, Path(args.out), args.plots)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        from rich.console import Console

        Console().print(metrics.format_summary_table(summary))
        print(f"{len(result.records)} requests, {result.num_steps} steps simulated in {result.wall_s:.2f} s of wall time "
              f"({result.num_steps / max(result.wall_s, 1e-9):,.0f} steps/s)")
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    from llmos.sim.calibrate import calibrate

    if args.repeats < 1:
        raise KernelError("EINVAL", "--repeats must be >= 1")
    profile = calibrate(model=args.model, dtype=args.dtype, repeats=args.repeats, device=args.device, threads=args.threads)
    profile.save(args.out)
    print(json.dumps(profile.describe(), indent=2))
    print(f"profile written to {args.out}; use it with: llmos sim --device {args.out} --model {args.model}", file=sys.stderr)
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from llmos.sim.sweep import print_results_table, run_sweep

    rows = run_sweep(args.config, args.out, jobs=args.jobs, progress=not args.no_progress)
    print_results_table(rows)
    failed = [r for r in rows if r.get("status") != "ok"]
    print(f"{len(rows)} points, {len(failed)} failed; results in {args.out}/results.csv", file=sys.stderr)
    return EXIT_FAILURE if failed else 0
