"""llmsh's commands other than job control: ps, nice, caps, revoke, fork, free, uname, lsdev, models, history,
help, exit.

Each command is ``async def cmd_NAME(sh, args) -> int | None`` (None means 0); its docstring's
first line is its ``help`` entry. ``COMMANDS`` is the table the shell dispatches through.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from .errors import ENOSYS, ESRCH, LLMOSError
from .inspect import PS_COLUMNS, format_lsdev, format_meminfo, format_table
from .llmsh_jobs import JOB_COMMANDS, about
from .llmsh_parse import ShellError, ShellExit, UsageError
from .llmsh_top import cmd_top

if TYPE_CHECKING:
    from .llmsh_shell import Command, Shell

# The model syscalls, which the kernel forwards to the model manager service ("models"); a
# kernel without that service (or an older one) answers ENOSYS.
MODEL_OPS = {"models": "model_list", "load": "model_load", "unload": "model_unload"}
NO_MODEL_MANAGER = "the model manager is not running"


def _no_model_manager(exc: LLMOSError) -> str:
    """What to say for ENOSYS: the model manager is not running, and the kernel's hint if any."""
    detail = re.sub(r"^[a-z_]+: ", "", exc.message)
    return NO_MODEL_MANAGER if detail.startswith("no syscall named") else f"{NO_MODEL_MANAGER}; {detail}"


def _no_args(name: str, args: list[str]) -> None:
    if args:
        raise UsageError(f"usage: {name} (takes no arguments)")


def _pid(word: str, usage: str) -> int:
    if not word.isdigit():
        raise UsageError(usage)
    return int(word)


async def cmd_ps(sh: Shell, args: list[str]) -> None:
    """ps: one row per process"""
    _no_args("ps", args)
    sh.say(format_table(await sh.llm.ps(), PS_COLUMNS))


async def cmd_nice(sh: Shell, args: list[str]) -> None:
    """nice PID|%JOB VALUE: set a process's nice value (-20..19); back down to its start value too"""
    usage = "usage: nice PID|%JOB VALUE"
    if len(args) != 2 or not args[1].lstrip("-").isdigit():
        raise UsageError(usage)
    pid = sh.jobs.find(args[0]).pid if args[0].startswith("%") else _pid(args[0], usage)
    with about(args[0]):
        # Lowering nice: present the process's priority capability (if the kernel minted one),
        # so a user can take back the priority they started it with, and no more. Raising it
        # needs nothing, and must work after the handle was revoked.
        info, value = await sh.llm.stat(pid), int(args[1])
        cap = (info.get("caps") or {}).get("priority") if value < info["nice"] else None
        await sh.llm.nice(pid, value, cap=cap)


async def cmd_caps(sh: Shell, args: list[str]) -> None:
    """caps PID|%JOB: the process's capability handles (model, device, priority)"""
    usage = "usage: caps PID|%JOB"
    if len(args) != 1:
        raise UsageError(usage)
    pid = sh.jobs.find(args[0]).pid if args[0].startswith("%") else _pid(args[0], usage)
    with about(args[0]):
        caps = await sh.llm.caps(pid)
    if not caps:
        sh.say(f"process {pid} holds no capabilities (the kernel runs no security service: boot with --home)")
        return
    sh.say(format_table([{"kind": kind, "handle": handle} for kind, handle in caps.items()], ("kind", "handle")))


async def cmd_revoke(sh: Shell, args: list[str]) -> None:
    """revoke HANDLE: revoke a capability; revoking a model or device one ends its process"""
    if len(args) != 1:
        raise UsageError("usage: revoke HANDLE")
    try:
        done = await sh.llm.cap_revoke(args[0])
    except ESRCH as exc:  # the shell's "no such process" would hide that a handle was named
        raise ShellError(f"{exc.message.removeprefix('cap_revoke: ')} (ESRCH)") from None
    sh.say(f"revoked the {done['kind']} capability of process {done['pid']}" + ("; the process ended" if done["ended"] else ""))


async def cmd_fork(sh: Shell, args: list[str]) -> None:
    """fork PID|%JOB [N]: N children continue from the process's tokens so far; prints their pids"""
    usage = "usage: fork PID|%JOB [N]"
    if not args or len(args) > 2 or (len(args) == 2 and not args[1].isdigit()):
        raise UsageError(usage)
    pid = sh.jobs.find(args[0]).pid if args[0].startswith("%") else _pid(args[0], usage)
    with about(args[0]):
        pids = await sh.llm.fork(pid, int(args[1]) if len(args) == 2 else 1)
    sh.say(" ".join(map(str, pids)))


async def cmd_free(sh: Shell, args: list[str]) -> None:
    """free: KV memory per device: blocks, swap, utilization, prefix-cache hits"""
    _no_args("free", args)
    sh.say(format_meminfo((await sh.llm.call("meminfo"))["devices"]))


async def cmd_uname(sh: Shell, args: list[str]) -> None:
    """uname: the kernel, its devices and servers"""
    _no_args("uname", args)
    info = await sh.llm.uname()
    sh.say(f"LLMOS {info['version']}, policy {info['policy']}, {info['num_processes']} processes, up {info['uptime_s']:.1f} s")
    for d in info["devices"]:
        kind = f"{d['kind']}, emulated" if d["emulated"] else d["kind"]
        sh.say(f"  {d['name']} ({kind}): model {d['model']}, KV {d['kv_blocks_used']}/{d['kv_blocks_total']} blocks")
    for server in info.get("servers", []):
        sh.say(f"  server {server['name']}: {'ready' if server['ready'] else 'down'}, {server['restarts']} restarts")


async def cmd_lsdev(sh: Shell, args: list[str]) -> None:
    """lsdev: devices: kind, emulated or real, model, memory, utilization, load"""
    _no_args("lsdev", args)
    sh.say(format_lsdev(await sh.llm.lsdev()))


async def cmd_models(sh: Shell, args: list[str]) -> None:
    """models: the models loaded on each device, and the model manager's store"""
    _no_args("models", args)
    devices = await sh.llm.lsdev()
    rows = [{"model": d["model"], "device": d["name"], "kind": d["kind"], "type": "emulated" if d["emulated"] else "real"}
            for d in devices]
    sh.say(format_table(rows, ("model", "device", "kind", "type")))
    try:
        reply = await sh.llm.call(MODEL_OPS["models"])
    except ENOSYS as exc:
        sh.error(f"models: load/unload: {_no_model_manager(exc)}")
        return
    store: list[dict[str, Any]] = reply.get("models", []) if isinstance(reply, dict) else list(reply)
    sh.say("\nstore:" if store else "\nstore: empty")
    if store:
        cells = [{k: ",".join(map(str, v)) if isinstance(v, list) else v for k, v in row.items()} for row in store]
        sh.say(format_table(cells, tuple(store[0])))


async def _model_call(sh: Shell, name: str, args: list[str]) -> None:
    if len(args) not in (1, 3) or (len(args) == 3 and args[1] != "--device"):
        raise UsageError(f"usage: {name} MODEL [--device DEVICE]")
    try:
        with about(args[0]):
            reply = await sh.llm.call(MODEL_OPS[name], name=args[0], device=args[2] if len(args) == 3 else None)
    except ENOSYS as exc:
        raise ShellError(f"{_no_model_manager(exc)} (ENOSYS)") from None
    if reply:
        sh.say(" ".join(f"{k}={v}" for k, v in reply.items()) if isinstance(reply, dict) else str(reply))


async def cmd_load(sh: Shell, args: list[str]) -> None:
    """load MODEL [--device DEVICE]: load a model from the model manager's store (uid 0)"""
    await _model_call(sh, "load", args)


async def cmd_unload(sh: Shell, args: list[str]) -> None:
    """unload MODEL [--device DEVICE]: unload a model loaded at run time (uid 0)"""
    await _model_call(sh, "unload", args)


async def cmd_history(sh: Shell, args: list[str]) -> None:
    """history [N]: the lines typed so far (the last N)"""
    if len(args) > 1 or (args and not args[0].isdigit()):
        raise UsageError("usage: history [N]")
    first = max(0, len(sh.history) - int(args[0])) if args else 0
    for number, line in enumerate(sh.history[first:], start=first + 1):
        sh.say(f"{number:5d}  {line}")


async def cmd_help(sh: Shell, args: list[str]) -> None:
    """help [COMMAND]: what each command does"""
    names = args or list(sh.commands)
    for name in names:
        command = sh.commands.get(name)
        if command is None:
            raise ShellError(f"no help topics match '{name}'")
        first, *more = (command.__doc__ or name).splitlines()
        usage, _, summary = first.partition(": ")
        sh.say(f"  {usage:<32} {summary}" if len(usage) <= 32 else f"  {usage}\n  {'':<32} {summary}")
        if args and more:  # help COMMAND: the whole story
            sh.say("\n".join(line.replace("    ", "  ", 1) for line in more).rstrip())
    if not args:
        sh.say("\n  CMD | run PROMPT   feed CMD's output (run: its text) into run's prompt\n"
               "  CMD > FILE, >> FILE   write (append) CMD's output to FILE\n"
               "  %N, %+, %-   job specs; Ctrl-C ends a foreground job, Ctrl-Z stops it")


async def cmd_exit(sh: Shell, args: list[str]) -> None:
    """exit [STATUS]: leave the shell (with the last command's status unless given)"""
    if len(args) > 1:
        raise UsageError("usage: exit [STATUS]")
    if args and not args[0].lstrip("-").isdigit():
        sh.error(f"exit: {args[0]}: numeric argument required")
        raise ShellExit(2)
    raise ShellExit(int(args[0]) % 256 if args else sh.status)


COMMANDS: dict[str, Command] = {
    **JOB_COMMANDS,
    "ps": cmd_ps, "top": cmd_top, "nice": cmd_nice, "caps": cmd_caps, "revoke": cmd_revoke, "fork": cmd_fork, "free": cmd_free,
    "lsdev": cmd_lsdev, "models": cmd_models, "load": cmd_load, "unload": cmd_unload,
    "uname": cmd_uname, "history": cmd_history, "help": cmd_help, "exit": cmd_exit,
}
