"""libllm's blocking client against a fake kernel that breaks the protocol in scripted ways.

The fake is a real Unix socket served by a thread: it reads one request frame and answers with
the bytes a test gives it. A real kernel never sends these; the client must still fail cleanly
(EIO, connection closed) instead of hanging or raising something else.
"""

from __future__ import annotations

import socket
import struct
import threading
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
            conn, _ = listener.accept()
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
