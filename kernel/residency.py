"""Models loaded at run time: verified by the models service, resident under a memory budget.

``model_load NAME[@VERSION] [DEVICE]`` (uid 0) runs, under one lock:

1. The models service verifies the version's signed manifest (it asks the security service:
   a changed byte or an untrusted signer is EACCES) and pins the version for this kernel, so
   it cannot be removed while loaded. Its reply names the verified directory: the grant. For
   a version stored encrypted the grant also has ``sealed`` (the version's key and the signed
   sha256 of each file), which goes to the driver's ``load_model`` untouched: the driver
   decrypts and checks in memory, and the kernel never reads the files itself.
2. Room is made on DEVICE (a boot device; the first by default). Models loaded there at run
   time share its budget, ``DeviceConfig.model_memory_bytes`` (else the driver's reported
   ``memory_bytes``, else none), counted in bytes of weight files (*.safetensors, from the
   signed manifest, so the count is known before loading). Idle models are unloaded least
   recently used first; a model is *in use* while any process in the table (running,
   waiting, stopped or a zombie not yet reaped) is on it, and one in use is never unloaded:
   if the idle ones cannot make room, nothing is unloaded and the load fails with ENOMEM.
3. The model becomes a device of its own, named ``DEVICE/NAME@VERSION`` and serving the
   model ``NAME@VERSION``: a driver built by the userland's ``KernelConfig.device_factory``
   (the kernel imports no driver), started under the supervisor with ``load_model`` of the
   verified path and restarted like any driver, its own KV pool and scheduler. Spawning
   model ``NAME`` picks the newest version loaded; ``NAME@VERSION`` a given one. A process
   keeps the device it started on, so after ``update`` and a load of the new version,
   running processes finish on the old one.

``model_unload`` (explicit) refuses a model in use with EBUSY. Unloading stops routing to the
device and cancels its scheduler; its driver is told ``unload_model`` and stays supervised,
parked and empty, and a later load of the same version reuses it (the supervisor has no way
to retire a server, so a parked driver per version once loaded is the cost).

Boot devices are not managed here: their models stay for the kernel's life.
"""

from __future__ import annotations

import logging
import os
import secrets
from typing import TYPE_CHECKING, Any

import trio

from .errors import KernelError

if TYPE_CHECKING:
    from .kernel import Device, Kernel

log = logging.getLogger(__name__)


class ModelResidency:
    """Which models are loaded on which device, and the unloading of idle ones."""

    def __init__(self, kernel: Kernel) -> None:
        self._kernel = kernel
        # Names this kernel to the models service; the pid lets it drop a dead kernel's pins.
        self.holder = f"kernel-{os.getpid()}-{secrets.token_hex(4)}"
        self._lock = trio.Lock()  # one load or unload at a time: budgets are checked and spent whole
        self._pinned: set[str] = set()  # NAME@VERSION this kernel asked the models service to pin

    # -- queries ---------------------------------------------------------------------------------

    def resident(self, base: str | None = None) -> list[Device]:
        """Run-time loaded devices (on ``base`` only, if given)."""
        return [d for d in self._kernel.devices.values() if d.base is not None and (base is None or d.base == base)]

    def users(self, device: Device) -> list[int]:
        """Pids of the processes on ``device``, zombies not yet reaped included."""
        return sorted(p.pid for p in self._kernel.table if p.device == device.name)

    def budget(self, base: Device) -> int | None:
        """Bytes of weights run-time models may hold on ``base``; None for no limit."""
        cfg = next((c for c in self._kernel.config.devices if c.name == base.name), None)
        if cfg is not None and cfg.model_memory_bytes is not None:
            return cfg.model_memory_bytes
        memory = base.info.get("memory_bytes")
        return int(memory) if isinstance(memory, int) and memory > 0 else None

    def _base_device(self, name: str | None) -> Device:
        k = self._kernel
        boot = [c.name for c in k.config.devices]
        if name is None:
            return k.devices[boot[0]]
        if name not in boot:
            raise KernelError("ENOENT", f"model_load: no boot device named {name!r}; devices: {', '.join(boot)}")
        return k.devices[name]

    def _matching(self, ref: str, base: str | None) -> list[Device]:
        name, at, version = ref.partition("@")
        return [d for d in self.resident(base)
                if d.model == ref or (not at and d.model.partition("@")[0] == name)]

    # -- load ------------------------------------------------------------------------------------

    async def load(self, ref: str, base_name: str | None) -> dict[str, Any]:
        """Verify, make room and load ``ref`` (NAME or NAME@VERSION) onto a boot device."""
        k = self._kernel
        k.require_service("models", "model_load")
        if k.config.device_factory is None:
            raise KernelError("ENOSYS", "model_load: this kernel was configured without a device factory; it cannot load models")
        base = self._base_device(base_name)
        async with self._lock:
            info = await k.call_service("models", "load", {"name": ref, "holder": self.holder}, syscall="model_load")
            model = info["model"]
            self._pinned.add(model)
            device_name = f"{base.name}/{model}"
            existing = k.devices.get(device_name)
            if existing is not None:
                k.touch(existing)
                return self._describe(existing, evicted=[], already=True)
            try:
                evicted = await self._make_room(base, int(info["weight_bytes"]), model)
                device = await self._start(base, device_name, model, info)
            except BaseException:
                if not any(d.model == model for d in self.resident()):  # no other device holds it
                    with trio.CancelScope(shield=True):
                        await self._unpin(model)
                raise
        return self._describe(device, evicted=evicted, already=False)

    async def _make_room(self, base: Device, need: int, model: str) -> list[str]:
        """Unload idle run-time models on ``base``, least recently used first, until ``need`` fits."""
        budget = self.budget(base)
        if budget is None:
            return []
        if need > budget:
            raise KernelError("ENOMEM", f"model_load: {model} has {need} bytes of weights; the budget of {base.name} "
                                        f"for loaded models is {budget}")
        resident = sorted(self.resident(base.name), key=lambda d: d.last_used)
        used = sum(d.weight_bytes for d in resident)
        idle = [d for d in resident if not self.users(d)]
        if used - sum(d.weight_bytes for d in idle) + need > budget:
            busy = ", ".join(f"{d.model} (pids {', '.join(map(str, self.users(d)))})" for d in resident if self.users(d))
            raise KernelError("ENOMEM", f"model_load: {model} ({need} bytes) does not fit in the {budget}-byte budget of "
                                        f"{base.name}: {busy} in use, and a model in use is never unloaded")
        evicted = []
        for device in idle:
            if used + need <= budget:
                break
            await self._unload(device)
            used -= device.weight_bytes
            evicted.append(device.model)
        return evicted

    async def _start(self, base: Device, device_name: str, model: str, info: dict[str, Any]) -> Device:
        k = self._kernel
        kind = str(base.info.get("kind", "?"))
        assert k.config.device_factory is not None
        try:
            cfg = k.config.device_factory(kind, device_name, model, info["path"])
        except (ValueError, OSError) as exc:
            # A factory that reads the checkpoint itself finds only ciphertext in an encrypted one.
            sealed = f" ({model} is stored encrypted: only a driver given its grant can read it)" if info.get("sealed") else ""
            raise KernelError("EINVAL", f"model_load: cannot make a {kind} device for {model}: {exc}{sealed}") from None
        cfg.name, cfg.model = device_name, model  # the kernel names it, whatever the factory said
        if info.get("sealed") is not None:
            # In load_args, so that a driver the supervisor restarts loads again. The version's key
            # thus lives in the kernel and that driver only (both trusted), and moves over
            # in-process channels or a local socket; it opens this one version and nothing else.
            cfg.load_args = {**cfg.load_args, "sealed": info["sealed"]}
        device = k.new_device(cfg)
        device.base = base.name
        device.weight_bytes = int(info["weight_bytes"])
        await k.start_device(device, cfg)
        k.devices[device_name] = device
        return device

    # -- unload ----------------------------------------------------------------------------------

    async def unload(self, ref: str, base_name: str | None) -> dict[str, Any]:
        """Unload every run-time device serving ``ref``; EBUSY if one is in use."""
        k = self._kernel
        async with self._lock:
            matches = self._matching(ref, base_name)
            if not matches:
                if any(d.model == ref for d in k.devices.values()):
                    raise KernelError("EINVAL", f"model_unload: {ref} is a boot device's model; it stays for the kernel's life")
                loaded = ", ".join(d.model for d in self.resident()) or "none"
                raise KernelError("ENOENT", f"model_unload: {ref} is not loaded; loaded at run time: {loaded}")
            busy = [d for d in matches if self.users(d)]
            if busy:
                what = "; ".join(f"{d.model} on {d.base} by pids {', '.join(map(str, self.users(d)))}" for d in busy)
                raise KernelError("EBUSY", f"model_unload: in use: {what}; a model in use is never unloaded")
            for device in matches:
                await self._unload(device)
        return {"unloaded": [d.name for d in matches]}

    async def _unload(self, device: Device) -> None:
        """Park ``device``'s driver and unpin its model once no device serves it any more."""
        k = self._kernel
        k.park_device(device)  # synchronous: no process can be routed to it from here on
        try:
            await k.names.call(device.endpoint, "unload_model", {})
        except KernelError as error:  # a driver that died has nothing loaded anyway
            log.warning("unloading %s: %s", device.name, error)
        if not any(d.model == device.model for d in self.resident()):
            await self._unpin(device.model)

    async def _unpin(self, model: str) -> None:
        try:
            await self._kernel.call_service("models", "unload", {"name": model, "holder": self.holder})
        except KernelError as error:
            log.warning("unpinning %s: %s", model, error)
        self._pinned.discard(model)

    async def release_all(self) -> None:
        """Drop every pin of this kernel (at shutdown), so its models may be removed."""
        if not self._pinned:
            return
        try:
            await self._kernel.call_service("models", "release", {"holder": self.holder})
        except KernelError as error:
            log.warning("releasing model pins: %s", error)
        self._pinned.clear()

    def check_unused(self, op: str, ref: str) -> None:
        """EBUSY if a run-time device serves ``ref`` (NAME: any version; NAME@VERSION: that one)."""
        loaded = self._matching(ref, None)
        if loaded:
            models = sorted({d.model for d in loaded})
            raise KernelError("EBUSY", f"{op}: {', '.join(models)} {'is' if len(models) == 1 else 'are'} loaded "
                                       f"(on {', '.join(d.name for d in loaded)}); unload first (model_unload)")

    def _describe(self, device: Device, evicted: list[str], already: bool) -> dict[str, Any]:
        return {"model": device.model, "device": device.name, "loaded_on": device.base, "weight_bytes": device.weight_bytes,
                "evicted": evicted, "already_loaded": already,
                "budget_bytes": self.budget(self._kernel.devices[device.base]) if device.base else None}
