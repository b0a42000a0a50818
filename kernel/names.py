"""The name server: drivers and services register under a name; the kernel calls them by it.

A name is *ready* once its server is running and (after a restart) re-initialised. Calls made
while it restarts wait for it to be ready again, so a client re-binds by name without knowing
that anything happened (DESIGN.md, Services).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import trio

from . import params
from .errors import KernelError
from .rpc import RpcClient


@dataclass
class Endpoint:
    """The current binding of one name."""

    name: str
    client: RpcClient | None = None
    generation: int = 0  # bumped on every (re)start; a caller can tell it met a new instance
    ready: trio.Event = field(default_factory=trio.Event)
    restarts: int = 0
    last_crash: str = ""


class NameServer:
    """Maps names to the RPC clients of running servers."""

    def __init__(self) -> None:
        self._endpoints: dict[str, Endpoint] = {}

    def endpoint(self, name: str) -> Endpoint:
        """The endpoint for ``name``, created (unbound) on first use."""
        if name not in self._endpoints:
            self._endpoints[name] = Endpoint(name)
        return self._endpoints[name]

    def bind(self, name: str, client: RpcClient) -> Endpoint:
        """Bind a freshly started server; it is not ready until ``mark_ready``."""
        endpoint = self.endpoint(name)
        endpoint.client = client
        endpoint.generation += 1
        return endpoint

    def mark_ready(self, name: str) -> None:
        self.endpoint(name).ready.set()

    def unbind(self, name: str) -> None:
        """The server is gone (crashed or stopped); callers wait for the next ``mark_ready``."""
        endpoint = self.endpoint(name)
        endpoint.client = None
        if endpoint.ready.is_set():
            endpoint.ready = trio.Event()

    def unbind_client(self, name: str, client: RpcClient) -> None:
        """Unbind ``name`` if ``client`` is still its binding (a newer instance is left alone)."""
        if self.endpoint(name).client is client:
            self.unbind(name)

    async def wait_ready(self, name: str, timeout: float = params.CALL_TIMEOUT_S) -> Endpoint:
        """Wait until ``name`` is ready; ETIMEDOUT if it is not within ``timeout`` seconds."""
        if name not in self._endpoints:
            raise KernelError("ENOENT", f"no server is registered as {name!r}")
        endpoint = self._endpoints[name]
        with trio.move_on_after(timeout):
            await endpoint.ready.wait()
            return endpoint
        raise KernelError("ETIMEDOUT", f"server {name!r} was not ready within {timeout:g} s")

    async def call(self, name: str, op: str, args: dict[str, Any] | None = None, *, bound_only: bool = False) -> Any:
        """Call ``op`` on the server named ``name`` once it is ready.

        Args:
            bound_only: call as soon as it is bound, even before it is ready (used by
                restart hooks that re-initialise it).
        """
        endpoint = self.endpoint(name) if bound_only else await self.wait_ready(name)
        if endpoint.client is None:
            raise KernelError("EIO", f"server {name!r} is not running")
        return await endpoint.client.call(op, args)
