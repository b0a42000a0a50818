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
from llmos.kernel.preemption import PreemptionMode
from llmos.kernel.scheduler import SchedulerConfig


@dataclass
class SystemOptions:
    """What a user can choose wherever a kernel is booted."""

    device: str = "cpu"  # driver kind of the single device: cpu (real) or sim (cost model only)
    model: str | None = None  # checkpoint directory, or "default" for the embedded model
    dtype: str = "float32"  # weights, activations and KV cache on torch devices
    kv_blocks: int = params.NUM_KV_BLOCKS
    block_size: int = params.BLOCK_SIZE
    swap_blocks: int = params.NUM_SWAP_BLOCKS
    preemption: str = "auto"  # auto, swap or recompute
    prefix_cache: bool = True
    policy: str = "fcfs"
    max_batch_tokens: int = params.MAX_BATCH_TOKENS
    max_seqs: int = params.MAX_SEQS


def add_system_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every booting command shares (boot, demo, generate, llmsh)."""
    group = parser.add_argument_group("kernel")
    group.add_argument("--device", default="cpu", choices=sorted(DRIVER_KINDS), help="driver of the device (default: %(default)s)")
    group.add_argument("--model", default=None, help="checkpoint directory (Hugging Face format), or 'default' for the embedded model")
    group.add_argument("--dtype", default="float32", help="float32 (default), bfloat16 or float16")
    group.add_argument("--kv-blocks", type=int, default=params.NUM_KV_BLOCKS, help="KV blocks in the device pool")
    group.add_argument("--block-size", type=int, default=params.BLOCK_SIZE, help="tokens per KV block")
    group.add_argument("--swap-blocks", type=int, default=params.NUM_SWAP_BLOCKS, help="host swap space, in KV blocks")
    group.add_argument("--preemption", default="auto", choices=[m.value for m in PreemptionMode],
                       help="when memory runs out: swap the victim out, recompute it, or pick the cheaper (auto)")
    group.add_argument("--prefix-cache", action=argparse.BooleanOptionalAction, default=True,
                       help="share cached prompt blocks between processes of one tenant")
    group.add_argument("--policy", default="fcfs", choices=sorted(POLICIES), help="scheduling policy")
    group.add_argument("--max-batch-tokens", type=int, default=params.MAX_BATCH_TOKENS, help="token budget per step")
    group.add_argument("--max-seqs", type=int, default=params.MAX_SEQS, help="sequences per step")


def options_from_args(args: argparse.Namespace) -> SystemOptions:
    """``SystemOptions`` from parsed command-line arguments."""
    return SystemOptions(
        device=args.device, model=args.model, dtype=args.dtype, kv_blocks=args.kv_blocks, block_size=args.block_size,
        swap_blocks=args.swap_blocks, preemption=args.preemption, prefix_cache=args.prefix_cache,
        policy=args.policy, max_batch_tokens=args.max_batch_tokens, max_seqs=args.max_seqs,
    )


def _sim_device(options: SystemOptions) -> DeviceConfig:
    from llmos.drivers.sim import SimDriver

    return DeviceConfig("sim0", SimDriver, options.model or "sim", {}, options.kv_blocks, options.block_size)


def _cpu_device(options: SystemOptions) -> DeviceConfig:
    from functools import partial
    from pathlib import Path

    from llmos.drivers.cpu import DEFAULT_MODEL_DIR, TorchDriver, resolve_dtype

    resolve_dtype(options.dtype)  # a bad spelling is a usage error now, not a driver crash later
    if options.model in (None, "default"):
        path, name = DEFAULT_MODEL_DIR, "default"
    else:
        path = Path(options.model).expanduser()
        if not path.is_dir():
            raise ValueError(f"--model {options.model}: no such checkpoint directory")
        name = path.resolve().name
    factory = partial(TorchDriver, "cpu", options.dtype)
    return DeviceConfig("cpu0", factory, name, {"path": str(path)}, options.kv_blocks, options.block_size)


DRIVER_KINDS: dict[str, Any] = {
    "cpu": _cpu_device,
    "sim": _sim_device,
}


def build_config(options: SystemOptions) -> KernelConfig:
    """The kernel configuration for ``options``; ValueError says what is wrong."""
    if options.kv_blocks <= 0 or options.block_size <= 0:
        raise ValueError("--kv-blocks and --block-size must be positive")
    if options.swap_blocks < 0:
        raise ValueError("--swap-blocks must not be negative")
    if options.preemption not in {m.value for m in PreemptionMode}:
        raise ValueError(f"unknown preemption mode {options.preemption!r}; choose auto, swap or recompute")
    if options.max_batch_tokens <= 0 or options.max_seqs <= 0:
        raise ValueError("--max-batch-tokens and --max-seqs must be positive")
    if options.device not in DRIVER_KINDS:
        raise ValueError(f"unknown device {options.device!r}; known: {', '.join(sorted(DRIVER_KINDS))}")
    if options.policy not in POLICIES:
        raise ValueError(f"unknown policy {options.policy!r}; known: {', '.join(sorted(POLICIES))}")
    device = DRIVER_KINDS[options.device](options)
    device.num_swap_blocks = options.swap_blocks
    device.prefix_cache = options.prefix_cache
    return KernelConfig(
        devices=[device],
        policy=options.policy,
        scheduler=SchedulerConfig(options.max_batch_tokens, options.max_seqs, PreemptionMode(options.preemption)),
    )
