"""The supervisor: starts servers, restarts the ones that crash (Minix's reincarnation server).

Each supervised server runs in its own task, connected to the kernel by a memory stream pair
and bound in the name server. When it crashes (an exception escapes its loop, or the kernel
kills it for fault injection), the supervisor unbinds it, fails the calls in flight with EIO,
waits a backoff that doubles with each quick crash, starts a fresh instance from the same
factory, runs the restart hook (which re-initialises it: load the model, set up the KV cache)
and marks it ready again.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio

from . import params
from .errors import KernelError, sole_exception
from .names import NameServer
from .rpc import RpcClient
from .server import Server
from .streams import memory_stream_pair

log = logging.getLogger(__name__)

ServerFactory = Callable[[], Server]
RestartHook = Callable[[str], Awaitable[None]]


@dataclass
class _Child:
    name: str
    factory: ServerFactory
    on_start: RestartHook | None
    cancel_scope: trio.CancelScope | None = None
    kill_requested: bool = False
    stopping: bool = False


class Supervisor:
    """Keeps a set of named servers running."""

    def __init__(self, names: NameServer, nursery: trio.Nursery) -> None:
        self._names = names
        self._nursery = nursery
        self._children: dict[str, _Child] = {}

    async def start(self, name: str, factory: ServerFactory, on_start: RestartHook | None = None) -> None:
        """Start ``factory()`` as ``name`` and wait until it is ready.

        Args:
            on_start: awaited after every start, first or restart, before the name is ready;
                it may call the server with ``names.call(..., bound_only=True)``.
        """
        if name in self._children:
            raise KernelError("EEXIST", f"a server named {name!r} is already supervised")
        child = _Child(name, factory, on_start)
        self._children[name] = child
        self._names.endpoint(name)  # callers may wait on it from now on
        self._nursery.start_soon(self._keep_running, child)
        await self._names.wait_ready(name)

    def kill(self, name: str) -> None:
        """Crash ``name`` now, as if it had died; it is restarted like any crash (fault injection)."""
        child = self._children.get(name)
        if child is None:
            raise KernelError("ENOENT", f"no supervised server named {name!r}")
        if child.cancel_scope is not None:
            child.kill_requested = True
            child.cancel_scope.cancel()
            self._names.unbind(name)  # not ready from this moment, not when the task unwinds

    def restarts(self) -> dict[str, int]:
        """Restart count of every supervised server."""
        return {name: self._names.endpoint(name).restarts for name in sorted(self._children)}

    def status(self) -> list[dict[str, Any]]:
        """One row per server: name, ready, restarts, last crash."""
        rows = []
        for name in sorted(self._children):
            endpoint = self._names.endpoint(name)
            rows.append({
                "name": name,
                "ready": endpoint.ready.is_set(),
                "generation": endpoint.generation,
                "restarts": endpoint.restarts,
                "last_crash": endpoint.last_crash,
            })
        return rows

    async def _keep_running(self, child: _Child) -> None:
        backoff = params.BACKOFF_INITIAL_S
        while True:
            started = trio.current_time()
            crash = await self._run_once(child)
            if crash is None:
                return  # stopped on purpose
            endpoint = self._names.endpoint(child.name)
            endpoint.restarts += 1
            endpoint.last_crash = crash
            log.warning("server %s crashed (%s); restart %d in %.3f s", child.name, crash, endpoint.restarts, backoff)
            if trio.current_time() - started >= params.RESTART_RESET_S:
                backoff = params.BACKOFF_INITIAL_S
            await trio.sleep(backoff)
            backoff = min(backoff * 2, params.BACKOFF_MAX_S)

    async def _run_once(self, child: _Child) -> str | None:
        """Run one instance of ``child``; return a description of its crash, or None if stopped."""
        kernel_end, server_end = memory_stream_pair()
        client = RpcClient(kernel_end, on_close=lambda: self._names.unbind_client(child.name, client))
        crash: str | None = None
        try:
            server = child.factory()
            async with trio.open_nursery() as nursery:
                child.cancel_scope = nursery.cancel_scope
                nursery.start_soon(self._serve, server, server_end)
                self._names.bind(child.name, client)
                if child.on_start is not None:
                    await child.on_start(child.name)
                self._names.mark_ready(child.name)
        except Exception as exc:  # any failure of the server is a crash to recover from
            cause = sole_exception(exc)
            crash = f"{type(cause).__name__}: {cause}"
        finally:
            child.cancel_scope = None
            self._names.unbind(child.name)
            client.fail_all(KernelError("EIO", f"server {child.name!r} stopped"))
        if child.kill_requested:
            child.kill_requested = False
            return "killed by the supervisor"
        if child.stopping:
            return None
        return crash or "server loop returned"

    @staticmethod
    async def _serve(server: Server, stream: Any) -> None:
        await server.serve(stream)
        # The kernel's end only closes at shutdown; a serve loop that returns early has died.
        raise RuntimeError("serve loop returned")

    def stop_all(self) -> None:
        """Stop every server without restarting it (kernel shutdown)."""
        for child in self._children.values():
            child.stopping = True
            if child.cancel_scope is not None:
                child.cancel_scope.cancel()

