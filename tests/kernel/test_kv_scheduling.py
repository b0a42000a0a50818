"""The KV-cache manager inside the running kernel: fork shares blocks, the prefix cache skips
prefill within a tenant only, preemption by swap or recompute changes no output, meminfo."""

from __future__ import annotations

import pytest
import trio
from sim_fixtures import sim_config

from llmos.kernel.kernel import open_kernel
from llmos.userland import libllm


async def test_fork_8_shares_the_prompt_blocks(autojump_clock):
    config = sim_config(kv_blocks=512, block_size=16, max_batch_tokens=1024, max_seqs=16)
    async with open_kernel(config) as kernel, libllm.open_client(kernel) as llm:
        parent = await llm.spawn(prompt_ids=[7] * 512, max_tokens=1000)
        await llm.read(parent)  # prefill done, one token out
        await llm.kill(parent, "SIGSTOP")
        await trio.sleep(0.1)
        children = await llm.fork(parent, 8)
        await llm.kill(parent, "SIGKILL")  # leave only the children holding the prompt
        for child in children:
            await llm.read(child, 0)
        for child in children:
            await llm.kill(child, "SIGSTOP")
        await trio.sleep(0.1)
        own = 0
        for child in children:
            stat = await llm.stat(child)
            assert stat["accounting"]["num_recomputed_tokens"] == 0
            own += -(-(stat["prompt_tokens"] + stat["generated_tokens"]) // 16) - 512 // 16
        info = (await llm.call("meminfo"))["devices"][0]
        assert info["blocks_used"] <= 1.2 * (512 // 16) + own
        # Every child but the last holder copied the shared partial block before writing into
        # it (the last holder writes in place; which child that is depends on task order).
        assert info["cow_copies"] >= 7


async def test_prefix_cache_skips_prefill_within_a_tenant_only(autojump_clock):
    config = sim_config(kv_blocks=1024, block_size=16, max_batch_tokens=256)
    prefix = list(range(1, 1001))
    async with open_kernel(config) as kernel:
        async with libllm.open_client(kernel, tenant="alice") as alice, libllm.open_client(kernel, tenant="bob") as bob:
            first = await alice.wait(await alice.spawn(prompt_ids=prefix + [5], max_tokens=2))
            second = await alice.wait(await alice.spawn(prompt_ids=prefix + [6, 7], max_tokens=2))
            other = await bob.wait(await bob.spawn(prompt_ids=prefix + [6, 7], max_tokens=2))
    assert first.stat["accounting"]["prefix_cache_hits"] == 0
    assert second.stat["accounting"]["prefix_cache_hits"] == 992  # 62 full blocks of 16
    assert other.stat["accounting"]["prefix_cache_hits"] == 0  # another tenant never hits
    assert second.stat["ttft_s"] < first.stat["ttft_s"] / 3
    assert other.stat["ttft_s"] > 3 * second.stat["ttft_s"]


async def test_no_prefix_cache_option_turns_hits_off(autojump_clock):
    config = sim_config(kv_blocks=256, block_size=16, max_batch_tokens=256)
    config.devices[0].prefix_cache = False
    async with open_kernel(config) as kernel, libllm.open_client(kernel) as llm:
        for _ in range(2):
            result = await llm.wait(await llm.spawn(prompt_ids=list(range(1, 200)), max_tokens=1))
            assert result.stat["accounting"]["prefix_cache_hits"] == 0


async def run_crowd(mode: str, kv_blocks: int, swap_blocks: int = 4096) -> tuple[list[list[int]], dict]:
    config = sim_config(kv_blocks=kv_blocks, block_size=4, max_batch_tokens=128, max_seqs=32,
                        preemption=mode, swap_blocks=swap_blocks)
    async with open_kernel(config) as kernel, libllm.open_client(kernel) as llm:
        pids = [await llm.spawn(prompt_ids=[i % 50 + 1] * (5 + i % 23), max_tokens=20 + i % 17, seed=i)
                for i in range(64)]
        outputs = [(await llm.wait(pid)).output_ids for pid in pids]
        return outputs, (await llm.call("meminfo"))["devices"][0]


@pytest.mark.parametrize("mode", ["swap", "recompute", "auto"])
async def test_preemption_changes_no_output(autojump_clock, mode):
    roomy, roomy_info = await run_crowd(mode, kv_blocks=4096)
    tight, info = await run_crowd(mode, kv_blocks=40)
    assert roomy_info["preemptions"] == 0
    assert tight == roomy
    assert info["preemptions"] > 0
    assert info["swaps"] + info["recomputes"] == info["preemptions"]
    if mode == "swap":
        assert info["swaps"] > 0 and info["swap_bytes"] > 0
    if mode == "recompute":
        assert info["swaps"] == 0
    assert info["blocks_used"] == 0 and info["swap_used"] == 0  # everything given back


async def test_full_swap_space_falls_back_to_recompute(autojump_clock):
    roomy, _ = await run_crowd("swap", kv_blocks=4096)
    tight, info = await run_crowd("swap", kv_blocks=40, swap_blocks=8)
    assert tight == roomy
    assert info["recomputes"] > 0


async def test_blocks_change_tenant_only_after_zeroing(autojump_clock):
    config = sim_config(kv_blocks=8, block_size=4)
    async with open_kernel(config) as kernel:
        async with libllm.open_client(kernel, tenant="alice") as alice, libllm.open_client(kernel, tenant="bob") as bob:
            await alice.wait(await alice.spawn(prompt_ids=[1] * 20, max_tokens=4))
            same = (await alice.call("meminfo"))["devices"][0]["zeroed_blocks"]
            await alice.wait(await alice.spawn(prompt_ids=[2] * 20, max_tokens=4))
            assert (await alice.call("meminfo"))["devices"][0]["zeroed_blocks"] == same  # same tenant
            await bob.wait(await bob.spawn(prompt_ids=[3] * 20, max_tokens=4))
            assert (await bob.call("meminfo"))["devices"][0]["zeroed_blocks"] > same


async def test_meminfo_reports_every_figure(autojump_clock, llm):
    pid = await llm.spawn(prompt_ids=[1, 2, 3, 4, 5], max_tokens=50)
    await llm.read(pid)
    info = (await llm.call("meminfo"))["devices"][0]
    for key in ("blocks_total", "blocks_used", "blocks_cached", "blocks_free", "swap_used", "swap_total",
                "utilization", "fragmentation", "prefix_hit_rate", "preemptions", "swaps", "recomputes"):
        assert key in info
    assert info["blocks_used"] >= 2 and 0 < info["utilization"] < 1
    with pytest.raises(libllm.EINVAL):
        await llm.call("meminfo", device="x")
