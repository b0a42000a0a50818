"""Tenant quotas enforced by the kernel, through libllm, on the sim driver in virtual time."""

from __future__ import annotations

import random

import pytest
import trio
from sim_fixtures import fork_after_first_token, open_system

from llmos.kernel.kernel import Kernel
from llmos.services import securefiles
from llmos.userland import libllm


@pytest.fixture(autouse=True)
def no_fsync(monkeypatch):
    monkeypatch.setattr(securefiles, "SYNC", False)




async def test_quota_syscalls_are_enosys_without_the_resources_service(autojump_clock, root):
    for op, args in [("quota_set", {"tenant": "a", "processes": 1}), ("quota_get", {"tenant": "a"}),
                     ("quota_list", {}), ("usage", {})]:
        with pytest.raises(libllm.ENOSYS) as err:
            await root.call(op, **args)
        assert "no 'resources' service" in err.value.message and "--home" in err.value.message


async def test_only_uid_0_may_set_quotas(autojump_clock, tmp_path):
    async with open_system(tmp_path) as (kernel, root):
        async with libllm.open_client(kernel, uid=1000, tenant="alice") as alice:
            with pytest.raises(libllm.EPERM):
                await alice.quota_set("alice", processes=100)
            with pytest.raises(libllm.ENOENT):
                await alice.quota_get()
            await root.quota_set("alice", processes=3)
            assert (await alice.quota_get())["processes"] == 3
            with pytest.raises(libllm.EPERM):
                await alice.usage("bob")


async def test_over_the_process_quota_a_spawn_is_refused_with_eagain(autojump_clock, tmp_path):
    async with open_system(tmp_path) as (kernel, root):
        await root.quota_set("alice", processes=2)
        async with libllm.open_client(kernel, uid=1000, tenant="alice") as alice, \
                libllm.open_client(kernel, uid=1001, tenant="bob") as bob:
            pids = [await alice.spawn(prompt_ids=[1, 2, 3], max_tokens=50) for _ in range(2)]
            with pytest.raises(libllm.EAGAIN) as err:
                await alice.spawn(prompt_ids=[1, 2, 3], max_tokens=5)
            assert "'alice'" in err.value.message and "quota of 2 processes" in err.value.message
            assert "2 live" in err.value.message
            with pytest.raises(libllm.EAGAIN):
                await alice.fork(pids[0], 1)
            await bob.spawn(prompt_ids=[1, 2, 3], max_tokens=5)  # another tenant is not limited
            await alice.wait(pids[0])
            await alice.spawn(prompt_ids=[1, 2, 3], max_tokens=5)  # room again
            usage = await root.usage("alice")
            assert usage["tenants"][0]["quota"]["processes"] == 2
            assert usage["devices"][0]["name"] == "sim0"


async def test_over_quota_queue_mode_holds_the_spawn_until_it_fits(autojump_clock, tmp_path):
    async with open_system(tmp_path) as (kernel, root):
        await root.quota_set("alice", processes=1, over_quota="queue")
        async with libllm.open_client(kernel, uid=1000, tenant="alice") as alice:
            first = await alice.spawn(prompt_ids=[1, 2, 3], max_tokens=20)
            second = await alice.spawn(prompt_ids=[1, 2, 3], max_tokens=20)
            assert (await alice.stat(second))["state"] == "NEW"
            assert (await alice.usage())["tenants"][0]["held"] == 1
            done_first = await alice.wait(first)
            done_second = await alice.wait(second)
            assert len(done_second.output_ids) == 20
            assert done_second.stat["started_at"] >= done_first.stat["finished_at"]


async def test_kv_block_quota_refuses_a_spawn_once_the_tenant_holds_its_quota(autojump_clock, tmp_path):
    async with open_system(tmp_path) as (kernel, root):  # blocks of 4 tokens
        await root.quota_set("alice", kv_blocks=8)
        async with libllm.open_client(kernel, uid=1000, tenant="alice") as alice:
            pid = await alice.spawn(prompt_ids=list(range(1, 17)), max_tokens=16)  # up to 32 tokens: 8 blocks
            offset = 0
            while offset < 14:  # 30 tokens: its 8th block is in use
                offset = (await alice.read(pid, offset)).offset
            await alice.kill(pid, "SIGSTOP")  # a stopped process keeps its blocks
            assert (await alice.stat(pid))["kv_blocks"] == 8
            with pytest.raises(libllm.EAGAIN) as err:
                await alice.spawn(prompt_ids=[1, 2, 3], max_tokens=5)
            assert "'alice'" in err.value.message and "quota is 8" in err.value.message


async def _throughput(kernel: Kernel, tenant: str, pids: list[int], since: float, until: float) -> float:
    tokens = sum(sum(1 for t in kernel.table.procs[pid].token_times if since <= t < until) for pid in pids)
    return tokens / (until - since)


async def test_a_token_rate_limits_its_tenant_and_leaves_others_alone(autojump_clock, tmp_path):
    rate, span = 10.0, 60.0

    async def run(limited: bool) -> tuple[float, float]:
        # Room for every process to keep its KV, so that the figures measure the rate alone.
        async with open_system(tmp_path / str(limited), kv_blocks=8192) as (kernel, root):
            if limited:
                await root.quota_set("alice", tokens_per_s=rate, burst=8)
            async with libllm.open_client(kernel, uid=1000, tenant="alice") as alice, \
                    libllm.open_client(kernel, uid=1001, tenant="bob") as bob:
                start = kernel.now()
                a = [await alice.spawn(prompt_ids=[1, 2, 3], max_tokens=4000, ignore_eos=True) for _ in range(3)]
                b = [await bob.spawn(prompt_ids=[1, 2, 3], max_tokens=4000, ignore_eos=True) for _ in range(3)]
                await trio.sleep(span)
                result = (await _throughput(kernel, "alice", a, start + 5, start + span),
                          await _throughput(kernel, "bob", b, start + 5, start + span))
                usage = await root.usage()
                assert {t["tenant"] for t in usage["tenants"]} >= {"alice", "bob"}
                return result

    alice_free, bob_alone = await run(False)
    alice_limited, bob_beside = await run(True)
    print(f"alice limited to {rate}/s: {alice_limited:.2f} tok/s (unlimited {alice_free:.1f}); "
          f"bob {bob_beside:.1f} tok/s beside it, {bob_alone:.1f} beside an unlimited alice")
    assert abs(alice_limited - rate) <= 0.1 * rate
    assert alice_free > 3 * rate
    assert bob_beside >= 0.9 * bob_alone


async def test_a_kv_quota_holds_while_processes_grow_and_costs_other_tenants_nothing(autojump_clock, tmp_path):
    async with open_system(tmp_path, kv_blocks=256) as (kernel, root):  # blocks of 4 tokens
        await root.quota_set("alice", kv_blocks=20)
        async with libllm.open_client(kernel, uid=1000, tenant="alice") as alice, \
                libllm.open_client(kernel, uid=1001, tenant="bob") as bob:
            # Each of alice's grows to 16 + 48 = 64 tokens, 16 blocks: two need 32 > 20.
            mine = [await alice.spawn(prompt_ids=[7, i, 3, 4] * 4, max_tokens=48, ignore_eos=True) for i in range(2)]
            theirs = [await bob.spawn(prompt_ids=[9, i, 3, 4] * 4, max_tokens=48, ignore_eos=True) for i in range(2)]
            peak = {"alice": 0, "bob": 0}
            while any(kernel.table.procs[p].alive for p in mine + theirs):
                for tenant in peak:
                    peak[tenant] = max(peak[tenant], kernel.quotas.use(tenant)[1])
                await trio.sleep(0.001)
            results = [await alice.wait(p) for p in mine] + [await bob.wait(p) for p in theirs]
    assert all(r.exit["reason"] == "length" and len(r.output_ids) == 48 for r in results)
    assert peak["alice"] <= 20 < 2 * 16 and peak["bob"] == 32  # bob, without a quota, took what he needed
    assert sum(r.stat["accounting"]["num_preemptions"] for r in results[:2]) > 0
    assert sum(r.stat["accounting"]["num_preemptions"] for r in results[2:]) == 0


async def test_a_process_that_alone_outgrows_its_tenants_kv_quota_ends_with_enomem(autojump_clock, tmp_path):
    async with open_system(tmp_path) as (kernel, root):
        await root.quota_set("alice", kv_blocks=6)
        async with libllm.open_client(kernel, uid=1000, tenant="alice") as alice:
            pid = await alice.spawn(prompt_ids=list(range(1, 17)), max_tokens=100, ignore_eos=True)
            result = await alice.wait(pid)
    assert result.exit["errno"] == "ENOMEM" and "quota of 6" in result.exit["message"]
    assert len(result.output_ids) == 24 - 16 + 1  # it ran until position 24 needed a 7th block


async def test_blocks_shared_by_fork_count_once_against_the_kv_quota(autojump_clock, tmp_path):
    async with open_system(tmp_path, kv_blocks=256) as (kernel, root):
        await root.quota_set("alice", kv_blocks=24)
        async with libllm.open_client(kernel, uid=1000, tenant="alice") as alice:
            pid, kids = await fork_after_first_token(alice, list(range(1, 33)), 12, 2)  # 8 blocks
            assert kernel.quotas.use("alice")[1] <= 9  # the parent's blocks, not three copies of them
            results = [await alice.wait(p) for p in [pid, *kids]]
    # 8 shared blocks + each one's own growth (12 tokens: 3 blocks) fit in 24: nobody waits.
    assert all(r.exit["reason"] == "length" for r in results)
    assert sum(r.stat["accounting"]["num_preemptions"] for r in results) == 0


async def test_copies_of_forked_blocks_count_against_the_kv_quota(autojump_clock, tmp_path):
    # Each child writes into the partial block it shares with the others and gets its own copy:
    # those copies took the tenant to 14 blocks of a 10-block quota.
    async with open_system(tmp_path, kv_blocks=256) as (kernel, root):  # blocks of 4 tokens
        await root.quota_set("alice", kv_blocks=10)
        async with libllm.open_client(kernel, uid=1000, tenant="alice") as alice:
            pid, kids = await fork_after_first_token(alice, list(range(1, 31)), 6, 6)  # 8 blocks
            peak = 0

            async def watch() -> None:
                nonlocal peak
                while True:
                    peak = max(peak, kernel.quotas.use("alice")[1])
                    await trio.sleep(0.0005)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch)
                with trio.fail_after(60):
                    results = [await alice.wait(p) for p in [pid, *kids]]
                nursery.cancel_scope.cancel()
    assert peak <= 10
    assert all(r.exit["reason"] == "length" for r in results)


async def test_a_prompt_larger_than_its_tenants_kv_quota_ends_with_enomem_not_a_wait(autojump_clock, tmp_path):
    async with open_system(tmp_path) as (kernel, root):
        await root.quota_set("alice", kv_blocks=2)
        async with libllm.open_client(kernel, uid=1000, tenant="alice") as alice:
            big = await alice.spawn(prompt_ids=list(range(1, 17)), max_tokens=5)  # 4 blocks > 2
            small = await alice.spawn(prompt_ids=[1, 2, 3], max_tokens=4)  # 2 blocks: fits
            with trio.fail_after(60):
                result, fits = await alice.wait(big), await alice.wait(small)
    assert result.exit["errno"] == "ENOMEM" and "quota of 2" in result.exit["message"]
    assert fits.exit["reason"] == "length"


async def test_a_throttled_tenants_blocks_go_to_a_process_that_may_run(autojump_clock, tmp_path):
    async with open_system(tmp_path, kv_blocks=24) as (kernel, root):  # blocks of 4 tokens
        await root.quota_set("alice", tokens_per_s=1.0, burst=1)
        async with libllm.open_client(kernel, uid=1000, tenant="alice") as alice, \
                libllm.open_client(kernel, uid=1001, tenant="bob") as bob:
            slow = await alice.spawn(prompt_ids=list(range(1, 65)), max_tokens=1000, ignore_eos=True)  # 16+ blocks
            await trio.sleep(5.0)  # admitted first, then throttled to a token a second
            started = kernel.now()
            fast = await bob.spawn(prompt_ids=list(range(1, 33)), max_tokens=16, ignore_eos=True)  # 12 blocks
            result = await bob.wait(fast)
            assert kernel.table.procs[slow].acct.num_preemptions >= 1
            await alice.kill(slow, "SIGKILL")
    # Without preempting the throttled process, bob would wait ~1,000 s for alice's to finish.
    assert result.exit["reason"] == "length" and result.stat["finished_at"] - started < 5.0


async def test_killing_the_resources_service_100_times_loses_no_quota_and_no_process(autojump_clock, tmp_path):
    kills = 100
    async with open_system(tmp_path, kv_blocks=8192) as (kernel, root):
        for index, tenant in enumerate(("alice", "bob", "carol")):
            await root.quota_set(tenant, processes=50 + index, kv_blocks=4000 + index)
        quotas = await root.quota_list()
        before = kernel.supervisor.restarts()["resources"]
        done = trio.Event()
        survived = {"quota_list": 0, "quota_get": 0, "quota_set": 0, "usage": 0}

        async def kill_resources() -> None:
            rng = random.Random(0)
            for _ in range(kills):
                await kernel.names.wait_ready("resources")
                await trio.sleep(rng.uniform(0.0, 0.3))
                kernel.supervisor.kill("resources")
            done.set()

        async def use_quotas() -> None:
            while not done.is_set():
                assert await root.quota_list() == quotas
                assert (await root.quota_get("bob"))["processes"] == 51
                await root.quota_set("carol", processes=52)  # the same value again: no change
                await root.usage()
                for op in survived:
                    survived[op] += 1
                await trio.sleep(0.1)

        async with libllm.open_client(kernel, uid=1000, tenant="alice") as alice:
            pids = []
            async with trio.open_nursery() as nursery:
                nursery.start_soon(kill_resources)
                nursery.start_soon(use_quotas)
                for i in range(30):
                    pids.append(await alice.spawn(prompt_ids=[1, 2, 3 + i], max_tokens=50, ignore_eos=True, seed=i))
                    await trio.sleep(1.0)
            outputs = [(await alice.wait(pid)).output_ids for pid in pids]
        print(f"\nresources fault injection: injected={kills} survived={kernel.supervisor.restarts()['resources'] - before} "
              f"calls={sum(survived.values())}")
        assert kernel.supervisor.restarts()["resources"] - before == kills
        assert all(len(out) == 50 for out in outputs)  # no process lost
        assert await root.quota_list() == quotas  # no quota lost
        assert min(survived.values()) >= 10


async def test_within_a_kv_quota_the_more_important_process_grows_and_the_lesser_waits(autojump_clock, tmp_path):
    # 8 tokens a step: the nice-0 prompt enters in chunks, and to grow within alice's 6 blocks it
    # must take them from her nice-10 process, whose decode is planned into each step first.
    # Once, it preempted itself instead and waited for the lesser process to finish.
    async with open_system(tmp_path, policy="priority", kv_blocks=64, max_batch_tokens=8) as (kernel, root):
        await root.quota_set("alice", kv_blocks=6)
        async with libllm.open_client(kernel, uid=1000, tenant="alice") as alice:
            lesser = await alice.spawn(prompt_ids=[1] * 6, max_tokens=12, nice=10, ignore_eos=True)
            await alice.read(lesser)
            important = await alice.spawn(prompt_ids=[2] * 20, max_tokens=3, ignore_eos=True)
            first, second = await alice.wait(important), await alice.wait(lesser)
    assert first.exit["reason"] == second.exit["reason"] == "length"
    assert first.stat["accounting"]["num_preemptions"] == 0
    assert second.stat["accounting"]["num_preemptions"] >= 1
    assert first.stat["finished_at"] < second.stat["finished_at"]


async def test_a_prompt_over_the_kv_quota_ends_with_enomem_even_when_its_prefix_is_cached(autojump_clock, tmp_path):
    # 8 tokens a step: the admission check sized the first chunk from position 0, but the chunk
    # starts after the 12 cached tokens, so the 5-block prompt ran under a 4-block quota.
    async with open_system(tmp_path, kv_blocks=64, max_batch_tokens=8) as (kernel, root):  # blocks of 4 tokens
        await root.quota_set("alice", kv_blocks=4)
        async with libllm.open_client(kernel, uid=1000, tenant="alice") as alice:
            first = await alice.spawn(prompt_ids=[1] * 13, max_tokens=2, ignore_eos=True)
            assert (await alice.wait(first)).exit["reason"] == "length"
            second = await alice.spawn(prompt_ids=[1] * 12 + [2] * 8, max_tokens=1, ignore_eos=True)
            result = await alice.wait(second)
    assert result.exit["errno"] == "ENOMEM" and "quota of 4" in result.exit["message"]


async def test_a_stopped_process_gives_its_blocks_back_to_its_tenants_new_ones(autojump_clock, tmp_path):
    # alice's stopped process holds 3 of her 4 blocks: her next process waited for them forever.
    async with open_system(tmp_path, kv_blocks=64) as (kernel, root):  # blocks of 4 tokens
        await root.quota_set("alice", kv_blocks=4)
        async with libllm.open_client(kernel, uid=1000, tenant="alice") as alice:
            stopped = await alice.spawn(prompt_ids=[1] * 10, max_tokens=4, ignore_eos=True)
            await alice.read(stopped)
            await alice.kill(stopped, "SIGSTOP")
            newcomer = await alice.spawn(prompt_ids=[2] * 10, max_tokens=2, ignore_eos=True)
            with trio.fail_after(30):
                assert (await alice.wait(newcomer)).exit["reason"] == "length"
            await alice.kill(stopped, "SIGCONT")
            assert (await alice.wait(stopped)).exit["reason"] == "length"  # recomputed, then done
