"""The ``llmos`` command: boot a kernel, run the demo, generate, benchmark, inspect.

Each subcommand lives in its own module; this one only parses and dispatches.
"""

from __future__ import annotations

import argparse
import sys

from .system import add_system_arguments
from .trace import add_trace_arguments


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``llmos``."""
    parser = argparse.ArgumentParser(prog="llmos", description="LLMOS: an operating system whose processes are LLM inference jobs.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    boot = sub.add_parser("boot", help="boot a kernel serving syscalls on a Unix socket")
    boot.add_argument("--socket", required=True, help="path of the Unix socket to serve")
    add_system_arguments(boot)

    demo = sub.add_parser("demo", help="the tour: eight processes on the default model, a live process table")
    demo.add_argument("--max-tokens", type=int, default=128, help="tokens per process (default %(default)s)")
    add_system_arguments(demo)

    gen = sub.add_parser("generate", help="run prompts as concurrent processes; one JSON line each")
    source = gen.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="prompt text (the model needs a tokenizer)")
    source.add_argument("--prompt-ids", help="prompt token ids, comma-separated: 1,2,3")
    source.add_argument("--prompts", help="JSONL file: one object per line with prompt or prompt_ids, "
                        "and optional max_tokens, temperature, seed, nice, tenant")
    gen.add_argument("--max-tokens", type=int, default=64, help="tokens to generate per process (default %(default)s)")
    gen.add_argument("--temperature", type=float, default=0.8, help="0 for greedy (default %(default)s)")
    gen.add_argument("--seed", type=int, default=0, help="sampling seed (default %(default)s)")
    gen.add_argument("--json", action="store_true", help="one JSON object per line")
    gen.add_argument("--socket", default=None, help="use the kernel serving this socket instead of booting one")
    add_system_arguments(gen)

    ps = sub.add_parser("ps", help="list the processes of a running kernel")
    ps.add_argument("--socket", default=None, help="the kernel's socket (default $LLMOS_SOCKET or /tmp/llmos.sock)")
    ps.add_argument("--json", action="store_true", help="print JSON")

    uname = sub.add_parser("uname", help="describe a running kernel: devices, servers, restarts")
    uname.add_argument("--socket", default=None)

    meminfo = sub.add_parser("meminfo", aliases=["free"], help="KV memory per device: blocks, swap, utilization, prefix-cache hits")
    meminfo.add_argument("--socket", default=None)
    meminfo.add_argument("--json", action="store_true", help="print JSON")

    lsdev = sub.add_parser("lsdev", help="list a running kernel's devices: kind, emulated or real, memory, utilization, load")
    lsdev.add_argument("--socket", default=None, help="the kernel's socket (default $LLMOS_SOCKET or /tmp/llmos.sock)")
    lsdev.add_argument("--json", action="store_true", help="print JSON")

    sim = sub.add_parser("sim", help="the kernel in virtual time on a trace or synthetic workload: metrics, plots, sweeps")
    from .simulate import add_sim_arguments, add_sim_subcommands

    add_sim_arguments(sim)
    add_sim_subcommands(sim)

    model = sub.add_parser("model", help="the model manager of a running kernel: import, list, show, load, unload, update, rm")
    from .model_cmd import add_model_arguments

    add_model_arguments(model)

    quota = sub.add_parser("quota", help="tenant quotas of a running kernel: set (uid 0), get, list")
    usage = sub.add_parser("usage", help="per-tenant use beside quota, per-device utilization, running, waiting")
    from .quota_cmd import add_quota_arguments, add_usage_arguments

    add_quota_arguments(quota)
    add_usage_arguments(usage)

    token = sub.add_parser("token", help="issue a tenant token (uid 0 only); clients present it with --token")
    token.add_argument("--tenant", required=True)
    token.add_argument("--socket", default=None)

    bench = sub.add_parser("bench", help="benchmarks that print their figures")
    bench_sub = bench.add_subparsers(dest="bench", metavar="BENCH")
    bench_sub.required = True
    pol = bench_sub.add_parser("policies", help="fcfs, mlfq and srpt on the trace in virtual time: E2E and TTFT")
    add_trace_arguments(pol, requests=600)
    pol.add_argument("--rate-scale", type=float, default=1.0, help="divide arrival times by this (default %(default)s)")
    pol.add_argument("--max-seqs", type=int, default=16, help="sequences per step (default %(default)s)")
    pol.add_argument("--max-batch-tokens", type=int, default=2048, help="token budget per step (default %(default)s)")
    pol.add_argument("--kv-blocks", type=int, default=8192, help="KV blocks (default %(default)s)")
    planner = bench_sub.add_parser("planner", help="the kernel's time per step at 32/128/512 processes, beside the CPU engine's step")
    planner.add_argument("--json", action="store_true", help="print JSON")
    planner.add_argument("--steps", type=int, default=200, help="steps timed per size (default %(default)s)")
    memory = bench_sub.add_parser("memory", help="KV memory use on the trace workload (sim driver, virtual time)")
    add_trace_arguments(memory, requests=1000)
    memory.add_argument("--kv-blocks", type=int, default=2048, help="KV blocks (default %(default)s)")
    memory.add_argument("--block-size", type=int, default=16, help="tokens per block (default %(default)s)")
    memory.add_argument("--swap-blocks", type=int, default=4096, help="swap space in blocks (default %(default)s)")
    memory.add_argument("--preemption", default="auto", choices=["auto", "swap", "recompute"])
    simb = bench_sub.add_parser("sim", help="the simulator's speed on the trace: multi-step runs against planning every step")
    simb.add_argument("--requests", type=int, default=2000, help="first N trace requests (default %(default)s)")
    simb.add_argument("--trace", default="default", help="trace file (default: the shared Azure trace)")
    simb.add_argument("--rounds", type=int, default=1, help="alternating rounds; each figure is the best (default %(default)s)")
    simb.add_argument("--json", action="store_true", help="print JSON")
    ipc = bench_sub.add_parser("ipc", help="round trip of a no-op syscall, in-process and over a socket")
    ipc.add_argument("--n", type=int, default=5000, help="round trips per transport")
    ipc.add_argument("--json", action="store_true", help="print JSON")
    engine = bench_sub.add_parser("engine", help="llmos against Hugging Face transformers: throughput and batch-1 latency")
    engine.add_argument("--json", action="store_true", help="print JSON")
    engine.add_argument("--model", default="default", help="checkpoint directory, or 'default' for the embedded model")
    engine.add_argument("--requests", type=int, default=32, help="requests drawn from the trace (default: %(default)s)")
    engine.add_argument("--trace", default=None, help="arrivals trace CSV (default: shared/traces/azure_conv_2023.csv beside the repository)")
    engine.add_argument("--seed", type=int, default=0, help="seed of the request sample and prompt ids")
    engine.add_argument("--hf-batch-size", type=int, default=8, help="requests per transformers generate call (default: %(default)s)")
    engine.add_argument("--threads", type=int, default=2, help="torch intra-op threads for both sides (default: %(default)s)")
    dp = bench_sub.add_parser("dataparallel", help="one saturating workload on 1, 2 and 4 sim replicas in virtual time: speedup")
    add_trace_arguments(dp, requests=400)
    dp.add_argument("--replicas", default="1,2,4", help="replica counts to run, comma-separated (default %(default)s)")
    dp.add_argument("--max-seqs", type=int, default=64, help="sequences per step on each replica (default %(default)s)")
    dp.add_argument("--kv-blocks", type=int, default=4096, help="KV blocks of each replica (default %(default)s)")
    npu = bench_sub.add_parser("npu", help="the emulated int8 npu against the cpu: greedy agreement, held-out perplexity, step time")
    npu.add_argument("--json", action="store_true", help="print JSON")
    npu.add_argument("--model", default="default", help="checkpoint directory, or 'default' for the embedded model")
    npu.add_argument("--windows", type=int, default=256,
                     help="held-out windows of 256 tokens for perplexity; 256 are the training script's evaluation windows (default %(default)s)")
    npu.add_argument("--prompts", type=int, default=32, help="held-out prompts for greedy agreement (default %(default)s)")
    npu.add_argument("--new-tokens", type=int, default=32, help="greedy tokens per prompt (default %(default)s)")
    npu.add_argument("--spec", default="phone", help="npu preset (default %(default)s)")
    npu.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default %(default)s)")
    from .bench_fidelity import add_fidelity_arguments

    fidelity = bench_sub.add_parser("fidelity", help="one workload for real on the cpu driver and simulated on a profile calibrated on it: errors")
    add_fidelity_arguments(fidelity)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``llmos`` console script."""
    args = build_parser().parse_args(argv)
    if args.command == "boot":
        from .boot import run_boot

        return run_boot(args)
    if args.command == "demo":
        from .demo import run_demo

        return run_demo(args)
    if args.command == "generate":
        from .generate import run_generate

        return run_generate(args)
    if args.command in ("ps", "uname", "token", "meminfo", "free", "lsdev"):
        from .inspect import run_inspect

        return run_inspect(args)
    if args.command == "model":
        from .model_cmd import run_model

        return run_model(args)
    if args.command in ("quota", "usage"):
        from .quota_cmd import run_quota, run_usage

        return run_quota(args) if args.command == "quota" else run_usage(args)
    if args.command == "sim":
        from .simulate import run_sim

        return run_sim(args)
    if args.command == "bench" and args.bench == "ipc":
        from .bench_ipc import run_bench_ipc

        return run_bench_ipc(args)
    if args.command == "bench" and args.bench == "policies":
        from .bench_policies import run_bench_policies

        return run_bench_policies(args)
    if args.command == "bench" and args.bench == "planner":
        from .bench_planner import run_bench_planner

        return run_bench_planner(args)
    if args.command == "bench" and args.bench == "memory":
        from .bench_memory import run_bench_memory

        return run_bench_memory(args)
    if args.command == "bench" and args.bench == "sim":
        from .bench_sim import run_bench_sim

        return run_bench_sim(args)
    if args.command == "bench" and args.bench == "dataparallel":
        from .bench_dataparallel import run_bench_dataparallel

        return run_bench_dataparallel(args)
    if args.command == "bench" and args.bench == "npu":
        from .bench_npu import run_bench_npu

        return run_bench_npu(args)
    if args.command == "bench" and args.bench == "engine":
        from .bench_engine import run_bench_engine

        return run_bench_engine(args)
    if args.command == "bench" and args.bench == "fidelity":
        from .bench_fidelity import run_bench_fidelity

        return run_bench_fidelity(args)
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
