"""The supervisor restarts crashed servers; no process is lost or changes its result."""

from __future__ import annotations

import pytest
import trio
from sim_fixtures import sim_config

from llmos.kernel.errors import KernelError
from llmos.kernel.kernel import open_kernel
from llmos.kernel.server import Server
from llmos.userland import libllm

PROMPTS = [[1, 2, 3], [4] * 30, [5, 6], [7] * 75, [8], [9, 9, 9, 9, 9]]


async def run_workload(crashes: int) -> tuple[list[list[int]], list[dict], dict]:
    """Run PROMPTS to completion while the driver is killed ``crashes`` times."""
    async with open_kernel(sim_config()) as kernel, libllm.open_client(kernel) as llm:
        pids = [await llm.spawn(prompt_ids=p, max_tokens=40, seed=i) for i, p in enumerate(PROMPTS)]
        for _ in range(crashes):
            await kernel.names.wait_ready("driver.sim0")
            await trio.sleep(0.013)  # a few steps after each restart, often mid-step
            kernel.supervisor.kill("driver.sim0")
        results = [await llm.wait(pid) for pid in pids]
        return [r.output_ids for r in results], [r.exit for r in results], await llm.uname()


async def test_driver_killed_repeatedly_loses_no_process_and_changes_no_output(autojump_clock):
    clean, clean_exits, _ = await run_workload(crashes=0)
    crashed, crashed_exits, uname = await run_workload(crashes=25)
    assert crashed == clean
    assert crashed_exits == clean_exits and all(e["reason"] == "length" for e in crashed_exits)
    server = next(s for s in uname["servers"] if s["name"] == "driver.sim0")
    assert server["restarts"] == 25 and server["ready"]
    assert uname["devices"][0]["driver_restarts"] >= 1


class FlakyService(Server):
    """A service with a bug: ``boom`` raises, which crashes it."""

    name = "flaky"
    instances = 0

    def __init__(self) -> None:
        FlakyService.instances += 1
        self.counter = 0

    async def do_bump(self, args: dict) -> int:
        self.counter += 1
        return self.counter

    async def do_boom(self, args: dict) -> None:
        raise RuntimeError("a bug")


async def test_a_crashing_service_is_restarted_with_backoff_and_rebinds_by_name(autojump_clock):
    FlakyService.instances = 0
    async with open_kernel(sim_config(services={})) as kernel:
        await kernel.supervisor.start("flaky", FlakyService)
        assert await kernel.names.call("flaky", "bump") == 1
        started = trio.current_time()
        for crash in range(1, 6):
            with pytest.raises(KernelError) as err:
                await kernel.names.call("flaky", "boom")
            assert err.value.errno == "EIO"
            assert await kernel.names.call("flaky", "bump") == 1  # a fresh instance, found by name
            assert kernel.supervisor.restarts()["flaky"] == crash
        # Quick crashes double the backoff: 0.01 + 0.02 + 0.04 + 0.08 + 0.16 seconds.
        assert trio.current_time() - started == pytest.approx(0.31, abs=1e-6)
        assert FlakyService.instances == 6
        with pytest.raises(KernelError) as err:
            await kernel.names.call("flaky", "no_such_op")
        assert err.value.errno == "ENOSYS"


async def test_unknown_server_name_is_enoent(autojump_clock):
    async with open_kernel(sim_config()) as kernel:
        with pytest.raises(KernelError) as err:
            await kernel.names.call("nobody", "ping")
        assert err.value.errno == "ENOENT"
        with pytest.raises(KernelError) as err:
            kernel.supervisor.kill("nobody")
        assert err.value.errno == "ENOENT"


async def test_a_scheduler_bug_ends_its_processes_with_eio_and_the_kernel_goes_on(autojump_clock, monkeypatch):
    from llmos.kernel import policy

    class BuggyPolicy(policy.FCFS):
        name = "buggy"

        def rank(self, procs, now):
            if any(p.nice == 13 for p in procs):
                raise ZeroDivisionError("a bug in a policy")
            return super().rank(procs, now)

    monkeypatch.setitem(policy.POLICIES, "buggy", BuggyPolicy)
    async with open_kernel(sim_config(policy="buggy")) as kernel, libllm.open_client(kernel) as llm:
        victim = await llm.spawn(prompt_ids=[1], max_tokens=200)
        trigger = await llm.spawn(prompt_ids=[2], max_tokens=5, nice=13)
        for pid in (victim, trigger):
            result = await llm.wait(pid)
            assert result.exit["errno"] == "EIO" and "ZeroDivisionError" in result.exit["message"]
        later = await llm.wait(await llm.spawn(prompt_ids=[3], max_tokens=4))
        assert later.finish_reason == "length"
        assert kernel.devices["sim0"].scheduler.stats.num_internal_errors == 1
