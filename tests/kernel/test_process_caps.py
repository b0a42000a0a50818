"""Processes' capabilities: minted by the kernel through the security service, checked on use.

Through libllm, on the sim driver in virtual time, with the services of a fresh home.
"""

from __future__ import annotations

import pytest
import trio
from sim_fixtures import open_system

from llmos.kernel.errors import KernelError
from llmos.services import securefiles
from llmos.userland import libllm


@pytest.fixture(autouse=True)
def no_fsync(monkeypatch):
    monkeypatch.setattr(securefiles, "SYNC", False)




async def test_every_process_gets_model_device_and_priority_handles(autojump_clock, tmp_path):
    async with open_system(tmp_path) as (kernel, root):
        async with libllm.open_client(kernel, uid=1000, tenant="alice") as alice:
            reply = await alice.call("spawn", prompt_ids=[1, 2, 3], max_tokens=5)
            caps = await alice.caps(reply["pid"])
            assert caps == reply["caps"] and set(caps) == {"model", "device", "priority"}
            for kind, handle in caps.items():
                cap = await kernel.call_service("security", "check_capability", {
                    "handle": handle, "pid": reply["pid"], "kind": kind,
                    "name": {"model": "sim", "device": "sim0", "priority": "0"}[kind],
                    "right": {"model": "run", "device": "run", "priority": "renice"}[kind]})
                assert cap["pid"] == reply["pid"]
            async with libllm.open_client(kernel, uid=1001, tenant="bob") as bob:
                assert "caps" not in await bob.stat(reply["pid"])  # another user sees no handles


async def test_priority_capability_takes_back_the_start_priority_and_no_more(autojump_clock, tmp_path):
    async with open_system(tmp_path) as (kernel, root):
        async with libllm.open_client(kernel, uid=1000, tenant="alice") as alice:
            pid = await alice.spawn(prompt_ids=[1, 2, 3], max_tokens=500, nice=5)
            await alice.nice(pid, 15)  # raising nice needs nothing
            with pytest.raises(libllm.EPERM) as err:
                await alice.nice(pid, 5)
            assert "priority capability" in err.value.message
            handle = (await alice.caps(pid))["priority"]
            assert await alice.nice(pid, 5, cap=handle) == 5
            with pytest.raises(libllm.EPERM) as err:
                await alice.nice(pid, 4, cap=handle)
            assert "nice >= 5" in err.value.message


async def test_another_processs_capability_is_refused(autojump_clock, tmp_path):
    async with open_system(tmp_path) as (kernel, root):
        async with libllm.open_client(kernel, uid=1000, tenant="alice") as alice:
            first = await alice.spawn(prompt_ids=[1, 2, 3], max_tokens=500)
            second = await alice.spawn(prompt_ids=[1, 2, 3], max_tokens=500)
            await alice.nice(second, 10)
            with pytest.raises(libllm.EPERM) as err:
                await alice.nice(second, 0, cap=(await alice.caps(first))["priority"])
            assert f"belongs to pid {first}, not pid {second}" in err.value.message
            assert (await alice.stat(second))["nice"] == 10
            with pytest.raises(libllm.EPERM):  # uid 0 needs no handle, but one it presents is checked
                await root.nice(second, 0, cap=(await alice.caps(first))["priority"])


async def test_forged_and_edited_handles_are_refused(autojump_clock, tmp_path):
    async with open_system(tmp_path) as (kernel, root):
        async with libllm.open_client(kernel, uid=1000, tenant="alice") as alice:
            pid = await alice.spawn(prompt_ids=[1, 2, 3], max_tokens=500)
            await alice.nice(pid, 10)
            handle = (await alice.caps(pid))["priority"]
            prefix, body, mac = handle.split(".")
            edited = f"{prefix}.{body}.{'A' if mac[0] != 'A' else 'B'}{mac[1:]}"
            for bad in [edited, "cap1.e30.AAAA", "not a handle"]:
                with pytest.raises(libllm.EPERM):
                    await alice.nice(pid, 0, cap=bad)
            with pytest.raises(libllm.EINVAL):
                await alice.call("nice", pid=pid, value=0, cap=12)


async def test_a_revoked_handle_is_refused_and_revoking_the_model_handle_ends_the_process(autojump_clock, tmp_path):
    async with open_system(tmp_path) as (kernel, root):
        async with libllm.open_client(kernel, uid=1000, tenant="alice") as alice, \
                libllm.open_client(kernel, uid=1001, tenant="bob") as bob:
            pid = await alice.spawn(prompt_ids=[1, 2, 3], max_tokens=5000)
            caps = await alice.caps(pid)
            with pytest.raises(libllm.EPERM):  # not bob's process
                await bob.cap_revoke(caps["priority"])
            await alice.nice(pid, 10)
            assert (await alice.cap_revoke(caps["priority"])) == {"pid": pid, "kind": "priority", "ended": False}
            with pytest.raises(libllm.EPERM) as err:
                await alice.nice(pid, 0, cap=caps["priority"])
            assert "revoked" in err.value.message
            assert (await alice.stat(pid))["state"] != "zombie"
            assert (await alice.cap_revoke(caps["model"]))["ended"] is True
            result = await alice.wait(pid)
            assert result.exit["errno"] == "EPERM" and "model capability was revoked" in result.exit["message"]
            with pytest.raises(libllm.ESRCH):
                await alice.cap_revoke(caps["device"])  # its process is gone


async def test_exit_revokes_every_handle_and_fork_children_get_their_own(autojump_clock, tmp_path):
    async with open_system(tmp_path) as (kernel, root):
        async with libllm.open_client(kernel, uid=1000, tenant="alice") as alice:
            pid = await alice.spawn(prompt_ids=[1, 2, 3], max_tokens=200, nice=3)
            reply = await alice.call("fork", pid=pid, n=2)
            children = reply["pids"]
            assert len({c["priority"] for c in reply["caps"]}) == 2
            for child, caps in zip(children, reply["caps"], strict=True):
                assert await alice.caps(child) == caps
                await alice.nice(child, 9)
                assert await alice.nice(child, 3, cap=caps["priority"]) == 3  # the parent's floor
            handle = (await alice.caps(pid))["model"]
            await alice.wait(pid)
            await trio.sleep(1)  # the revoker runs once every task is idle (autojump)
            with pytest.raises(KernelError) as err:
                await kernel.call_service("security", "check_capability", {
                    "handle": handle, "pid": pid, "kind": "model", "name": "sim", "right": "run"})
            assert err.value.errno == "EPERM" and "revoked" in err.value.message


async def test_fork_checks_the_parents_model_capability(autojump_clock, tmp_path):
    async with open_system(tmp_path) as (kernel, root):
        async with libllm.open_client(kernel, uid=1000, tenant="alice") as alice:
            pid = await alice.spawn(prompt_ids=[1, 2, 3], max_tokens=5000)
            # Revoke through the security service directly: the kernel did not end the process.
            await kernel.call_service("security", "revoke_capability", {"handle": (await alice.caps(pid))["model"]})
            with pytest.raises(libllm.EPERM) as err:
                await alice.fork(pid, 1)
            assert "revoked" in err.value.message


async def test_without_a_security_service_there_are_no_handles_and_unix_rules_stand(autojump_clock, root):
    reply = await root.call("spawn", prompt_ids=[1, 2, 3], max_tokens=5)
    assert reply["caps"] is None and await root.caps(reply["pid"]) == {}
    with pytest.raises(libllm.ENOSYS):
        await root.cap_revoke("cap1.x.y")
    with pytest.raises(libllm.EINVAL):
        await root.call("cap_revoke", handle=5)
    with pytest.raises(libllm.EINVAL):
        await root.call("cap_revoke")


async def test_two_kernels_sharing_a_home_keep_their_capabilities_apart(autojump_clock, tmp_path):
    # pids are each kernel's own: B's exits (revoke_pid) and boots (new epochs) must not touch A.
    async with open_system(tmp_path) as (ka, root_a), open_system(tmp_path) as (kb, root_b):
        async with libllm.open_client(ka, uid=1000, tenant="alice") as alice, \
                libllm.open_client(kb, uid=1000, tenant="bob") as bob:
            mine = await alice.spawn(prompt_ids=[1, 2, 3], max_tokens=5000)
            await alice.nice(mine, 10)
            for _ in range(5):  # B's pids 3, 4, ... exit, and B revokes their handles
                await bob.wait(await bob.spawn(prompt_ids=[1, 2, 3], max_tokens=2))
            await trio.sleep(1)
            ka.supervisor.kill("security")  # A's server reloads its state from disk
            await ka.names.wait_ready("security")
            assert await alice.nice(mine, 0, cap=(await alice.caps(mine))["priority"]) == 0
            for _ in range(5):  # pids B revoked are A's to use
                await alice.spawn(prompt_ids=[1, 2, 3], max_tokens=2)
            theirs = await bob.spawn(prompt_ids=[1, 2, 3], max_tokens=5000)
            with pytest.raises(libllm.EPERM):  # a handle of the other kernel means nothing here
                await root_b.nice(theirs, 0, cap=(await alice.caps(mine))["priority"])
