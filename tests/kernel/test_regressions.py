"""Regressions found by review: each test is the reproduction of a bug that was fixed."""

from __future__ import annotations

import collections

import pytest
import trio
from sim_fixtures import fork_after_first_token, sim_config

from llmos.kernel import codec
from llmos.kernel.kernel import open_kernel
from llmos.kernel.process import ProcState, Signal
from llmos.kernel.rpc import RpcClient
from llmos.kernel.streams import memory_stream_pair
from llmos.userland import libllm


async def test_a_process_swapped_out_with_nearly_the_whole_pool_comes_back(autojump_clock):
    config = sim_config(kv_blocks=100, block_size=16, max_batch_tokens=1024, max_seqs=8, preemption="swap")
    async with open_kernel(config) as kernel, libllm.open_client(kernel) as llm:
        small = await llm.spawn(prompt_ids=[1], max_tokens=15, ignore_eos=True)
        big = await llm.spawn(prompt_ids=[2] * (99 * 16), max_tokens=4, ignore_eos=True)
        assert (await llm.wait(small)).finish_reason == "length"
        with trio.fail_after(600):
            assert (await llm.wait(big)).finish_reason == "length"
            assert (await llm.wait(await llm.spawn(prompt_ids=[3], max_tokens=2))).finish_reason == "length"


async def test_a_swap_handle_freed_for_a_dead_driver_fails_no_process(autojump_clock):
    config = sim_config(kv_blocks=40, block_size=4, max_batch_tokens=128, max_seqs=32, preemption="swap")
    async with open_kernel(config) as kernel, libllm.open_client(kernel) as llm:
        scheduler = kernel.devices["sim0"].scheduler
        pids = [await llm.spawn(prompt_ids=[i % 50 + 1] * (5 + i % 23), max_tokens=40, seed=i) for i in range(24)]
        swapped: list = []
        with trio.fail_after(60):
            while not swapped:
                await trio.sleep(0.001)
                swapped = [p for p in kernel.table if p.state is ProcState.SWAPPED and p.pid in scheduler._swap_handles]
        scheduler.signal(swapped[0], Signal.SIGKILL)  # queues swap_free for the current driver
        kernel.supervisor.kill("driver.sim0")  # which dies before the op is sent
        with trio.fail_after(600):
            errnos = collections.Counter([(await llm.wait(pid)).exit["errno"] for pid in pids if pid != swapped[0].pid])
        assert errnos == {None: 23}


async def test_sigterm_during_a_step_of_a_stopped_process_ends_it(autojump_clock):
    async with open_kernel(sim_config()) as kernel, libllm.open_client(kernel) as llm:
        scheduler = kernel.devices["sim0"].scheduler
        pid = await llm.spawn(prompt_ids=[1, 2, 3], max_tokens=1000)
        await llm.read(pid)
        while pid not in scheduler._in_flight:
            await trio.sleep(0.0001)
        await llm.kill(pid, "SIGSTOP")
        await llm.kill(pid, "SIGTERM")  # both while the step is on the device
        with trio.fail_after(60):  # the bug left it stopped forever
            assert (await llm.wait(pid)).exit["signal"] == "SIGTERM"


async def test_fork_over_the_process_limit_leaves_no_half_made_children(autojump_clock):
    config = sim_config()
    config.max_processes = 3
    async with open_kernel(config) as kernel, libllm.open_client(kernel) as llm:
        parent = await llm.spawn(prompt_ids=[1, 2, 3], max_tokens=50)
        await llm.read(parent)
        with pytest.raises(libllm.EAGAIN):
            await llm.fork(parent, 4)
        assert [r["pid"] for r in await llm.ps()] == [parent]


async def _follower_trial() -> None:
    kernel_end, server_end = memory_stream_pair()
    client = RpcClient(kernel_end)
    request_ids: dict[str, int] = {}
    results: dict[str, object] = {}

    async def server() -> None:
        while True:
            message = await server_end.receive()
            request_ids[message["op"]] = message["id"]

    async def caller(op: str, scopes: list | None = None) -> None:
        with trio.CancelScope() as scope:
            if scopes is not None:
                scopes.append(scope)
            results[op] = await client.call(op)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(server)
        nursery.start_soon(caller, "a")
        await trio.sleep(0.01)
        b_scopes: list = []
        nursery.start_soon(caller, "b", b_scopes)
        await trio.sleep(0.01)
        nursery.start_soon(caller, "c")
        await trio.sleep(0.01)
        b_scopes[0].cancel()
        await server_end.send(codec.make_reply(request_ids["a"], "A"))
        await trio.sleep(0.01)
        await server_end.send(codec.make_reply(request_ids["c"], "C"))
        with trio.fail_after(1):
            while "c" not in results:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()


async def test_a_cancelled_follower_passes_the_reader_turn_on(autojump_clock):
    # A reads; B and C wait. B is cancelled in the same tick that A's reply arrives and A nudges
    # B to read: C must still get its reply. trio's task order is random, so try many times.
    for _ in range(40):
        await _follower_trial()


async def test_a_prompt_chunk_of_one_token_is_not_taken_for_a_decode(autojump_clock):
    # A 2-token budget with one decoder leaves 1 token a step for the other process's prompt.
    # The planner's decode fast path took such a 1-token prompt chunk for a decode: it sent the
    # sequence's last token and sampled in the middle of the prompt, so a first token came out
    # after 2 of the 7 prompt tokens.
    config = sim_config(kv_blocks=64, block_size=4, max_batch_tokens=2, max_seqs=4)
    async with open_kernel(config) as kernel, libllm.open_client(kernel) as llm:
        scheduler = kernel.devices["sim0"].scheduler
        decoder = await llm.spawn(prompt_ids=[1], max_tokens=30, seed=1, ignore_eos=True)
        await llm.read(decoder)
        prompter = await llm.spawn(prompt_ids=list(range(11, 18)), max_tokens=5, seed=2, ignore_eos=True)
        before = scheduler.stats.num_steps
        await llm.read(prompter)
        assert scheduler.stats.num_steps - before >= 7  # one prompt token a step, then the sample
        assert len((await llm.wait(prompter)).output_ids) == 5


async def test_a_process_ended_with_enomem_while_planning_lets_the_waiting_in(autojump_clock):
    # The nice-10 process outgrows the 4-block pool after admission closed for the other one:
    # its ENOMEM frees every block, the plan has nothing to run, and the device slept forever.
    config = sim_config(policy="priority", kv_blocks=4, block_size=4, max_seqs=1, max_batch_tokens=64)
    async with open_kernel(config) as kernel, libllm.open_client(kernel, uid=0) as llm:
        grower = await llm.spawn(prompt_ids=[5] * 4, max_tokens=100, nice=10, ignore_eos=True)
        await trio.sleep(0.02)
        waiter = await llm.spawn(prompt_ids=[6] * 14, max_tokens=2, ignore_eos=True)
        with trio.fail_after(600):
            assert (await llm.wait(grower)).exit["errno"] == "ENOMEM"
            assert (await llm.wait(waiter)).finish_reason == "length"


@pytest.mark.parametrize(("preemption", "residency"), [("swap", 0), ("auto", 0), ("swap", 64)])
async def test_swapped_processes_never_hold_the_pool_while_they_wait(autojump_clock, preemption, residency):
    # A swapped process was swapped back in, then did not get its next block and kept what it
    # had while waiting; two of them held all 5 blocks with nobody running, for good.
    config = sim_config(policy="fcfs", kv_blocks=5, block_size=4, preemption=preemption, min_residency_steps=residency)
    async with open_kernel(config) as kernel, libllm.open_client(kernel, uid=0) as llm:
        start, pids = trio.current_time(), []
        for i, (at, prompt_len, max_tokens) in enumerate([(0, 4, 10), (0.01, 4, 8), (0.03, 8, 2)]):
            await trio.sleep_until(start + at)
            pids.append(await llm.spawn(prompt_ids=[7 + i] * prompt_len, max_tokens=max_tokens, seed=i, ignore_eos=True))
        with trio.fail_after(600):
            for pid in pids:
                assert (await llm.wait(pid)).finish_reason == "length"


async def test_a_swapped_process_takes_a_stopped_ones_blocks_to_come_back(autojump_clock):
    # b (nice 5) is swapped out for a; a is then stopped holding most of the pool. b's swap-in
    # did not fit and waited without reclaiming the stopped process's blocks, as admissions do.
    config = sim_config(policy="priority", kv_blocks=12, preemption="swap", min_residency_steps=0)
    async with open_kernel(config) as kernel, libllm.open_client(kernel, uid=0) as llm:
        b = await llm.spawn(prompt_ids=[6] * 20, max_tokens=20, seed=2, ignore_eos=True, nice=5)
        await trio.sleep(0.02)
        a = await llm.spawn(prompt_ids=[5] * 24, max_tokens=60, seed=1, ignore_eos=True)
        with trio.fail_after(1):
            while kernel.table.procs[b].state is not ProcState.SWAPPED:
                await trio.sleep(0.005)
        await llm.kill(a, "SIGSTOP")
        with trio.fail_after(20):
            assert (await llm.wait(b)).finish_reason == "length"


@pytest.mark.parametrize("preemption", ["swap", "recompute"])
@pytest.mark.parametrize("kv_blocks", [9, 12])
async def test_forked_children_waiting_with_shared_blocks_give_them_back_under_pressure(autojump_clock, preemption,
                                                                                         kv_blocks):
    # Six children share the parent's 8 blocks while they wait to be admitted. Once memory ran
    # short, a preempted sibling waited for blocks that only the waiting children behind it held,
    # and they waited behind it: the device hung with everyone READY or SWAPPED.
    async with open_kernel(sim_config(kv_blocks=kv_blocks, preemption=preemption)) as kernel, \
            libllm.open_client(kernel) as llm:
        parent, children = await fork_after_first_token(llm, list(range(1, 31)), 6, 6)
        with trio.fail_after(60):
            results = [await llm.wait(pid) for pid in [parent, *children]]
    assert [r.finish_reason for r in results] == ["length"] * 7
