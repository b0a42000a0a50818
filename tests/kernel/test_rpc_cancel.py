"""A caller that gives up on a blocking call cancels it in the kernel too."""

from __future__ import annotations

from functools import partial

import pytest
import trio

from llmos.kernel import codec
from llmos.kernel.errors import KernelError
from llmos.kernel.rpc import RpcClient, serve_stream
from llmos.kernel.streams import FramedMessageStream
from llmos.userland import libllm


async def test_a_cancelled_wait_does_not_reap_the_child(autojump_clock, llm):
    pid = await llm.spawn(prompt_ids=[1, 2, 3], max_tokens=200, ignore_eos=True)
    with trio.move_on_after(0.05):
        await llm.wait(pid)  # given up on long before the process ends
    status = await llm.wait(pid)  # the exit status is still there to collect
    assert status.pid == pid and len(status.output_ids) == 200


async def test_a_cancelled_read_frees_its_slot_and_later_calls_work(autojump_clock, llm):
    pid = await llm.spawn(prompt_ids=[1, 2, 3], max_tokens=60000, ignore_eos=True)
    await llm.kill(pid, "SIGSTOP")  # a read past its output now blocks until SIGCONT
    for _ in range(300):  # more than a connection may have in flight, if they were not cancelled
        with trio.move_on_after(0.001):
            await llm.read(pid, offset=10**6)
    await llm.kill(pid, "SIGKILL")
    assert (await llm.wait(pid)).finish_reason == "signal"


async def test_cancelling_an_unknown_request_is_harmless(autojump_clock, llm):
    assert await llm.call("cancel", id=12345) == {"cancelled": False}
    assert await llm.call("getpid") is not None
    try:
        await llm.call("cancel", id="x")
    except libllm.LLMOSError:
        pass


async def test_a_call_cancelled_before_it_is_sent_never_reaches_a_socket_server():
    # The socket stream writes directly when it can; a cancelled caller must still send nothing.
    served: list[str] = []

    async def dispatch(request):
        served.append(request.op)
        return {}

    left, right = trio.socket.socketpair()
    server = FramedMessageStream(trio.SocketStream(left))
    client = RpcClient(FramedMessageStream(trio.SocketStream(right)))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_stream, server, dispatch)
        with trio.CancelScope() as scope:
            scope.cancel()
            await client.call("kill", {"pid": 5})
        assert await client.call("getpid") == {}
        nursery.cancel_scope.cancel()
    assert served == ["getpid"]


async def test_a_cancel_without_a_request_id_is_einval():
    async def dispatch(request):
        return {}

    left, right = trio.socket.socketpair()
    client = RpcClient(FramedMessageStream(trio.SocketStream(right)))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_stream, FramedMessageStream(trio.SocketStream(left)), dispatch)
        for args in ({}, {"id": "7"}, {"id": 1.5}):
            with pytest.raises(KernelError) as error:
                await client.call("cancel", args)
            assert error.value.errno == "EINVAL" and "'id'" in error.value.message
        assert await client.call("cancel", {"id": 12345}) == {"cancelled": False}  # nothing by that id
        nursery.cancel_scope.cancel()


async def test_a_cancel_that_arrives_with_its_request_stops_it_before_it_runs():
    # A busy server reads the request and its cancel in one batch: the cancel found no scope to
    # cancel (the request's task had not run yet), and the request went on to take effect.
    ran: list[int] = []

    async def dispatch(request):
        ran.append(request.id)  # a wait on a zombie: done without reaching a checkpoint
        return {"reaped": True}

    left, right = trio.socket.socketpair()
    server = FramedMessageStream(trio.SocketStream(left))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(serve_stream, server, dispatch, blocking_ops={"wait"}))
        both = b"".join(codec.frame(codec.encode(m)) for m in (
            codec.make_request(1, "wait", {}), codec.make_request(2, "cancel", {"id": 1})))
        await right.send(both)
        reader = codec.FrameReader()
        replies = {}
        while len(replies) < 2:
            reader.feed(await right.recv(65536))
            while (payload := reader.next_payload()) is not None:
                reply_id, outcome = codec.parse_reply(codec.decode(payload))
                replies[reply_id] = outcome
        nursery.cancel_scope.cancel()
    assert replies[2] == {"cancelled": True}
    assert isinstance(replies[1], KernelError) and replies[1].errno == "ECANCELED"
    assert ran == []


async def test_a_blocking_request_reusing_an_id_in_flight_is_refused():
    # It overwrote the first one's cancel scope: one of them then failed with an internal error,
    # or a later cancel missed the request it named.
    release = trio.Event()

    async def dispatch(request):
        await release.wait()
        return {"done": request.args["n"]}

    left, right = trio.socket.socketpair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(serve_stream, FramedMessageStream(trio.SocketStream(left)), dispatch,
                                   blocking_ops={"wait"}, crash_on_bug=True))
        frames = b"".join(codec.frame(codec.encode(codec.make_request(5, "wait", {"n": n}))) for n in (1, 2))
        await right.send(frames)
        reader = codec.FrameReader()
        reader.feed(await right.recv(65536))
        reply_id, outcome = codec.parse_reply(codec.decode(reader.next_payload()))
        assert reply_id == 5 and outcome.errno == "EINVAL" and "already in flight" in outcome.message
        await right.send(codec.frame(codec.encode(codec.make_request(6, "cancel", {"id": 5}))))
        replies = {}
        while len(replies) < 2:
            while (payload := reader.next_payload()) is not None:
                request_id, result = codec.parse_reply(codec.decode(payload))
                replies[request_id] = result
            if len(replies) < 2:
                reader.feed(await right.recv(65536))
        assert replies[6] == {"cancelled": True} and replies[5].errno == "ECANCELED"
        nursery.cancel_scope.cancel()
