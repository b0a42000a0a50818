"""Syscalls over a plain blocking Unix socket: what ``libllm.connect`` stands on.

A blocking program needs no event loop to make a syscall: write the request frame, read frames
until the reply with its id. The async client (``kernel/rpc.py``) pays a trio scheduling round
on every wait; this one sleeps in ``recv`` and is woken by the kernel directly, so a no-op
round trip costs about what the bare socket costs (``llmos bench ipc``: socket vs socket_raw).

The syscall methods themselves are written once, as ``libllm.Client``'s coroutines: ``drive``
runs one such coroutine without an event loop, answering each ``await rpc.call(...)`` it makes
with a blocking round trip. Their only awaits are syscalls, so nothing else ever needs a loop.

One call at a time per connection: threads that share one take turns (a lock), so a thread
blocked in ``read`` or ``wait`` holds the connection until the kernel answers. Open one
connection per thread to block in several places at once.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Coroutine, Generator
from typing import Any

from llmos.kernel import codec
from llmos.kernel.errors import KernelError
from llmos.kernel.rpc import CANCEL_OP

CANCEL_SEND_TIMEOUT_S = 1.0  # longest an interrupted caller spends telling the kernel to cancel
RECV_BYTES = 65536


class _Ask:
    """What a syscall coroutine awaits on a blocking connection: the driver answers it."""

    __slots__ = ("op", "args")

    def __init__(self, op: str, args: dict[str, Any]) -> None:
        self.op = op
        self.args = args

    def __await__(self) -> Generator[_Ask, Any, Any]:
        return (yield self)


class BlockingRpc:
    """Request/reply over one connected Unix socket, blocking; replies matched by id."""

    def __init__(self, path: str) -> None:
        """Connect to the kernel serving ``path``.

        Raises:
            KernelError: ENOENT if nothing accepts connections there.
        """
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
        except OSError as exc:
            sock.close()
            raise KernelError("ENOENT", f"cannot connect to a kernel at {path}: {exc.strerror}") from None
        self._sock = sock
        self._reader = codec.FrameReader()
        self._lock = threading.Lock()
        self._next_id = 1
        self._closed_error: KernelError | None = None

    async def call(self, op: str, args: dict[str, Any]) -> Any:
        """The coroutine form ``libllm.Client`` awaits; only ``drive`` can run it."""
        return await _Ask(op, args)

    def drive(self, coro: Coroutine[Any, Any, Any]) -> Any:
        """Run a syscall coroutine to its end, answering each of its calls over the socket."""
        try:
            ask = coro.send(None)
            while True:
                if not isinstance(ask, _Ask):
                    raise TypeError(f"a blocking connection can only run syscalls, not await {ask!r}")
                try:
                    reply = self.call_blocking(ask.op, ask.args)
                except KernelError as error:
                    ask = coro.throw(error)
                else:
                    ask = coro.send(reply)
        except StopIteration as stop:
            return stop.value
        finally:
            coro.close()

    def call_blocking(self, op: str, args: dict[str, Any]) -> Any:
        """Send one request and block until its reply.

        Raises:
            KernelError: the errno the kernel replied with, or EIO once the connection is gone.
        """
        with self._lock:
            if self._closed_error is not None:
                raise self._closed_error
            request_id = self._next_id
            self._next_id += 1
            data = codec.frame(codec.encode(codec.make_request(request_id, op, args)))
            try:
                self._sock.sendall(data)
            except OSError:
                self._fail()
            except BaseException:
                # Interrupted inside sendall: part of a frame may be out, and the kernel could
                # never find the next frame's start. The connection is unusable.
                self._fail()
                raise
            try:
                return self._receive_reply(request_id)
            except KernelError:
                raise
            except BaseException:
                # Interrupted (Ctrl-C) while the kernel works on it: ask it to cancel, so a
                # blocking call given up on (a wait that reaps a child) takes no effect unseen.
                # Its late reply is skipped by id on the next call.
                self._send_cancel(request_id)
                raise

    def _receive_reply(self, request_id: int) -> Any:
        while True:
            try:
                payload = self._reader.next_payload()
            except KernelError:  # a frame over the limit: the framing is lost
                self._fail()
            if payload is None:
                try:
                    data = self._sock.recv(RECV_BYTES)
                except OSError:
                    data = b""
                if not data:
                    self._fail()
                self._reader.feed(data)
                continue
            try:
                reply_id, outcome = codec.parse_reply(codec.decode(payload))
            except KernelError:
                self._fail()
            if reply_id != request_id:
                continue  # the late reply of a call interrupted earlier, or to its cancel request
            if isinstance(outcome, KernelError):
                raise outcome
            return outcome

    def _send_cancel(self, request_id: int) -> None:
        if self._closed_error is not None:
            return
        cancel_id = self._next_id
        self._next_id += 1
        data = codec.frame(codec.encode(codec.make_request(cancel_id, CANCEL_OP, {"id": request_id})))
        try:
            self._sock.settimeout(CANCEL_SEND_TIMEOUT_S)
            self._sock.sendall(data)
            self._sock.settimeout(None)
        except OSError:
            self._fail_quietly()

    def _fail(self) -> None:
        self._fail_quietly()
        assert self._closed_error is not None
        raise self._closed_error

    def _fail_quietly(self) -> None:
        if self._closed_error is None:
            self._closed_error = KernelError("EIO", "the kernel closed the connection")
        self._sock.close()

    @property
    def closed(self) -> bool:
        """True once the connection is gone: every call from now on fails with EIO."""
        return self._closed_error is not None

    def close(self) -> None:
        """Close the connection; later calls fail with EIO. Safe to call twice."""
        if self._closed_error is None:
            self._closed_error = KernelError("EIO", "the connection was closed by this client")
        try:
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in recv on it
        except OSError:
            pass
        self._sock.close()

