"""Syscalls over a plain blocking Unix socket: what ``libllm.connect`` stands on.

A blocking program needs no event loop to make a syscall: write the request frame, read frames
until the reply with its id. The async client (``kernel/rpc.py``) pays a trio scheduling round
on every wait; this one sleeps in ``recv`` and is woken by the kernel directly, so a no-op round
trip costs about what the bare socket costs (``llmos bench ipc``: socket vs socket_raw).

The syscall methods themselves are written once, as ``libllm.Client``'s coroutines: ``drive``
runs one such coroutine without an event loop, answering each ``await rpc.call(...)`` it makes
with a blocking round trip. Their only awaits are syscalls, so nothing else ever needs a loop.

Threads may share a connection, as with the async client: requests go out whole under a send
lock, and one waiting thread at a time reads the socket and hands each reply to the thread
waiting for its id (leader/follower), so one thread blocked in ``wait`` does not keep another
from sending the ``kill`` that ends it.

Interrupts (Ctrl-C in the main thread) keep the connection: one that arrives while the caller
waits for its reply asks the kernel to cancel the request, so a ``wait`` given up on reaps
nothing unseen, and the late reply is dropped by id. While a frame is being read, or a small one
written, SIGINT is held back and delivered after, so that it never lands mid-frame. An exception
from another signal's handler there (or Ctrl-C inside a large frame's send) leaves the stream's
framing unknown: the connection is closed (later calls fail with EIO) and the exception goes on.
"""

from __future__ import annotations

import _signal  # signal's C module: signal.py's wrappers convert to enums, 10x the cost here
import os
import signal
import socket
import threading
from collections.abc import Coroutine, Generator
from typing import Any

from llmos.kernel import codec, params
from llmos.kernel.errors import KernelError
from llmos.kernel.rpc import CANCEL_OP

CANCEL_SEND_TIMEOUT_S = 1.0  # longest an interrupted caller spends telling the kernel to cancel
RECV_BYTES = 65536
CHECK_WHOLE_ABOVE = 4096  # payload bytes over which a request is decoded here before it is sent
_SIGINT = int(signal.SIGINT)
_MAIN_THREAD = threading.main_thread().ident  # the only thread Python runs signal handlers in
HOLD_SIGINT_SEND_BYTES = 65536  # frames up to this size are sent with Ctrl-C held (they go out at once)


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
        self._lock = threading.Lock()  # guards the fields below
        self._turn = threading.Condition(self._lock)  # a reply came, or the reader's turn is free
        self._sleepers = 0  # callers asleep on _turn
        self._next_id = 1
        self._waiting: set[int] = set()  # ids whose caller waits for the reply
        self._replies: dict[int, Any] = {}  # replies that came for waiting callers
        self._reading = False  # a caller is reading the socket now
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
                kernel could not read (caught here, the connection stays); EIO once the
                connection is gone.
        """
        with self._lock:
            self._raise_if_closed()
            request_id = self._next_id
            self._next_id += 1
        request = codec.make_request(request_id, op, args)
        payload = codec.encode(request)
        _check_readable_by_kernel(request, payload)
        with self._lock:
            self._waiting.add(request_id)
        try:
            self._send(codec.frame(payload))
            return self._await_reply(request_id)
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

    def _send(self, data: bytes) -> None:
        with self._send_lock:
            self._raise_if_closed()
            # A small frame goes out at once: hold Ctrl-C over it, so that it cannot land
            # mid-frame. A large one may block on a kernel that does not read: interruptible.
            held = _hold_sigint() if len(data) <= HOLD_SIGINT_SEND_BYTES else _NOT_HELD
            try:
                self._sock.sendall(data)
            except OSError:
                self._fail()
                self._raise_if_closed()
            except BaseException:
                # Interrupted inside sendall: part of the frame may be out, and the kernel
                # could never find the next frame's start. The connection is unusable.
                self._fail()
                raise
            finally:
                _release_sigint(held)

    def _await_reply(self, request_id: int) -> Any:
        while True:
            with self._lock:
                while True:
                    if request_id in self._replies:
                        outcome = self._replies.pop(request_id)
                        if isinstance(outcome, KernelError):
                            raise KernelError(outcome.errno, outcome.message)
                        return outcome
                    self._raise_if_closed()
                    if not self._reading:
                        self._reading = True  # our turn to read, for everyone waiting
                        break
                    self._sleepers += 1
                    try:
                        self._turn.wait()
                    finally:
                        self._sleepers -= 1
            try:
                self._read_replies()
            finally:
                with self._lock:
                    self._reading = False
                    if self._sleepers:
                        self._turn.notify_all()  # their replies may have come; or one reads next

    def _read_replies(self) -> None:
        """Wait until the socket is readable, read what is there, and file every whole reply."""
        try:
            # Sleep until a byte is there, taking none: an interrupt here (where a caller
            # spends its wait) loses nothing. A peek costs less than poll, which wakes slower.
            self._sock.recv(1, socket.MSG_PEEK)
        except OSError:
            pass  # the recv below sees it too
        held = _hold_sigint()  # from here until the replies are filed, Ctrl-C waits
        try:
            try:
                data = self._sock.recv(RECV_BYTES)
            except OSError:
                data = b""
            if not data:
                self._fail()
                return
            self._reader.feed(data)
            with self._lock:
                while (payload := self._reader.next_payload()) is not None:
                    reply_id, outcome = codec.parse_reply(codec.decode(payload))
                    if reply_id is None and len(self._waiting) == 1:
                        # The kernel could not read a request well enough to find its id; the
                        # only caller waiting sent it.
                        reply_id = next(iter(self._waiting))
                    if reply_id in self._waiting:
                        self._replies[reply_id] = outcome
                    # Otherwise the late reply of an interrupted call, or of its cancel: dropped.
        except KernelError:  # a frame over the limit, or one that is not a msgpack map
            self._fail()
        except BaseException:
            # Another signal's handler raised between reading bytes and filing them: they may
            # be lost, and the framing with them; their callers must not wait forever.
            self._fail()
            raise
        finally:
            _release_sigint(held)

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
            except OSError:
                self._fail()  # timed out, or the kernel is gone
            except BaseException:
                self._fail()  # interrupted again, perhaps mid-frame
                raise
            finally:
                if self._sock.fileno() != -1:
                    self._sock.settimeout(None)

    def _raise_if_closed(self) -> None:
        if self._closed is not None:
            # A new exception each time: raising the stored one would chain every caller's
            # traceback onto it, and keep their frames alive.
            raise KernelError(self._closed.errno, self._closed.message)

    def _fail(self, error: KernelError | None = None) -> None:
        """Mark the connection gone (with ``error``, by default the kernel hung up) and close it."""
        with self._lock:
            if self._closed is None:
                self._closed = error or KernelError("EIO", "the kernel closed the connection")
            self._turn.notify_all()
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
        if os.getpid() == self._owner_pid and self._sock.fileno() != -1:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked on it
            except OSError:
                pass
        self._fail(KernelError("EIO", "the connection was closed by this client"))


_held_frames: list[Any] = []  # SIGINTs that came while held (main thread only: no lock needed)


def _note_sigint(signum: int, frame: Any) -> None:
    _held_frames.append(frame)


_NOT_HELD: Any = object()


def _hold_sigint() -> Any:
    """Hold SIGINT back until ``_release_sigint(returned)``: a KeyboardInterrupt raised between
    reading bytes and keeping them would lose them. Only the main thread runs Python signal
    handlers, so only it needs (and may) do this."""
    if threading.get_ident() != _MAIN_THREAD or _signal.getsignal(_SIGINT) is None:
        return _NOT_HELD  # None: a handler installed outside Python, which could not be put back
    return _signal.signal(_SIGINT, _note_sigint)


def _release_sigint(previous: Any) -> None:
    """Put the SIGINT handler ``previous`` back, and deliver to it a SIGINT that came meanwhile."""
    if previous is _NOT_HELD:
        return
    _signal.signal(_SIGINT, previous)
    if not _held_frames:
        return
    frame = _held_frames[0]
    _held_frames.clear()
    if callable(previous):
        previous(_SIGINT, frame)  # KeyboardInterrupt, by default
    elif previous == signal.SIG_DFL:
        os.kill(os.getpid(), _SIGINT)


def _check_readable_by_kernel(request: dict[str, Any], payload: bytes) -> None:
    """Raise the error the kernel's decoder would answer ``payload`` with, before it is sent.

    A request the kernel cannot decode is answered without its id (the id is inside what could
    not be read), or over the frame limit with a hang-up; checked here, the caller gets E2BIG or
    EINVAL and the connection stays. Small payloads only need the nesting check: every other
    limit takes more bytes than they have.
    """
    if len(payload) > params.MAX_FRAME_BYTES:
        raise KernelError("E2BIG", f"request of {len(payload)} bytes exceeds the {params.MAX_FRAME_BYTES}-byte limit")
    if len(payload) > CHECK_WHOLE_ABOVE:
        codec.decode(payload)
    else:
        codec.check_depth(request)
