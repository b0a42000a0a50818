"""libllm: the libc of LLMOS. Programs make syscalls through it.

Async (trio)::

    async with libllm.open_client("/tmp/llmos.sock") as llm:   # or a Kernel object
        pid = await llm.spawn("def fib(n):", max_tokens=32, temperature=0)
        async for tokens in llm.stream(pid):
            ...
        status = await llm.wait(pid)

Blocking::

    llm = libllm.connect("/tmp/llmos.sock")
    pid = llm.spawn(prompt_ids=[1, 2, 3], max_tokens=8)
    print(llm.wait(pid).output_ids)
    llm.close()

Every failed syscall raises an ``LLMOSError`` subclass named after its errno (``libllm.ESRCH``).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import trio

from llmos.kernel.errors import KernelError
from llmos.kernel.rpc import RpcClient, open_rpc_client
from llmos.kernel.streams import FramedMessageStream

from .blocking_rpc import BlockingRpc
from .errors import *  # noqa: F403  (re-export: libllm.ESRCH, libllm.LLMOSError, ...)
from .errors import LLMOSError, from_kernel_error

DEFAULT_SOCKET = os.environ.get("LLMOS_SOCKET", "/tmp/llmos.sock")


@dataclass(frozen=True)
class ReadResult:
    """What ``read`` returns: new tokens, the offset to read from next, and EOF with the exit."""

    tokens: list[int]
    offset: int
    eof: bool
    exit: dict[str, Any] | None


@dataclass(frozen=True)
class WaitResult:
    """A reaped process: pid, exit status, all generated ids, and its final ``stat``."""

    pid: int
    exit: dict[str, Any]
    output_ids: list[int]
    stat: dict[str, Any]

    @property
    def finish_reason(self) -> str:
        """'stop', 'length', 'signal' or 'error'."""
        return self.exit["reason"]


class Client:
    """An async connection to a kernel. Get one from ``open_client``."""

    def __init__(self, rpc: RpcClient) -> None:
        self._rpc = rpc

    async def call(self, op: str, **args: Any) -> Any:
        """Make any syscall by name; None-valued arguments are left out."""
        try:
            return await self._rpc.call(op, {k: v for k, v in args.items() if v is not None})
        except KernelError as error:
            raise from_kernel_error(error) from None

    async def getpid(self) -> dict[str, Any]:
        """This connection's pid, uid and tenant."""
        return await self.call("getpid")

    async def spawn(self, prompt: str | None = None, **options: Any) -> int:
        """Start a process; returns its pid.

        Args:
            prompt: the prompt text (the model needs a tokenizer), or give ``prompt_ids=``.
            options: model, device, prompt_ids, max_tokens, temperature, top_k, top_p, seed,
                stop_ids, ignore_eos, nice, deadline_s, detach. Without ``device`` the kernel
                picks the least-loaded device serving the model.
        """
        return (await self.call("spawn", prompt=prompt, **options))["pid"]

    async def read(self, pid: int, offset: int = 0, timeout: float | None = None) -> ReadResult:
        """Tokens after ``offset``; blocks until some arrive or the process ends (EOF)."""
        r = await self.call("read", pid=pid, offset=offset, timeout=timeout)
        return ReadResult(r["tokens"], r["offset"], r["eof"], r["exit"])

    async def stream(self, pid: int) -> AsyncIterator[list[int]]:
        """Yield each batch of new tokens as it arrives, until EOF."""
        offset = 0
        while True:
            result = await self.read(pid, offset)
            offset = result.offset
            if result.tokens:
                yield result.tokens
            if result.eof:
                return

    async def wait(self, pid: int | None = None, nohang: bool = False) -> WaitResult | None:
        """Wait for a child of this connection to end, reap it, and return its result."""
        r = await self.call("wait", pid=pid, nohang=nohang)
        return None if r is None else WaitResult(r["pid"], r["exit"], r["output_ids"], r["stat"])

    async def kill(self, pid: int, signal: str | int = "SIGTERM") -> None:
        """Send SIGKILL, SIGTERM, SIGSTOP or SIGCONT."""
        await self.call("kill", pid=pid, signal=signal)

    async def fork(self, pid: int, n: int = 1) -> list[int]:
        """Start ``n`` children continuing from ``pid``'s tokens so far; returns their pids."""
        return (await self.call("fork", pid=pid, n=n))["pids"]

    async def nice(self, pid: int, value: int, cap: str | None = None) -> int:
        """Set ``pid``'s nice value (-20..19); returns it.

        Lowering it takes uid 0 or ``cap``, the process's priority capability (``caps(pid)``),
        which allows any value down to the nice the process was started with.
        """
        return (await self.call("nice", pid=pid, value=value, cap=cap))["nice"]

    async def caps(self, pid: int) -> dict[str, str]:
        """``pid``'s capability handles by kind (model, device, priority); {} without a security service."""
        return (await self.call("stat", pid=pid)).get("caps") or {}

    async def cap_revoke(self, handle: str) -> dict[str, Any]:
        """Revoke a capability; revoking a model or device one ends its process (EPERM)."""
        return await self.call("cap_revoke", handle=handle)

    async def ps(self) -> list[dict[str, Any]]:
        """One row per process."""
        return (await self.call("ps"))["processes"]

    async def stat(self, pid: int) -> dict[str, Any]:
        """Everything about one process, accounting included."""
        return await self.call("stat", pid=pid)

    async def uname(self) -> dict[str, Any]:
        """The kernel: version, devices, models, servers and their restart counts."""
        return await self.call("uname")

    async def lsdev(self) -> list[dict[str, Any]]:
        """One row per device: kind, emulated or real, model, memory, utilization, load."""
        return (await self.call("lsdev"))["devices"]

    async def tokenize(self, text: str, model: str | None = None) -> list[int]:
        """Text to token ids with a model's tokenizer."""
        return (await self.call("tokenize", text=text, model=model))["ids"]

    async def detokenize(self, ids: list[int], model: str | None = None) -> str:
        """Token ids to text with a model's tokenizer."""
        return (await self.call("detokenize", ids=ids, model=model))["text"]

    # -- models (the kernel needs its models service: ``llmos boot --home PATH``) -------------

    async def model_import(self, path: str | os.PathLike[str], name: str, encrypt: bool = False) -> dict[str, Any]:
        """Copy a Hugging Face-format checkpoint directory into the store as ``name`` version 1 (uid 0).

        ``encrypt``: store every file AES-GCM sealed; it is decrypted only in a driver's memory.
        """
        return await self.call("model_import", path=os.path.abspath(path), name=name, encrypt=encrypt or None)

    async def model_update(self, name: str, path: str | os.PathLike[str], encrypt: bool = False) -> dict[str, Any]:
        """Add the next version of ``name`` from a checkpoint directory (uid 0); ``encrypt`` as for import."""
        return await self.call("model_update", name=name, path=os.path.abspath(path), encrypt=encrypt or None)

    async def model_list(self) -> list[dict[str, Any]]:
        """One row per model: name, versions, newest, loaded versions, bytes."""
        return (await self.call("model_list"))["models"]

    async def model_show(self, name: str) -> dict[str, Any]:
        """One version (``NAME`` for the newest, or ``NAME@VERSION``): config, files, signer."""
        return await self.call("model_show", name=name)

    async def model_verify(self, name: str) -> dict[str, Any]:
        """Check a version against its signed manifest; EACCES names a changed file."""
        return await self.call("model_verify", name=name)

    async def model_rm(self, name: str) -> dict[str, Any]:
        """Remove a model or one version (uid 0); EBUSY while it is loaded."""
        return await self.call("model_rm", name=name)

    async def model_load(self, name: str, device: str | None = None) -> dict[str, Any]:
        """Verify and load ``NAME[@VERSION]`` onto a boot device (uid 0); returns the new device."""
        return await self.call("model_load", name=name, device=device)

    async def model_unload(self, name: str, device: str | None = None) -> dict[str, Any]:
        """Unload a model loaded at run time (uid 0); EBUSY while a process uses it."""
        return await self.call("model_unload", name=name, device=device)

    async def quota_set(self, tenant: str, **limits: Any) -> dict[str, Any]:
        """Set a tenant's quotas (uid 0): processes, kv_blocks, tokens_per_s, burst, over_quota."""
        return await self.call("quota_set", tenant=tenant, **limits)

    async def quota_get(self, tenant: str | None = None) -> dict[str, Any]:
        """A tenant's quotas (default: this connection's tenant); ENOENT if it has none."""
        return await self.call("quota_get", tenant=tenant)

    async def quota_list(self) -> list[dict[str, Any]]:
        """Every tenant's quotas."""
        return (await self.call("quota_list"))["quotas"]

    async def usage(self, tenant: str | None = None) -> dict[str, Any]:
        """Per-tenant use beside quota, and per-device utilization, running, waiting."""
        return await self.call("usage", tenant=tenant)


@asynccontextmanager
async def open_client(
    target: Any = None, *, uid: int = 0, tenant: str = "default", token: str | None = None
) -> AsyncIterator[Client]:
    """Connect to a kernel for the duration of the block.

    Args:
        target: a Unix socket path (default ``$LLMOS_SOCKET`` or /tmp/llmos.sock), or an
            in-process ``Kernel`` (then ``uid`` and ``tenant`` name the caller).
        token: over a socket, a tenant token from the kernel's owner; it sets the tenant.
    """
    if target is None or isinstance(target, (str, os.PathLike)):
        path = os.fspath(target or DEFAULT_SOCKET)
        try:
            stream: Any = FramedMessageStream(await trio.open_unix_socket(path))
        except OSError as exc:
            raise from_kernel_error(KernelError("ENOENT", f"cannot connect to a kernel at {path}: {exc.strerror}")) from None
    else:
        stream = target.open_stream(uid=uid, tenant=tenant)
    async with open_rpc_client(stream) as rpc:
        client = Client(rpc)
        if token is not None:
            await client.call("hello", token=token)
        yield client


class SyncClient:
    """A blocking client: every ``Client`` method, called without ``await``.

    It speaks to the kernel over a plain blocking socket (``blocking_rpc.py``): no thread, no
    event loop. Threads may share one: each call waits for its own reply.
    """

    def __init__(self, target: str | os.PathLike[str] | None = None, *, token: str | None = None) -> None:
        path = os.fspath(target or DEFAULT_SOCKET)
        try:
            self._rpc = BlockingRpc(path)
        except KernelError as error:
            raise from_kernel_error(error) from None
        self._client = Client(self._rpc)  # type: ignore[arg-type]  # its calls are driven below
        if token is not None:
            try:
                self.call("hello", token=token)
            except BaseException:
                self.close()
                raise

    def __getattr__(self, name: str) -> Any:
        method = getattr(Client, name, None)
        if method is None or name.startswith("_") or name == "stream":
            raise AttributeError(name)

        rpc, bound = self._rpc, getattr(self._client, name)  # not self: no reference cycle

        def blocking(*args: Any, **kwargs: Any) -> Any:
            return rpc.drive(bound(*args, **kwargs))

        blocking.__doc__ = method.__doc__
        self.__dict__[name] = blocking  # found directly from now on: __getattr__ runs once per name
        return blocking

    def stream(self, pid: int) -> Iterator[list[int]]:
        """Yield each batch of new tokens as it arrives, until EOF."""
        offset = 0
        while True:
            result = self.read(pid, offset)
            offset = result.offset
            if result.tokens:
                yield result.tokens
            if result.eof:
                return

    def close(self) -> None:
        """Close the connection; later calls raise EIO."""
        self._rpc.close()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def connect(path: str | None = None, *, token: str | None = None) -> SyncClient:
    """A blocking connection to the kernel serving the Unix socket at ``path``."""
    return SyncClient(path, token=token)


__all__ = ["Client", "SyncClient", "ReadResult", "WaitResult", "open_client", "connect", "LLMOSError"]
