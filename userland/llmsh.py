"""llmsh: a shell for LLM processes (first form: commands, scripts, exit codes).

    llmsh                              # boots a kernel in-process with the default model
    llmsh --socket /tmp/llmos.sock     # attaches to a running kernel
    llmsh -c 'run --max-tokens 20 "def main():"; ps'
    llmsh script.llmsh

Commands: run (``&`` for the background), jobs, fg, bg, ps, kill, wait, nice, fork, free,
uname, help, exit; ``%N`` names job N. Errors read like a shell's
(``llmsh: kill: 999: no such process (ESRCH)``); the exit status is the last command's: 0 on
success, 1 when a syscall failed, 2 for a usage error, 127 for an unknown command.
Ctrl-Z, pipes, redirection, ``top`` and line editing come with the shell issue.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TextIO

import trio

from llmos.kernel.errors import ERRNO_NAMES
from llmos.kernel.kernel import open_kernel

from . import libllm
from .inspect import PS_COLUMNS, format_meminfo, format_table
from .system import add_system_arguments, build_config, options_from_args

OK, FAILED, USAGE, NOT_FOUND = 0, 1, 2, 127


class UsageError(Exception):
    """Bad arguments to a shell command (status 2)."""


class Shell:
    """Runs command lines against one kernel connection."""

    def __init__(self, llm: libllm.Client, out: TextIO) -> None:
        self.llm = llm
        self.out = out
        self.jobs: dict[int, int] = {}  # job number -> pid, for background runs
        self.next_job = 0
        self.text_jobs: dict[int, bool] = {}  # pid -> whether its prompt was text (decode output)
        self.commands: dict[str, Callable[[list[str]], Awaitable[None]]] = {
            "run": self.do_run, "jobs": self.do_jobs, "fg": self.do_fg, "bg": self.do_bg,
            "ps": self.do_ps, "kill": self.do_kill, "wait": self.do_wait,
            "nice": self.do_nice, "fork": self.do_fork, "free": self.do_free, "uname": self.do_uname,
            "help": self.do_help,
        }

    async def run_line(self, line: str) -> int:
        """Run every ``;``-separated command of a line; returns the last one's status."""
        status = OK
        for command in split_commands(line):
            status = await self.run_command(command)
        return status

    async def run_command(self, words: list[str]) -> int:
        """Run one command; errors are printed like a shell's and become the status."""
        name, args = words[0], words[1:]
        handler = self.commands.get(name)
        if handler is None:
            self.error(f"{name}: command not found")
            return NOT_FOUND
        try:
            await handler(args)
        except UsageError as exc:
            self.error(f"{name}: {exc}")
            return USAGE
        except libllm.LLMOSError as exc:
            target = f"{args[-1]}: " if name in ("kill", "wait", "nice", "fork") and args else ""
            self.error(f"{name}: {target}{ERRNO_NAMES[exc.errno]} ({exc.errno}): {exc.message}")
            return FAILED
        return OK

    def error(self, text: str) -> None:
        print(f"llmsh: {text}", file=sys.stderr, flush=True)

    def say(self, text: str = "", end: str = "\n") -> None:
        print(text, end=end, file=self.out, flush=True)

    # -- commands ----------------------------------------------------------------------------

    async def do_run(self, args: list[str]) -> None:
        """run [--max-tokens N] [--temperature T] [--seed S] [--nice N] [--ids 1,2,3 | PROMPT] [&]"""
        background = bool(args) and args[-1] == "&"
        options = parse_run_args(args[:-1] if background else args)
        pid = await self.llm.spawn(**options)
        self.text_jobs[pid] = "prompt" in options
        if background:
            self.next_job += 1
            self.jobs[self.next_job] = pid
            self.say(f"[{self.next_job}] {pid}")
            return
        await self._foreground(pid)

    async def _foreground(self, pid: int) -> None:
        """Stream a process's output to the terminal, then reap it (Ctrl-C kills it)."""
        try:
            async for tokens in self.llm.stream(pid):
                text = await self.llm.detokenize(tokens) if self.text_jobs.get(pid) else " ".join(map(str, tokens)) + " "
                self.say(text, end="")
        except KeyboardInterrupt:
            await self.llm.kill(pid, "SIGKILL")
        result = await self.llm.wait(pid)
        self._forget_job(pid)
        self.say()
        if result.exit.get("errno"):
            raise libllm.ERRORS[result.exit["errno"]](result.exit["errno"], result.exit["message"])

    async def do_jobs(self, args: list[str]) -> None:
        """jobs: this shell's background jobs and their states"""
        self._no_args("jobs", args)
        for job, pid in sorted(self.jobs.items()):
            stat = await self.llm.stat(pid)
            state = "Done" if stat["state"] == "ZOMBIE" else stat["state"].capitalize()
            self.say(f"[{job}] {pid:>6}  {state:<8} {stat['generated_tokens']}/{stat['max_tokens']} tokens")

    async def do_fg(self, args: list[str]) -> None:
        """fg [%JOB|PID]: continue a job in the foreground and stream its output"""
        pid = self._job_pid(args)
        await self.llm.kill(pid, "SIGCONT")
        await self._foreground(pid)

    async def do_bg(self, args: list[str]) -> None:
        """bg [%JOB|PID]: let a stopped job run on in the background"""
        await self.llm.kill(self._job_pid(args), "SIGCONT")

    def _job_pid(self, args: list[str]) -> int:
        """The pid a job spec names: %N, a pid, or (none given) the newest job."""
        if not args:
            if not self.jobs:
                raise UsageError("no current job")
            return self.jobs[max(self.jobs)]
        return self._pid(args)

    def _forget_job(self, pid: int) -> None:
        self.text_jobs.pop(pid, None)
        for job, job_pid in list(self.jobs.items()):
            if job_pid == pid:
                del self.jobs[job]

    async def do_ps(self, args: list[str]) -> None:
        """ps: one row per process"""
        self._no_args("ps", args)
        self.say(format_table(await self.llm.ps(), PS_COLUMNS))

    async def do_kill(self, args: list[str]) -> None:
        """kill [-SIGNAL] PID: send SIGTERM (default), SIGKILL, SIGSTOP or SIGCONT"""
        signal = "SIGTERM"
        if args and args[0].startswith("-"):
            signal, args = args[0][1:], args[1:]
            signal = int(signal) if signal.isdigit() else signal
        await self.llm.kill(self._pid(args), signal)

    async def do_wait(self, args: list[str]) -> None:
        """wait [PID]: wait for a process this shell started, print how it ended"""
        result = await self.llm.wait(self._pid(args) if args else None)
        self._forget_job(result.pid)
        self.say(f"[{result.pid}] {result.finish_reason}: {result.exit['message']} ({len(result.output_ids)} tokens)")

    async def do_nice(self, args: list[str]) -> None:
        """nice PID VALUE: set a process's nice value (-20..19)"""
        if len(args) != 2 or not args[1].lstrip("-").isdigit():
            raise UsageError("usage: nice PID VALUE")
        await self.llm.nice(self._pid(args[:1]), int(args[1]))

    async def do_fork(self, args: list[str]) -> None:
        """fork PID [N]: N children continue from the process's tokens"""
        if not args or len(args) > 2 or (len(args) == 2 and not args[1].isdigit()):
            raise UsageError("usage: fork PID [N]")
        pids = await self.llm.fork(self._pid(args[:1]), int(args[1]) if len(args) == 2 else 1)
        self.say(" ".join(map(str, pids)))

    async def do_free(self, args: list[str]) -> None:
        """free: KV memory per device"""
        self._no_args("free", args)
        self.say(format_meminfo((await self.llm.call("meminfo"))["devices"]))

    async def do_uname(self, args: list[str]) -> None:
        """uname: the kernel, its devices and servers"""
        self._no_args("uname", args)
        info = await self.llm.uname()
        self.say(f"LLMOS {info['version']}, policy {info['policy']}, {info['num_processes']} processes")
        for d in info["devices"]:
            kind = f"{d['kind']}, emulated" if d["emulated"] else d["kind"]
            self.say(f"  {d['name']} ({kind}): model {d['model']}, KV {d['kv_blocks_used']}/{d['kv_blocks_total']} blocks")

    async def do_help(self, args: list[str]) -> None:
        """help: this list"""
        for name, handler in self.commands.items():
            self.say(f"  {(handler.__doc__ or name).splitlines()[0]}")
        self.say("  exit [STATUS]")

    def _pid(self, args: list[str]) -> int:
        """One process id, or %N for job N of this shell."""
        if len(args) == 1 and args[0].startswith("%") and args[0][1:].isdigit():
            job = int(args[0][1:])
            if job not in self.jobs:
                raise UsageError(f"{args[0]}: no such job")
            return self.jobs[job]
        if len(args) != 1 or not args[0].isdigit():
            raise UsageError("expected one process id or %job")
        return int(args[0])

    @staticmethod
    def _no_args(name: str, args: list[str]) -> None:
        if args:
            raise UsageError(f"{name} takes no arguments")


def split_commands(line: str) -> list[list[str]]:
    """Words of each ``;``-separated command, shell-quoted; comments (#) dropped."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    commands, current = [], []
    for word in lexer:
        if set(word) == {";"}:  # punctuation_chars groups runs such as ";;"
            if current:
                commands.append(current)
            current = []
        else:
            current.append(word)
    if current:
        commands.append(current)
    return commands


def parse_run_args(args: list[str]) -> dict[str, Any]:
    """spawn options from ``run``'s arguments."""
    parser = argparse.ArgumentParser(prog="run", add_help=False, exit_on_error=False)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--nice", type=int, default=0)
    parser.add_argument("--ids", default=None)
    parser.add_argument("prompt", nargs="*")
    try:
        ns = parser.parse_args(args)
    except (argparse.ArgumentError, SystemExit) as exc:
        raise UsageError(f"{exc}; usage: run [--max-tokens N] [--temperature T] [--seed S] [--nice N] [--ids 1,2,3 | PROMPT]") from None
    options: dict[str, Any] = {"max_tokens": ns.max_tokens, "temperature": ns.temperature, "seed": ns.seed, "nice": ns.nice}
    if (ns.ids is None) == (not ns.prompt):
        raise UsageError("give a PROMPT or --ids, not both")
    if ns.ids is not None:
        try:
            options["prompt_ids"] = [int(x) for x in ns.ids.split(",") if x]
        except ValueError:
            raise UsageError(f"--ids {ns.ids!r}: expected comma-separated integers") from None
    else:
        options["prompt"] = " ".join(ns.prompt)
    return options


async def interact(shell: Shell, lines: list[str] | None) -> int:
    """Run script lines, or read lines from the terminal until exit or end of input."""
    status = OK
    interactive = lines is None
    while True:
        if interactive:
            try:
                line = await trio.to_thread.run_sync(input, "llmsh$ ")
            except EOFError:
                shell.say()
                return status
        elif not lines:
            return status
        else:
            line = lines.pop(0)
        commands = split_commands(line) if line.strip() else []
        for words in commands:
            if words[0] == "exit":
                return int(words[1]) if len(words) > 1 and words[1].isdigit() else status
            status = await shell.run_command(words)


async def main_async(args: argparse.Namespace, lines: list[str] | None) -> int:
    """Connect (or boot) and run the shell."""
    if args.socket:
        async with libllm.open_client(args.socket) as llm:
            return await interact(Shell(llm, sys.stdout), lines)
    async with open_kernel(build_config(options_from_args(args))) as kernel, libllm.open_client(kernel) as llm:
        return await interact(Shell(llm, sys.stdout), lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``llmsh`` console script."""
    parser = argparse.ArgumentParser(prog="llmsh", description="A shell for LLM processes.")
    parser.add_argument("-c", dest="command", help="run these ;-separated commands and exit")
    parser.add_argument("script", nargs="?", help="a file of commands, one line each")
    parser.add_argument("--socket", default=None, help="attach to the kernel serving this socket")
    add_system_arguments(parser)
    args = parser.parse_args(argv)
    lines: list[str] | None = None
    if args.command is not None:
        lines = [args.command]
    elif args.script is not None:
        try:
            with open(args.script, encoding="utf-8") as file:
                lines = file.read().splitlines()
        except OSError as exc:
            print(f"llmsh: {args.script}: {exc.strerror} (ENOENT)", file=sys.stderr)
            return NOT_FOUND
    try:
        return trio.run(main_async, args, lines)
    except ValueError as exc:
        print(f"llmsh: {exc} (EINVAL)", file=sys.stderr)
        return USAGE
    except libllm.LLMOSError as exc:
        print(f"llmsh: {exc.message} ({exc.errno})", file=sys.stderr)
        return FAILED
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
