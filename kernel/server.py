"""The base of every message-passing server (services and drivers): Minix's main loop.

A subclass defines ``async def do_<op>(self, args) -> result`` handlers. Each follows one
recipe: copy in and check arguments, look up the target, check permission and state, act,
return plain data, or raise ``KernelError`` with an errno. Unknown ops get ENOSYS.

An exception that is not a ``KernelError`` crashes the server; its supervisor restarts it.
"""

from __future__ import annotations

from typing import Any, ClassVar

from . import codec
from .errors import KernelError
from .rpc import serve_stream
from .streams import MessageStream


class Server:
    """Dispatches requests to ``do_<op>`` methods."""

    name: ClassVar[str] = "server"
    blocking_ops: ClassVar[frozenset[str]] = frozenset()  # ops that may wait: run concurrently

    async def serve(self, stream: MessageStream) -> None:
        """Serve one connection (the kernel's) until it closes; crash on a bug."""
        await serve_stream(stream, self._dispatch, blocking_ops=self.blocking_ops, crash_on_bug=True)

    async def _dispatch(self, request: codec.Request) -> Any:
        handler = getattr(self, "do_" + request.op, None) if request.op.isidentifier() else None
        if handler is None:
            raise KernelError("ENOSYS", f"{self.name} has no operation {request.op!r}")
        return await handler(request.args)

    async def do_ping(self, args: dict[str, Any]) -> str:
        """Liveness check used by the supervisor and by tests."""
        return "pong"
