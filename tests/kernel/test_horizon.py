"""Multi-step decoding (kernel/horizon.py) changes nothing but speed.

Each test runs the same scenario twice on the sim driver in virtual time, once planning every
step (max_steps=1) and once with multi-step runs, and compares everything a program can see:
tokens, exit statuses, and the kernel time of every token.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import trio
import trio.testing
from sim_fixtures import sim_config

from llmos.drivers.sim import sim_tokens
from llmos.kernel.kernel import open_kernel
from llmos.kernel.process import ExitReason
from llmos.userland import libllm


def run_twice(scenario, **overrides):
    """Run ``scenario(kernel, llm) -> result`` with max_steps 1 and 512; return both results."""
    results = []
    for max_steps in (1, 512):
        async def main(max_steps=max_steps):
            config = sim_config(**overrides)
            config.scheduler.max_steps = max_steps
            async with open_kernel(config) as kernel, libllm.open_client(kernel, uid=0) as llm:
                result = await scenario(kernel, llm)
                stats = kernel.devices["sim0"].scheduler.stats
                return result, stats.num_steps, stats.num_driver_calls
        results.append(trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0)))
    (one, steps_one, calls_one), (multi, steps_multi, calls_multi) = results
    assert steps_one == steps_multi
    assert calls_one == steps_one
    return one, multi, calls_multi


def timed_outputs(kernel, pids):
    """What each process produced and when: (tokens, token times, exit reason, exit time)."""
    out = {}
    for pid in pids:
        proc = kernel.table.procs[pid]
        out[pid] = (list(proc.output_ids), list(proc.token_times), proc.exit_status and proc.exit_status.reason,
                    proc.finished_at)
    return out


async def spawn_staggered(llm, lengths, gap_s):
    pids = []
    for i, (prompt_len, max_tokens) in enumerate(lengths):
        pids.append(await llm.spawn(prompt_ids=[5 + i] * prompt_len, max_tokens=max_tokens, seed=i, ignore_eos=True))
        await trio.sleep(gap_s)
    return pids


def test_arrivals_and_exits_give_identical_schedules():
    lengths = [(12, 40), (30, 7), (5, 90), (17, 33), (9, 64), (40, 3), (3, 120)]

    async def scenario(kernel, llm):
        pids = await spawn_staggered(llm, lengths, 0.037)
        await trio.sleep(5)
        return timed_outputs(kernel, pids)

    one, multi, calls = run_twice(scenario, kv_blocks=256, max_batch_tokens=64, max_seqs=8)
    assert one == multi
    assert all(len(tokens) == n for (tokens, *_), (_, n) in zip(one.values(), lengths, strict=True))


def test_signals_in_the_middle_of_a_multi_step_run():
    async def scenario(kernel, llm):
        pids = await spawn_staggered(llm, [(8, 200), (8, 200), (8, 200)], 0.0)
        await trio.sleep(0.1234)
        await llm.kill(pids[0], "SIGSTOP")
        await trio.sleep(0.05)
        await llm.kill(pids[1], "SIGKILL")
        await trio.sleep(0.0777)
        await llm.kill(pids[2], "SIGTERM")
        await trio.sleep(0.2)
        await llm.kill(pids[0], "SIGCONT")
        await trio.sleep(5)
        return timed_outputs(kernel, pids)

    one, multi, calls = run_twice(scenario, kv_blocks=256)
    assert one == multi
    tokens, *_ = one[min(one)]
    assert len(tokens) == 200  # the stopped one finished after SIGCONT


def test_multi_step_runs_cover_many_steps_per_call():
    async def scenario(kernel, llm):
        pids = await spawn_staggered(llm, [(8, 300)] * 4, 0.0)
        await trio.sleep(10)
        return timed_outputs(kernel, pids)

    one, multi, calls = run_twice(scenario, kv_blocks=512)
    assert one == multi
    # The prefill steps, then runs to the end whose length doubles from HORIZON_BUDGET_MIN
    # (8, 16, 32, 64, 128, then the rest of the 300 tokens): far fewer calls than steps.
    assert calls <= 4 + 6


def test_memory_pressure_and_preemption_give_identical_schedules():
    # 48 blocks of 4 tokens cannot hold six growing processes: preemptions, swaps, recomputes.
    async def scenario(kernel, llm):
        pids = await spawn_staggered(llm, [(10, 60)] * 6, 0.01)
        await trio.sleep(20)
        meminfo = (await llm.call("meminfo"))["devices"][0]
        return timed_outputs(kernel, pids), meminfo["preemptions"]

    (one, preemptions_one), (multi, preemptions_multi), _ = run_twice(scenario, kv_blocks=48)
    assert one == multi
    assert preemptions_one == preemptions_multi > 0


def test_processes_finishing_inside_a_multi_step_run_leave_it_at_their_step():
    # Nobody waits, so one driver call runs until the last process ends; each leaves the batch
    # at its own length, and the steps after it are modeled without it.
    lengths = [(8, 5), (8, 17), (8, 40), (8, 41), (8, 90)]

    async def scenario(kernel, llm):
        pids = await spawn_staggered(llm, lengths, 0.0)
        await trio.sleep(10)
        return timed_outputs(kernel, pids)

    one, multi, calls = run_twice(scenario, kv_blocks=512)
    assert one == multi
    for (tokens, times, _, finished_at), (_, n) in zip(one.values(), lengths, strict=True):
        assert len(tokens) == n and finished_at == times[-1]
    assert calls <= 6


@pytest.mark.parametrize("preemption", ["swap", "recompute", "auto"])
@pytest.mark.parametrize(("policy", "residency"), [("fcfs", 0), ("fcfs", 64), ("priority", 64)])
@pytest.mark.parametrize("seed", [1, 2, 5, 8])
def test_random_overloads_give_identical_schedules(seed, policy, residency, preemption):
    # Staggered arrivals with repeated prompts (prefix hits), nice values and a pool too small
    # for them: admissions blocked, preemptions, recomputes through cached blocks, exits inside
    # runs. Seeds 1 and 8 once differed in recompute mode (an exit's freed block was taken
    # before the cached one a one-step loop evicts) and with a residency (admission closed,
    # then memory freed by a preemption later in the same plan).
    r = random.Random(seed)
    requests = sorted((r.uniform(0, 0.3), r.randint(1, 40), r.randint(1, 80), r.choice([0, 0, 5, 10])) for _ in range(14))

    async def scenario(kernel, llm):
        pids = []
        start = trio.current_time()
        for i, (at, prompt_len, max_tokens, nice) in enumerate(requests):
            await trio.sleep_until(start + at)
            pids.append(await llm.spawn(prompt_ids=[3 + i % 7] * prompt_len, max_tokens=max_tokens, seed=i,
                                        ignore_eos=True, nice=nice))
        await trio.sleep(60)
        return timed_outputs(kernel, pids), kernel.devices["sim0"].scheduler.stats.num_preemptions

    (one, preemptions_one), (multi, preemptions_multi), _ = run_twice(
        scenario, policy=policy, kv_blocks=[24, 32, 48][seed % 3], max_seqs=4 + seed % 3, max_batch_tokens=32,
        preemption=preemption, min_residency_steps=residency)
    assert one == multi
    assert preemptions_one == preemptions_multi


async def spawn_script(llm, script):
    """Spawn ``(wait_s, prompt_ids, max_tokens, seed)`` in order, sleeping ``wait_s`` before each."""
    pids = []
    for wait_s, prompt_ids, max_tokens, seed in script:
        await trio.sleep(wait_s)
        pids.append(await llm.spawn(prompt_ids=prompt_ids, max_tokens=max_tokens, seed=seed, ignore_eos=True))
    return pids


def run_script_twice(script, watched, **overrides):
    """``run_twice`` of ``script`` (see spawn_script): every output, and process ``watched``'s prefix hits."""
    async def scenario(kernel, llm):
        pids = await spawn_script(llm, script)
        await trio.sleep(10)
        return timed_outputs(kernel, pids), kernel.table.procs[pids[watched]].acct.prefix_cache_hits

    (one, hits_one), (multi, hits_multi), _ = run_twice(scenario, **overrides)
    return one, multi, hits_one, hits_multi


def test_a_waiting_process_that_shares_a_prompt_just_cached_enters_at_the_next_step():
    # b's prefill caches its prompt blocks; c, with the same prompt, did not fit before them but
    # fits after through the prefix cache: a run planned over that step would keep it waiting.
    script = [(0, [5] * 13, 40, 1), (0.002, [7] * 7, 20, 2), (0, [7] * 7, 20, 3)]
    one, multi, hits_one, hits_multi = run_script_twice(script, 2, policy="fcfs", kv_blocks=7, max_seqs=8)
    assert one == multi and hits_one == hits_multi > 0


def test_blocks_are_taken_and_cached_in_a_one_step_loops_order_inside_a_run():
    # 4 blocks of 4 tokens. Inside one run, c fills and caches a block whose content the
    # cache already holds in an evictable block, while e's growth evicts a block: a one-step
    # loop takes e's block (at the step's plan) before it caches c's (at its apply), and d's
    # prefix hits later depend on which hash survived.
    first = sim_tokens(np.array([0]), np.arange(1), 32000).tolist()[0]
    script = [(0, [7] * 3, 2, 0), (0.006, [7] * 3, 3, 0), (0, [9] * 8, 3, 5), (0.05, [7, 7, 7, first, 1], 3, 9)]
    one, multi, hits_one, hits_multi = run_script_twice(script, 3, policy="fcfs", kv_blocks=4, max_seqs=8)
    assert one == multi and hits_one == hits_multi


def test_a_process_stopped_in_the_step_that_takes_its_next_block_keeps_that_block():
    # A is stopped inside its first decode step, the one that takes its 3rd block: a one-step
    # loop took that block when it planned the step, and the stopped A keeps it, which decides
    # whether the processes after it fit beside it or A is recomputed when continued.
    async def scenario(kernel, llm):
        a = await llm.spawn(prompt_ids=[5] * 8, max_tokens=6, seed=1, ignore_eos=True)
        await trio.sleep(0.008)
        await llm.kill(a, "SIGSTOP")
        b = await llm.spawn(prompt_ids=[6] * 15, max_tokens=2, seed=2, ignore_eos=True)
        await llm.wait(b)
        c = await llm.spawn(prompt_ids=[7] * 15, max_tokens=2, seed=3, ignore_eos=True)
        await trio.sleep(0.001)
        await llm.kill(a, "SIGCONT")
        await trio.sleep(5)
        return timed_outputs(kernel, [a, c]), kernel.table.procs[a].acct.num_recomputed_tokens

    (one, recomputed_one), (multi, recomputed_multi), _ = run_twice(scenario, policy="fcfs", kv_blocks=6)
    assert one == multi and recomputed_one == recomputed_multi > 0


def test_a_fork_inside_a_run_starts_the_child_from_the_steps_that_have_ended():
    # The children were built from the parent's tokens before the run's ended steps were
    # applied, and their KV after: a child had nothing left to compute, and the driver refused
    # the step, ending parent and child with EINVAL.
    async def scenario(kernel, llm):
        parent = await llm.spawn(prompt_ids=[7] * 3, max_tokens=30, seed=1, ignore_eos=True)
        await trio.sleep(0.05)
        children = await llm.fork(parent, 2)
        await trio.sleep(5)
        return timed_outputs(kernel, [parent, *children])

    one, multi, _ = run_twice(scenario)
    assert one == multi
    assert all(reason is ExitReason.LENGTH for _, _, reason, _ in multi.values())


@pytest.mark.parametrize("stop_at", [0.00522, 0.01077, 0.01151])
@pytest.mark.parametrize("how", ["stop", "stop-and-continue", "rr"])
def test_signals_inside_a_later_step_of_a_run_give_identical_schedules(stop_at, how):
    # Inside step k >= 1 of a run: a stopped process still caches the block that step filled
    # (a continuation then hits it); one stopped and continued within the step keeps its token;
    # and a stateful policy (rr) counts the stopped one as served in that step. Each differed.
    shared = sim_tokens(np.array([1]), np.arange(64), 32000).tolist()

    async def scenario(kernel, llm):
        a = await llm.spawn(prompt_ids=[5] * 6, max_tokens=40, seed=1, ignore_eos=True)
        others = [await llm.spawn(prompt_ids=[6] * 6, max_tokens=40, seed=2, ignore_eos=True)] if how == "rr" else []
        await trio.sleep(stop_at)
        await llm.kill(a, "SIGSTOP")
        if how == "stop":
            done = len(kernel.table.procs[a].output_ids)
            others.append(await llm.spawn(prompt_ids=[5] * 6 + shared[: done + 1] + [9] * 4, max_tokens=2, seed=1,
                                          ignore_eos=True))
            await trio.sleep(1)
        elif how == "rr":
            others.append(await llm.spawn(prompt_ids=[7] * 6, max_tokens=40, seed=3, ignore_eos=True))
            await trio.sleep(0.05)
        await llm.kill(a, "SIGCONT")
        await trio.sleep(3)
        pids = [a, *others]
        return timed_outputs(kernel, pids), [kernel.table.procs[p].acct.prefix_cache_hits for p in pids]

    overrides = {"policy": "rr", "max_seqs": 2} if how == "rr" else {"policy": "fcfs"}
    (one, hits_one), (multi, hits_multi), _ = run_twice(scenario, kv_blocks=64, **overrides)
    assert one == multi and hits_one == hits_multi


@pytest.mark.parametrize("kill_at", [0.01699, 0.0199, 0.02087])
def test_a_kill_inside_the_step_that_takes_a_block_frees_it_as_a_one_step_loop_does(kill_at):
    # A is killed inside a step of a run whose plan took A a new block, evicting a cached one:
    # a one-step loop took it (and evicted) before the kill freed A's blocks; the run took
    # nothing until the step was applied, so the evicted prefix survived and D hit it.
    async def scenario(kernel, llm):
        cached = [await llm.spawn(prompt_ids=[20 + i] * 8, max_tokens=1, seed=i, ignore_eos=True) for i in range(3)]
        for pid in cached:
            await llm.wait(pid)
        a = await llm.spawn(prompt_ids=[5] * 6, max_tokens=30, seed=1, ignore_eos=True)
        b = await llm.spawn(prompt_ids=[6] * 3, max_tokens=12, seed=2, ignore_eos=True)
        await trio.sleep(kill_at)
        await llm.kill(a, "SIGKILL")
        await trio.sleep(0.001)
        ds = [await llm.spawn(prompt_ids=[20 + i] * 8 + [9], max_tokens=2, seed=9, ignore_eos=True) for i in range(3)]
        await trio.sleep(3)
        pids = [a, b, *ds]
        return timed_outputs(kernel, pids), [kernel.table.procs[p].acct.prefix_cache_hits for p in pids]

    (one, hits_one), (multi, hits_multi), _ = run_twice(scenario, kv_blocks=10, policy="fcfs")
    assert one == multi and hits_one == hits_multi


def test_a_stop_token_at_any_step_of_a_run_ends_it_there():
    # Each process stops on the token it samples at index k; some of those fall on the first
    # step of a run (whose token comes with the step, not in the run's later steps).
    stop_at = [3, 9, 17, 30, 31, 50]

    async def scenario(kernel, llm):
        pids = []
        for i, k in enumerate(stop_at):
            token = int(sim_tokens(np.array([i]), np.array([k]), 32000)[0])
            pids.append(await llm.spawn(prompt_ids=[5 + i] * 8, max_tokens=100, seed=i, stop_ids=[token]))
            await trio.sleep(0.003 * i)
        await trio.sleep(10)
        return timed_outputs(kernel, pids)

    one, multi, _ = run_twice(scenario, kv_blocks=512)
    assert one == multi
    for (tokens, _, reason, _), k in zip(one.values(), stop_at, strict=True):
        assert reason is ExitReason.STOP and len(tokens) <= k + 1


@pytest.mark.parametrize("policy", ["fcfs", "rr"])
def test_a_sigterm_then_sigstop_inside_a_run_ends_the_process_at_that_step(policy):
    # SIGTERM while A is on the device leaves it pending; SIGSTOP in the same step stops it.
    # A one-step loop's apply() ends it with SIGTERM at that step's end. A run's later steps
    # used to skip the pending SIGTERM of a stopped process, so A lived on until SIGCONT.
    async def scenario(kernel, llm):
        a = await llm.spawn(prompt_ids=[5] * 8, max_tokens=200, seed=1, ignore_eos=True)
        b = await llm.spawn(prompt_ids=[6] * 8, max_tokens=200, seed=2, ignore_eos=True)
        await trio.sleep(0.1234567)
        await llm.kill(a, "SIGTERM")
        await llm.kill(a, "SIGSTOP")
        await trio.sleep(0.0500001)
        await llm.kill(a, "SIGCONT")
        await trio.sleep(5)
        return timed_outputs(kernel, [a, b])

    one, multi, _ = run_twice(scenario, policy=policy, kv_blocks=256)
    assert one == multi
    (tokens, times, reason, finished_at), _ = one.values()
    assert reason is ExitReason.SIGNAL and finished_at < 0.1234567 + 0.0500001 and len(tokens) < 200


def test_a_process_stopped_inside_a_later_step_of_a_run_is_charged_for_that_step():
    # apply() counts the step a process was stopped in (it was served); mlfq ages by that time.
    async def scenario(kernel, llm):
        a = await llm.spawn(prompt_ids=[5] * 8, max_tokens=100, seed=1, ignore_eos=True)
        await llm.spawn(prompt_ids=[6] * 8, max_tokens=100, seed=2, ignore_eos=True)
        await trio.sleep(0.1234567)
        await llm.kill(a, "SIGSTOP")
        await trio.sleep(0.05)
        await llm.kill(a, "SIGCONT")
        await trio.sleep(5)
        acct = kernel.table.procs[a].acct
        return timed_outputs(kernel, [a]), acct.num_steps, round(acct.time_running_s, 9)

    one, multi, _ = run_twice(scenario, kv_blocks=256)
    assert one == multi
