"""The step batch: what the kernel asks a driver to compute in one iteration.

This is the contract between the step planner (kernel) and every driver (cpu, cuda, npu, sim).
It is plain data, so it travels as a msgpack map over IPC (``to_wire``/``from_wire``).

One batch mixes prefill chunks and decode tokens (continuous batching with chunked prefill).
For each sequence the batch carries the tokens whose KV entries are computed this step::

    positions:   0 1 2 3 4 5 6 7 8 9
    sequence:   [p p p p p p|p p p]          prompt of 9 tokens, block_size 4
    this step:              ^^^^^            chunk: token_ids = prompt[6:9], start_pos = 6
    block_table: [12, 3, 40]                 block i holds positions [4*i, 4*i+4)
    slot of position q = block_table[q // block_size] * block_size + q % block_size

A decode step for the same sequence later is ``token_ids=[last_sampled]`` with
``start_pos = context_len - 1``.
"""

from __future__ import annotations

import functools
import sys
from array import array
from dataclasses import dataclass, field
from typing import Any


# SamplingParams and SeqChunk are built for every sequence of every step, so they are slotted
# and not frozen (a frozen dataclass's __init__ costs several times more); treat them as values.
@dataclass(slots=True)
class SamplingParams:
    """How to choose the next token of one sequence.

    Sampling is stateless: the random draw for the token at ``sample_index`` is derived from
    ``(seed, sample_index)`` alone, so a process's tokens never depend on what else shares its
    batch, nor on whether it was preempted and recomputed in between.
    """

    temperature: float = 1.0  # 0.0 means greedy (argmax)
    top_k: int = 0  # keep the k most likely tokens; 0 disables
    top_p: float = 1.0  # keep the smallest set whose probability reaches top_p; 1.0 disables
    seed: int = 0  # per-process seed
    sample_index: int = 0  # index of the token being sampled among the generated tokens (0-based)

    def to_wire(self) -> list[Any]:
        return [self.temperature, self.top_k, self.top_p, self.seed, self.sample_index]

    @classmethod
    def from_wire(cls, data: list[Any]) -> SamplingParams:
        temperature, top_k, top_p, seed, sample_index = data
        return cls(float(temperature), int(top_k), float(top_p), int(seed), int(sample_index))


@dataclass(slots=True)
class SeqChunk:
    """One sequence's share of a step."""

    seq_id: int  # the process id; stable for the life of the sequence
    token_ids: list[int]  # tokens whose KV is computed this step (a prefill chunk, or 1 decode token)
    start_pos: int  # position of token_ids[0]; the context after this step is start_pos+len(token_ids)
    block_table: list[int]  # physical KV block ids covering positions [0, start_pos+len(token_ids))
    sample: bool  # True: sample a token after the last one; False for a non-final prefill chunk
    sampling: SamplingParams = field(default_factory=SamplingParams)

    @property
    def context_len(self) -> int:
        """Tokens of this sequence in the KV cache once the step is done."""
        return self.start_pos + len(self.token_ids)

    def to_wire(self) -> list[Any]:
        return [
            self.seq_id,
            self.token_ids,
            self.start_pos,
            self.block_table,
            self.sample,
            self.sampling.to_wire(),
        ]

    @classmethod
    def from_wire(cls, data: list[Any]) -> SeqChunk:
        seq_id, token_ids, start_pos, block_table, sample, sampling = data
        return cls(
            int(seq_id),
            list(token_ids),
            int(start_pos),
            list(block_table),
            bool(sample),
            SamplingParams.from_wire(sampling),
        )


@dataclass(frozen=True)
class StepBatch:
    """Everything one driver step needs: sequences in a fixed order."""

    seqs: list[SeqChunk]
    block_size: int  # tokens per KV block; equal to the driver's init_kv block_size

    @functools.cached_property
    def num_tokens(self) -> int:
        """Tokens computed this step (the token budget counts these)."""
        return sum(len(s.token_ids) for s in self.seqs)

    def to_wire(self) -> dict[str, Any]:
        return {"block_size": self.block_size, "seqs": [s.to_wire() for s in self.seqs]}

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> StepBatch:
        return cls([SeqChunk.from_wire(s) for s in data["seqs"]], int(data["block_size"]))

    def to_shape_wire(self, seq_steps: list[int] | None = None) -> dict[str, Any]:
        """The batch without token ids or block tables, for drivers that only model time.

        A sim device has no KV storage and computes nothing, so what it needs of each
        sequence is its shape. The shape travels as columns of little-endian int64, one
        binary value each (``SHAPE_COLUMNS``), so encoding costs the same for 1 sequence or 256
        and no prompt or context length shows up in the message size.
        """
        seqs = self.seqs
        columns = (
            [s.seq_id for s in seqs],
            [len(s.token_ids) for s in seqs],
            [s.start_pos for s in seqs],
            [int(s.sample) for s in seqs],
            [s.sampling.seed for s in seqs],
            [s.sampling.sample_index for s in seqs],
        )
        wire = {"block_size": self.block_size,
                "shape": {name: _int64_bytes(col) for name, col in zip(SHAPE_COLUMNS, columns, strict=True)}}
        if seq_steps is not None:
            # Multi-step: sequence i takes part in steps 0 .. seq_steps[i]-1 of the call.
            wire["seq_steps"] = _int64_bytes(seq_steps)
        return wire


SHAPE_COLUMNS = ("seq_id", "num_tokens", "start_pos", "sample", "seed", "sample_index")


def _int64_bytes(values: list[int]) -> bytes:
    packed = array("q", values)
    if sys.byteorder != "little":
        packed.byteswap()
    return packed.tobytes()


@dataclass(frozen=True)
class StepResult:
    """What a driver returns from ``step``.

    ``tokens[i]`` is the token sampled for ``batch.seqs[i]``, or None where ``sample`` was False.
    ``elapsed_s`` is the step's device time: measured on cpu/cuda, modeled on npu and sim.
    ``wall_s`` is the host's wall time, reported separately so a modeled figure is never mistaken
    for a measured one.

    A multi-step call (``num_steps`` k > 1, see ``kernel/horizon.py``) returns the first step
    as above and the k-1 decode steps after it in ``more_elapsed_s`` (each step's device time)
    and ``more_tokens``: little-endian int32, sequence-major, so sequence i's tokens of steps
    1..k-1 are ``more_tokens[4*i*(k-1) : 4*(i+1)*(k-1)]``. Bulk token data travels as one
    binary value rather than a list, so its size costs the codec nothing per token.
    """

    tokens: list[int | None]
    elapsed_s: float
    wall_s: float = 0.0
    more_elapsed_s: list[float] = field(default_factory=list)  # steps 1..k-1 of a multi-step call
    more_tokens: bytes = b""  # their sampled tokens, int32 little-endian, sequence-major

    @property
    def num_steps(self) -> int:
        """Steps this result covers."""
        return 1 + len(self.more_elapsed_s)

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {"tokens": self.tokens, "elapsed_s": self.elapsed_s, "wall_s": self.wall_s}
        if self.more_elapsed_s:
            wire.update(more_elapsed_s=self.more_elapsed_s, more_tokens=self.more_tokens)
        return wire

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> StepResult:
        more_elapsed = [float(x) for x in data.get("more_elapsed_s", ())]
        more_tokens = bytes(data.get("more_tokens", b""))
        if len(more_tokens) != 4 * len(more_elapsed) * len(data["tokens"]):
            raise ValueError(f"more_tokens has {len(more_tokens)} bytes for {len(more_elapsed)} more steps")
        return cls(list(data["tokens"]), float(data["elapsed_s"]), float(data.get("wall_s", 0.0)),
                   more_elapsed, more_tokens)
