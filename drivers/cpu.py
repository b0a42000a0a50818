"""The cpu driver: ``TorchEngine`` behind the driver operations, real numerics, measured time.

Compute runs on the driver's own thread (``ComputeThread``) so the kernel keeps answering syscalls
while a step runs; torch releases the GIL inside its kernels. Steps never overlap: the kernel
sends one at a time per device.

Bulk data stays here (DESIGN.md, IPC): ``swap_out`` hands the host copies to the driver's swap
store (drivers/swap_store.py: host memory by default, encrypted files under ``LLMOS_HOME/swap``
when userland/system.py gives it one) and returns a handle (a grant) that ``swap_in`` redeems.
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
from .sealed import ModelFiles, open_model_files
from .swap_store import HostMemorySwap, SwapStore

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}
DEFAULT_MODEL_DIR = Path(__file__).parent / "default_model"


def resolve_dtype(name: str) -> torch.dtype:
    """A torch dtype from a user's spelling; ValueError lists the choices."""
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; choose from {', '.join(DTYPES)}") from None


def _bos_token_id(files: ModelFiles) -> int | None:
    """The checkpoint's ``bos_token_id`` (config.json), or None if it names none."""
    try:
        value = json.loads(files.read_bytes("config.json")).get("bos_token_id")
    except (OSError, ValueError):
        return None
    return value if isinstance(value, int) else None


def _load_tokenizer(files: Any, path: str | None) -> tuple[Any, int | None]:
    """The checkpoint's tokenizer (None if it has none) and BOS token id."""
    tokenizer = None
    if path:
        from tokenizers import Tokenizer

        if files.sealed:  # decrypted in memory, never reopened from disk by path
            tokenizer = Tokenizer.from_str(files.read_bytes("tokenizer.json").decode("utf-8"))
        else:
            tokenizer = Tokenizer.from_file(path)
    return tokenizer, _bos_token_id(files)


class TorchDriver(DriverServer):
    """A torch device (``cpu`` here; the cuda driver reuses it with another device string).

    ``swap_store`` keeps the blocks of swapped-out processes (default: host memory). It is
    also a plain attribute, so whoever builds a subclass that does not pass it on (npu,
    cuda) can set it before the driver serves; it must be empty then.
    """

    name = "cpu"
    kind = "cpu"

    def __init__(self, device: str = "cpu", dtype: str = "float32", swap_store: SwapStore | None = None) -> None:
        super().__init__()
        self.engine = TorchEngine(device, resolve_dtype(dtype))
        self.dtype_name = dtype
        self.tokenizer: Any = None
        self.bos_id: int | None = None  # prepended by tokenize, as Llama tokenizers do
        self.swap_store: SwapStore = HostMemorySwap() if swap_store is None else swap_store
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
        """Load a Hugging Face-format checkpoint directory (and its tokenizer, if it has one).

        ``sealed`` comes with a version of an encrypted model store (services/models.py ``load``):
        its key and the signed manifest's sha256 of each file. Its files are then decrypted and
        checked here, in memory (drivers/sealed.py); no plaintext is written anywhere.
        """
        a = Args("load_model", raw, ("path", "sealed"))
        path = a.text("path", str(DEFAULT_MODEL_DIR), max_len=4096)
        files = open_model_files(path, raw.get("sealed"))
        info = await self.compute.run(self.engine.load_model, files)
        # Parsing a tokenizer (megabytes of JSON, decrypted first if sealed) would stall the
        # kernel's event loop: it runs on the compute thread too.
        self.tokenizer, self.bos_id = await self.compute.run(_load_tokenizer, files, info.get("tokenizer"))
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
        """Copy blocks into the swap store; returns a handle for ``swap_in`` and the KV bytes moved.

        ``tenant`` owns the blocks: a store that writes to disk encrypts under its key.
        """
        a = Args("swap_out", raw, ("blocks", "tenant"))
        blocks = self._block_ids(a, "blocks")
        tenant = a.text("tenant", max_len=256)
        handle = next(self._handles)
        moved = await self.compute.run(self._swap_out_blocks, handle, tenant, blocks)
        return {"handle": handle, "bytes": moved}

    def _swap_out_blocks(self, handle: int, tenant: str, blocks: list[int]) -> int:
        # On the compute thread: both the device copy and a disk store's write block.
        return self.swap_store.put(handle, tenant, self.engine.swap_out(blocks))

    async def do_swap_in(self, raw: dict[str, Any]) -> None:
        """Copy a swapped-out handle's blocks back into ``blocks``; the handle is consumed."""
        a = Args("swap_in", raw, ("blocks", "handle"))
        blocks = self._block_ids(a, "blocks")
        handle = a.integer("handle")
        await self.compute.run(self._swap_in_blocks, handle, blocks)

    def _swap_in_blocks(self, handle: int, blocks: list[int]) -> None:
        # The count is checked first so that a malformed request leaves the handle redeemable.
        held = self.swap_store.count(handle)
        if held != len(blocks):
            raise KernelError("EINVAL", f"swap_in: handle {handle} holds {held} blocks, not {len(blocks)}")
        self.engine.swap_in(blocks, self.swap_store.take(handle))

    async def do_swap_free(self, raw: dict[str, Any]) -> None:
        """Drop a swapped-out handle whose process ended before it was swapped back in."""
        handle = Args("swap_free", raw, ("handle",)).integer("handle")
        await self.compute.run(self.swap_store.drop, handle)

    def _require_tokenizer(self, op: str) -> Any:
        if self.tokenizer is None:
            raise KernelError("ENOSYS", f"{op}: the loaded model has no tokenizer")
        return self.tokenizer

    async def _init_kv(self, num_blocks: int, block_size: int) -> None:
        await self.compute.run(self.engine.init_kv, num_blocks, block_size)
        await self.compute.run(self.swap_store.clear)  # the swapped copies belonged to the old pool

    async def _step(self, batch: StepBatch) -> StepResult:
        return await self.compute.run(self.engine.step, batch)

    async def _copy_blocks(self, src: list[int], dst: list[int]) -> None:
        self.engine.copy_blocks(list(zip(src, dst, strict=True)))

    async def _zero_blocks(self, blocks: list[int]) -> None:
        self.engine.zero_blocks(blocks)
