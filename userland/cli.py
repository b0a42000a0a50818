"""The ``llmos`` command: boot a kernel, run the demo, generate, benchmark, inspect.

Each subcommand lives in its own module; this one only parses and dispatches.
"""

from __future__ import annotations

import argparse
import sys

from .system import add_system_arguments


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``llmos``."""
    parser = argparse.ArgumentParser(prog="llmos", description="LLMOS: an operating system whose processes are LLM inference jobs.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    boot = sub.add_parser("boot", help="boot a kernel serving syscalls on a Unix socket")
    boot.add_argument("--socket", required=True, help="path of the Unix socket to serve")
    add_system_arguments(boot)

    ps = sub.add_parser("ps", help="list the processes of a running kernel")
    ps.add_argument("--socket", default=None, help="the kernel's socket (default $LLMOS_SOCKET or /tmp/llmos.sock)")
    ps.add_argument("--json", action="store_true", help="print JSON")

    uname = sub.add_parser("uname", help="describe a running kernel: devices, servers, restarts")
    uname.add_argument("--socket", default=None)

    bench = sub.add_parser("bench", help="benchmarks that print their figures")
    bench_sub = bench.add_subparsers(dest="bench", metavar="BENCH")
    bench_sub.required = True
    ipc = bench_sub.add_parser("ipc", help="round trip of a no-op syscall, in-process and over a socket")
    ipc.add_argument("--n", type=int, default=5000, help="round trips per transport")
    ipc.add_argument("--json", action="store_true", help="print JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``llmos`` console script."""
    args = build_parser().parse_args(argv)
    if args.command == "boot":
        from .boot import run_boot

        return run_boot(args)
    if args.command in ("ps", "uname"):
        from .inspect import run_inspect

        return run_inspect(args)
    if args.command == "bench" and args.bench == "ipc":
        from .bench_ipc import run_bench_ipc

        return run_bench_ipc(args)
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
