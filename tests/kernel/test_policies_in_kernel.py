"""Policies inside the running kernel, in virtual time: what each promises, end to end."""

from __future__ import annotations

import pytest
import trio
from sim_fixtures import sim_config

from llmos.kernel.kernel import open_kernel
from llmos.kernel.policy import POLICIES, BasePolicy
from llmos.userland import libllm


async def test_priority_process_enters_the_very_next_step(autojump_clock):
    config = sim_config(policy="priority", max_seqs=2, max_batch_tokens=64)
    async with open_kernel(config) as kernel, libllm.open_client(kernel) as llm:
        background = [await llm.spawn(prompt_ids=[1, 2], max_tokens=500, nice=10, seed=i) for i in range(2)]
        await llm.read(background[0])
        await llm.read(background[1])
        steps_before = kernel.devices["sim0"].scheduler.stats.num_steps
        urgent = await llm.spawn(prompt_ids=[3, 4], max_tokens=3, nice=0)
        await llm.read(urgent)
        # Its prefill ran in the first step planned after it arrived (the one in flight may finish first).
        assert kernel.devices["sim0"].scheduler.stats.num_steps - steps_before <= 2
        result = await llm.wait(urgent)
        assert result.finish_reason == "length"
        states = {p["pid"]: p["state"] for p in await llm.ps()}
        assert all(states[pid] in ("RUNNING", "READY") for pid in background)


async def test_priority_aging_ends_starvation(autojump_clock):
    config = sim_config(policy="priority", max_seqs=1, max_batch_tokens=64)
    async with open_kernel(config) as kernel, libllm.open_client(kernel) as llm:
        low = await llm.spawn(prompt_ids=[9], max_tokens=5, nice=19)
        stop = trio.Event()

        async def stream_of_important_work() -> None:
            while not stop.is_set():
                pid = await llm.spawn(prompt_ids=[1], max_tokens=20)
                await llm.wait(pid)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream_of_important_work)
            result = await llm.wait(low)  # finishes although nice-0 work never stops
            stop.set()
        assert result.finish_reason == "length"


async def test_edf_meets_every_deadline_of_a_feasible_set(autojump_clock):
    # One sequence at a time; each job needs ~12 steps of ~5 ms. Deadlines are feasible only in
    # EDF order, and arrive in the reverse order (so FCFS misses them).
    async def run(policy: str) -> list[bool]:
        config = sim_config(policy=policy, max_seqs=1, max_batch_tokens=64)
        async with open_kernel(config) as kernel, libllm.open_client(kernel) as llm:
            pids = [await llm.spawn(prompt_ids=[i + 1], max_tokens=12, deadline_s=0.07 * (4 - i)) for i in range(4)]
            met = []
            for pid in pids:
                stat = (await llm.wait(pid)).stat
                met.append(stat["finished_at"] <= stat["deadline"])
            return met

    assert await run("edf") == [True] * 4
    assert not all(await run("fcfs"))


async def test_vtc_serves_two_backlogged_tenants_evenly(autojump_clock):
    config = sim_config(policy="vtc", max_seqs=2, max_batch_tokens=16, kv_blocks=2048)
    async with open_kernel(config) as kernel:
        async with libllm.open_client(kernel, tenant="a") as a, libllm.open_client(kernel, tenant="b") as b:
            for i in range(6):
                await a.spawn(prompt_ids=[1] * 8, max_tokens=400, seed=i)
            await b.spawn(prompt_ids=[1] * 8, max_tokens=400, seed=99)
            await trio.sleep(2.0)
            served = {"a": 0, "b": 0}
            for row in await a.ps():
                served[row["tenant"]] += row["generated_tokens"]
            # Tenant a has six processes, b one; fair share gives them about the same service.
            assert abs(served["a"] - served["b"]) <= 0.1 * max(served.values()), served


async def test_decodes_keep_their_tokens_while_a_more_important_prompt_prefills(autojump_clock):
    # Budget 16 tokens a step: the urgent 200-token prompt is chunked over many steps, and the
    # two lower-ranked decoders still get their token in each of them (stall-free batching).
    config = sim_config(policy="priority", max_seqs=3, max_batch_tokens=16, kv_blocks=256)
    async with open_kernel(config) as kernel, libllm.open_client(kernel, uid=0) as llm:
        background = [await llm.spawn(prompt_ids=[1, 2], max_tokens=500, nice=10, seed=i) for i in range(2)]
        for pid in background:
            await llm.read(pid)
        urgent = await llm.spawn(prompt_ids=[3] * 200, max_tokens=2, nice=-5)
        before = {pid: (await llm.stat(pid))["generated_tokens"] for pid in background}
        steps_before = kernel.devices["sim0"].scheduler.stats.num_steps
        await trio.sleep(0.03)
        assert (await llm.stat(urgent))["generated_tokens"] == 0  # still prefilling
        steps = kernel.devices["sim0"].scheduler.stats.num_steps - steps_before
        for pid in background:
            assert (await llm.stat(pid))["generated_tokens"] - before[pid] >= steps - 1


@pytest.mark.parametrize("max_seqs", [1, 4])
@pytest.mark.parametrize("residency", [0, 8])
async def test_an_arrival_preempts_only_processes_that_have_run_their_residency(autojump_clock, residency, max_seqs):
    # 16 blocks of 4 tokens: the background process holds 11 when the urgent one arrives needing 6
    # of the 5 free. With 4 sequences a step the background decode is planned into the batch
    # before the urgent prefill (decodes first): it is taken out again, not waited for.
    config = sim_config(policy="priority", kv_blocks=16, max_seqs=max_seqs, max_batch_tokens=64,
                        min_residency_steps=residency)
    async with open_kernel(config) as kernel, libllm.open_client(kernel, uid=0) as llm:
        background = await llm.spawn(prompt_ids=[1] * 40, max_tokens=20, nice=10)
        await llm.read(background)  # admitted: its prefill sampled a token
        urgent = await llm.spawn(prompt_ids=[2] * 24, max_tokens=2, nice=-5)
        await llm.read(urgent)
        generated = (await llm.stat(background))["generated_tokens"]
        # Without a residency it is evicted at once; with one, after `residency` steps of its own.
        assert residency <= generated <= residency + 2
        assert (await llm.wait(urgent)).finish_reason == "length"
        result = await llm.wait(background)
        assert result.finish_reason == "length" and result.stat["accounting"]["num_preemptions"] == 1


class _Polite(BasePolicy):
    """Newest first, and a newcomer waits for memory rather than evict anyone."""

    name = "polite"

    def rank(self, procs, now):
        return sorted(procs, key=lambda p: (-p.created_at, -p.pid))

    def may_preempt(self, proc):
        return False


async def test_a_process_its_policy_forbids_to_preempt_waits_for_memory(autojump_clock, monkeypatch):
    monkeypatch.setitem(POLICIES, "polite", _Polite)
    # No residency: the policy alone keeps the newcomer from evicting.
    config = sim_config(policy="polite", kv_blocks=16, max_seqs=1, max_batch_tokens=64, min_residency_steps=0)
    async with open_kernel(config) as kernel, libllm.open_client(kernel, uid=0) as llm:
        background = await llm.spawn(prompt_ids=[1] * 40, max_tokens=20)
        await llm.read(background)
        newcomer = await llm.spawn(prompt_ids=[2] * 24, max_tokens=2)  # ranks first, does not fit
        first = await llm.wait(background)
        second = await llm.wait(newcomer)
        assert first.stat["accounting"]["num_preemptions"] == 0 and first.stat["generated_tokens"] == 20
        assert second.stat["started_at"] >= first.stat["finished_at"]
