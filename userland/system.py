"""Putting a system together: a kernel, its device drivers and its services.

The kernel knows drivers only as server factories; this module is where userland chooses
them (``--device sim`` or ``--device cpu``) and turns command-line options into a
``KernelConfig``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from llmos.kernel import params
from llmos.kernel.kernel import DeviceConfig, KernelConfig
from llmos.kernel.policy import POLICIES
from llmos.kernel.scheduler import SchedulerConfig


@dataclass
class SystemOptions:
    """What a user can choose wherever a kernel is booted."""

    device: str = "sim"  # driver kind of the single device: sim (more kinds as drivers land)
    model: str | None = None  # model name or path; each driver kind has a default
    kv_blocks: int = params.NUM_KV_BLOCKS
    block_size: int = params.BLOCK_SIZE
    policy: str = "fcfs"
    max_batch_tokens: int = params.MAX_BATCH_TOKENS
    max_seqs: int = params.MAX_SEQS


def add_system_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every booting command shares (boot, demo, generate, llmsh)."""
    group = parser.add_argument_group("kernel")
    group.add_argument("--device", default="sim", choices=sorted(DRIVER_KINDS), help="driver of the device (default: %(default)s)")
    group.add_argument("--model", default=None, help="model name or checkpoint directory")
    group.add_argument("--kv-blocks", type=int, default=params.NUM_KV_BLOCKS, help="KV blocks in the device pool")
    group.add_argument("--block-size", type=int, default=params.BLOCK_SIZE, help="tokens per KV block")
    group.add_argument("--policy", default="fcfs", choices=sorted(POLICIES), help="scheduling policy")
    group.add_argument("--max-batch-tokens", type=int, default=params.MAX_BATCH_TOKENS, help="token budget per step")
    group.add_argument("--max-seqs", type=int, default=params.MAX_SEQS, help="sequences per step")


def options_from_args(args: argparse.Namespace) -> SystemOptions:
    """``SystemOptions`` from parsed command-line arguments."""
    return SystemOptions(
        device=args.device, model=args.model, kv_blocks=args.kv_blocks, block_size=args.block_size,
        policy=args.policy, max_batch_tokens=args.max_batch_tokens, max_seqs=args.max_seqs,
    )


def _sim_device(options: SystemOptions) -> DeviceConfig:
    from llmos.drivers.sim import SimDriver

    return DeviceConfig("sim0", SimDriver, options.model or "sim", {}, options.kv_blocks, options.block_size)


DRIVER_KINDS: dict[str, Any] = {
    "sim": _sim_device,
}


def build_config(options: SystemOptions) -> KernelConfig:
    """The kernel configuration for ``options``; ValueError says what is wrong."""
    if options.kv_blocks <= 0 or options.block_size <= 0:
        raise ValueError("--kv-blocks and --block-size must be positive")
    if options.max_batch_tokens <= 0 or options.max_seqs <= 0:
        raise ValueError("--max-batch-tokens and --max-seqs must be positive")
    if options.device not in DRIVER_KINDS:
        raise ValueError(f"unknown device {options.device!r}; known: {', '.join(sorted(DRIVER_KINDS))}")
    if options.policy not in POLICIES:
        raise ValueError(f"unknown policy {options.policy!r}; known: {', '.join(sorted(POLICIES))}")
    return KernelConfig(
        devices=[DRIVER_KINDS[options.device](options)],
        policy=options.policy,
        scheduler=SchedulerConfig(options.max_batch_tokens, options.max_seqs),
    )
