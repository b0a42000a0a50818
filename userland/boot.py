"""``llmos boot``: a kernel serving syscalls on a Unix socket until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import os
import signal
import sys

import trio

from llmos.kernel.kernel import KernelConfig, open_kernel

from .command import EXIT_USAGE, run_trio_command
from .system import build_config, options_from_args


async def serve_until_signal(config: KernelConfig, socket_path: str, announce: bool = True) -> None:
    """Boot, serve ``socket_path``, and shut down cleanly on SIGINT or SIGTERM."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with open_kernel(config) as kernel, trio.open_nursery() as nursery:
            await nursery.start(kernel.serve_unix, socket_path)
            if announce:
                devices = ", ".join(f"{d.name} ({d.model})" for d in kernel.devices.values())
                print(f"llmos: kernel {os.getpid()} serving {socket_path}; devices: {devices}", flush=True)
            async for signum in signals:
                print(f"llmos: {signal.Signals(signum).name} received; shutting down", flush=True)
                break
            nursery.cancel_scope.cancel()


def run_boot(args: argparse.Namespace) -> int:
    """Entry point of ``llmos boot``."""
    try:
        config = build_config(options_from_args(args))
    except ValueError as exc:
        print(f"llmos boot: {exc} (EINVAL)", file=sys.stderr)
        return EXIT_USAGE
    status, _ = run_trio_command("boot", serve_until_signal, config, args.socket)
    if status == 0:
        print("llmos: kernel stopped", flush=True)
    return status
