"""Paged equals dense: the KV cache, block tables and batching never change a sequence's tokens.

A small planner in this file plays the kernel's role: it admits prompts at staggered steps, splits
their prefill into chunks of different sizes, mixes those chunks with other sequences' decode
tokens in one step, and hands out KV blocks from a shuffled free list, so block tables are never
contiguous. Every sequence must produce the same tokens as when it runs alone, and (greedy) the
same as recomputing it from scratch with forward_dense at every token.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from model_fixtures import write_checkpoint

from llmos.drivers.engine import TorchEngine
from llmos.kernel.batch import SamplingParams, SeqChunk, StepBatch
from llmos.kernel.errors import KernelError

PROMPT_LENS = [1, 2, 9, 23, 40, 70]
NUM_NEW = 6


@dataclass
class Seq:
    """The test planner's view of one process."""

    prompt: list[int]
    chunk: int  # prefill tokens per step
    arrival: int  # first step it may run in
    sampling: SamplingParams
    table: list[int] = field(default_factory=list)
    computed: int = 0  # tokens whose KV is in the cache
    generated: list[int] = field(default_factory=list)


def run_planner(
    engine: TorchEngine, seqs: list[Seq], block_size: int, num_new: int
) -> list[list[int]]:
    """Run all sequences to ``num_new`` tokens each, batched, with chunked prefill."""
    free = list(range(engine.kv.num_blocks))  # type: ignore[union-attr]
    random.Random(7).shuffle(free)
    step_no = 0
    while any(len(s.generated) < num_new for s in seqs):
        chunks, owners = [], []
        for i, s in enumerate(seqs):
            if step_no < s.arrival or len(s.generated) >= num_new:
                continue
            if s.computed < len(s.prompt):
                tokens = s.prompt[s.computed : s.computed + s.chunk]
            else:
                tokens = [s.generated[-1]]
            end = s.computed + len(tokens)
            while len(s.table) * block_size < end:
                s.table.append(free.pop())
            sampling = dataclasses.replace(s.sampling, sample_index=len(s.generated))
            sample = end >= len(s.prompt)
            chunks.append(SeqChunk(i, tokens, s.computed, list(s.table), sample, sampling))
            owners.append(s)
        result = engine.step(StepBatch(chunks, block_size)) if chunks else None
        for s, c, tok in zip(owners, chunks, result.tokens if result else [], strict=False):
            s.computed += len(c.token_ids)
            if tok is not None:
                s.generated.append(tok)
            if len(s.generated) == num_new:
                free.extend(s.table)  # blocks go back to the pool, dirty, like a real kernel's
                s.table = []
        step_no += 1
    return [s.generated for s in seqs]


def prompts(vocab: int = 128) -> list[list[int]]:
    """Deterministic prompts of mixed lengths."""
    rng = random.Random(3)
    return [[rng.randrange(vocab) for _ in range(n)] for n in PROMPT_LENS]


def dense_greedy(engine: TorchEngine, prompt: list[int], num_new: int) -> list[int]:
    """Greedy tokens by recomputing the whole sequence without a cache at every step."""
    seq = list(prompt)
    for _ in range(num_new):
        seq.append(int(engine.forward_dense(seq)[-1].argmax()))
    return seq[len(prompt) :]


def make_engine(path: Path, block_size: int) -> TorchEngine:
    """An engine with the checkpoint loaded and just enough blocks for all PROMPT_LENS."""
    engine = TorchEngine()
    engine.load_model(path)
    need = sum(-(-(n + NUM_NEW) // block_size) for n in PROMPT_LENS)
    engine.init_kv(need + 3, block_size)
    return engine


CONFIGS = {
    "gqa": {},
    "mqa-window": {
        "architectures": ["MistralForCausalLM"],
        "num_key_value_heads": 1,
        "sliding_window": 5,
    },
}


@pytest.mark.parametrize("config", sorted(CONFIGS))
@pytest.mark.parametrize("block_size", [1, 16, 64])
def test_batched_chunked_paged_equals_alone_and_dense(
    tmp_path: Path, block_size: int, config: str
) -> None:
    write_checkpoint(tmp_path, **CONFIGS[config])
    engine = make_engine(tmp_path, block_size)
    greedy = SamplingParams(temperature=0.0)
    batched = [
        Seq(p, chunk=3 + 4 * i, arrival=i % 3, sampling=greedy) for i, p in enumerate(prompts())
    ]
    got = run_planner(engine, batched, block_size, NUM_NEW)
    for prompt, tokens in zip(prompts(), got, strict=True):
        alone = run_planner(
            engine, [Seq(prompt, chunk=10_000, arrival=0, sampling=greedy)], block_size, NUM_NEW
        )
        assert tokens == alone[0]
        assert tokens == dense_greedy(engine, prompt, NUM_NEW)


def test_random_sampling_does_not_depend_on_batch(tmp_path: Path) -> None:
    write_checkpoint(tmp_path)
    engine = make_engine(tmp_path, 16)
    params = [
        SamplingParams(temperature=1.3, top_k=50, top_p=0.9, seed=100 + i)
        for i in range(len(PROMPT_LENS))
    ]
    batched = [Seq(p, chunk=5, arrival=i, sampling=params[i]) for i, p in enumerate(prompts())]
    got = run_planner(engine, batched, 16, NUM_NEW)
    for i, prompt in enumerate(prompts()):
        alone = run_planner(
            engine, [Seq(prompt, chunk=64, arrival=0, sampling=params[i])], 16, NUM_NEW
        )
        assert got[i] == alone[0]
    assert len({tuple(t) for t in got}) > 1


def test_swap_out_and_in_to_other_blocks_then_continue(tmp_path: Path) -> None:
    write_checkpoint(tmp_path)
    engine = TorchEngine()
    engine.load_model(tmp_path)
    engine.init_kv(16, 4)
    prompt = prompts()[3]  # 23 tokens: 6 blocks, the last one partly full
    expected = dense_greedy(engine, prompt, 3)
    greedy = SamplingParams(temperature=0.0)
    table = [0, 1, 2, 3, 4, 5]
    first = engine.step(StepBatch([SeqChunk(1, prompt, 0, table, True, greedy)], 4)).tokens[0]
    host = engine.swap_out(table)
    engine.zero_blocks(table)  # the pool forgets; only the host copy remains
    new_table = [15, 9, 11, 6, 7, 8]
    engine.swap_in(new_table, host)
    second = engine.step(
        StepBatch([SeqChunk(1, [first], 23, new_table + [10], True, greedy)], 4)
    ).tokens[0]
    assert [first, second] == expected[:2]


def test_fork_shares_prefix_and_copies_last_block(tmp_path: Path) -> None:
    write_checkpoint(tmp_path)
    engine = TorchEngine()
    engine.load_model(tmp_path)
    engine.init_kv(16, 4)
    prompt = prompts()[2]  # 9 tokens: blocks 0, 1 full, block 2 holds one position
    greedy = SamplingParams(temperature=0.0)
    first = engine.step(StepBatch([SeqChunk(1, prompt, 0, [0, 1, 2], True, greedy)], 4)).tokens[0]
    engine.copy_blocks([(2, 7)])  # copy-on-write of the shared, partly filled last block
    batch = StepBatch(
        [
            SeqChunk(1, [first], 9, [0, 1, 2], True, greedy),
            SeqChunk(2, [first], 9, [0, 1, 7], True, greedy),
        ],
        4,
    )
    parent, child = engine.step(batch).tokens
    assert parent == child == dense_greedy(engine, prompt, 2)[1]


def test_step_rejects_bad_batches(tmp_path: Path) -> None:
    engine = TorchEngine()
    greedy = SamplingParams(temperature=0.0)
    ok = SeqChunk(1, [1, 2, 3], 0, [0], True, greedy)
    with pytest.raises(KernelError) as info:
        engine.step(StepBatch([ok], 4))
    assert info.value.errno == "ENOENT"
    write_checkpoint(tmp_path)
    engine.load_model(tmp_path)
    with pytest.raises(KernelError) as info:
        engine.step(StepBatch([ok], 4))
    assert info.value.errno == "EINVAL"
    engine.init_kv(4, 4)
    bad_batches = [
        StepBatch([ok], 8),  # block size differs from the pool's
        StepBatch([SeqChunk(1, [1, 2, 3, 4, 5], 0, [0], True, greedy)], 4),  # table too short
        StepBatch([SeqChunk(1, [1], 0, [4], True, greedy)], 4),  # block outside the pool
        StepBatch([SeqChunk(1, [128], 0, [0], True, greedy)], 4),  # token outside the vocabulary
        StepBatch([SeqChunk(1, [1], 0, [0], True, SamplingParams(temperature=-1.0))], 4),
        StepBatch(
            [SeqChunk(1, [1], 0, [0], True, greedy), SeqChunk(2, [1], 0, [0], True, greedy)], 4
        ),
    ]
    for batch in bad_batches:
        with pytest.raises(KernelError) as info:
            engine.step(batch)
        assert info.value.errno == "EINVAL"
    assert engine.step(StepBatch([], 4)).tokens == []
    assert engine.step(StepBatch([ok], 4)).tokens[0] is not None


def test_kv_ops_validate_block_ids(tmp_path: Path) -> None:
    write_checkpoint(tmp_path)
    engine = TorchEngine()
    engine.load_model(tmp_path)
    engine.init_kv(4, 2)
    for call in (
        lambda: engine.copy_blocks([(0, 4)]),
        lambda: engine.copy_blocks([(0, 1), (2, 1)]),
        lambda: engine.zero_blocks([-1]),
        lambda: engine.swap_out([9]),
        lambda: engine.swap_in([0], []),
        lambda: engine.swap_in([0], [torch.zeros(3)]),
    ):
        with pytest.raises(KernelError) as info:
            call()
        assert info.value.errno == "EINVAL"
