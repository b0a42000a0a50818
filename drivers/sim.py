"""The sim driver: no numerics, just time. Tokens come from a seeded hash; time from a cost model.

A process run on it produces ``max_tokens`` tokens (unless a stop id is hit by chance), and each
step reports the time its cost model gives for the batch's shape (``llmos.sim.costmodel``: a
linear model by default, a roofline over a model and device spec, or a profile calibrated on a
real driver). The driver returns at once and says ``modeled_time`` in its load_model reply: the
kernel lets the modeled time pass on its own clock, so under ``MockClock`` a long workload runs
in virtual time, and in real time the device paces like the modeled one.

It takes batch shapes instead of token ids (``shape_batches``) and runs many decode steps per
call (``max_steps``, see ``kernel/horizon.py``), which is what makes a 20,000-request trace
simulate in seconds.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import numpy as np

from llmos.kernel.args import Args
from llmos.kernel.batch import SHAPE_COLUMNS, StepResult
from llmos.kernel.errors import KernelError
from llmos.sim.costmodel import CostModel, LinearCost, make_cost_model
from llmos.sim.errors import SimError

from .base import DriverServer

MAX_STEPS = 4096  # decode steps one step call may cover
_SEED_MUL = 0xD1342543DE82EF95  # odd 64-bit multiplier spreading seeds apart (Steele & Vigna)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finalizer over uint64 arrays (wrapping arithmetic)."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def sim_tokens(seeds: np.ndarray, indices: np.ndarray, vocab_size: int) -> np.ndarray:
    """Tokens sampled at ``indices`` by processes with ``seeds`` (broadcast): a pure function."""
    with np.errstate(over="ignore"):
        x = seeds.astype(np.uint64) * np.uint64(_SEED_MUL) + indices.astype(np.uint64)
        return (_splitmix64(x) % np.uint64(vocab_size)).astype(np.int64)


class SimDriver(DriverServer):
    """A device with a cost model and no weights."""

    name = "sim"
    kind = "sim"
    emulated = True
    blocking_ops = frozenset()  # a modeled step returns at once: no task per request needed

    def __init__(self) -> None:
        super().__init__()
        self.vocab_size = 32000
        self.cost: CostModel = LinearCost(0.005, 0.0001)  # until load_model names one
        self.kv_bytes_per_token = 4096  # what swap would move per token on a real device
        self._swapped: dict[int, int] = {}  # handle -> number of blocks
        self._handles = itertools.count(1)

    async def do_info(self, raw: dict[str, Any]) -> dict[str, Any]:
        """Kind, whether it is real, and its cost model."""
        Args("info", raw, ())
        return {"kind": self.kind, "emulated": True, "cost": self.cost.describe()}

    async def do_load_model(self, raw: dict[str, Any]) -> dict[str, Any]:
        """'Load' a model: its vocabulary size, KV bytes per token and the cost model.

        Args (all optional): ``cost`` a cost-model spec (``llmos.sim.costmodel``); or the linear
        model's ``step_s`` and ``token_s``; ``vocab_size``; ``kv_bytes_per_token``.
        """
        a = Args("load_model", raw, ("vocab_size", "step_s", "token_s", "cost", "kv_bytes_per_token"))
        self.vocab_size = a.integer("vocab_size", self.vocab_size, 2, 1 << 22)
        self.kv_bytes_per_token = a.integer("kv_bytes_per_token", self.kv_bytes_per_token, 1, 1 << 30)
        spec = raw.get("cost")
        if spec is not None:
            try:
                self.cost = make_cost_model(spec)
            except SimError as exc:
                raise KernelError(exc.errno, f"load_model: {exc.message}") from None
        elif "step_s" in raw or "token_s" in raw:
            self.cost = LinearCost(a.number("step_s", 0.005, 0.0, 60.0), a.number("token_s", 0.0001, 0.0, 1.0))
        return {"kind": self.kind, "emulated": True, "vocab_size": self.vocab_size, "eos_ids": [], "tokenizer": False,
                "kv_bytes_per_token": self.kv_bytes_per_token, "modeled_time": True, "max_steps": MAX_STEPS,
                "shape_batches": True, "cost": self.cost.describe()}

    async def do_unload_model(self, raw: dict[str, Any]) -> None:
        """Nothing to free."""
        Args("unload_model", raw, ())

    async def _init_kv(self, num_blocks: int, block_size: int) -> None:
        pass  # no storage: the kernel's block tables are all the sim needs

    async def do_step(self, raw: dict[str, Any]) -> dict[str, Any]:
        """Model one step, or ``num_steps`` (the step, then that many-1 decodes of all its sequences).

        Takes a full batch or a shape (``StepBatch.to_shape_wire``); returns at once.
        """
        started = time.perf_counter()
        if not self.num_blocks:
            raise KernelError("EINVAL", "step: init_kv has not been called")
        num_steps = raw.get("num_steps", 1)
        if type(num_steps) is not int or not 1 <= num_steps <= MAX_STEPS:
            raise KernelError("EINVAL", f"step: num_steps must be an integer in 1..{MAX_STEPS}")
        cols = self._parse_shape(raw) if "shape" in raw else self._columns_of(raw)
        q, start, sample = cols["num_tokens"], cols["start_pos"], cols["sample"].astype(bool)
        n = len(q)
        num_tokens = int(q.sum())
        context_tokens = int((start + q).sum())
        pairs = int((q * start + q * (q + 1) // 2).sum())
        elapsed = self.cost.step_seconds(n, num_tokens, context_tokens, pairs)
        seeds = cols["seed"].astype(np.uint64)
        indices = cols["sample_index"].astype(np.uint64)
        more_elapsed: list[float] = []
        more = b""
        if num_steps > 1:
            if not sample.all():
                raise KernelError("EINVAL", "step: num_steps > 1 needs every sequence to sample (decode) in the first step")
            more_elapsed = self._more_elapsed(raw, start + q, num_steps)
            # Every step's tokens in one pass: (seqs, steps), step 0 first.
            steps = indices[:, None] + np.arange(num_steps, dtype=np.uint64)[None, :]
            block = sim_tokens(seeds[:, None], steps, self.vocab_size)
            tokens: list[int | None] = block[:, 0].tolist()
            more = block[:, 1:].astype("<i4").tobytes()
        else:
            first = sim_tokens(seeds, indices, self.vocab_size).tolist()
            tokens = [t if s else None for t, s in zip(first, sample.tolist(), strict=True)]
        wall = time.perf_counter() - started  # the host's own work, apart from the modeled time
        return StepResult(tokens, elapsed, wall, more_elapsed, more).to_wire()

    def _more_elapsed(self, raw: dict[str, Any], contexts: np.ndarray, num_steps: int) -> list[float]:
        """Modeled seconds of decode steps 1..num_steps-1 after a first step.

        ``contexts`` are the sequences' context lengths after the first step. With a
        ``seq_steps`` column, sequence i takes part in steps 0..seq_steps[i]-1 only, so the
        batch shrinks as sequences finish; between two such ends it is constant, and each
        stretch is one ``decode_steps_seconds`` call.
        """
        n = len(contexts)
        if "seq_steps" in raw:
            steps = raw["seq_steps"]
            if not isinstance(steps, bytes) or len(steps) != 8 * n:
                raise KernelError("EINVAL", "step: seq_steps must be an int64 column, one per sequence")
            seq_steps = np.frombuffer(steps, dtype="<i8")
            if n and (seq_steps.min() < 1 or seq_steps.max() != num_steps):
                raise KernelError("EINVAL", f"step: seq_steps must be in 1..{num_steps} and reach num_steps")
        else:
            seq_steps = np.full(n, num_steps, dtype=np.int64)
        # Sequences by their step count; the sequences in steps lo..hi-1 (those with a count
        # above lo) are then a suffix, whose size and context sum come from suffix sums.
        order = np.argsort(seq_steps, kind="stable")
        counts = seq_steps[order]
        suffix_context = np.concatenate((np.cumsum(contexts[order][::-1])[::-1], [0])).tolist()
        ends = np.unique(counts[counts > 1]).tolist()
        firsts = np.searchsorted(counts, [1, *ends[:-1]], side="right").tolist()  # first index with count > lo
        elapsed: list[float] = []
        lo = 1
        for hi, first in zip(ends, firsts, strict=True):
            count = n - first
            context = suffix_context[first] + count * lo  # after step lo
            elapsed += self.cost.decode_steps_seconds(count, context, hi - lo)
            lo = hi
        return elapsed

    def _parse_shape(self, raw: dict[str, Any]) -> dict[str, np.ndarray]:
        """Check a batch shape (``StepBatch.to_shape_wire``): equal-length int64 columns."""
        if raw.get("block_size") != self.block_size:
            raise KernelError("EINVAL", f"step: block_size {raw.get('block_size')!r} differs from init_kv's {self.block_size}")
        shape = raw["shape"]
        if not isinstance(shape, dict) or set(shape) != set(SHAPE_COLUMNS) or not all(
                isinstance(v, bytes) and len(v) % 8 == 0 for v in shape.values()):
            raise KernelError("EINVAL", f"step: shape must map {', '.join(SHAPE_COLUMNS)} to int64 columns")
        if len({len(v) for v in shape.values()}) != 1:
            raise KernelError("EINVAL", "step: the shape's columns differ in length")
        table = np.frombuffer(b"".join(shape[name] for name in SHAPE_COLUMNS), dtype="<i8").reshape(len(SHAPE_COLUMNS), -1)
        cols = dict(zip(SHAPE_COLUMNS, table, strict=True))
        if table.shape[1]:
            lowest = dict(zip(SHAPE_COLUMNS, table.min(axis=1).tolist(), strict=True))  # one pass for all columns
            if lowest["num_tokens"] < 1 or min(lowest["start_pos"], lowest["seed"], lowest["sample_index"]) < 0:
                raise KernelError("EINVAL", "step: a sequence has no tokens, or a negative position, seed or index")
        return cols

    def _columns_of(self, raw: dict[str, Any]) -> dict[str, np.ndarray]:
        """A full batch's shape, as the columns ``_parse_shape`` gives."""
        batch = self.parse_batch(raw)
        rows = [(s.seq_id, len(s.token_ids), s.start_pos, int(s.sample), s.sampling.seed, s.sampling.sample_index)
                for s in batch.seqs]
        return {name: np.array([r[i] for r in rows], dtype=np.int64) for i, name in enumerate(SHAPE_COLUMNS)}

    async def do_swap_out(self, raw: dict[str, Any]) -> dict[str, Any]:
        """'Copy' blocks to host memory: a handle and the bytes a real device would move."""
        blocks = self._block_ids(Args("swap_out", raw, ("blocks", "tenant")), "blocks")
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
