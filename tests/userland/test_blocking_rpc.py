"""libllm's blocking client against a fake kernel that breaks the protocol in scripted ways.

The fake is a real Unix socket served by a thread: it reads one request frame and answers with
the bytes a test gives it. A real kernel never sends these; the client must still fail cleanly
(EIO, connection closed) instead of hanging or raising something else.
"""

from __future__ import annotations

import gc
import os
import random
import signal
import socket
import struct
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path

import msgpack
import pytest

from llmos.kernel import codec
from llmos.userland import libllm
from llmos.userland.blocking_rpc import BlockingRpc


def read_request(conn: socket.socket) -> dict:
    header = conn.recv(4, socket.MSG_WAITALL)
    (length,) = struct.unpack(">I", header)
    return codec.decode(conn.recv(length, socket.MSG_WAITALL))


@pytest.fixture
def fake_kernel(tmp_path: Path) -> Iterator[Callable[..., str]]:
    """Serve one connection; ``answer(request)`` gives the bytes sent back for each request
    (None: hang up instead); with ``hang_up`` the fake closes the connection after answering."""
    threads: list[threading.Thread] = []
    listeners: list[socket.socket] = []

    def start(answer: Callable[[dict], bytes | None], hang_up: bool = False) -> str:
        path = str(tmp_path / f"fake{len(listeners)}.sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(1)
        listeners.append(listener)

        def serve() -> None:
            try:
                conn, _ = listener.accept()
            except OSError:
                return  # the test ended without connecting: the fixture closed the listener
            with conn:
                while True:
                    try:
                        request = read_request(conn)
                    except (struct.error, OSError):
                        return
                    data = answer(request)
                    if data is None:
                        return  # hang up
                    conn.sendall(data)
                    if hang_up:
                        return

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        threads.append(thread)
        return path

    yield start
    for listener in listeners:
        listener.close()
    for thread in threads:
        thread.join(5)


def reply(request: dict, result: object) -> bytes:
    return codec.frame(codec.encode(codec.make_reply(request["id"], result)))


def test_replies_are_matched_by_id_and_stale_ones_skipped(fake_kernel):
    def answer(request: dict) -> bytes:
        # A late reply to an earlier id first (as after an interrupted call), then the real one.
        return reply({"id": request["id"] - 1}, {"pid": -1}) + reply(request, {"pid": 7, "uid": 0, "tenant": "t"})

    with libllm.connect(fake_kernel(answer)) as llm:
        assert llm.getpid()["pid"] == 7
        assert llm.getpid()["pid"] == 7


def test_an_error_reply_raises_its_errno(fake_kernel):
    def answer(request: dict) -> bytes:
        error = codec.make_error(request["id"], codec.KernelError("ESRCH", "no process 5"))
        return codec.frame(codec.encode(error))

    with libllm.connect(fake_kernel(answer)) as llm:
        with pytest.raises(libllm.ESRCH, match="no process 5"):
            llm.stat(5)
        with pytest.raises(libllm.ESRCH):  # the connection is still good after an error reply
            llm.stat(5)


@pytest.mark.parametrize(("garbage", "hang_up"), [
    (struct.pack(">I", 1 << 30), False),  # a frame over the limit
    (codec.frame(b"\xc1"), False),  # not msgpack
    (codec.frame(msgpack.packb([1, 2])), False),  # not a map
    (struct.pack(">I", 100) + b"half", True),  # EOF inside a frame
    (None, True),  # EOF instead of a reply
], ids=["oversize", "invalid-msgpack", "not-a-map", "truncated", "hang-up"])
def test_a_broken_reply_closes_the_connection_with_eio(fake_kernel, garbage, hang_up):
    with libllm.connect(fake_kernel(lambda request: garbage, hang_up=hang_up)) as llm:
        with pytest.raises(libllm.EIO):
            llm.getpid()
        with pytest.raises(libllm.EIO):  # and every call after it
            llm.ps()


def test_connecting_where_no_kernel_listens_is_enoent(tmp_path):
    with pytest.raises(libllm.ENOENT, match="cannot connect to a kernel"):
        libllm.connect(str(tmp_path / "nobody.sock"))


def test_only_syscalls_can_be_awaited_on_a_blocking_connection(fake_kernel):
    rpc = BlockingRpc(fake_kernel(lambda request: None))

    class Other:
        def __await__(self):
            return (yield "something else")

    async def not_a_syscall() -> None:
        await Other()

    with pytest.raises(TypeError, match="can only run syscalls"):
        rpc.drive(not_a_syscall())
    rpc.close()


def test_a_request_the_kernel_could_not_read_fails_here_and_the_connection_stays(fake_kernel):
    with libllm.connect(fake_kernel(lambda request: reply(request, {"pid": 7}))) as llm:
        nested: object = 1
        for _ in range(20):
            nested = [nested]
        with pytest.raises(libllm.EINVAL, match="deeper"):
            llm.call("spawn", prompt_ids=nested)
        with pytest.raises(libllm.EINVAL):
            llm.call("spawn", prompt="x" * (2 << 20))  # over the kernel's string limit
        with pytest.raises(libllm.E2BIG):
            llm.call("spawn", prompt_ids=[1 << 40] * (1 << 20))  # over the frame limit
        assert llm.getpid() == {"pid": 7}


def test_an_error_reply_without_an_id_answers_the_one_waiting_call(fake_kernel):
    def answer(request: dict) -> bytes:
        return codec.frame(codec.encode(codec.make_error(None, codec.KernelError("EINVAL", "unreadable"))))

    with libllm.connect(fake_kernel(answer)) as llm:
        with pytest.raises(libllm.EINVAL, match="unreadable"):
            llm.getpid()


def test_every_call_after_a_close_raises_a_fresh_error(fake_kernel):
    llm = libllm.connect(fake_kernel(lambda request: None))
    llm.close()
    errors = []
    for _ in range(3):
        with pytest.raises(libllm.EIO) as error:
            llm.getpid()
        errors.append(error.value)
    # The same stored exception re-raised would carry every caller's traceback, growing forever.
    assert len({id(e) for e in errors}) == 3
    assert llm._rpc._closed.__traceback__ is None


def test_a_dropped_client_is_freed_at_once(fake_kernel):
    # Its socket closes with it, and the kernel ends the connection's processes: no reference
    # cycle may keep it alive until the garbage collector happens to run.
    path = fake_kernel(lambda request: reply(request, {"pid": 7}))
    gc.disable()
    try:
        llm = libllm.connect(path)
        llm.getpid()
        connection = weakref.ref(llm._rpc)
        del llm
        assert connection() is None
    finally:
        gc.enable()


def test_a_forked_childs_close_leaves_the_parents_connection_up(fake_kernel):
    with libllm.connect(fake_kernel(lambda request: reply(request, {"pid": 7}))) as llm:
        assert llm.getpid() == {"pid": 7}
        child = os.fork()
        if child == 0:  # the child closes its copy and leaves
            llm.close()
            os._exit(0)
        os.waitpid(child, 0)
        assert llm.getpid() == {"pid": 7}


def test_interrupts_while_large_replies_are_read_never_lose_bytes(fake_kernel):
    # Ctrl-C at random instants of calls whose replies take many reads: whatever it interrupts,
    # the connection keeps its framing (each later call gets its own reply), or, where it must
    # be closed, says so with EIO; it never hangs or hands a call another's reply.
    big = {"tokens": list(range(1000, 101000)), "offset": 100000, "eof": True, "exit": None}

    def answer(request: dict) -> bytes:
        if request["op"] == "read":
            return reply(request, big)
        if request["op"] == "cancel":
            return reply(request, {"cancelled": False})
        return reply(request, {"pid": 7})

    class Interrupted(Exception):
        pass

    armed = False  # the handler raises only while a call is in progress: the test's own code
    # (timers, asserts) must not be interrupted

    def interrupt(signum, frame):
        nonlocal armed
        if armed:
            armed = False
            raise Interrupted

    previous = signal.signal(signal.SIGINT, interrupt)
    rng = random.Random(5)
    interrupted = 0
    try:
        llm = libllm.connect(fake_kernel(answer))
        started = time.perf_counter()
        llm.read(1, 0)
        duration = time.perf_counter() - started
        for _ in range(40):
            timer = threading.Timer(rng.uniform(0, duration), os.kill, (os.getpid(), signal.SIGINT))
            timer.start()
            try:
                armed = True
                result = llm.read(1, 0)
                armed = False
                assert result.offset == 100000
            except Interrupted:
                interrupted += 1
            finally:
                armed = False
                timer.cancel()
                timer.join()
            assert llm.getpid() == {"pid": 7}  # its own reply, whatever the interrupt cut
        llm.close()
    finally:
        signal.signal(signal.SIGINT, previous)
    assert interrupted > 0


def test_a_reply_whose_id_is_not_an_integer_closes_the_connection_with_eio(fake_kernel):
    def answer(request: dict) -> bytes:
        return codec.frame(codec.encode({"v": 1, "id": [request["id"]], "ok": True, "result": {}}))

    with libllm.connect(fake_kernel(answer)) as llm:
        with pytest.raises(libllm.EIO):
            llm.getpid()
