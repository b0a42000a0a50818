"""Putting a system together: a kernel, its device drivers and its services.

The kernel knows drivers only as server factories; this module is where userland chooses
them (``--device sim``, or several: ``--devices cpu,npu``, ``--devices sim,sim``) and turns
command-line options into a ``KernelConfig``. Devices are named by kind and index (cpu0,
npu0, sim0, sim1); devices that serve the same model are data-parallel replicas, and the
kernel routes each new process to the least loaded of them.

Services start only when asked: ``--home PATH`` (or ``$LLMOS_HOME``; ``--home default`` for
the platform's data directory) starts the security and models services with their state in
that directory, so ``llmos model ...`` works against the kernel. With a home, the torch
drivers (cpu, npu, cuda) also swap KV blocks to encrypted files under ``home/swap`` instead of
host memory (services/swap_disk.py; each tenant's blocks under its own key, derived from the
home's master key as the security service derives it). ``model_device`` is the factory the
kernel calls to make the device of a model loaded at run time.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from llmos.kernel import params
from llmos.kernel.errors import KernelError
from llmos.kernel.kernel import DeviceConfig, KernelConfig
from llmos.kernel.policy import POLICIES
from llmos.kernel.preemption import PreemptionMode
from llmos.kernel.scheduler import SchedulerConfig

log = logging.getLogger(__name__)


@dataclass
class SystemOptions:
    """What a user can choose wherever a kernel is booted."""

    device: str = "cpu"  # driver kind of the single device: cpu (real), npu (emulated), sim (cost model)
    devices: list[str] | None = None  # several devices by driver kind (e.g. cpu, npu); overrides device
    npu: str = "phone"  # preset of every npu device (drivers/npu.py: phone, tiny)
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
    min_residency_steps: int = params.MIN_RESIDENCY_STEPS  # steps an admitted process is safe from arrivals
    home: str | None = None  # state of the security and models services; None: run no services
    model_memory: int | None = None  # bytes of weights models loaded at run time may hold per device


def add_system_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every booting command shares (boot, demo, generate, llmsh)."""
    group = parser.add_argument_group("kernel")
    group.add_argument("--device", default=None, choices=sorted(DRIVER_KINDS), help="driver of the one device (default: cpu)")
    group.add_argument("--devices", default=None, metavar="KIND,KIND,...",
                       help="several devices, e.g. cpu,npu, or sim,sim for two replicas of one model")
    group.add_argument("--npu", default="phone", metavar="PRESET",
                       help="spec of the emulated npu: phone (45 int8 TOPS, 8 GiB) or tiny (6 MiB) (default: %(default)s)")
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
    group.add_argument("--min-residency", type=int, default=params.MIN_RESIDENCY_STEPS, metavar="STEPS",
                       help="steps a newly admitted process runs before an arrival may evict it; keeps an "
                            "overloaded device from thrashing (default: %(default)s; 0: none)")
    group.add_argument("--home", default=None, metavar="PATH",
                       help="start the security and models services with their state in PATH ('default': the "
                            "platform's data directory) (default: $LLMOS_HOME; neither: no services)")
    group.add_argument("--model-memory", type=int, default=None, metavar="BYTES",
                       help="weights that models loaded at run time may hold per device; idle ones are unloaded "
                            "least recently used first (default: the device's memory, else no limit)")


def options_from_args(args: argparse.Namespace) -> SystemOptions:
    """``SystemOptions`` from parsed command-line arguments; ValueError for --device with --devices."""
    if args.device and args.devices:
        raise ValueError("give --device or --devices, not both")
    return SystemOptions(
        device=args.device or "cpu", devices=parse_devices(args.devices) if args.devices else None, npu=args.npu,
        model=args.model, dtype=args.dtype, kv_blocks=args.kv_blocks, block_size=args.block_size,
        swap_blocks=args.swap_blocks, preemption=args.preemption, prefix_cache=args.prefix_cache,
        policy=args.policy, max_batch_tokens=args.max_batch_tokens, max_seqs=args.max_seqs,
        min_residency_steps=getattr(args, "min_residency", params.MIN_RESIDENCY_STEPS),
        home=getattr(args, "home", None) or os.environ.get("LLMOS_HOME") or None,
        model_memory=getattr(args, "model_memory", None),
    )


def parse_devices(text: str) -> list[str]:
    """``"cpu,npu"`` -> ``["cpu", "npu"]``; ValueError for an empty item or an unknown kind."""
    kinds = [item.strip() for item in text.split(",")]
    for kind in kinds:
        if kind not in DRIVER_KINDS:
            raise ValueError(f"--devices {text}: unknown device kind {kind!r}; known: {', '.join(sorted(DRIVER_KINDS))}")
    return kinds


def _sim_device(options: SystemOptions, name: str) -> DeviceConfig:
    from llmos.drivers.sim import SimDriver

    return DeviceConfig(name, SimDriver, options.model or "sim", {}, options.kv_blocks, options.block_size)


def _checkpoint(options: SystemOptions) -> tuple[Any, str]:
    """The checkpoint directory of ``--model`` and the model name processes use for it."""
    from pathlib import Path

    from llmos.drivers.cpu import DEFAULT_MODEL_DIR, resolve_dtype

    resolve_dtype(options.dtype)  # a bad spelling is a usage error now, not a driver crash later
    if options.model in (None, "default"):
        return DEFAULT_MODEL_DIR, "default"
    path = Path(options.model).expanduser()
    if not path.is_dir():
        raise ValueError(f"--model {options.model}: no such checkpoint directory")
    return path, path.resolve().name


def _cpu_device(options: SystemOptions, name: str) -> DeviceConfig:
    from functools import partial

    from llmos.drivers.cpu import TorchDriver

    path, model = _checkpoint(options)
    factory = partial(TorchDriver, "cpu", options.dtype)
    return DeviceConfig(name, factory, model, {"path": str(path)}, options.kv_blocks, options.block_size)


def _npu_device(options: SystemOptions, name: str) -> DeviceConfig:
    from functools import partial

    from llmos.drivers.npu import NpuDriver, resolve_spec

    path, model = _checkpoint(options)
    resolve_spec(options.npu)  # an unknown preset is a usage error now
    factory = partial(NpuDriver, options.npu, options.dtype)
    # Its int8 weights compute other numbers than the float model: another model name, so a
    # process never lands on it by chance as a replica of the float model.
    return DeviceConfig(name, factory, f"{model}-int8", {"path": str(path)}, options.kv_blocks, options.block_size)


def _cuda_device(options: SystemOptions, name: str) -> DeviceConfig:
    from functools import partial

    from llmos.drivers.cuda import CudaDriver

    path, model = _checkpoint(options)
    dtype = options.dtype if options.dtype in ("bfloat16", "bf16", "float16", "fp16") else "bfloat16"
    return DeviceConfig(name, partial(CudaDriver, dtype), model, {"path": str(path)}, options.kv_blocks, options.block_size)


DRIVER_KINDS: dict[str, Any] = {
    "cpu": _cpu_device,
    "cuda": _cuda_device,
    "npu": _npu_device,
    "sim": _sim_device,
}
TORCH_KINDS = frozenset({"cpu", "cuda", "npu"})  # drivers with real KV blocks to swap (TorchDriver)


def swapping_to_disk(factory: Any, home: Path, device_name: str) -> Any:
    """``factory`` (of a torch driver) made to swap to encrypted files under ``home/swap``.

    Each call, a boot or the supervisor's restart, opens a fresh store: what an earlier
    instance of the device left on disk is deleted, as its handles died with it.
    """
    return partial(_open_swapping_to_disk, factory, home, device_name)


def _open_swapping_to_disk(factory: Any, home: Path, device_name: str) -> Any:
    from llmos.services.swap_disk import EncryptedDiskSwap

    driver = factory()
    try:
        # An attribute, not a constructor argument: NpuDriver and CudaDriver do not pass one on.
        driver.swap_store = EncryptedDiskSwap.open(home, device_name)
    except (KernelError, OSError) as exc:
        # Host memory keeps the blocks off the disk altogether, so confidentiality holds;
        # refusing to swap would fail processes instead. The security service reports the key.
        log.warning("device %s swaps to host memory: no encrypted swap under %s (%s)", device_name, home, exc)
    return driver


def model_device(options: SystemOptions, kind: str, name: str, model: str, path: str,
                 home: Path | None = None) -> DeviceConfig:
    """The device of a model loaded at run time (``KernelConfig.device_factory``).

    ``kind`` is that of the boot device it is loaded onto; ``path`` is the checkpoint the
    models service verified; with ``home`` (resolved) it swaps to encrypted files there.
    ValueError for a kind that cannot load checkpoints.
    """
    if kind == "sim":
        from llmos.drivers.sim import SimDriver

        config = json.loads((Path(path) / "config.json").read_text())
        vocab = config.get("vocab_size")
        load_args = {"vocab_size": vocab} if isinstance(vocab, int) and vocab >= 2 else {}
        return DeviceConfig(name, SimDriver, model, load_args, options.kv_blocks, options.block_size,
                            options.swap_blocks, options.prefix_cache)
    if kind == "cpu":
        from llmos.drivers.cpu import TorchDriver

        factory: Any = partial(TorchDriver, "cpu", options.dtype)
    elif kind == "npu":
        from llmos.drivers.npu import NpuDriver

        factory = partial(NpuDriver, options.npu, options.dtype)
    else:
        raise ValueError(f"devices of kind {kind!r} cannot load checkpoints")
    if home is not None:
        factory = swapping_to_disk(factory, home, name)
    return DeviceConfig(name, factory, model, {"path": path}, options.kv_blocks, options.block_size,
                        options.swap_blocks, options.prefix_cache)


def resolve_home(home: str) -> Path:
    """The services' state directory for ``--home``; ValueError if it cannot be used."""
    if home == "default":
        from llmos.services.home import llmos_home

        path = llmos_home()
    else:
        path = Path(home).expanduser()
    path = path.absolute()
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise ValueError(f"--home {home}: cannot create {path}: {exc.strerror}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ValueError(f"--home {home}: {path} is not writable")
    return path


def add_services(config: KernelConfig, home: Path) -> None:
    """Run the security, models and resources services on ``config``'s kernel, with state in ``home``."""
    from llmos.services.home import new_holder
    from llmos.services.models import ModelServer
    from llmos.services.resources import ResourceServer
    from llmos.services.security import SecurityServer

    security = config.link("security")
    holder = new_holder()  # this kernel's capabilities are its own, even in a shared home
    config.services["security"] = lambda: SecurityServer(home, holder=holder)
    config.services["models"] = lambda: ModelServer(home, security)
    config.services["resources"] = lambda: ResourceServer(home)


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
    if options.min_residency_steps < 0:
        raise ValueError("--min-residency must not be negative")
    kinds = options.devices or [options.device]
    for kind in kinds:
        if kind not in DRIVER_KINDS:
            raise ValueError(f"unknown device {kind!r}; known: {', '.join(sorted(DRIVER_KINDS))}")
    if options.policy not in POLICIES:
        raise ValueError(f"unknown policy {options.policy!r}; known: {', '.join(sorted(POLICIES))}")
    if options.model_memory is not None and options.model_memory <= 0:
        raise ValueError("--model-memory must be positive")
    home = resolve_home(options.home) if options.home is not None else None
    devices = []
    for index, kind in enumerate(kinds):
        device = DRIVER_KINDS[kind](options, f"{kind}{kinds[:index].count(kind)}")  # cpu0, sim0, sim1
        if home is not None and kind in TORCH_KINDS:
            device.driver = swapping_to_disk(device.driver, home, device.name)
        device.num_swap_blocks = options.swap_blocks
        device.prefix_cache = options.prefix_cache
        device.model_memory_bytes = options.model_memory
        devices.append(device)
    config = KernelConfig(
        devices=devices,
        policy=options.policy,
        scheduler=SchedulerConfig(options.max_batch_tokens, options.max_seqs, PreemptionMode(options.preemption),
                                  min_residency_steps=options.min_residency_steps),
        device_factory=partial(model_device, options, home=home),
    )
    if home is not None:
        add_services(config, home)
    return config
