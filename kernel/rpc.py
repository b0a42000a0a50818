"""Request/reply over message streams: the server loop every component uses, and the client.

Server side (Minix's main loop): receive, validate, dispatch to a handler, reply. Requests that
may block (``read``, ``wait``, a driver ``step``) each run in their own task so one connection
can have several in flight; the rest run inline, which keeps a no-op round trip cheap.

Client side: ``open_rpc_client(stream)`` runs a receive task that routes each reply to the
caller waiting on its id, so many tasks can share one connection.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Container
from contextlib import asynccontextmanager
from typing import Any

import trio

from . import codec, params
from .errors import KernelError
from .streams import MessageStream

log = logging.getLogger(__name__)

Dispatch = Callable[[codec.Request], Awaitable[Any]]

# A request with this op asks the server to cancel the caller's request ``args["id"]``, still
# running. A caller whose wait for a reply is cancelled sends it, so that a blocking call it gave
# up on does not go on to take effect unseen (a ``wait`` would reap a child and lose its status).
# The cancelled request is answered ECANCELED; the cancel request itself with {"cancelled": bool}.
CANCEL_OP = "cancel"
CANCEL_SEND_TIMEOUT_S = 1.0  # longest a cancelled caller spends telling the server


async def serve_stream(
    stream: MessageStream,
    dispatch: Dispatch,
    *,
    blocking_ops: Container[str] = frozenset(),
    crash_on_bug: bool = False,
) -> None:
    """Serve requests from ``stream`` until the peer closes it.

    Args:
        dispatch: runs one validated request and returns its result, or raises KernelError.
        blocking_ops: ops that may wait; they run in their own tasks, concurrently.
        crash_on_bug: if True, an exception other than KernelError propagates (a service
            crashes and its supervisor restarts it); if False it becomes an EIO reply (the
            kernel never dies of a bad request).

    Returns when the peer closes; requests still running are cancelled then.
    """
    async with trio.open_nursery() as nursery:
        in_flight = trio.CapacityLimiter(params.MAX_PENDING_PER_CONNECTION)
        running: dict[int, trio.CancelScope] = {}  # blocking requests being answered, by id
        served = 0
        while True:
            served += 1
            if served % 64 == 0:
                # Streams skip the scheduler when data is ready; yield now and then so one
                # busy connection cannot starve the others.
                await trio.lowlevel.checkpoint()
            try:
                message = await stream.receive()
            except trio.EndOfChannel:
                break
            except KernelError as error:
                if not await _send_quietly(stream, codec.make_error(None, error)) or stream.broken:
                    break
                continue
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                break
            try:
                request = codec.parse_request(message)
            except KernelError as error:
                await _send_quietly(stream, codec.make_error(codec.request_id_of(message), error))
                continue
            if request.op == CANCEL_OP:
                target = request.args.get("id")
                if type(target) is not int:
                    bad = KernelError("EINVAL", f"{CANCEL_OP}: argument 'id' must be the integer id of a request on this connection")
                    await _send_quietly(stream, codec.make_error(request.id, bad))
                    continue
                scope = running.get(target)
                if scope is not None:
                    scope.cancel()
                await _send_quietly(stream, codec.make_reply(request.id, {"cancelled": scope is not None}))
                continue
            if request.op in blocking_ops:
                if request.id in running:
                    reused = KernelError("EINVAL", f"request id {request.id} is already in flight on this connection")
                    await _send_quietly(stream, codec.make_error(request.id, reused))
                    continue
                borrower = object()  # one token per request, released when it is answered
                try:
                    in_flight.acquire_on_behalf_of_nowait(borrower)
                except trio.WouldBlock:
                    busy = KernelError("EAGAIN", f"more than {params.MAX_PENDING_PER_CONNECTION} requests in flight")
                    await _send_quietly(stream, codec.make_error(request.id, busy))
                    continue
                # The scope is findable before the task runs: a cancel read in the same batch
                # as its request (a busy kernel) must still stop it.
                scope = running[request.id] = trio.CancelScope()
                nursery.start_soon(_answer, stream, dispatch, request, crash_on_bug, in_flight, borrower, running, scope)
            else:
                await _answer(stream, dispatch, request, crash_on_bug)
        nursery.cancel_scope.cancel()


async def _answer(
    stream: MessageStream,
    dispatch: Dispatch,
    request: codec.Request,
    crash_on_bug: bool,
    limiter: trio.CapacityLimiter | None = None,
    borrower: object = None,
    running: dict[int, trio.CancelScope] | None = None,
    scope: trio.CancelScope | None = None,
) -> None:
    try:
        try:
            if scope is None:
                # Answered inline (not a blocking op): nothing can cancel it alone, so skip
                # the cancel scope, a good part of a no-op syscall's cost.
                result = await dispatch(request)
            else:
                if scope.cancel_called:
                    # Cancelled before it started: answer without running it (a wait on a
                    # zombie would reap it without ever reaching a checkpoint).
                    raise KernelError("ECANCELED", f"{request.op}: cancelled by the caller")
                with scope:
                    result = await dispatch(request)
                if scope.cancelled_caught:
                    raise KernelError("ECANCELED", f"{request.op}: cancelled by the caller")
            reply = codec.make_reply(request.id, result)
        except KernelError as error:
            reply = codec.make_error(request.id, error)
        except (trio.Cancelled, trio.EndOfChannel):
            raise
        except Exception as exc:
            if crash_on_bug:
                raise
            log.exception("internal error in %r", request.op)
            reply = codec.make_error(request.id, KernelError("EIO", f"internal error in {request.op}: {type(exc).__name__}: {exc}"))
        await _send_quietly(stream, reply)
    finally:
        if running is not None and running.get(request.id) is scope:
            del running[request.id]
        if limiter is not None:
            limiter.release_on_behalf_of(borrower)


async def _send_quietly(stream: MessageStream, message: dict[str, Any]) -> bool:
    """Send, returning False instead of raising if the peer is gone."""
    try:
        await stream.send(message)
        return True
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return False


_UNSET: Any = object()


class RpcClient:
    """Calls over one message stream; replies are matched to callers by id.

    There is no receive task: a waiting caller reads the stream itself (leader/follower). The
    first caller to wait becomes the reader and routes every reply it sees; when its own reply
    arrives it hands reading over to another waiting caller. This saves a task switch per round
    trip, which is most of the cost of a no-op syscall in-process.
    """

    def __init__(self, stream: MessageStream, on_close: Callable[[], None] | None = None) -> None:
        self.stream = stream
        self._on_close = on_close  # told first when the connection dies, before any caller wakes
        self._next_id = 1
        self._waiters: dict[int, _Waiter] = {}
        self._closed_error: KernelError | None = None
        self._reading = False  # a caller is reading the stream now

    async def call(self, op: str, args: dict[str, Any] | None = None) -> Any:
        """Send one request and wait for its reply.

        Raises:
            KernelError: the errno the peer replied with, or EIO if the peer went away.
        """
        if self._closed_error is not None:
            # A new exception each time: re-raising the stored one would chain every caller's
            # traceback onto it and keep their frames alive.
            raise KernelError(self._closed_error.errno, self._closed_error.message)
        request_id = self._next_id
        self._next_id += 1
        waiter = _Waiter()
        self._waiters[request_id] = waiter
        try:
            try:
                await self.stream.send(codec.make_request(request_id, op, args or {}))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self.fail_all(KernelError("EIO", "the peer closed the connection"))
            try:
                while waiter.outcome is _UNSET:
                    if not self._reading:
                        await self._read_until(waiter)
                    else:
                        waiter.event = trio.Event()
                        await waiter.event.wait()  # our reply, or a nudge to take over reading
                        waiter.event = None
            except trio.Cancelled:
                if waiter.outcome is _UNSET and self._closed_error is None:
                    await self._send_cancel(request_id)
                raise
        finally:
            del self._waiters[request_id]
            if not self._reading:
                # We may have been nudged to read and then cancelled before we could: pass
                # the turn on, or a follower would wait for a reply nobody reads.
                for other in self._waiters.values():
                    if other.outcome is _UNSET:
                        other.wake()
                        break
        if isinstance(waiter.outcome, KernelError):
            raise KernelError(waiter.outcome.errno, waiter.outcome.message)  # fail_all shares one
        return waiter.outcome

    async def _send_cancel(self, request_id: int) -> None:
        """Ask the server to cancel ``request_id`` (best effort, shielded, briefly)."""
        cancel_id = self._next_id
        self._next_id += 1
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + CANCEL_SEND_TIMEOUT_S
            try:
                await self.stream.send(codec.make_request(cancel_id, CANCEL_OP, {"id": request_id}))
            except (trio.BrokenResourceError, trio.ClosedResourceError, KernelError, OSError):
                pass  # the connection is going anyway

    async def _read_until(self, waiter: _Waiter) -> None:
        """Read and route replies until ``waiter`` has one; then hand reading to another caller."""
        self._reading = True
        try:
            while waiter.outcome is _UNSET:
                try:
                    message = await self.stream.receive()
                except (trio.EndOfChannel, trio.BrokenResourceError, trio.ClosedResourceError, KernelError, OSError):
                    self.fail_all(KernelError("EIO", "the peer closed the connection"))
                    return
                request_id, outcome = codec.parse_reply(message)
                if request_id is None and len(self._waiters) == 1:
                    # The peer could not read a request well enough to find its id (too deep,
                    # a string over the limit): with one call in flight, it is that call's.
                    request_id = next(iter(self._waiters))
                other = self._waiters.get(request_id)
                if other is not None and other.outcome is _UNSET:
                    other.outcome = outcome
                    other.wake()
        finally:
            self._reading = False
            for other in self._waiters.values():
                if other.outcome is _UNSET and other is not waiter:
                    other.wake()  # nudge one follower to become the reader
                    break

    @property
    def closed(self) -> bool:
        """True once the connection is gone: every call from now on fails with EIO."""
        return self._closed_error is not None

    def fail_all(self, error: KernelError) -> None:
        """Fail every call in flight and every later one with ``error``."""
        if self._closed_error is None and self._on_close is not None:
            self._on_close()
        self._closed_error = error
        for waiter in self._waiters.values():
            if waiter.outcome is _UNSET:
                waiter.outcome = error
                waiter.wake()
        self.stream.close()  # wakes a reader blocked in receive; it finds its outcome set


class _Waiter:
    """One call's reply slot. Its event exists only while the caller sleeps as a follower:
    the usual lone caller reads its own reply and never needs one."""

    __slots__ = ("event", "outcome")

    def __init__(self) -> None:
        self.event: trio.Event | None = None
        self.outcome: Any = _UNSET

    def wake(self) -> None:
        """Wake the caller if it sleeps (its reply came, or it is its turn to read)."""
        if self.event is not None:
            self.event.set()


@asynccontextmanager
async def open_rpc_client(stream: MessageStream) -> AsyncIterator[RpcClient]:
    """An ``RpcClient`` over ``stream``; the stream is closed when the block ends."""
    client = RpcClient(stream)
    try:
        yield client
    finally:
        client.fail_all(KernelError("EIO", "the connection was closed by this client"))
        with trio.CancelScope(shield=True):
            await stream.aclose()
