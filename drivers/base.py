"""What every driver server shares: argument checks for the DESIGN.md driver operations.

A driver is a ``Server`` whose ops are ``info``, ``load_model``, ``unload_model``, ``init_kv``,
``step``, ``copy_blocks``, ``swap_out``, ``swap_in`` and ``zero_blocks``. Subclasses implement
the ``_``-prefixed hooks; this class validates what arrives over IPC first, so a malformed batch
is an EINVAL reply, never a crash of the driver.
"""

from __future__ import annotations

from typing import Any, ClassVar

from llmos.kernel.args import Args
from llmos.kernel.batch import StepBatch
from llmos.kernel.errors import KernelError
from llmos.kernel.server import Server


class DriverServer(Server):
    """Base class of the cpu, cuda, npu and sim drivers."""

    name = "driver"
    kind: ClassVar[str] = "?"
    emulated: ClassVar[bool] = False
    blocking_ops = frozenset({"step", "load_model"})

    def __init__(self) -> None:
        self.num_blocks = 0
        self.block_size = 0

    async def do_init_kv(self, raw: dict[str, Any]) -> dict[str, Any]:
        """Allocate the KV storage: ``num_blocks`` blocks of ``block_size`` tokens."""
        a = Args("init_kv", raw, ("num_blocks", "block_size"))
        num_blocks = a.integer("num_blocks", lo=1, hi=1 << 24)
        block_size = a.integer("block_size", lo=1, hi=4096)
        await self._init_kv(num_blocks, block_size)
        self.num_blocks, self.block_size = num_blocks, block_size
        return {"num_blocks": num_blocks, "block_size": block_size}

    async def do_step(self, raw: dict[str, Any]) -> dict[str, Any]:
        """Run one batch; returns sampled tokens and the step's elapsed seconds."""
        batch = self.parse_batch(raw)
        return (await self._step(batch)).to_wire()

    async def do_copy_blocks(self, raw: dict[str, Any]) -> None:
        """Copy blocks ``src[i]`` to ``dst[i]`` (copy-on-write)."""
        a = Args("copy_blocks", raw, ("src", "dst"))
        src, dst = self._block_ids(a, "src"), self._block_ids(a, "dst")
        if len(src) != len(dst):
            raise KernelError("EINVAL", f"copy_blocks: {len(src)} sources but {len(dst)} destinations")
        await self._copy_blocks(src, dst)

    async def do_zero_blocks(self, raw: dict[str, Any]) -> None:
        """Overwrite blocks with zeros (before another tenant may read them)."""
        await self._zero_blocks(self._block_ids(Args("zero_blocks", raw, ("blocks",)), "blocks"))

    def parse_batch(self, raw: dict[str, Any]) -> StepBatch:
        """Decode and check a step batch against the KV pool this driver was given."""
        if not self.num_blocks:
            raise KernelError("EINVAL", "step: init_kv has not been called")
        try:
            batch = StepBatch.from_wire(raw)
        except (KeyError, TypeError, ValueError) as exc:
            raise KernelError("EINVAL", f"step: malformed batch ({type(exc).__name__}: {exc})") from None
        if batch.block_size != self.block_size:
            raise KernelError("EINVAL", f"step: block_size {batch.block_size} differs from init_kv's {self.block_size}")
        for seq in batch.seqs:
            if not seq.token_ids or seq.start_pos < 0:
                raise KernelError("EINVAL", f"step: sequence {seq.seq_id} has no tokens or a negative position")
            if len(seq.block_table) * self.block_size < seq.context_len:
                raise KernelError("EINVAL", f"step: sequence {seq.seq_id} has too few blocks for {seq.context_len} tokens")
            if min(seq.block_table, default=0) < 0 or max(seq.block_table, default=0) >= self.num_blocks:
                raise KernelError("EINVAL", f"step: sequence {seq.seq_id} names a block outside 0..{self.num_blocks - 1}")
        return batch

    def _block_ids(self, a: Args, name: str) -> list[int]:
        ids = a.int_list(name)
        if any(b >= self.num_blocks for b in ids):
            raise KernelError("EINVAL", f"{a.op}: block id outside 0..{self.num_blocks - 1}")
        return ids

    # -- hooks for subclasses ----------------------------------------------------------------

    async def _init_kv(self, num_blocks: int, block_size: int) -> None:
        raise NotImplementedError

    async def _step(self, batch: StepBatch) -> Any:
        raise NotImplementedError

    async def _copy_blocks(self, src: list[int], dst: list[int]) -> None:
        raise NotImplementedError

    async def _zero_blocks(self, blocks: list[int]) -> None:
        raise NotImplementedError
