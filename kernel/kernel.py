"""The kernel: boots devices and services under the supervisor and serves syscalls.

``async with open_kernel(config) as kernel:`` boots an in-process kernel; programs talk to it
through ``kernel.open_stream(...)`` (in-process) or a Unix socket (``serve_unix``). The kernel
knows drivers and services only as factories of servers that it connects to by message
streams and registers by name; it imports neither layer.

Services reach each other by name too: a ``ServiceLink`` made with ``KernelConfig.link(name)``
before boot is an async ``call(op, args)`` that the kernel binds to its name server, so the
models service calls the security service without knowing where it runs. Syscalls reach a
service through ``Kernel.call_service`` (ENOSYS if the kernel was configured without it).
Models loaded at run time (``model_load``) become devices of their own: see ``residency.py``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import logging
import os
import secrets
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import trio

if sys.version_info < (3, 11):  # pragma: no cover - trio brings the backport on 3.10
    from exceptiongroup import BaseExceptionGroup

from . import codec, params
from .errors import KernelError, sole_exception
from .kv_hash import TenantSalts
from .kv_manager import KVCacheManager
from .names import NameServer
from .policy import make_policy
from .process import ExitReason, ExitStatus, Process, ProcState, Signal
from .process_caps import ProcessCapabilities
from .proctable import ProcessTable, Session
from .quotas import QuotaKeeper
from .residency import ModelResidency
from .rpc import serve_stream
from .scheduler import DeviceScheduler, SchedulerConfig
from .streams import FramedMessageStream, MemoryMessageStream, memory_stream_pair, peer_credentials
from .supervisor import RestartHook, ServerFactory, Supervisor
from .syscalls import BLOCKING_SYSCALLS, SYSCALLS

VERSION = "0.1.0"

log = logging.getLogger(__name__)

SERVICE_RETRY_S = params.CALL_TIMEOUT_S  # how long a service call is retried while its server keeps dying (EIO)
RELEASE_TIMEOUT_S = 2.0  # longest shutdown waits for the models service to drop this kernel's pins


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
    # Bytes of weights that models loaded onto this device at run time (model_load) may hold
    # together; None: the driver's memory_bytes if it reports one, else no limit.
    model_memory_bytes: int | None = None


# Builds the device of a model loaded at run time: (kind of the device it is loaded onto, e.g.
# "cpu"; the new device's name; the model's name, NAME@VERSION; its verified checkpoint
# directory) -> DeviceConfig. Userland supplies it, since only userland may import drivers.
ModelDeviceFactory = Callable[[str, str, str, str], DeviceConfig]


class ServiceLink:
    """An async caller of the server named ``name``, made before boot and bound by the kernel.

    A service that needs another gets one in its factory (``ModelServer(home, link)``) and
    calls ``await link(op, args)``; the call waits while the other server restarts.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._names: NameServer | None = None

    def bind(self, names: NameServer) -> None:
        self._names = names

    async def __call__(self, op: str, args: dict[str, Any]) -> Any:
        if self._names is None:
            raise KernelError("ENOSYS", f"no kernel is running to reach the {self.name!r} service")
        return await self._names.call(self.name, op, args)


@dataclass
class KernelConfig:
    """Everything ``open_kernel`` needs."""

    devices: list[DeviceConfig]
    services: dict[str, ServerFactory] = field(default_factory=dict)  # name -> factory
    policy: str = "fcfs"
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    max_processes: int = params.MAX_PROCESSES
    device_factory: ModelDeviceFactory | None = None  # for model_load; None: models cannot be loaded
    links: list[ServiceLink] = field(default_factory=list)  # bound to the kernel's name server at boot

    def link(self, name: str) -> ServiceLink:
        """A caller of the service ``name`` for another service's factory (bound at boot)."""
        link = ServiceLink(name)
        self.links.append(link)
        return link


@dataclass
class Device:
    """A booted device, as the kernel sees it."""

    name: str
    endpoint: str  # its driver's name in the name server
    model: str
    scheduler: DeviceScheduler
    info: dict[str, Any] = field(default_factory=dict)  # what load_model returned
    booted: bool = False  # its driver started once; later failures are crashes to restart
    base: str | None = None  # a model loaded at run time: the boot device it was loaded onto
    weight_bytes: int = 0  # a model loaded at run time: its weights, counted in the base's budget
    last_used: int = 0  # use stamp of its load or latest process (Kernel.touch); LRU eviction
    scope: trio.CancelScope | None = None  # cancels its scheduler's loop when it is unloaded

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
        # endpoint -> the device its driver serves; None: a parked driver (its model was
        # unloaded), which a restart leaves empty and a later load of that model reuses.
        self.slots: dict[str, tuple[Device, DeviceConfig] | None] = {}
        self._use_stamps = itertools.count(1)
        self.residency = ModelResidency(self)
        # Tenant quotas, cached from the resources service (kernel/quotas.py); None without it.
        self.quotas = QuotaKeeper(self.table, self.tenant_blocks, self._submit) if "resources" in config.services else None
        # Processes' capabilities, minted and checked by the security service; inert without it.
        self.caps = ProcessCapabilities(self._security_call if "security" in config.services else None)
        if self.caps.enabled:
            self.table.on_exit = self.caps.exited
        for link in config.links:
            link.bind(self.names)

    # -- boot and shutdown -------------------------------------------------------------------

    async def boot(self) -> None:
        """Start every service, then every device (driver, model, KV pool, scheduler)."""
        for name, factory in self.config.services.items():
            await self.supervisor.start(name, factory)
        if self.caps.enabled:
            await self.caps.start()
            self._nursery.start_soon(self.caps.run_revoker)
        if self.quotas is not None:
            listed = await self.call_service("resources", "list_quotas", {})
            self.quotas.load(listed["quotas"], self.now())
            # ProcessTable replaces its exit event on each exit; read the current one each time.
            self._nursery.start_soon(self.quotas.release_held, lambda: self.table._exited)
        for cfg in self.config.devices:
            if cfg.name in self.devices:
                raise KernelError("EEXIST", f"two devices are named {cfg.name!r}")
            device = self.new_device(cfg)
            self.devices[cfg.name] = device
            await self._start_device(device, cfg)
            await self._nursery.start(self._run_scheduler, device)

    def new_device(self, cfg: DeviceConfig) -> Device:
        """A device for ``cfg`` with its KV pool and scheduler; nothing started yet."""
        endpoint = f"driver.{cfg.name}"
        kv = KVCacheManager(cfg.num_kv_blocks, cfg.block_size, cfg.num_swap_blocks, cfg.prefix_cache)
        scheduler = DeviceScheduler(cfg.name, endpoint, kv, self.table, self.names,
                                    make_policy(self.config.policy), self.config.scheduler, self.salts.salt)
        scheduler.limiter = self.quotas
        return self.touch(Device(cfg.name, endpoint, cfg.model, scheduler))

    async def _run_scheduler(self, device: Device, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        with trio.CancelScope() as scope:
            device.scope = scope
            task_status.started()
            await device.scheduler.run()

    async def start_device(self, device: Device, cfg: DeviceConfig) -> None:
        """Start a run-time device: its driver (a parked one if its endpoint has one), then its scheduler."""
        if device.endpoint in self.slots:  # a parked driver of this same model: load it again
            self.slots[device.endpoint] = (device, cfg)
            try:
                await self.names.wait_ready(device.endpoint)
                await self._device_starter(device.endpoint)(device.endpoint)
            except KernelError:
                self.slots[device.endpoint] = None
                raise
            device.booted = True
        else:
            try:
                await self._start_device(device, cfg)
            except KernelError:
                self.slots[device.endpoint] = None  # its restarts load nothing: it stays parked
                raise
        await self._nursery.start(self._run_scheduler, device)

    def park_device(self, device: Device) -> None:
        """Stop routing to ``device`` and stop its scheduler; its driver stays, parked, empty."""
        self.devices.pop(device.name, None)
        self.slots[device.endpoint] = None
        if device.scope is not None:
            device.scope.cancel()

    async def _start_device(self, device: Device, cfg: DeviceConfig) -> None:
        """Start a device's driver under the supervisor; fail the boot if the driver refuses.

        A driver that crashes while starting is restarted like any crash, but one that answers
        load_model or init_kv with an error (ENOMEM: the model or the KV pool does not fit)
        would answer the same after every restart: the boot fails with that error instead of
        retrying forever.
        """
        refused: list[KernelError] = []
        gave_up = trio.Event()
        self.slots[device.endpoint] = (device, cfg)
        starter = self._device_starter(device.endpoint)

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

    def _device_starter(self, endpoint: str) -> RestartHook:
        async def start_device(endpoint: str) -> None:
            # Runs on every (re)start of the driver: a new instance has no model and no KV cache.
            slot = self.slots.get(endpoint)
            if slot is None:
                return  # parked: its model was unloaded
            device, cfg = slot
            device.info = await self.names.call(endpoint, "load_model", cfg.load_args, bound_only=True)
            device.scheduler.adopt_driver_info(device.info)
            await self.names.call(endpoint, "init_kv", {"num_blocks": cfg.num_kv_blocks, "block_size": cfg.block_size}, bound_only=True)
        return start_device

    def shutdown(self) -> None:
        """End every live process with a status, then stop all servers."""
        for proc in list(self.table):
            if proc.alive:
                status = ExitStatus(ExitReason.SIGNAL, signal=Signal.SIGKILL, message="the kernel is shutting down")
                device = self.devices.get(proc.device)
                if device is not None:
                    device.scheduler.finish(proc, status)
                else:  # its device is gone (unloaded): nothing holds its memory any more
                    self.table.exit(proc, status)
        self.supervisor.stop_all()

    # -- services ----------------------------------------------------------------------------

    def require_service(self, name: str, op: str) -> None:
        """ENOSYS, with what to do, unless the kernel was configured with service ``name``."""
        if name not in self.config.services:
            hint = " (boot with --home PATH or set LLMOS_HOME to start it)" if name in ("models", "security", "resources") else ""
            raise KernelError("ENOSYS", f"{op}: this kernel runs no {name!r} service{hint}")

    async def call_service(self, name: str, op: str, args: dict[str, Any], *, syscall: str | None = None,
                           done_after_retry: str | None = None) -> Any:
        """Call ``op`` on service ``name``, retrying while its server is restarted (EIO).

        Retries go on for ``SERVICE_RETRY_S``; a server that dies more often than it can
        answer makes the call fail with that EIO then.

        Only ops that are safe to repeat go through here; every models and security op is
        (see services/models.py: import is idempotent on content).

        Args:
            done_after_retry: an errno that, answered to a retry, means the first try did
                the work and died before replying (rm: ENOENT); None is returned then.
        """
        self.require_service(name, syscall or op)
        give_up_at = self.now() + SERVICE_RETRY_S
        retried = False
        while True:
            try:
                return await self.names.call(name, op, args)
            except KernelError as error:
                if retried and error.errno == done_after_retry:
                    return None
                if error.errno != "EIO" or self.now() >= give_up_at:
                    raise
                log.info("service %s died during %s; retrying", name, op)
                retried = True

    async def _security_call(self, op: str, args: dict[str, Any]) -> Any:
        return await self.call_service("security", op, args)

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
        if not serving and "@" not in model:  # NAME: the newest version loaded
            versions = [d for d in self.devices.values() if d.model.startswith(model + "@")
                        and d.model[len(model) + 1:].isdigit()]
            newest = max((int(d.model[len(model) + 1:]) for d in versions), default=None)
            serving = [d for d in versions if d.model == f"{model}@{newest}"]
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
            if model is not None and model != chosen.model and chosen.model.partition("@")[0] != model:
                raise KernelError("ENOENT", f"device {device} serves model {chosen.model!r}, not {model!r}")
            return self.touch(chosen)
        # Each scheduler counts its own running and waiting processes: O(devices), not O(processes).
        chosen = min(self._serving(model or self.default_model),
                     key=lambda d: (d.scheduler.num_running + d.scheduler.num_waiting, d.name))
        return self.touch(chosen)  # for residency: idle run-time models are unloaded LRU first

    def tenant_blocks(self, tenant: str) -> int:
        """KV blocks ``tenant``'s processes hold over all devices, each shared block once."""
        salt = self.salts.salt(tenant)
        return sum(device.scheduler.kv.tenant_blocks(salt) for device in self.devices.values())

    def blocks_of(self, proc: Process) -> int:
        """KV blocks ``proc`` holds on its device now (0 once its device is gone)."""
        device = self.devices.get(proc.device)
        return device.scheduler.kv.table_len(proc.pid) if device is not None else 0

    def _submit(self, proc: Process) -> None:
        """Queue a process held by its tenant's quota for admission on its device."""
        device = self.devices.get(proc.device)
        if device is None:  # its model was unloaded while it was held
            self.table.exit(proc, ExitStatus(ExitReason.ERROR, errno="ENOENT", message=f"device {proc.device} is gone"))
            return
        device.scheduler.submit(proc)

    def touch(self, device: Device) -> Device:
        """Stamp ``device`` as used now (a counter, so uses at one instant still have an order)."""
        device.last_used = next(self._use_stamps)
        return device

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
                "loaded_on": d.base,  # a model loaded at run time: the boot device it shares
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
    try:
        async with _open_kernel_nursery(config) as kernel:
            yield kernel
    except BaseExceptionGroup as group:
        # trio >= 0.25 wraps what the block raised (a boot error, say) in a group; a caller
        # wants the KernelError itself, with its errno, as on older trio.
        sole = sole_exception(group)
        if isinstance(sole, BaseExceptionGroup):
            raise
        raise sole from None


@asynccontextmanager
async def _open_kernel_nursery(config: KernelConfig) -> AsyncIterator[Kernel]:
    async with trio.open_nursery() as nursery:
        kernel = Kernel(config, nursery)
        try:
            await kernel.boot()
            yield kernel
        finally:
            with trio.move_on_after(RELEASE_TIMEOUT_S) as scope:
                scope.shield = True
                await kernel.residency.release_all()
            kernel.shutdown()
            with trio.CancelScope(shield=True):
                # Let blocked readers and waiters send their final replies before we cancel.
                for _ in range(10):
                    await trio.sleep(0)
            nursery.cancel_scope.cancel()
