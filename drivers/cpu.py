"""The cpu driver: ``TorchEngine`` behind the driver operations, real numerics, measured time.

Compute runs on the driver's own thread (``ComputeThread``) so the kernel keeps answering syscalls
while a step runs; torch releases the GIL inside its kernels. Steps never overlap: the kernel
sends one at a time per device.

Bulk data stays here (DESIGN.md, IPC): ``swap_out`` keeps the host copies and returns a handle
(a grant) that ``swap_in`` later redeems.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import torch

from llmos.kernel.args import Args
from llmos.kernel.batch import StepBatch, StepResult
from llmos.kernel.errors import KernelError

from .base import DriverServer
from .compute_thread import ComputeThread
from .engine import TorchEngine

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}
DEFAULT_MODEL_DIR = Path(__file__).parent / "default_model"


def resolve_dtype(name: str) -> torch.dtype:
    """A torch dtype from a user's spelling; ValueError lists the choices."""
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; choose from {', '.join(DTYPES)}") from None


def _bos_token_id(path: Path) -> int | None:
    """The checkpoint's ``bos_token_id`` (config.json), or None if it names none."""
    try:
        value = json.loads((path / "config.json").read_text()).get("bos_token_id")
    except (OSError, ValueError):
        return None
    return value if isinstance(value, int) else None


class TorchDriver(DriverServer):
    """A torch device (``cpu`` here; the cuda driver reuses it with another device string)."""

    name = "cpu"
    kind = "cpu"

    def __init__(self, device: str = "cpu", dtype: str = "float32") -> None:
        super().__init__()
        self.engine = TorchEngine(device, resolve_dtype(dtype))
        self.dtype_name = dtype
        self.tokenizer: Any = None
        self.bos_id: int | None = None  # prepended by tokenize, as Llama tokenizers do
        self._swapped: dict[int, list[torch.Tensor]] = {}
        self._handles = itertools.count(1)
        self.compute = ComputeThread(f"llmos-{device}")

    async def serve(self, stream: Any) -> None:
        """Serve the kernel; the compute thread is joined however the driver ends."""
        try:
            await super().serve(stream)
        finally:
            self.compute.close()

    async def do_info(self, raw: dict[str, Any]) -> dict[str, Any]:
        """Kind, device, dtype and what is loaded."""
        Args("info", raw, ())
        return {"kind": self.kind, "emulated": False, "device": str(self.engine.device), "dtype": self.dtype_name,
                "model": self.engine.info.get("config"), "num_blocks": self.num_blocks, "block_size": self.block_size}

    async def do_load_model(self, raw: dict[str, Any]) -> dict[str, Any]:
        """Load a Hugging Face-format checkpoint directory (and its tokenizer, if it has one)."""
        a = Args("load_model", raw, ("path",))
        path = a.text("path", str(DEFAULT_MODEL_DIR), max_len=4096)
        info = await self.compute.run(self.engine.load_model, path)
        self.tokenizer = None
        if info.get("tokenizer"):
            from tokenizers import Tokenizer

            self.tokenizer = Tokenizer.from_file(info["tokenizer"])
        self.bos_id = _bos_token_id(Path(path))
        self.num_blocks = 0  # the KV pool belongs to the previous model
        return {
            "kind": self.kind,
            "emulated": False,
            "vocab_size": info["vocab_size"],
            "eos_ids": info["eos_token_ids"],
            "tokenizer": self.tokenizer is not None,
            "num_params": info["num_params"],
            "weight_bytes": info["weight_bytes"],
            "kv_bytes_per_token": info["kv_bytes_per_token"],
            "dtype": self.dtype_name,
        }

    async def do_unload_model(self, raw: dict[str, Any]) -> None:
        """Free the model and its KV pool."""
        Args("unload_model", raw, ())
        self.engine.unload_model()
        self.tokenizer = None
        self.num_blocks = 0

    async def do_tokenize(self, raw: dict[str, Any]) -> dict[str, Any]:
        """Text to token ids."""
        text = Args("tokenize", raw, ("text",)).text("text")
        ids = self._require_tokenizer("tokenize").encode(text, add_special_tokens=False).ids
        # Llama-family models saw a BOS token at the start of every training document.
        return {"ids": ids if self.bos_id is None else [self.bos_id, *ids]}

    async def do_detokenize(self, raw: dict[str, Any]) -> dict[str, Any]:
        """Token ids to text."""
        ids = Args("detokenize", raw, ("ids",)).int_list("ids")
        return {"text": self._require_tokenizer("detokenize").decode(ids, skip_special_tokens=True)}

    async def do_swap_out(self, raw: dict[str, Any]) -> dict[str, Any]:
        """Copy blocks to host memory; returns a handle for ``swap_in`` and the bytes moved."""
        blocks = self._block_ids(Args("swap_out", raw, ("blocks", "tenant")), "blocks")
        tensors = await self.compute.run(self.engine.swap_out, blocks)
        handle = next(self._handles)
        self._swapped[handle] = tensors
        return {"handle": handle, "bytes": sum(t.numel() * t.element_size() for t in tensors)}

    async def do_swap_in(self, raw: dict[str, Any]) -> None:
        """Copy a swapped-out handle's blocks back into ``blocks``; the handle is consumed."""
        a = Args("swap_in", raw, ("blocks", "handle"))
        blocks = self._block_ids(a, "blocks")
        handle = a.integer("handle")
        tensors = self._swapped.get(handle)
        if tensors is None:
            raise KernelError("ENOENT", f"swap_in: no swapped-out data with handle {handle}")
        if len(tensors) != len(blocks):
            raise KernelError("EINVAL", f"swap_in: handle {handle} holds {len(tensors)} blocks, not {len(blocks)}")
        await self.compute.run(self.engine.swap_in, blocks, tensors)
        del self._swapped[handle]

    async def do_swap_free(self, raw: dict[str, Any]) -> None:
        """Drop a swapped-out handle whose process ended before it was swapped back in."""
        handle = Args("swap_free", raw, ("handle",)).integer("handle")
        if self._swapped.pop(handle, None) is None:
            raise KernelError("ENOENT", f"swap_free: no swapped-out data with handle {handle}")

    def _require_tokenizer(self, op: str) -> Any:
        if self.tokenizer is None:
            raise KernelError("ENOSYS", f"{op}: the loaded model has no tokenizer")
        return self.tokenizer

    async def _init_kv(self, num_blocks: int, block_size: int) -> None:
        await self.compute.run(self.engine.init_kv, num_blocks, block_size)
        self._swapped.clear()

    async def _step(self, batch: StepBatch) -> StepResult:
        return await self.compute.run(self.engine.step, batch)

    async def _copy_blocks(self, src: list[int], dst: list[int]) -> None:
        self.engine.copy_blocks(list(zip(src, dst, strict=True)))

    async def _zero_blocks(self, blocks: list[int]) -> None:
        self.engine.zero_blocks(blocks)
