"""Several devices in one kernel (sim replicas, virtual time): a new process goes to the
least-loaded replica, a caller may name the device, and lsdev reports each device."""

from __future__ import annotations

import pytest
from sim_fixtures import sim_config

from llmos.kernel.kernel import open_kernel
from llmos.userland import libllm

LONG = {"prompt_ids": [1, 2, 3], "max_tokens": 1000}  # still running while the test looks


@pytest.fixture
async def llm2():
    async with open_kernel(sim_config(devices=["sim", "sim"])) as kernel:
        async with libllm.open_client(kernel, uid=1000, tenant="alice") as client:
            yield client


async def spawn(llm, **args) -> tuple[int, str]:
    reply = await llm.call("spawn", **{**LONG, **args})
    return reply["pid"], reply["device"]


async def test_new_processes_go_to_the_least_loaded_replica(autojump_clock, llm2):
    assert [(await spawn(llm2))[1] for _ in range(4)] == ["sim0", "sim1", "sim0", "sim1"]
    pid, device = await spawn(llm2)  # a tie (2, 2) goes to the first name
    assert device == "sim0"
    await llm2.kill(pid, "SIGKILL")
    loads = {d["name"]: d["running"] + d["waiting"] for d in await llm2.lsdev()}
    assert loads == {"sim0": 2, "sim1": 2}
    victim = next(row["pid"] for row in await llm2.ps() if row["device"] == "sim1" and row["state"] != "ZOMBIE")
    await llm2.kill(victim, "SIGKILL")
    assert (await spawn(llm2))[1] == "sim1"  # now the less loaded one


async def test_a_stopped_process_does_not_count_as_load(autojump_clock, llm2):
    first, _ = await spawn(llm2)
    await llm2.kill(first, "SIGSTOP")
    assert (await spawn(llm2))[1] == "sim0"


async def test_a_named_device_is_used_whatever_its_load(autojump_clock, llm2):
    for _ in range(3):
        assert (await spawn(llm2, device="sim1"))[1] == "sim1"
    pid, device = await spawn(llm2, device="sim1", model="sim")
    assert device == "sim1"
    assert (await llm2.stat(pid))["device"] == "sim1"
    assert (await spawn(llm2))[1] == "sim0"


@pytest.mark.parametrize(
    "args, fragment",
    [
        ({"device": "gpu7"}, "no device named 'gpu7'; devices: sim0, sim1"),
        ({"device": "sim1", "model": "llama"}, "device sim1 serves model 'sim', not 'llama'"),
        ({"model": "llama"}, "no model named 'llama'"),
    ],
)
async def test_unknown_device_or_model_is_enoent(autojump_clock, llm2, args, fragment):
    with pytest.raises(libllm.ENOENT, match=fragment):
        await spawn(llm2, **args)


async def test_device_argument_is_checked_like_any_other(autojump_clock, llm2):
    with pytest.raises(libllm.EINVAL, match="'device' must be a string"):
        await spawn(llm2, device=1)


async def test_lsdev_reports_each_device(autojump_clock, llm2):
    await spawn(llm2)
    await spawn(llm2)
    await spawn(llm2)
    rows = await llm2.lsdev()
    assert [r["name"] for r in rows] == ["sim0", "sim1"]
    for row in rows:
        assert row["kind"] == "sim" and row["emulated"] is True and row["model"] == "sim"
        assert row["kv_blocks_total"] == 64 and row["block_size"] == 4
        assert row["kv_bytes"] == 64 * 4 * 4096  # the sim's kv_bytes_per_token
        assert row["memory_bytes"] is None and row["weight_bytes"] is None
        assert row["spec"] is None
    assert [r["running"] + r["waiting"] for r in rows] == [2, 1]
    pid, _ = await spawn(llm2, prompt_ids=[1], max_tokens=50)
    await llm2.wait(pid)
    rows = await llm2.lsdev()
    assert all(r["steps"] > 0 and 0 < r["utilization"] <= 1.0 for r in rows)
    assert all(r["kv_blocks_used"] > 0 for r in rows)  # the long processes hold blocks
    assert rows[0]["running"] >= 1 and rows[0]["running"] + rows[0]["waiting"] == 2


async def test_lsdev_takes_no_arguments(autojump_clock, llm2):
    with pytest.raises(libllm.EINVAL, match="unknown argument"):
        await llm2.call("lsdev", verbose=True)


async def test_one_device_kernels_route_as_before(autojump_clock, llm):
    reply = await llm.call("spawn", prompt_ids=[1], max_tokens=2)
    assert reply["device"] == "sim0"
    assert [d["name"] for d in await llm.lsdev()] == ["sim0"]
