"""The sim driver: no numerics, just time. Tokens come from a seeded hash; time from a cost model.

A process run on it produces ``max_tokens`` tokens (unless a stop id is hit by chance), and the
step takes the modeled time, slept on trio's clock, so under ``MockClock`` a long workload runs in
virtual time. The first cost model is linear: a fixed per-step cost plus a per-token cost; the
simulator gives it a roofline later (DESIGN.md, Time and simulation).
"""

from __future__ import annotations

import hashlib
import itertools
import time
from typing import Any

import trio

from llmos.kernel.args import Args
from llmos.kernel.batch import SamplingParams, StepBatch, StepResult
from llmos.kernel.errors import KernelError

from .base import DriverServer


def sim_token(sampling: SamplingParams, vocab_size: int) -> int:
    """The token a simulated process samples at ``sampling.sample_index``: a pure function."""
    digest = hashlib.blake2b(f"{sampling.seed}:{sampling.sample_index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % vocab_size


class SimDriver(DriverServer):
    """A device with a linear cost model and no weights."""

    name = "sim"
    kind = "sim"
    emulated = True

    def __init__(self) -> None:
        super().__init__()
        self.vocab_size = 32000
        self.step_s = 0.005  # fixed cost of one step (kernel launch, weight read at batch 1)
        self.token_s = 0.0001  # added cost per token computed
        self.kv_bytes_per_token = 4096  # what swap would move per token on a real device
        self._swapped: dict[int, int] = {}  # handle -> number of blocks
        self._handles = itertools.count(1)

    async def do_info(self, raw: dict[str, Any]) -> dict[str, Any]:
        """Kind, whether it is real, and its cost model."""
        Args("info", raw, ())
        return {"kind": self.kind, "emulated": True, "step_s": self.step_s, "token_s": self.token_s}

    async def do_load_model(self, raw: dict[str, Any]) -> dict[str, Any]:
        """'Load' a model: only its vocabulary size and the cost model's constants."""
        a = Args("load_model", raw, ("vocab_size", "step_s", "token_s"))
        self.vocab_size = a.integer("vocab_size", self.vocab_size, 2, 1 << 22)
        self.step_s = a.number("step_s", self.step_s, 0.0, 60.0)
        self.token_s = a.number("token_s", self.token_s, 0.0, 1.0)
        return {"kind": self.kind, "emulated": True, "vocab_size": self.vocab_size, "eos_ids": [], "tokenizer": False,
                "kv_bytes_per_token": self.kv_bytes_per_token}

    async def do_unload_model(self, raw: dict[str, Any]) -> None:
        """Nothing to free."""
        Args("unload_model", raw, ())

    async def _init_kv(self, num_blocks: int, block_size: int) -> None:
        pass  # no storage: the kernel's block tables are all the sim needs

    async def _step(self, batch: StepBatch) -> StepResult:
        started = time.perf_counter()
        tokens = [sim_token(s.sampling, self.vocab_size) if s.sample else None for s in batch.seqs]
        elapsed = self.step_s + self.token_s * batch.num_tokens
        wall = time.perf_counter() - started  # the host's own work, apart from the modeled time
        await trio.sleep(elapsed)
        return StepResult(tokens, elapsed, wall)

    async def do_swap_out(self, raw: dict[str, Any]) -> dict[str, Any]:
        """'Copy' blocks to host memory: a handle and the bytes a real device would move."""
        blocks = self._block_ids(Args("swap_out", raw, ("blocks",)), "blocks")
        handle = next(self._handles)
        self._swapped[handle] = len(blocks)
        return {"handle": handle, "bytes": len(blocks) * self.block_size * self.kv_bytes_per_token}

    async def do_swap_in(self, raw: dict[str, Any]) -> None:
        """Redeem a swap-out handle into ``blocks``."""
        a = Args("swap_in", raw, ("blocks", "handle"))
        blocks = self._block_ids(a, "blocks")
        handle = a.integer("handle")
        if self._swapped.get(handle) != len(blocks):
            raise KernelError("ENOENT", f"swap_in: no swapped-out data of {len(blocks)} blocks with handle {handle}")
        del self._swapped[handle]

    async def do_swap_free(self, raw: dict[str, Any]) -> None:
        """Drop a handle that will never be swapped in."""
        handle = Args("swap_free", raw, ("handle",)).integer("handle")
        if self._swapped.pop(handle, None) is None:
            raise KernelError("ENOENT", f"swap_free: no swapped-out data with handle {handle}")

    async def _copy_blocks(self, src: list[int], dst: list[int]) -> None:
        pass

    async def _zero_blocks(self, blocks: list[int]) -> None:
        pass
