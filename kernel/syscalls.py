"""The syscall table: op name -> handler. Each handler is a thin shim (xv6's syscall.c).

A handler copies its arguments in through ``Args`` (EINVAL on anything malformed), looks up
its target (ESRCH), checks permission (EPERM/EACCES), then calls into the process table or a
device scheduler. Unknown ops get ENOSYS from ``Kernel.syscall``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from . import params
from .args import Args
from .batch import SamplingParams
from .errors import KernelError
from .process import ExitReason, ExitStatus, Process, Signal
from .process_caps import RUNNING_KINDS
from .proctable import Session

if TYPE_CHECKING:
    from .kernel import Kernel

Handler = Callable[["Kernel", Session, dict[str, Any]], Awaitable[Any]]

SPAWN_ARGS = (
    "model", "prompt", "prompt_ids", "max_tokens", "temperature", "top_k", "top_p", "seed",
    "stop_ids", "ignore_eos", "nice", "deadline_s", "detach", "device",
)


def _owned(caller: Session, proc: Process, op: str) -> None:
    """Only the process's user (or uid 0) may signal, renice or fork it."""
    if caller.uid != 0 and caller.uid != proc.uid:
        raise KernelError("EPERM", f"{op}: process {proc.pid} belongs to uid {proc.uid}, not {caller.uid}")


async def sys_getpid(k: Kernel, caller: Session, raw: dict[str, Any]) -> dict[str, Any]:
    """The caller's own identity (a no-op round trip; ``llmos bench ipc`` times it)."""
    Args("getpid", raw, ())
    return {"pid": caller.pid, "uid": caller.uid, "tenant": caller.tenant}


async def sys_spawn(k: Kernel, caller: Session, raw: dict[str, Any]) -> dict[str, Any]:
    """Start an LLM process on the least-loaded device serving its model (or a named one)."""
    a = Args("spawn", raw, SPAWN_ARGS)
    device = k.route(a.text("model", None, max_len=256), a.text("device", None, max_len=256))
    if a.has("prompt") == a.has("prompt_ids"):
        raise KernelError("EINVAL", "spawn: give exactly one of 'prompt' (text) or 'prompt_ids' (token ids)")
    if a.has("prompt"):
        prompt_ids = await k.tokenize(device, a.text("prompt", max_len=params.MAX_PROMPT_TOKENS * 8))
    else:
        prompt_ids = a.int_list("prompt_ids", max_len=params.MAX_PROMPT_TOKENS)
    if not prompt_ids:
        raise KernelError("EINVAL", "spawn: the prompt is empty")
    if len(prompt_ids) > params.MAX_PROMPT_TOKENS:
        raise KernelError("E2BIG", f"spawn: prompt of {len(prompt_ids)} tokens exceeds {params.MAX_PROMPT_TOKENS}")
    vocab = device.vocab_size
    if max(prompt_ids) >= vocab:
        bad = next(t for t in prompt_ids if t >= vocab)
        raise KernelError("EINVAL", f"spawn: token id {bad} is outside the vocabulary of {device.model} ({vocab} tokens)")
    stop_ids = a.int_list("stop_ids", [], max_len=params.MAX_STOP_IDS)
    if not a.flag("ignore_eos", False):
        stop_ids = [*stop_ids, *device.eos_ids]
    nice = a.integer("nice", 0, params.NICE_MIN, params.NICE_MAX)
    if nice < 0 and caller.uid != 0:
        raise KernelError("EPERM", f"spawn: only uid 0 may start a process with negative nice ({nice})")
    deadline_s = a.number("deadline_s", None, lo=0.0)
    sampling = SamplingParams(
        temperature=a.number("temperature", 1.0, 0.0, 100.0),
        top_k=a.integer("top_k", 0, 0, vocab),
        top_p=a.number("top_p", 1.0, 1e-6, 1.0),
        seed=a.integer("seed", 0, 0, 2**63 - 1),
    )
    now = k.now()
    proc = Process(
        pid=k.table.allocate_pid(),
        ppid=caller.pid,
        session=caller.pid,
        uid=caller.uid,
        tenant=caller.tenant,
        model=device.model,
        device=device.name,
        prompt_ids=list(prompt_ids),
        max_tokens=a.integer("max_tokens", 16, 1, params.MAX_NEW_TOKENS),
        sampling=sampling,
        stop_ids=frozenset(stop_ids),
        created_at=now,
        deadline=None if deadline_s is None else now + deadline_s,
        detached=a.flag("detach", False),
        nice=nice,
        nice_floor=nice,
    )
    if k.quotas is not None and k.caps.enabled:
        k.quotas.precheck("spawn", proc)  # refuse (EAGAIN) before minting handles for nothing
    caps = await k.caps.grant(proc)  # None without a security service
    try:
        if k.devices.get(device.name) is not device:
            # Its model was unloaded (or evicted) while we awaited the tokenizer or the
            # security service: the process must not be queued on a device that is gone.
            raise KernelError("ENOENT", f"spawn: model {device.model} was unloaded while the process was being created")
        held = k.quotas is not None and not k.quotas.admit("spawn", proc)  # EAGAIN over quota
    except KernelError:
        k.caps.forget(proc.pid)
        raise
    k.table.add(proc)
    if not held:  # held: stays NEW until its tenant is back under quota (kernel/quotas.py)
        device.scheduler.submit(proc)
    return {"pid": proc.pid, "device": device.name, "held": held, "caps": caps}


async def sys_read(k: Kernel, caller: Session, raw: dict[str, Any]) -> dict[str, Any]:
    """Tokens generated after ``offset``; blocks until there are some or the process ended."""
    a = Args("read", raw, ("pid", "offset", "timeout"))
    proc = k.table.get(a.integer("pid"))
    offset = a.integer("offset", 0, 0)
    timeout = a.number("timeout", None, lo=0.0)
    if caller.uid not in (0, proc.uid):
        raise KernelError("EACCES", f"read: the output of process {proc.pid} belongs to uid {proc.uid}")
    with k.move_on_after(timeout):
        while len(proc.output_ids) <= offset and proc.alive:
            await proc.output_changed.wait()
    tokens = proc.output_ids[offset:]
    eof = not proc.alive and offset + len(tokens) >= len(proc.output_ids)
    return {
        "tokens": tokens,
        "offset": offset + len(tokens),
        "eof": eof,
        "exit": proc.exit_status.to_wire() if eof and proc.exit_status else None,
    }


async def sys_wait(k: Kernel, caller: Session, raw: dict[str, Any]) -> dict[str, Any] | None:
    """Wait for a child of this session to end, reap it and return its status and output."""
    a = Args("wait", raw, ("pid", "nohang"))
    proc = await k.table.wait(caller.pid, a.integer("pid", None, 0), a.flag("nohang", False))
    if proc is None:
        return None
    assert proc.exit_status is not None
    return {"pid": proc.pid, "exit": proc.exit_status.to_wire(), "output_ids": proc.output_ids, "stat": proc.stat(k.now())}


async def sys_kill(k: Kernel, caller: Session, raw: dict[str, Any]) -> None:
    """Send a signal: SIGKILL, SIGTERM (the default), SIGSTOP or SIGCONT."""
    a = Args("kill", raw, ("pid", "signal"))
    pid = a.integer("pid")
    try:
        sig = Signal.parse(raw.get("signal", "SIGTERM"))
    except (KeyError, ValueError):
        raise KernelError("EINVAL", f"kill: unknown signal {raw.get('signal')!r}; use one of {', '.join(s.name for s in Signal)}") from None
    if pid == params.PID_INIT:
        raise KernelError("EPERM", "kill: init (pid 1) cannot be signalled")
    proc = k.table.get(pid)
    _owned(caller, proc, "kill")
    if proc.alive:
        k.devices[proc.device].scheduler.signal(proc, sig)


async def sys_fork(k: Kernel, caller: Session, raw: dict[str, Any]) -> dict[str, Any]:
    """Make ``n`` children that continue from the process's tokens so far, each with its own seed."""
    a = Args("fork", raw, ("pid", "n"))
    parent = k.table.get(a.integer("pid"))
    n = a.integer("n", 1, 1, params.MAX_FORK_CHILDREN)
    _owned(caller, parent, "fork")
    if k.caps.enabled and parent.alive:
        # Forking runs the parent's model again: its model capability must still hold.
        await k.caps.check(parent, parent.caps.get("model", ""), "model", "fork")
    _settle(k, parent)
    _check_fork(k, parent, n)
    pids = [k.table.allocate_pid() for _ in range(n)]
    caps: list[dict[str, str]] = [{} for _ in pids]
    if k.caps.enabled:
        for index, pid in enumerate(pids):
            caps[index] = await k.caps.grant(_fork_child(k, parent, index, pid)) or {}
        try:
            _check_fork(k, parent, n)  # again: the parent or the table moved while minting
        except KernelError:
            for pid in pids:
                k.caps.forget(pid)
            raise
    # Built after the awaits, from the parent's state *now*, with the steps of a multi-step run
    # that have ended applied: a child's tokens and its KV (shared when it is queued) must agree.
    _settle(k, parent)
    children = [_fork_child(k, parent, index, pid, caps[index]) for index, pid in enumerate(pids)]
    for child in children:
        k.table.add(child)
    k.devices[parent.device].scheduler.fork(parent, children)  # shares the parent's KV blocks copy-on-write
    return {"pids": [c.pid for c in children], "caps": [c.caps for c in children] if k.caps.enabled else None}


def _settle(k: Kernel, proc: Process) -> None:
    """Apply the steps of a multi-step run on ``proc``'s device that have ended by now."""
    device = k.devices.get(proc.device)
    if device is not None:
        device.scheduler.settle()


def _check_fork(k: Kernel, parent: Process, n: int) -> None:
    """ESRCH if ``parent`` ended; EAGAIN if ``n`` children exceed the table or the tenant's quota."""
    if not parent.alive:
        raise KernelError("ESRCH", f"fork: process {parent.pid} has already exited")
    if k.table.num_live() + n > k.table.max_processes:
        raise KernelError("EAGAIN", f"fork: {n} more processes would exceed the limit of {k.table.max_processes}")
    reason = k.quotas.over_quota(parent.tenant, n) if k.quotas is not None else None
    if reason is not None:  # fork never queues: its children would start from a stale parent
        raise KernelError("EAGAIN", f"fork: {reason}")


def _fork_child(k: Kernel, parent: Process, index: int, pid: int, caps: dict[str, str] | None = None) -> Process:
    """Fork child ``index`` of ``parent``: everything the parent has so far is its prompt."""
    return Process(
        pid=pid,
        ppid=parent.pid,
        session=parent.session,
        uid=parent.uid,
        tenant=parent.tenant,
        model=parent.model,
        device=parent.device,
        prompt_ids=parent.all_ids,
        max_tokens=max(1, parent.max_tokens - len(parent.output_ids)),
        sampling=_child_sampling(parent.sampling, parent.pid, index),
        stop_ids=parent.stop_ids,
        created_at=k.now(),
        deadline=parent.deadline,
        detached=parent.detached,
        nice=parent.nice,
        nice_floor=parent.nice_floor,
        caps=caps or {},
    )


def _child_sampling(parent: SamplingParams, parent_pid: int, index: int) -> SamplingParams:
    """A seed for fork child ``index`` that differs from its siblings' and parent's."""
    digest = hashlib.blake2b(f"{parent.seed}:{parent_pid}:{index}".encode(), digest_size=8).digest()
    seed = int.from_bytes(digest, "big") >> 1
    return SamplingParams(parent.temperature, parent.top_k, parent.top_p, seed, 0)


async def sys_nice(k: Kernel, caller: Session, raw: dict[str, Any]) -> dict[str, Any]:
    """Set a process's nice value. Lowering it (raising priority) takes uid 0, or the process's
    priority capability (``cap``), which allows values down to the nice it was started with."""
    a = Args("nice", raw, ("pid", "value", "cap"))
    proc = k.table.get(a.integer("pid"))
    value = a.integer("value", lo=params.NICE_MIN, hi=params.NICE_MAX)
    cap = a.text("cap", None, max_len=4096)
    _owned(caller, proc, "nice")
    if cap is not None:  # a handle presented is checked, even by uid 0: a wrong one is an error
        await k.caps.check(proc, cap, "priority", "renice")
    if value < proc.nice and caller.uid != 0:
        if cap is None:
            how = "or the process's priority capability (cap=, from spawn or stat)" if k.caps.enabled else "(without a security service there are no capabilities)"
            raise KernelError("EPERM", f"nice: lowering nice ({proc.nice} -> {value}) takes uid 0 {how}")
        if value < proc.nice_floor:
            raise KernelError("EPERM", f"nice: process {proc.pid}'s priority capability allows nice >= {proc.nice_floor}, not {value}")
    proc.nice = value
    return {"pid": proc.pid, "nice": value}


async def sys_ps(k: Kernel, caller: Session, raw: dict[str, Any]) -> dict[str, Any]:
    """One row per process, like ``ps -e``."""
    Args("ps", raw, ())
    rows = []
    for proc in sorted(k.table, key=lambda p: p.pid):
        row = proc.summary()
        row["kv_blocks"] = k.blocks_of(proc)
        rows.append(row)
    return {"processes": rows}


async def sys_stat(k: Kernel, caller: Session, raw: dict[str, Any]) -> dict[str, Any]:
    """Everything known about one process, accounting included."""
    a = Args("stat", raw, ("pid",))
    proc = k.table.get(a.integer("pid"))
    info = proc.stat(k.now())
    info["kv_blocks"] = k.blocks_of(proc)
    info["nice_floor"] = proc.nice_floor
    if caller.uid in (0, proc.uid):  # handles are bound to the pid, but still the owner's business
        info["caps"] = dict(proc.caps) if k.caps.enabled else None
    return info


async def sys_cap_revoke(k: Kernel, caller: Session, raw: dict[str, Any]) -> dict[str, Any]:
    """Revoke one capability of a process (its owner or uid 0). A model or device capability
    is in use while the process runs, so revoking one ends the process with EPERM."""
    handle = Args("cap_revoke", raw, ("handle",)).text("handle", max_len=4096)
    k.require_service("security", "cap_revoke")
    proc = next((p for p in k.table if handle in p.caps.values()), None)
    if proc is None:
        raise KernelError("ESRCH", "cap_revoke: no process holds that capability (its process was reaped, or it was never minted)")
    _owned(caller, proc, "cap_revoke")
    kind = await k.caps.revoke(proc, handle)
    ended = kind in RUNNING_KINDS and proc.alive
    if ended:
        status = ExitStatus(ExitReason.ERROR, errno="EPERM", message=f"its {kind} capability was revoked")
        k.devices[proc.device].scheduler.end(proc, status)
    return {"pid": proc.pid, "kind": kind, "ended": ended}


async def sys_uname(k: Kernel, caller: Session, raw: dict[str, Any]) -> dict[str, Any]:
    """The kernel: version, policy, devices, models, uptime, and the servers with restart counts."""
    Args("uname", raw, ())
    return k.describe()


async def sys_detokenize(k: Kernel, caller: Session, raw: dict[str, Any]) -> dict[str, Any]:
    """Turn token ids into text with a model's tokenizer."""
    a = Args("detokenize", raw, ("model", "ids"))
    device = k.device_for_model(a.text("model", k.default_model, max_len=256))
    ids = a.int_list("ids", max_len=params.MAX_NEW_TOKENS + params.MAX_PROMPT_TOKENS)
    return {"text": await k.detokenize(device, ids)}


async def sys_tokenize(k: Kernel, caller: Session, raw: dict[str, Any]) -> dict[str, Any]:
    """Turn text into token ids with a model's tokenizer."""
    a = Args("tokenize", raw, ("model", "text"))
    device = k.device_for_model(a.text("model", k.default_model, max_len=256))
    return {"ids": await k.tokenize(device, a.text("text", max_len=params.MAX_PROMPT_TOKENS * 8))}


async def sys_token(k: Kernel, caller: Session, raw: dict[str, Any]) -> dict[str, Any]:
    """Issue a token that admits a socket connection to a tenant (uid 0 only).

    A connection presents it in its first request, ``hello``; the kernel then attaches that
    tenant to the connection. Tokens are valid until the kernel reboots.
    """
    a = Args("token", raw, ("tenant",))
    tenant = a.text("tenant", max_len=128)
    if caller.uid != 0:
        raise KernelError("EPERM", "token: only uid 0 may issue tenant tokens")
    if not tenant or not tenant.isprintable():
        raise KernelError("EINVAL", "token: the tenant must be a non-empty printable name")
    return {"tenant": tenant, "token": k.issue_token(tenant)}


async def sys_meminfo(k: Kernel, caller: Session, raw: dict[str, Any]) -> dict[str, Any]:
    """KV memory per device: blocks total/used/cached/free, swap, utilization, fragmentation,
    prefix-cache hit rate, preemption counts."""
    Args("meminfo", raw, ())
    return {"devices": [d.scheduler.meminfo() for d in k.devices.values()]}


async def sys_lsdev(k: Kernel, caller: Session, raw: dict[str, Any]) -> dict[str, Any]:
    """One row per device: kind, emulated or real, model, memory, utilization, running, waiting."""
    Args("lsdev", raw, ())
    return {"devices": k.list_devices()}


# -- models: forwarded to the "models" service; loading is the kernel's (residency.py) ------------

MODEL_REF_CHARS = 256  # longest NAME[@VERSION]
MODEL_PATH_CHARS = 4096  # longest checkpoint path


def _model_admin(k: Kernel, caller: Session, op: str) -> None:
    """ENOSYS without a models service; EPERM unless uid 0 (models change what every user runs)."""
    k.require_service("models", op)
    if caller.uid != 0:
        raise KernelError("EPERM", f"{op}: only uid 0 may import, update, remove, load or unload models")


async def sys_model_import(k: Kernel, caller: Session, raw: dict[str, Any]) -> Any:
    """Copy a Hugging Face-format checkpoint directory into the model store as NAME version 1, signed.

    ``encrypt``: store every file of the version sealed with AES-GCM (services/models.py).
    """
    return await _add_model_version(k, caller, raw, "import")


async def sys_model_update(k: Kernel, caller: Session, raw: dict[str, Any]) -> Any:
    """Add the next version of a model from a checkpoint directory; loaded versions stay loaded.

    ``encrypt``: store the new version's files sealed with AES-GCM, as for ``model_import``.
    """
    return await _add_model_version(k, caller, raw, "update")


async def _add_model_version(k: Kernel, caller: Session, raw: dict[str, Any], op: str) -> Any:
    """model_import / model_update: check {path, name, encrypt}, then ask the models service."""
    syscall = f"model_{op}"
    a = Args(syscall, raw, ("path", "name", "encrypt"))
    args = {"path": a.text("path", max_len=MODEL_PATH_CHARS), "name": a.text("name", max_len=MODEL_REF_CHARS),
            "encrypt": a.flag("encrypt", False)}
    _model_admin(k, caller, syscall)
    return await k.call_service("models", op, args, syscall=syscall)


async def sys_model_list(k: Kernel, caller: Session, raw: dict[str, Any]) -> Any:
    """Every model in the store: versions, the newest, those loaded."""
    Args("model_list", raw, ())
    return await k.call_service("models", "list", {}, syscall="model_list")


async def sys_model_show(k: Kernel, caller: Session, raw: dict[str, Any]) -> Any:
    """One version of a model: config summary, files and sizes, signer, versions."""
    name = Args("model_show", raw, ("name",)).text("name", max_len=MODEL_REF_CHARS)
    return await k.call_service("models", "show", {"name": name}, syscall="model_show")


async def sys_model_verify(k: Kernel, caller: Session, raw: dict[str, Any]) -> Any:
    """Check a version's files against its signed manifest (EACCES naming what is wrong)."""
    name = Args("model_verify", raw, ("name",)).text("name", max_len=MODEL_REF_CHARS)
    return await k.call_service("models", "verify", {"name": name}, syscall="model_verify")


async def sys_model_rm(k: Kernel, caller: Session, raw: dict[str, Any]) -> Any:
    """Remove a model (NAME) or one version (NAME@VERSION); EBUSY while it is loaded."""
    name = Args("model_rm", raw, ("name",)).text("name", max_len=MODEL_REF_CHARS)
    _model_admin(k, caller, "model_rm")
    k.residency.check_unused("model_rm", name)
    # ENOENT on a retry: the first try removed it and died before replying.
    result = await k.call_service("models", "rm", {"name": name}, syscall="model_rm", done_after_retry="ENOENT")
    return result if result is not None else {"name": name.partition("@")[0], "removed": None}


async def sys_model_load(k: Kernel, caller: Session, raw: dict[str, Any]) -> Any:
    """Verify a model's signed manifest and load it on a device (making room: idle models go, LRU)."""
    a = Args("model_load", raw, ("name", "device"))
    name, device = a.text("name", max_len=MODEL_REF_CHARS), a.text("device", None, max_len=256)
    _model_admin(k, caller, "model_load")
    return await k.residency.load(name, device)


async def sys_model_unload(k: Kernel, caller: Session, raw: dict[str, Any]) -> Any:
    """Unload a model loaded at run time (every device holding it, or the one named); EBUSY if in use."""
    a = Args("model_unload", raw, ("name", "device"))
    name, device = a.text("name", max_len=MODEL_REF_CHARS), a.text("device", None, max_len=256)
    _model_admin(k, caller, "model_unload")
    return await k.residency.unload(name, device)


# -- quotas and telemetry: forwarded to the "resources" service, enforced in kernel/quotas.py -------

TENANT_CHARS = 128
QUOTA_ARGS = ("tenant", "processes", "kv_blocks", "tokens_per_s", "burst", "over_quota")


async def sys_quota_set(k: Kernel, caller: Session, raw: dict[str, Any]) -> Any:
    """Set a tenant's quotas (uid 0 only); the kernel enforces the stored result at once."""
    Args("quota_set", raw, QUOTA_ARGS).text("tenant", max_len=TENANT_CHARS)
    k.require_service("resources", "quota_set")
    if caller.uid != 0:
        raise KernelError("EPERM", "quota_set: only uid 0 may set quotas")
    quota = await k.call_service("resources", "set_quota", dict(raw), syscall="quota_set")
    assert k.quotas is not None  # configured with the service
    k.quotas.update(quota, k.now())
    return quota


async def sys_quota_get(k: Kernel, caller: Session, raw: dict[str, Any]) -> Any:
    """One tenant's quotas (default: the caller's); ENOENT if it has none."""
    tenant = Args("quota_get", raw, ("tenant",)).text("tenant", caller.tenant, max_len=TENANT_CHARS)
    return await k.call_service("resources", "get_quota", {"tenant": tenant}, syscall="quota_get")


async def sys_quota_list(k: Kernel, caller: Session, raw: dict[str, Any]) -> Any:
    """Every tenant's quotas."""
    Args("quota_list", raw, ())
    return await k.call_service("resources", "list_quotas", {}, syscall="quota_list")


async def sys_usage(k: Kernel, caller: Session, raw: dict[str, Any]) -> Any:
    """Telemetry: per tenant, use beside quota; per device, utilization, running, waiting.

    A user other than uid 0 sees its own tenant only.
    """
    tenant = Args("usage", raw, ("tenant",)).text("tenant", None, max_len=TENANT_CHARS)
    k.require_service("resources", "usage")
    if caller.uid != 0:
        if tenant not in (None, caller.tenant):
            raise KernelError("EPERM", f"usage: only uid 0 may see the use of tenant {tenant!r}")
        tenant = caller.tenant
    assert k.quotas is not None
    now = k.now()
    tenants = k.quotas.tenant_usage(now, now - k.booted_at)
    devices = [{key: row[key] for key in ("name", "kind", "model", "utilization", "busy_s", "running", "waiting",
                                          "kv_blocks_used", "kv_blocks_total")} for row in k.list_devices()]
    live = {"tenants": [row for name, row in tenants.items() if tenant in (None, name)], "devices": devices}
    return await k.call_service("resources", "usage", {"tenant": tenant, "live": live}, syscall="usage")


SYSCALLS: dict[str, Handler] = {
    "quota_set": sys_quota_set,
    "quota_get": sys_quota_get,
    "quota_list": sys_quota_list,
    "usage": sys_usage,
    "lsdev": sys_lsdev,
    "meminfo": sys_meminfo,
    "token": sys_token,
    "getpid": sys_getpid,
    "spawn": sys_spawn,
    "read": sys_read,
    "wait": sys_wait,
    "kill": sys_kill,
    "fork": sys_fork,
    "nice": sys_nice,
    "cap_revoke": sys_cap_revoke,
    "ps": sys_ps,
    "stat": sys_stat,
    "uname": sys_uname,
    "tokenize": sys_tokenize,
    "detokenize": sys_detokenize,
    "model_import": sys_model_import,
    "model_update": sys_model_update,
    "model_list": sys_model_list,
    "model_show": sys_model_show,
    "model_verify": sys_model_verify,
    "model_rm": sys_model_rm,
    "model_load": sys_model_load,
    "model_unload": sys_model_unload,
}

# Syscalls that may block; each runs in its own task so a connection can have several waiting.
BLOCKING_SYSCALLS = frozenset({"read", "wait", "spawn", "fork", "nice", "cap_revoke", "tokenize", "detokenize", "model_import", "model_update",
                               "model_list", "model_show", "model_verify", "model_rm", "model_load", "model_unload",
                               "quota_set", "quota_get", "quota_list", "usage"})
