"""Syscalls over a plain blocking Unix socket: what ``libllm.connect`` stands on.

A blocking program needs no event loop to make a syscall: write the request frame, read frames
until the reply with its id. The async client (``kernel/rpc.py``) pays a trio scheduling round
on every wait; this one sleeps in ``recv`` and is woken by the kernel directly. What it adds to
a bare socket's round trip (``llmos bench ipc``: socket vs socket_raw) is the signal hold, a
peek before each read, and the bookkeeping that lets threads share the connection.

The syscall methods themselves are written once, as ``libllm.Client``'s coroutines: ``drive``
runs one such coroutine without an event loop, answering each ``await rpc.call(...)`` it makes
with a blocking round trip. Their only awaits are syscalls, so nothing else ever needs a loop.

Threads may share a connection, as with the async client: requests go out whole under a send
lock, and one waiting thread at a time reads the socket and hands each reply to the thread
waiting for its id (leader/follower), so one thread blocked in ``wait`` does not keep another
from sending the ``kill`` that ends it.

Signals (Ctrl-C, an alarm used as a timeout) keep the connection: while a call runs, they are
held back and delivered only where it waits (``signal_deferral.py``), so a handler that raises
never lands between reading bytes and keeping them, or between taking the reader's turn and
giving it back. Interrupted while waiting for its reply, a call asks the kernel to cancel the
request, so a ``wait`` given up on reaps nothing unseen, and the late reply is dropped by id.
Only an interrupt inside a large frame's send (one that may block) costs the connection: the
kernel could not find the next frame's start, so later calls fail with EIO.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Coroutine, Generator
from typing import Any

from llmos.kernel import codec, params
from llmos.kernel.errors import KernelError
from llmos.kernel.rpc import CANCEL_OP

from . import signal_deferral

CANCEL_SEND_TIMEOUT_S = 1.0  # longest an interrupted caller spends telling the kernel to cancel
RECV_BYTES = 65536
SMALL_REQUEST_BYTES = 4096  # smaller than any string, list or map over a decoding limit
INTERRUPTIBLE_SEND_BYTES = 65536  # larger frames are sent interruptibly (they may block)


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
        self._owner_pid = os.getpid()  # a forked child's close must not hang up on its parent
        self._reader = codec.FrameReader()
        self._send_lock = threading.Lock()  # a frame goes out whole
        # Guards the fields below. Re-entrant: a signal handler (delivered while we wait) may
        # close the connection, and _fail takes it.
        self._lock = threading.RLock()
        self._turn = threading.Condition(self._lock)  # a reply came, or the reader's turn is free
        self._sleepers = 0  # callers asleep on _turn
        self._next_id = 1
        self._waiting: set[int] = set()  # ids whose caller waits for the reply
        self._replies: dict[int, Any] = {}  # replies that came for waiting callers
        self._reader_thread: int | None = None  # the thread reading the socket for everyone now
        self._closed: KernelError | None = None

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
            KernelError: the errno the kernel replied with; E2BIG or EINVAL for a request the
                kernel could not read (caught here, the connection stays); EBUSY for a call
                from a signal handler that interrupted this thread's own read of the
                connection; EIO once the connection is gone.
        """
        held = signal_deferral.hold()  # signals reach their handlers only where we wait
        try:
            with self._lock:
                self._raise_if_closed()
                if self._reader_thread == threading.get_ident():
                    raise KernelError("EBUSY", f"{op}: called from a signal handler while this thread reads "
                                               "the same connection; use another connection there")
                request_id = self._next_id
                self._next_id += 1
            payload = codec.encode(codec.make_request(request_id, op, args))
            _check_readable_by_kernel(args, payload)
            with self._lock:
                self._waiting.add(request_id)
            try:
                self._send(codec.frame(payload), held)
                return self._await_reply(request_id, held)
            except KernelError:
                raise
            except BaseException:
                # Interrupted (Ctrl-C) while the kernel works on it: ask it to cancel, so that a
                # blocking call given up on (a wait that reaps a child) takes no effect unseen.
                self._send_cancel(request_id)
                raise
            finally:
                with self._lock:
                    self._waiting.discard(request_id)
                    self._replies.pop(request_id, None)
        finally:
            signal_deferral.release(held)  # a signal noted meanwhile is delivered now

    def _send(self, data: bytes, held: bool) -> None:
        with self._send_lock:
            self._raise_if_closed()
            try:
                if len(data) <= INTERRUPTIBLE_SEND_BYTES:
                    self._sock.sendall(data)  # goes out at once: signals wait
                else:
                    # A large frame may block on a kernel that does not read: interruptible,
                    # and an interrupt mid-frame leaves the kernel unable to find the next
                    # frame's start.
                    with signal_deferral.interruptible(held):
                        self._sock.sendall(data)
            except OSError:
                self._fail()
                self._raise_if_closed()
            except BaseException:
                self._fail()
                raise

    def _await_reply(self, request_id: int, held: bool) -> Any:
        me = threading.get_ident()
        while True:
            with self._lock:
                while True:
                    if request_id in self._replies:
                        outcome = self._replies.pop(request_id)
                        if isinstance(outcome, KernelError):
                            raise KernelError(outcome.errno, outcome.message)
                        return outcome
                    self._raise_if_closed()
                    if self._reader_thread is None:
                        self._reader_thread = me  # our turn to read, for everyone waiting
                        break
                    self._sleepers += 1
                    try:
                        with signal_deferral.interruptible(held):
                            self._turn.wait()
                    finally:
                        self._sleepers -= 1
            try:
                self._read_replies(held)
            finally:
                with self._lock:
                    self._reader_thread = None
                    if self._sleepers:
                        self._turn.notify_all()  # their replies may have come; or one reads next

    def _read_replies(self, held: bool) -> None:
        """Wait until the socket is readable, read what is there, and file every whole reply."""
        try:
            # Sleep until a byte is there, taking none: signals are delivered here, where the
            # caller spends its wait, and an interrupt loses nothing. (A peek costs less than
            # poll, which wakes slower.)
            with signal_deferral.interruptible(held):
                self._sock.recv(1, socket.MSG_PEEK)
        except OSError:
            pass  # the recv below sees it too
        try:
            data = self._sock.recv(RECV_BYTES)
        except OSError:
            data = b""
        if not data:
            self._fail()
            return
        self._reader.feed(data)
        try:
            with self._lock:
                while (payload := self._reader.next_payload()) is not None:
                    reply_id, outcome = codec.parse_reply(codec.decode(payload))
                    if reply_id is None and len(self._waiting) == 1:
                        # The kernel could not read a request well enough to find its id; the
                        # only caller waiting sent it.
                        reply_id = next(iter(self._waiting))
                    elif type(reply_id) is not int:
                        raise KernelError("EIO", f"a reply with the id {reply_id!r}")
                    if reply_id in self._waiting:
                        self._replies[reply_id] = outcome
                    # Otherwise the late reply of an interrupted call, or of its cancel: dropped.
        except KernelError:  # a frame over the limit, or a reply that is not a well-formed map
            self._fail()

    def _send_cancel(self, request_id: int) -> None:
        with self._lock:
            if self._closed is not None:
                return
            cancel_id = self._next_id
            self._next_id += 1
        data = codec.frame(codec.encode(codec.make_request(cancel_id, CANCEL_OP, {"id": request_id})))
        with self._send_lock:
            try:
                self._sock.settimeout(CANCEL_SEND_TIMEOUT_S)
                self._sock.sendall(data)
                self._sock.settimeout(None)
            except OSError:
                self._fail()  # timed out, or the kernel is gone

    def _raise_if_closed(self) -> None:
        if self._closed is not None:
            # A new exception each time: raising the stored one would chain every caller's
            # traceback onto it, and keep their frames alive.
            raise KernelError(self._closed.errno, self._closed.message)

    def _fail(self, error: KernelError | None = None) -> None:
        """Mark the connection gone (with ``error``, by default the kernel hung up) and close it,
        waking every thread blocked on it."""
        with self._lock:
            if self._closed is None:
                self._closed = error or KernelError("EIO", "the kernel closed the connection")
            self._turn.notify_all()
        if os.getpid() == self._owner_pid and self._sock.fileno() != -1:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)  # close() alone wakes no blocked recv
            except OSError:
                pass
        self._sock.close()

    @property
    def closed(self) -> bool:
        """True once the connection is gone: every call from now on fails with EIO."""
        return self._closed is not None

    def close(self) -> None:
        """Close the connection; later calls fail with EIO. Safe to call twice.

        In the process that connected, a thread blocked on the connection wakes with EIO. A
        forked child closes only its own copy: the parent's connection stays up.
        """
        self._fail(KernelError("EIO", "the connection was closed by this client"))


_PLAIN = frozenset((int, float, bool, str, bytes, type(None)))  # can break no decoding limit in a small frame


def _check_readable_by_kernel(args: dict[str, Any], payload: bytes) -> None:
    """Raise the error the kernel's decoder would answer ``payload`` with, before it is sent.

    A request the kernel cannot decode is answered without its id (the id is inside what could
    not be read), or over the frame limit with a hang-up; checked here, with the kernel's own
    decoder, the caller gets E2BIG or EINVAL and the connection stays. A small request of plain
    values (most syscalls) cannot break a limit: it skips the decode.
    """
    if len(payload) > params.MAX_FRAME_BYTES:
        raise KernelError("E2BIG", f"request of {len(payload)} bytes exceeds the {params.MAX_FRAME_BYTES}-byte limit")
    if len(payload) <= SMALL_REQUEST_BYTES and all(type(k) is str and type(v) in _PLAIN for k, v in args.items()):
        return
    codec.decode(payload)
