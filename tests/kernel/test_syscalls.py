"""Every syscall with good and bad arguments, on the sim driver in virtual time."""

from __future__ import annotations

import pytest
import trio

from llmos.userland import libllm


async def test_spawn_read_wait_produce_max_tokens(autojump_clock, llm):
    pid = await llm.spawn(prompt_ids=[1, 2, 3], max_tokens=5, seed=7)
    seen = []
    async for tokens in llm.stream(pid):
        seen += tokens
    result = await llm.wait(pid)
    assert result.pid == pid
    assert result.output_ids == seen and len(seen) == 5
    assert result.finish_reason == "length"
    assert result.stat["accounting"]["num_steps"] == 5
    with pytest.raises(libllm.ESRCH):  # reaped
        await llm.stat(pid)


async def test_same_seed_same_tokens_different_seed_different_tokens(autojump_clock, llm):
    a = await llm.spawn(prompt_ids=[5], max_tokens=8, seed=1)
    b = await llm.spawn(prompt_ids=[5, 6, 7, 8], max_tokens=8, seed=1)
    c = await llm.spawn(prompt_ids=[5], max_tokens=8, seed=2)
    ra, rb, rc = [await llm.wait(p) for p in (a, b, c)]
    assert ra.output_ids == rb.output_ids  # sampling depends on (seed, index) only
    assert ra.output_ids != rc.output_ids


@pytest.mark.parametrize(
    "args, errno, fragment",
    [
        ({}, "EINVAL", "exactly one of 'prompt'"),
        ({"prompt_ids": [1], "prompt": "x"}, "EINVAL", "exactly one of"),
        ({"prompt_ids": []}, "EINVAL", "empty"),
        ({"prompt_ids": "123"}, "EINVAL", "list of integers"),
        ({"prompt_ids": [1, -2]}, "EINVAL", "non-negative"),
        ({"prompt_ids": [1, 1.5]}, "EINVAL", "non-negative integers"),
        ({"prompt_ids": [40000]}, "EINVAL", "outside the vocabulary"),
        ({"prompt_ids": [1], "max_tokens": 0}, "EINVAL", "'max_tokens'"),
        ({"prompt_ids": [1], "max_tokens": "8"}, "EINVAL", "must be an integer"),
        ({"prompt_ids": [1], "max_tokens": True}, "EINVAL", "must be an integer"),
        ({"prompt_ids": [1], "temperature": -1}, "EINVAL", "'temperature'"),
        ({"prompt_ids": [1], "temperature": float("nan")}, "EINVAL", "finite"),
        ({"prompt_ids": [1], "top_p": 0}, "EINVAL", "'top_p'"),
        ({"prompt_ids": [1], "nice": 20}, "EINVAL", "'nice'"),
        ({"prompt_ids": [1], "nice": -5}, "EPERM", "negative nice"),
        ({"prompt_ids": [1], "model": "gpt-9"}, "ENOENT", "no model named"),
        ({"prompt_ids": [1], "colour": "red"}, "EINVAL", "unknown argument 'colour'"),
        ({"prompt": "hello"}, "EINVAL", "no tokenizer"),
        ({"prompt_ids": [1] * 200_000}, "E2BIG", "prompt_ids"),
    ],
)
async def test_spawn_rejects_bad_arguments(autojump_clock, llm, args, errno, fragment):
    with pytest.raises(libllm.LLMOSError) as err:
        await llm.call("spawn", **args)
    assert err.value.errno == errno
    assert fragment in err.value.message
    assert await llm.ps() == []  # nothing half-made


async def test_root_may_spawn_with_negative_nice(autojump_clock, root):
    pid = await root.spawn(prompt_ids=[1], max_tokens=1, nice=-10)
    assert (await root.stat(pid))["nice"] == -10


async def test_read_blocks_until_tokens_then_reports_eof_with_exit(autojump_clock, llm):
    pid = await llm.spawn(prompt_ids=[1, 2], max_tokens=3)
    first = await llm.read(pid)
    assert len(first.tokens) >= 1 and first.offset == len(first.tokens)
    offset, eof = first.offset, first.eof
    while not eof:
        r = await llm.read(pid, offset)
        offset, eof = r.offset, r.eof
    assert offset == 3 and r.exit["reason"] == "length"
    again = await llm.read(pid, 3)  # reading past the end of an ended process is EOF at once
    assert again.tokens == [] and again.eof


async def test_read_with_timeout_returns_empty_not_eof(autojump_clock, llm):
    pid = await llm.spawn(prompt_ids=[1], max_tokens=2)
    await llm.kill(pid, "SIGSTOP")
    await trio.sleep(0.5)  # a step already on the device when SIGSTOP came may still land
    generated = (await llm.stat(pid))["generated_tokens"]
    r = await llm.read(pid, generated, timeout=5.0)
    assert r.tokens == [] and not r.eof and r.offset == generated


@pytest.mark.parametrize(
    "args, errno",
    [({}, "EINVAL"), ({"pid": "1"}, "EINVAL"), ({"pid": 999}, "ESRCH"), ({"pid": 3, "offset": -1}, "EINVAL")],
)
async def test_read_bad_arguments(autojump_clock, llm, args, errno):
    await llm.spawn(prompt_ids=[1], max_tokens=1)
    with pytest.raises(libllm.LLMOSError) as err:
        await llm.call("read", **args)
    assert err.value.errno == errno


async def test_read_of_another_users_process_is_eacces(autojump_clock, kernel, llm):
    async with libllm.open_client(kernel, uid=1001, tenant="bob") as bob:
        pid = await bob.spawn(prompt_ids=[1], max_tokens=2)
        with pytest.raises(libllm.EACCES):
            await llm.read(pid)


async def test_wait_any_nohang_and_echild(autojump_clock, llm, kernel):
    with pytest.raises(libllm.ECHILD):
        await llm.wait()
    pid = await llm.spawn(prompt_ids=[1], max_tokens=50)
    assert await llm.wait(nohang=True) is None
    result = await llm.wait()
    assert result.pid == pid
    async with libllm.open_client(kernel, uid=1000, tenant="alice") as other:
        theirs = await other.spawn(prompt_ids=[1], max_tokens=1)
        with pytest.raises(libllm.ECHILD):  # not a child of this session
            await llm.wait(theirs)
    with pytest.raises(libllm.ESRCH):
        await llm.wait(424242)


async def test_kill_signals(autojump_clock, llm):
    pid = await llm.spawn(prompt_ids=[1], max_tokens=1000)
    await llm.read(pid)
    await llm.kill(pid, "SIGSTOP")
    stopped = await llm.stat(pid)
    assert stopped["state"] == "STOPPED"
    await trio.sleep(1.0)
    assert (await llm.stat(pid))["generated_tokens"] == stopped["generated_tokens"]
    await llm.kill(pid, "CONT")
    await trio.sleep(0.1)
    assert (await llm.stat(pid))["generated_tokens"] > stopped["generated_tokens"]
    await llm.kill(pid, 9)
    result = await llm.wait(pid)
    assert result.exit == {"reason": "signal", "signal": "SIGKILL", "errno": None, "message": "killed by SIGKILL"}


async def test_sigterm_ends_at_a_step_boundary(autojump_clock, llm):
    pid = await llm.spawn(prompt_ids=[1], max_tokens=1000)
    await llm.read(pid)
    await llm.kill(pid)  # SIGTERM is the default
    result = await llm.wait(pid)
    assert result.exit["signal"] == "SIGTERM" and 0 < len(result.output_ids) < 1000


@pytest.mark.parametrize(
    "args, errno",
    [
        ({"pid": 999}, "ESRCH"),
        ({"pid": 1}, "EPERM"),
        ({"signal": "SIGHUP"}, "EINVAL"),
        ({"signal": 3}, "EINVAL"),
        ({"signal": [9]}, "EINVAL"),
        ({"pid": "x"}, "EINVAL"),
    ],
)
async def test_kill_bad_arguments(autojump_clock, llm, args, errno):
    pid = await llm.spawn(prompt_ids=[1], max_tokens=5)
    with pytest.raises(libllm.LLMOSError) as err:
        await llm.call("kill", **{"pid": pid, **args})
    assert err.value.errno == errno


async def test_kill_nice_fork_of_another_user_are_eperm(autojump_clock, kernel, llm):
    async with libllm.open_client(kernel, uid=1001, tenant="bob") as bob:
        pid = await bob.spawn(prompt_ids=[1], max_tokens=100)
        for call in (llm.kill(pid), llm.nice(pid, 5), llm.fork(pid, 2)):
            with pytest.raises(libllm.EPERM):
                await call


async def test_root_may_kill_anyones_process(autojump_clock, kernel, root):
    async with libllm.open_client(kernel, uid=1001, tenant="bob") as bob:
        pid = await bob.spawn(prompt_ids=[1], max_tokens=100)
        await root.kill(pid, "SIGKILL")
        assert (await bob.wait(pid)).exit["signal"] == "SIGKILL"


async def test_fork_children_continue_the_parent_with_their_own_seeds(autojump_clock, llm):
    parent = await llm.spawn(prompt_ids=[1, 2, 3], max_tokens=6, seed=3)
    await llm.kill(parent, "SIGSTOP")
    children = await llm.fork(parent, 3)
    assert len(children) == 3
    stats = [await llm.stat(c) for c in children]
    assert all(s["ppid"] == parent for s in stats)
    assert len({s["sampling"]["seed"] for s in stats}) == 3
    await llm.kill(parent, "SIGCONT")
    parent_result = await llm.wait(parent)
    outputs = [(await llm.wait(c)).output_ids for c in children]
    assert len({tuple(o) for o in outputs}) == 3
    # Each child's prompt is the parent's prompt plus what the parent had generated at fork time.
    assert all(s["prompt_tokens"] >= 3 for s in stats)
    assert all(len(o) + s["prompt_tokens"] - 3 == 6 for o, s in zip(outputs, stats, strict=True))
    assert parent_result.finish_reason == "length"


@pytest.mark.parametrize("args, errno", [({"n": 0}, "EINVAL"), ({"n": 65}, "EINVAL"), ({"pid": 999}, "ESRCH")])
async def test_fork_bad_arguments(autojump_clock, llm, args, errno):
    pid = await llm.spawn(prompt_ids=[1], max_tokens=5)
    with pytest.raises(libllm.LLMOSError) as err:
        await llm.call("fork", **{"pid": pid, **args})
    assert err.value.errno == errno


async def test_fork_of_an_exited_process_is_esrch(autojump_clock, llm):
    pid = await llm.spawn(prompt_ids=[1], max_tokens=1)
    await llm.read(pid)
    while not (await llm.read(pid, 1)).eof:
        pass
    with pytest.raises(libllm.ESRCH, match="already exited"):
        await llm.fork(pid, 1)


async def test_nice(autojump_clock, llm, root):
    pid = await llm.spawn(prompt_ids=[1], max_tokens=100)
    assert await llm.nice(pid, 10) == 10
    with pytest.raises(libllm.EPERM):
        await llm.nice(pid, 5)  # lowering needs uid 0
    with pytest.raises(libllm.EINVAL):
        await llm.nice(pid, 20)
    with pytest.raises(libllm.EINVAL):
        await llm.call("nice", pid=pid)
    assert await root.nice(pid, -20) == -20


async def test_ps_and_stat(autojump_clock, llm):
    pids = [await llm.spawn(prompt_ids=[1, 2], max_tokens=4, seed=i) for i in range(3)]
    rows = await llm.ps()
    assert [r["pid"] for r in rows] == pids
    assert all(r["uid"] == 1000 and r["tenant"] == "alice" for r in rows)
    stat = await llm.stat(pids[0])
    for key in ("state", "created_at", "accounting", "sampling", "exit", "ttft_s"):
        assert key in stat
    with pytest.raises(libllm.ESRCH):
        await llm.stat(999)
    with pytest.raises(libllm.EINVAL):
        await llm.call("ps", verbose=True)


async def test_unknown_syscall_is_enosys(autojump_clock, llm):
    with pytest.raises(libllm.ENOSYS, match="no syscall named 'format_disk'"):
        await llm.call("format_disk")


async def test_identity_is_attached_by_the_kernel(autojump_clock, llm):
    me = await llm.getpid()
    assert me["uid"] == 1000 and me["tenant"] == "alice"
    with pytest.raises(libllm.EINVAL):  # a message cannot claim an identity
        await llm.call("spawn", prompt_ids=[1], uid=0)


async def test_closing_a_session_kills_its_processes_unless_detached(autojump_clock, kernel, root):
    async with libllm.open_client(kernel, uid=1000, tenant="alice") as alice:
        doomed = await alice.spawn(prompt_ids=[1], max_tokens=1000)
        kept = await alice.spawn(prompt_ids=[1], max_tokens=30, detach=True)
    await trio.sleep(0.01)
    pids = {r["pid"] for r in await root.ps()}
    assert doomed not in pids  # killed and reaped by init
    assert kept in pids
    await trio.sleep(10)
    assert kept not in {r["pid"] for r in await root.ps()}  # finished, reaped by init


async def test_tenant_tokens_over_the_socket(autojump_clock, kernel, root, llm, tmp_path):
    with pytest.raises(libllm.EPERM):
        await llm.call("token", tenant="bob")
    with pytest.raises(libllm.EINVAL):
        await root.call("token", tenant="")
    token = (await root.call("token", tenant="bob"))["token"]
    path = str(tmp_path / "k.sock")
    async with trio.open_nursery() as nursery:
        await nursery.start(kernel.serve_unix, path)
        async with libllm.open_client(path, token=token) as bob:
            assert (await bob.getpid())["tenant"] == "bob"
        async with libllm.open_client(path) as anonymous:
            assert (await anonymous.getpid())["tenant"] == "default"
        forged = token[:-1] + ("0" if token[-1] != "0" else "1")
        with pytest.raises(libllm.EACCES):
            async with libllm.open_client(path, token=forged):
                pass
        nursery.cancel_scope.cancel()
