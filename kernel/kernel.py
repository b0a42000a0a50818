"""The kernel: boots devices and services under the supervisor and serves syscalls.

``async with open_kernel(config) as kernel:`` boots an in-process kernel; programs talk to it
through ``kernel.open_stream(...)`` (in-process) or a Unix socket (``serve_unix``). The kernel
knows drivers and services only as factories of servers that it connects to by message
streams and registers by name; it imports neither layer.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import trio

from . import codec, params
from .errors import KernelError
from .kv_hash import TenantSalts
from .kv_manager import KVCacheManager
from .names import NameServer
from .policy import make_policy
from .process import ExitReason, ExitStatus, ProcState, Signal
from .proctable import ProcessTable, Session
from .rpc import serve_stream
from .scheduler import DeviceScheduler, SchedulerConfig
from .streams import FramedMessageStream, MemoryMessageStream, memory_stream_pair, peer_credentials
from .supervisor import ServerFactory, Supervisor
from .syscalls import BLOCKING_SYSCALLS, SYSCALLS

VERSION = "0.1.0"

log = logging.getLogger(__name__)


@dataclass
class DeviceConfig:
    """One device: its driver, the model it serves, and its KV pool."""

    name: str  # e.g. "cpu0", "sim0"
    driver: ServerFactory  # builds the driver server (restarted from here after a crash)
    model: str  # the name processes use to pick this device's model
    load_args: dict[str, Any] = field(default_factory=dict)  # the driver's load_model arguments
    num_kv_blocks: int = params.NUM_KV_BLOCKS
    block_size: int = params.BLOCK_SIZE
    num_swap_blocks: int = params.NUM_SWAP_BLOCKS  # host swap space, in blocks
    prefix_cache: bool = True  # share full prompt blocks between processes of one tenant


@dataclass
class KernelConfig:
    """Everything ``open_kernel`` needs."""

    devices: list[DeviceConfig]
    services: dict[str, ServerFactory] = field(default_factory=dict)  # name -> factory
    policy: str = "fcfs"
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    max_processes: int = params.MAX_PROCESSES


@dataclass
class Device:
    """A booted device, as the kernel sees it."""

    name: str
    endpoint: str  # its driver's name in the name server
    model: str
    scheduler: DeviceScheduler
    info: dict[str, Any] = field(default_factory=dict)  # what load_model returned
    booted: bool = False  # its driver started once; later failures are crashes to restart

    @property
    def vocab_size(self) -> int:
        return int(self.info.get("vocab_size", 0))

    @property
    def eos_ids(self) -> list[int]:
        return list(self.info.get("eos_ids", []))


class Kernel:
    """The running kernel. Build it with ``open_kernel``."""

    def __init__(self, config: KernelConfig, nursery: trio.Nursery) -> None:
        if not config.devices:
            raise KernelError("EINVAL", "a kernel needs at least one device")
        self.config = config
        self.table = ProcessTable(trio.current_time, config.max_processes)
        self.names = NameServer()
        self.supervisor = Supervisor(self.names, nursery)
        self.devices: dict[str, Device] = {}
        self.default_model = config.devices[0].model
        self.booted_at = trio.current_time()
        self._nursery = nursery
        self._secret = secrets.token_bytes(32)  # signs tenant tokens; new on every boot
        self.salts = TenantSalts()  # per-tenant prefix-cache salts; no caller can choose one

    # -- boot and shutdown -------------------------------------------------------------------

    async def boot(self) -> None:
        """Start every service, then every device (driver, model, KV pool, scheduler)."""
        for name, factory in self.config.services.items():
            await self.supervisor.start(name, factory)
        for cfg in self.config.devices:
            if cfg.name in self.devices:
                raise KernelError("EEXIST", f"two devices are named {cfg.name!r}")
            endpoint = f"driver.{cfg.name}"
            kv = KVCacheManager(cfg.num_kv_blocks, cfg.block_size, cfg.num_swap_blocks, cfg.prefix_cache)
            scheduler = DeviceScheduler(cfg.name, endpoint, kv, self.table, self.names,
                                        make_policy(self.config.policy), self.config.scheduler, self.salts.salt)
            device = Device(cfg.name, endpoint, cfg.model, scheduler)
            self.devices[cfg.name] = device
            await self._start_device(device, cfg)
            self._nursery.start_soon(scheduler.run)

    async def _start_device(self, device: Device, cfg: DeviceConfig) -> None:
        """Start a device's driver under the supervisor; fail the boot if the driver refuses.

        A driver that crashes while starting is restarted like any crash, but one that answers
        load_model or init_kv with an error (ENOMEM: the model or the KV pool does not fit)
        would answer the same after every restart: the boot fails with that error instead of
        retrying forever.
        """
        refused: list[KernelError] = []
        gave_up = trio.Event()
        starter = self._device_starter(device, cfg)

        async def start_once(endpoint: str) -> None:
            try:
                await starter(endpoint)
            except KernelError as error:
                if not device.booted and error.errno != "EIO":  # EIO: the driver died; retry
                    refused.append(error)
                    gave_up.set()
                raise

        async def start() -> None:
            await self.supervisor.start(device.endpoint, cfg.driver, start_once)
            gave_up.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(start)
            await gave_up.wait()
            nursery.cancel_scope.cancel()
        if refused:
            raise KernelError(refused[0].errno, f"device {device.name}: {refused[0].message}")
        device.booted = True

    def _device_starter(self, device: Device, cfg: DeviceConfig) -> Any:
        async def start_device(endpoint: str) -> None:
            # Runs on every (re)start of the driver: a new instance has no model and no KV cache.
            device.info = await self.names.call(endpoint, "load_model", cfg.load_args, bound_only=True)
            device.scheduler.adopt_driver_info(device.info)
            await self.names.call(endpoint, "init_kv", {"num_blocks": cfg.num_kv_blocks, "block_size": cfg.block_size}, bound_only=True)
        return start_device

    def shutdown(self) -> None:
        """End every live process with a status, then stop all servers."""
        for proc in list(self.table):
            if proc.alive:
                status = ExitStatus(ExitReason.SIGNAL, signal=Signal.SIGKILL, message="the kernel is shutting down")
                self.devices[proc.device].scheduler.finish(proc, status)
        self.supervisor.stop_all()

    # -- syscalls ----------------------------------------------------------------------------

    async def syscall(self, session: Session, op: str, args: dict[str, Any]) -> Any:
        """Run one syscall for ``session``; ENOSYS for an unknown op."""
        handler = SYSCALLS.get(op)
        if handler is None:
            raise KernelError("ENOSYS", f"no syscall named {op!r}")
        return await handler(self, session, args)

    async def serve_session(self, stream: Any, uid: int, tenant: str, *, allow_hello: bool = False) -> None:
        """Serve one client connection with a fixed identity until it closes.

        With ``allow_hello`` the first request may be ``hello`` with a token from
        ``issue_token``; that sets the tenant. Nothing in a later message can change identity.
        """
        session = self.table.open_session(uid, tenant)
        greeted = not allow_hello

        async def dispatch(request: codec.Request) -> Any:
            nonlocal greeted
            if request.op == "hello" and not greeted:
                greeted = True
                session.tenant = self.verify_token(request.args.get("token"))
                return {"pid": session.pid, "uid": session.uid, "tenant": session.tenant}
            greeted = True
            return await self.syscall(session, request.op, request.args)

        try:
            await serve_stream(stream, dispatch, blocking_ops=BLOCKING_SYSCALLS)
        finally:
            for proc in self.table.close_session(session.pid):
                self.devices[proc.device].scheduler.signal(proc, Signal.SIGKILL)
            with trio.CancelScope(shield=True):
                await stream.aclose()

    def open_stream(self, uid: int = 0, tenant: str = "default") -> MemoryMessageStream:
        """An in-process connection; the program that booted the kernel chooses its identity."""
        client_end, kernel_end = memory_stream_pair()
        self._nursery.start_soon(self.serve_session, kernel_end, uid, tenant)
        return client_end

    async def serve_unix(self, path: str, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Serve syscalls on a Unix socket at ``path`` until cancelled; removes the file after.

        Each connection's uid comes from the peer's credentials (SO_PEERCRED). Cancelling stops
        new connections only: accepted ones run in the kernel's nursery until it shuts down, so
        their blocked readers and waiters get the final exit statuses (see ``open_kernel``).
        """
        if os.path.exists(path):
            raise KernelError("EEXIST", f"{path} already exists; is another kernel running? remove it if not")
        # Bind under a private name and rename once listening, so the path never exists
        # without a listener behind it (a client would get "connection refused").
        staging = f"{path}.{os.getpid()}.tmp"
        sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
        await sock.bind(staging)
        os.chmod(staging, 0o666)  # any local user may connect; identity comes from SO_PEERCRED
        sock.listen(128)
        listener = trio.SocketListener(sock)
        try:
            os.rename(staging, path)
        except OSError:
            await listener.aclose()
            os.unlink(staging)
            raise
        try:
            task_status.started()
            while True:
                stream = await listener.accept()
                creds = peer_credentials(stream)
                uid = creds[1] if creds else os.getuid()
                self._nursery.start_soon(self._serve_connection, FramedMessageStream(stream), uid)
        finally:
            with trio.CancelScope(shield=True):
                await listener.aclose()
            if os.path.exists(path):
                os.unlink(path)

    async def _serve_connection(self, stream: FramedMessageStream, uid: int) -> None:
        # One connection's failure must never take the kernel down with it.
        try:
            await self.serve_session(stream, uid, "default", allow_hello=True)
        except Exception:
            log.exception("connection of uid %d failed", uid)

    # -- tenant tokens -----------------------------------------------------------------------

    def issue_token(self, tenant: str) -> str:
        """A token that proves membership of ``tenant`` to this kernel (valid until it reboots)."""
        body = base64.urlsafe_b64encode(tenant.encode()).decode().rstrip("=")
        mac = hmac.new(self._secret, body.encode(), hashlib.sha256).hexdigest()[:32]
        return f"{body}.{mac}"

    def verify_token(self, token: Any) -> str:
        """The tenant a token names; EACCES if the token was not issued by this kernel."""
        if not isinstance(token, str) or token.count(".") != 1:
            raise KernelError("EACCES", "hello: the token is malformed")
        body, mac = token.split(".")
        expected = hmac.new(self._secret, body.encode(), hashlib.sha256).hexdigest()[:32]
        if not hmac.compare_digest(mac.encode(), expected.encode()):  # str compare refuses non-ASCII
            raise KernelError("EACCES", "hello: the token was not issued by this kernel")
        return base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode()

    # -- helpers for syscalls ----------------------------------------------------------------

    def now(self) -> float:
        return trio.current_time()

    @staticmethod
    def move_on_after(timeout: float | None) -> trio.CancelScope:
        return trio.move_on_after(float("inf") if timeout is None else timeout)

    def device_for_model(self, model: str) -> Device:
        """The first device serving ``model`` (for its tokenizer); ENOENT lists the models."""
        return self._serving(model)[0]

    def _serving(self, model: str) -> list[Device]:
        serving = [d for d in self.devices.values() if d.model == model]
        if not serving:
            known = ", ".join(sorted({d.model for d in self.devices.values()}))
            raise KernelError("ENOENT", f"no model named {model!r} is loaded; loaded: {known}")
        return serving

    def route(self, model: str | None, device: str | None = None) -> Device:
        """The device a new process of ``model`` runs on.

        Devices serving the same model are data-parallel replicas: a new process goes to the
        least loaded (fewest running plus waiting processes; ties go to the first name). A
        caller may name the device instead; then ``model`` defaults to that device's model.

        Raises:
            KernelError: ENOENT for an unknown device or model, or a device that serves
                another model than the one named.
        """
        if device is not None:
            chosen = self.devices.get(device)
            if chosen is None:
                raise KernelError("ENOENT", f"no device named {device!r}; devices: {', '.join(self.devices)}")
            if model is not None and model != chosen.model:
                raise KernelError("ENOENT", f"device {device} serves model {chosen.model!r}, not {model!r}")
            return chosen
        loads = self.device_loads()
        return min(self._serving(model or self.default_model), key=lambda d: (sum(loads[d.name]), d.name))

    def device_loads(self) -> dict[str, tuple[int, int]]:
        """(running, waiting) processes per device; waiting means NEW, READY or SWAPPED."""
        counts = {name: [0, 0] for name in self.devices}
        for proc in self.table:
            if proc.state is ProcState.RUNNING:
                counts[proc.device][0] += 1
            elif proc.state in (ProcState.NEW, ProcState.READY, ProcState.SWAPPED):
                counts[proc.device][1] += 1
        return {name: (running, waiting) for name, (running, waiting) in counts.items()}

    def list_devices(self) -> list[dict[str, Any]]:
        """What ``lsdev`` returns: one row per device, its memory, utilization and load."""
        uptime = self.now() - self.booted_at
        loads = self.device_loads()
        rows = []
        for d in self.devices.values():
            kv, stats = d.scheduler.kv, d.scheduler.stats
            rows.append({
                "name": d.name,
                "kind": d.info.get("kind", "?"),
                "emulated": bool(d.info.get("emulated", False)),
                "spec": d.info.get("spec"),  # the npu's preset; None elsewhere
                "model": d.model,
                "kv_blocks_total": kv.num_blocks,
                "kv_blocks_used": kv.num_blocks - kv.num_free_blocks,
                "block_size": kv.block_size,
                "kv_bytes": kv.num_blocks * kv.block_size * d.scheduler.kv_bytes_per_token,
                "weight_bytes": d.info.get("weight_bytes"),  # None: the driver holds no weights
                "memory_bytes": d.info.get("memory_bytes"),  # the device's capacity, if it has one
                "utilization": stats.busy_s / uptime if uptime > 0 else 0.0,
                "busy_s": stats.busy_s,
                "steps": stats.num_steps,
                "running": loads[d.name][0],
                "waiting": loads[d.name][1],
            })
        return rows

    async def tokenize(self, device: Device, text: str) -> list[int]:
        """Text to ids with the device's tokenizer; EINVAL if its model has none."""
        return (await self._tokenizer_call(device, "tokenize", {"text": text}))["ids"]

    async def detokenize(self, device: Device, ids: list[int]) -> str:
        """Ids to text with the device's tokenizer; EINVAL if its model has none."""
        return (await self._tokenizer_call(device, "detokenize", {"ids": ids}))["text"]

    async def _tokenizer_call(self, device: Device, op: str, args: dict[str, Any]) -> Any:
        try:
            return await self.names.call(device.endpoint, op, args)
        except KernelError as error:
            if error.errno == "ENOSYS":
                raise KernelError("EINVAL", f"model {device.model!r} has no tokenizer; pass token ids instead") from None
            raise

    def describe(self) -> dict[str, Any]:
        """What ``uname`` returns."""
        return {
            "version": VERSION,
            "uptime_s": self.now() - self.booted_at,
            "policy": self.config.policy,
            "default_model": self.default_model,
            "devices": [
                {
                    "name": d.name,
                    "model": d.model,
                    "kind": d.info.get("kind", "?"),
                    "emulated": bool(d.info.get("emulated", False)),
                    "kv_blocks_total": d.scheduler.kv.num_blocks,
                    "kv_blocks_used": d.scheduler.kv.num_blocks - d.scheduler.kv.num_free_blocks,
                    "block_size": d.scheduler.kv.block_size,
                    "steps": d.scheduler.stats.num_steps,
                    "busy_s": d.scheduler.stats.busy_s,
                    "preemptions": d.scheduler.stats.num_preemptions,
                    "driver_restarts": d.scheduler.stats.num_driver_crashes,
                }
                for d in self.devices.values()
            ],
            "servers": self.supervisor.status(),
            "num_processes": self.table.num_live(),
        }


@asynccontextmanager
async def open_kernel(config: KernelConfig) -> AsyncIterator[Kernel]:
    """Boot a kernel for the duration of the block; shut it down cleanly after.

    On exit every live process ends with a status (SIGKILL, "the kernel is shutting down"),
    its readers and waiters are answered, and every server stops.
    """
    async with trio.open_nursery() as nursery:
        kernel = Kernel(config, nursery)
        try:
            await kernel.boot()
            yield kernel
        finally:
            kernel.shutdown()
            with trio.CancelScope(shield=True):
                # Let blocked readers and waiters send their final replies before we cancel.
                for _ in range(10):
                    await trio.sleep(0)
            nursery.cancel_scope.cancel()
