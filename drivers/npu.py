"""The npu driver: an EMULATED int8 accelerator described by a spec, computing on the host.

There is no NPU here. The driver runs the cpu driver's engine on the host with int8 weights
(``quantize.py``), enforces the spec's memory capacity, and reports *modeled* device time::

    load_model: int8 weight bytes  <= memory_bytes                       else ENOMEM
    init_kv:    weight bytes + KV pool bytes <= memory_bytes              else ENOMEM
    step:       tokens from the host's int8 numerics (real)
                elapsed_s = max(bytes moved / bandwidth, int8 ops / int8 ops per s) + overhead
                wall_s    = the host's measured time for the same step

The time model is a small roofline over the spec, of the same form as the simulator's
(``sim/roofline.py``, written alongside) with efficiencies of 1; it could later be built from
that one. It counts what
the emulated device would move per step (the int8 weights once, the KV cache each sequence
reads, the KV entries the step writes) and compute (two ops per multiply-add of every matmul,
and attention's q.k and p.v against every key); it counts matmuls as int8 ops although the
emulation keeps activations in float (weight-only numerics), as an int8 NPU would not.

Like the sim driver, a step returns as soon as the host has computed it, and load_model's reply
says ``modeled_time``: the kernel lets the modeled time pass on its own clock (from when it sent
the step), so under MockClock a run advances by device time. It runs one step per call (no
``max_steps``: its KV cache is real storage) and takes full batches, token ids included.
Everything a user sees says ``emulated``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from llmos.kernel.args import Args
from llmos.kernel.batch import StepBatch, StepResult
from llmos.kernel.errors import KernelError

from .cpu import TorchDriver, resolve_dtype
from .engine import TorchEngine
from .quantize import QuantizedLinear, quantize_model, stored_bytes

QUANTIZATION = "int8 per-output-channel min-max (weights only)"


@dataclass(frozen=True)
class NpuSpec:
    """What the emulated device is: its throughput, memory and bandwidth."""

    name: str
    int8_ops_per_s: float  # peak int8 throughput; one multiply-add is two ops
    memory_bytes: int  # device memory: int8 weights plus the KV pool must fit in it
    bandwidth_bytes_per_s: float  # device memory bandwidth
    step_overhead_s: float  # fixed cost of one step: dispatch, synchronisation, host hand-off


PRESETS: dict[str, NpuSpec] = {
    # A 2024 phone SoC's NPU: ~45 int8 TOPS, sharing the phone's 8 GiB of LPDDR5X (~60 GB/s).
    "phone": NpuSpec("phone", 45e12, 8 << 30, 60e9, 200e-6),
    # A microcontroller-class NPU with 6 MiB of SRAM: the default model's int8 weights (~3.9 MB)
    # fit with room for about a thousand tokens of float32 KV cache, so ENOMEM is easy to reach.
    "tiny": NpuSpec("tiny", 1e12, 6 << 20, 16e9, 50e-6),
}


def resolve_spec(spec: str | NpuSpec) -> NpuSpec:
    """A preset by name, or a spec as given; ValueError lists the presets."""
    if isinstance(spec, NpuSpec):
        return spec
    try:
        return PRESETS[spec]
    except KeyError:
        raise ValueError(f"unknown npu preset {spec!r}; choose from {', '.join(PRESETS)}") from None


def _mib(num_bytes: int) -> str:
    return f"{num_bytes / (1 << 20):.2f} MiB ({num_bytes} bytes)"


@dataclass(frozen=True)
class StepCost:
    """What the roofline needs to know of the loaded model; fixed at load time."""

    weight_bytes: int  # int8 codes, scales, zeros and float norms: read once per step
    ops_per_token: float  # 2 x weights of every matmul but the head: each token goes through all
    head_ops: float  # 2 x V x C: the head runs only for the sequences that sample
    attn_ops_per_key: float  # 4 x L x nh x hs: q.k and p.v of one query against one key, all layers
    kv_bytes_per_token: int  # K and V of one token over all layers, as the pool stores them

    def modeled_s(self, spec: NpuSpec, batch: StepBatch) -> float:
        """Modeled device seconds of one step: max(memory time, compute time) + overhead."""
        if not batch.seqs:
            return 0.0
        num_keys = 0  # (query, key) pairs attention computes
        kv_read = 0  # KV bytes read: each sequence's context once (flash-style attention)
        for s in batch.seqs:
            n = len(s.token_ids)
            num_keys += n * s.start_pos + n * (n + 1) // 2  # token at position p sees p + 1 keys
            kv_read += s.context_len * self.kv_bytes_per_token
        kv_write = batch.num_tokens * self.kv_bytes_per_token
        num_sampled = sum(1 for s in batch.seqs if s.sample)
        ops = batch.num_tokens * self.ops_per_token + num_sampled * self.head_ops + num_keys * self.attn_ops_per_key
        moved = self.weight_bytes + kv_read + kv_write
        return max(moved / spec.bandwidth_bytes_per_s, ops / spec.int8_ops_per_s) + spec.step_overhead_s


class Int8Engine(TorchEngine):
    """``TorchEngine`` on the host with int8 weights and a device memory capacity to respect."""

    def __init__(self, spec: NpuSpec, dtype: torch.dtype = torch.float32) -> None:
        super().__init__("cpu", dtype)
        self.spec = spec
        self.cost: StepCost | None = None

    def load_model(self, path: str | Path) -> dict[str, Any]:
        """Load, quantize to int8, and check that the weights fit the device.

        Raises:
            KernelError: as ``TorchEngine.load_model``; ENOMEM (nothing left loaded) if the
                int8 weights exceed the spec's memory.
        """
        info = super().load_model(path)
        model = self._require_model("load_model")
        quantize_model(model)
        weight_bytes = stored_bytes(model)
        if weight_bytes > self.spec.memory_bytes:
            self.unload_model()
            raise KernelError("ENOMEM", f"load_model: the int8 weights of {path} need {_mib(weight_bytes)} but the "
                                        f"emulated npu '{self.spec.name}' has {_mib(self.spec.memory_bytes)}")
        cfg = model.cfg
        head = model.lm_head
        matmul_weights = sum(m.in_features * m.out_features for m in model.modules()
                             if isinstance(m, QuantizedLinear) and m is not head)
        self.cost = StepCost(
            weight_bytes=weight_bytes,
            ops_per_token=2.0 * matmul_weights,
            head_ops=2.0 * cfg.vocab_size * cfg.hidden_size,
            attn_ops_per_key=4.0 * cfg.num_layers * cfg.num_heads * cfg.head_dim,
            kv_bytes_per_token=info["kv_bytes_per_token"],
        )
        self.info.update(weight_bytes=weight_bytes, quantization=QUANTIZATION)
        return dict(self.info)

    def unload_model(self) -> None:
        """Drop the model, its KV pool and its cost figures."""
        super().unload_model()
        self.cost = None

    def init_kv(self, num_blocks: int, block_size: int) -> dict[str, Any]:
        """``TorchEngine.init_kv`` after checking that weights plus pool fit the device.

        Raises:
            KernelError: ENOMEM (the old pool kept) when they do not; it says what would fit.
        """
        self._require_model("init_kv")
        assert self.cost is not None  # set together with the model
        per_block = block_size * self.cost.kv_bytes_per_token
        needed = num_blocks * per_block
        free = self.spec.memory_bytes - self.cost.weight_bytes
        if needed > free:
            raise KernelError("ENOMEM", f"init_kv: {num_blocks} KV blocks of {block_size} tokens need {_mib(needed)} but "
                                        f"the emulated npu '{self.spec.name}' has {_mib(free)} free after the int8 "
                                        f"weights; at most {free // per_block} blocks fit")
        return super().init_kv(num_blocks, block_size)

    def memory_used(self) -> int:
        """Device bytes in use: int8 weights plus the KV pool."""
        weights = self.cost.weight_bytes if self.cost else 0
        return weights + (self.kv.nbytes if self.kv is not None else 0)

    def modeled_s(self, batch: StepBatch) -> float:
        """The roofline's device seconds for ``batch`` (0 with no model loaded)."""
        return self.cost.modeled_s(self.spec, batch) if self.cost else 0.0


class NpuDriver(TorchDriver):
    """The emulated npu: the cpu driver's operations over an ``Int8Engine``, with modeled time."""

    name = "npu"
    kind = "npu"
    emulated = True

    def __init__(self, spec: str | NpuSpec = "phone", dtype: str = "float32") -> None:
        super().__init__("cpu", dtype)
        self.spec = resolve_spec(spec)
        self.engine: Int8Engine = Int8Engine(self.spec, resolve_dtype(dtype))

    async def do_info(self, raw: dict[str, Any]) -> dict[str, Any]:
        """Kind, that it is emulated, its spec, memory in use and what is loaded."""
        Args("info", raw, ())
        return {"kind": self.kind, "emulated": True, "device": "npu (emulated on the host cpu)",
                "spec": asdict(self.spec), "memory_bytes": self.spec.memory_bytes,
                "memory_used_bytes": self.engine.memory_used(), "quantization": QUANTIZATION,
                "dtype": self.dtype_name, "model": self.engine.info.get("config"),
                "num_blocks": self.num_blocks, "block_size": self.block_size}

    async def do_load_model(self, raw: dict[str, Any]) -> dict[str, Any]:
        """The cpu driver's load, quantized to int8 and checked against the device's memory."""
        reply = await super().do_load_model(raw)
        reply.update(emulated=True, spec=self.spec.name, memory_bytes=self.spec.memory_bytes,
                     quantization=QUANTIZATION, modeled_time=True)  # the kernel lets elapsed_s pass
        return reply

    async def _step(self, batch: StepBatch) -> StepResult:
        started = time.perf_counter()
        host = await self.compute.run(self.engine.step, batch)
        wall = time.perf_counter() - started  # the host's work, apart from the modeled time
        return StepResult(host.tokens, self.engine.modeled_s(batch), wall)
