"""Capabilities of processes: minted at spawn and fork, checked on use, revoked at exit.

With a security service (``--home``), the kernel gives every process three handles, minted by
that service (services/capabilities.py: HMAC-signed, bound to the pid, revocable):

    model     model:<its model>       rights run, fork   fork checks it; revoking it ends the process
    device    device:<its device>     rights run         revoking it ends the process
    priority  priority:<nice floor>   right renice       the highest priority (lowest nice) it may
                                                         take back after its nice was raised

A program gets its processes' handles from ``spawn``, ``fork`` and ``stat`` (owner and uid 0
only) and presents one where the syscall asks: ``nice(pid, value, cap=...)`` below the current
nice needs the process's priority handle (uid 0 needs none, as in Unix). A handle of another
process, a revoked one, an edited or forged one is refused with EPERM by the security service,
which names the reason. ``cap_revoke(handle)`` revokes one; the kernel revokes all of a
process's handles when it exits, so a zombie's handles are dead too. Running on a model and a
device *is* using them, so revoking either ends the process with EPERM at once.

Without a security service processes have no handles and Unix's rule stands: only uid 0 may
lower a nice value. Nothing here runs on the scheduler's hot path: minting costs one service
call per spawn (one audit entry), revocation at exit goes through a queue drained by a background task.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from .errors import KernelError
from .process import Process

log = logging.getLogger(__name__)

# kind -> rights; the resource name of each kind comes from the process (see _resource).
KINDS: dict[str, tuple[str, ...]] = {"model": ("fork", "run"), "device": ("run",), "priority": ("renice",)}
RUNNING_KINDS = ("model", "device")  # kinds whose revocation ends the process

ServiceCall = Callable[[str, dict[str, Any]], Awaitable[Any]]


def _resource(proc: Process, kind: str) -> str:
    """The name a capability of ``kind`` grants for ``proc``."""
    if kind == "model":
        return proc.model
    if kind == "device":
        return proc.device
    return str(proc.nice_floor)


class ProcessCapabilities:
    """The kernel's side of capabilities; ``enabled`` only with a security service."""

    def __init__(self, security: ServiceCall | None) -> None:
        self._security = security
        # Exits are seen synchronously (ProcessTable.exit); revocation needs a service call.
        self._exits_in, self._exits_out = trio.open_memory_channel[int](math.inf)

    @property
    def enabled(self) -> bool:
        return self._security is not None

    async def start(self) -> None:
        """Start a new capability epoch: no handle of an earlier boot works in this one."""
        if self._security is not None:
            await self._security("new_epoch", {})

    async def grant(self, proc: Process) -> dict[str, str] | None:
        """Mint ``proc``'s handles and keep them on it; None without a security service."""
        if self._security is None:
            return None
        grants = [{"kind": kind, "name": _resource(proc, kind), "rights": list(rights)} for kind, rights in KINDS.items()]
        reply = await self._security("mint_capabilities", {"pid": proc.pid, "grants": grants})
        proc.caps = dict(zip(KINDS, reply["handles"], strict=True))
        return proc.caps

    async def check(self, proc: Process, handle: Any, kind: str, right: str) -> None:
        """EPERM (from the security service, naming why) unless ``handle`` lets ``proc`` use ``right``."""
        if self._security is None:
            raise KernelError("ENOSYS", "capabilities need the security service (boot with --home PATH)")
        if not isinstance(handle, str):
            raise KernelError("EINVAL", f"a capability handle is a string, not {type(handle).__name__}")
        await self._security("check_capability", {"handle": handle, "pid": proc.pid, "kind": kind, "name": _resource(proc, kind), "right": right})

    async def revoke(self, proc: Process, handle: str) -> str:
        """Revoke one of ``proc``'s handles; returns its kind."""
        assert self._security is not None
        kind = next(k for k, h in proc.caps.items() if h == handle)
        await self._security("revoke_capability", {"handle": handle})
        return kind

    def exited(self, proc: Process) -> None:
        """Queue the revocation of every handle of a process that just exited."""
        if self._security is not None and proc.caps:
            self._exits_in.send_nowait(proc.pid)

    def forget(self, pid: int) -> None:
        """Revoke a pid that never became a process (its spawn failed after minting)."""
        if self._security is not None:
            self._exits_in.send_nowait(pid)

    async def run_revoker(self) -> None:
        """Revoke the handles of exited processes, in exit order, forever."""
        assert self._security is not None
        async for pid in self._exits_out:
            try:
                await self._security("revoke_pid", {"pid": pid})
            except KernelError as error:  # the security service is gone for good: log, go on
                log.warning("could not revoke the capabilities of pid %d: %s", pid, error)
