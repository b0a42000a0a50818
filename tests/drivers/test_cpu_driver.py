"""The cpu driver under a real kernel: processes batched by the scheduler give the tokens each
prompt gives alone, preemption under a tiny KV pool changes nothing, and errors are clean."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
from model_fixtures import write_checkpoint

from llmos.drivers.cpu import TorchDriver
from llmos.drivers.engine import TorchEngine
from llmos.kernel.kernel import DeviceConfig, KernelConfig, open_kernel
from llmos.kernel.preemption import PreemptionMode
from llmos.kernel.scheduler import SchedulerConfig
from llmos.userland import libllm

PROMPTS = [[3, 1, 4, 1, 5, 9, 2, 6], [2, 7], [1, 8, 2, 8, 1, 8, 2, 8, 4, 5, 9, 0, 4, 5, 2, 3, 5, 3], [11]]


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    write_checkpoint(tmp_path / "tiny")
    return tmp_path / "tiny"


def config(path: Path, num_blocks: int, block_size: int = 4, max_batch_tokens: int = 16) -> KernelConfig:
    device = DeviceConfig("cpu0", partial(TorchDriver, "cpu"), "tiny", {"path": str(path)}, num_blocks, block_size)
    return KernelConfig(devices=[device], scheduler=SchedulerConfig(max_batch_tokens=max_batch_tokens, max_seqs=8))


def greedy_alone(path: Path, prompt: list[int], num_new: int) -> list[int]:
    engine = TorchEngine()
    engine.load_model(path)
    ids = list(prompt)
    for _ in range(num_new):
        ids.append(int(engine.forward_dense(ids)[-1].argmax()))
    return ids[len(prompt):]


async def run_all(path: Path, num_blocks: int) -> tuple[list[list[int]], dict]:
    async with open_kernel(config(path, num_blocks)) as kernel, libllm.open_client(kernel) as llm:
        pids = [await llm.spawn(prompt_ids=p, max_tokens=10, temperature=0) for p in PROMPTS]
        outputs = [(await llm.wait(pid)).output_ids for pid in pids]
        return outputs, (await llm.uname())["devices"][0]


async def test_batched_processes_match_each_prompt_alone(checkpoint):
    outputs, device = await run_all(checkpoint, num_blocks=64)
    assert outputs == [greedy_alone(checkpoint, p, 10) for p in PROMPTS]
    assert device["kind"] == "cpu" and not device["emulated"]


async def test_preemption_in_a_tiny_pool_changes_no_output(checkpoint):
    roomy, _ = await run_all(checkpoint, num_blocks=64)
    tight, device = await run_all(checkpoint, num_blocks=9)  # 36 tokens for ~80 wanted
    assert device["preemptions"] > 0
    assert tight == roomy


async def test_prompt_larger_than_the_pool_is_enomem_and_others_finish(checkpoint):
    async with open_kernel(config(checkpoint, num_blocks=4)) as kernel, libllm.open_client(kernel) as llm:
        big = await llm.spawn(prompt_ids=list(range(40)), max_tokens=2)
        small = await llm.spawn(prompt_ids=[1, 2], max_tokens=3)
        result = await llm.wait(big)
        assert result.exit["errno"] == "ENOMEM" and "KV blocks" in result.exit["message"]
        assert (await llm.wait(small)).finish_reason == "length"


async def test_text_prompt_without_tokenizer_is_einval(checkpoint):
    async with open_kernel(config(checkpoint, num_blocks=16)) as kernel, libllm.open_client(kernel) as llm:
        with pytest.raises(libllm.EINVAL, match="no tokenizer"):
            await llm.spawn("hello")
        with pytest.raises(libllm.EINVAL, match="outside the vocabulary"):
            await llm.spawn(prompt_ids=[128])


@pytest.mark.parametrize("mode", ["swap", "recompute"])
async def test_64_processes_in_a_pool_far_too_small(checkpoint, mode):
    prompts = [[(7 * i + j) % 120 + 1 for j in range(3 + i % 13)] for i in range(64)]

    async def run(num_blocks: int) -> tuple[list[list[int]], dict]:
        cfg = config(checkpoint, num_blocks, max_batch_tokens=96)
        cfg.scheduler.max_seqs = 32
        cfg.scheduler.preemption = PreemptionMode(mode)
        async with open_kernel(cfg) as kernel, libllm.open_client(kernel) as llm:
            pids = [await llm.spawn(prompt_ids=p, max_tokens=12, temperature=0.7, seed=i) for i, p in enumerate(prompts)]
            outputs = [(await llm.wait(pid)).output_ids for pid in pids]
            return outputs, (await llm.call("meminfo"))["devices"][0]

    unlimited, _ = await run(num_blocks=1024)
    tight, info = await run(num_blocks=24)  # 96 token slots for 64 processes wanting ~800
    print(f"\n{mode}: preemptions {info['preemptions']}, swaps {info['swaps']}, "
          f"recomputes {info['recomputes']}, swap bytes {info['swap_bytes']}")
    assert tight == unlimited
    assert info["preemptions"] > 10
    assert (info["swaps"] if mode == "swap" else info["recomputes"]) == info["preemptions"]
