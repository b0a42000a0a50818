"""llmsh: a shell for LLM processes.

    llmsh                              # boots a kernel in-process with the default model
    llmsh --socket /tmp/llmos.sock     # attaches to a running kernel
    llmsh -c 'run --max-tokens 20 "def main():"; ps'
    llmsh script.llmsh

On a terminal, lines are edited with prompt_toolkit: history (kept in ``$LLMOS_HOME/llmsh_history``,
else ``~/.llmsh_history``), Ctrl-R search, Tab completes command names and job specs; Ctrl-C
cancels the line, Ctrl-D leaves. Otherwise lines are read plainly from stdin, ``-c`` or a script.

The modules: llmsh_parse (grammar), llmsh_shell (pipelines, signals, the foreground),
llmsh_jobs (job control), llmsh_builtins (the other commands), llmsh_top (``top``).
Exit status is the last command's, as in sh; see llmsh_shell.
"""

from __future__ import annotations

import argparse
import inspect
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Protocol

import trio
from prompt_toolkit import PromptSession
from prompt_toolkit.completion import CompleteEvent, Completer, Completion
from prompt_toolkit.document import Document
from prompt_toolkit.history import FileHistory
from prompt_toolkit.key_binding import KeyBindings

from llmos.kernel.kernel import open_kernel

from . import libllm
from .llmsh_jobs import SIGNAL_NUMBERS, STATUS_INTERRUPTED
from .llmsh_parse import ShellExit, split_commands
from .llmsh_shell import FAILED, NOT_FOUND, USAGE, Shell
from .system import add_system_arguments, build_config, options_from_args

PROMPT = "llmsh$ "
# A thread blocked reading stdin is left behind when Ctrl-C ends the shell (trio < 0.23 spells it "cancellable").
ABANDON_ON_CANCEL = {"abandon_on_cancel" if "abandon_on_cancel" in inspect.signature(trio.to_thread.run_sync).parameters
                     else "cancellable": True}

__all__ = ["main", "split_commands", "Shell", "CommandCompleter", "history_path"]


def history_path() -> Path:
    """``$LLMOS_HOME/llmsh_history`` if LLMOS_HOME is set, else ``~/.llmsh_history``."""
    home = os.environ.get("LLMOS_HOME")
    return Path(home) / "llmsh_history" if home else Path.home() / ".llmsh_history"


def load_history(path: Path) -> list[str]:
    """The lines saved in a history file, oldest first (none if it cannot be read)."""
    try:
        return list(reversed(list(FileHistory(str(path)).load_history_strings())))
    except OSError:
        return []


# -- reading lines -------------------------------------------------------------------------------


class LineReader(Protocol):
    """Where the shell's lines come from."""

    tty: bool  # a person at a terminal: job notices before each prompt, a warning about stopped jobs
    records_history: bool  # the lines go into ``history``

    async def read_line(self) -> str | None:
        """The next line; None at the end of input (Ctrl-D). KeyboardInterrupt: Ctrl-C at the prompt."""
        ...


class ScriptReader:
    """Lines of ``-c`` or a script file; not interactive."""

    tty = False
    records_history = False

    def __init__(self, lines: Iterable[str]) -> None:
        self.lines = list(lines)

    async def read_line(self) -> str | None:
        return self.lines.pop(0) if self.lines else None


class PlainReader:
    """Lines from a stdin that is not a terminal: no prompt, no line editing."""

    tty = False
    records_history = True

    async def read_line(self) -> str | None:
        line = await trio.to_thread.run_sync(sys.stdin.readline, **ABANDON_ON_CANCEL)
        return line.rstrip("\n") if line else None


class TerminalReader:
    """prompt_toolkit on a terminal: line editing, a persistent history, Tab completion.

    The prompt runs in a worker thread (prompt_toolkit brings its own asyncio loop) while the
    trio loop waits; the terminal is in raw mode then, so Ctrl-C arrives as a key and the
    prompt raises KeyboardInterrupt; Ctrl-D on an empty line ends the input.
    """

    tty = True
    records_history = True

    def __init__(self, shell: Shell, path: Path) -> None:
        keys = KeyBindings()

        @keys.add("c-z")
        def _ignore(event: Any) -> None:
            """Ctrl-Z at the prompt stops nothing (prompt_toolkit would insert ^Z)."""

        self.session: PromptSession[str] = PromptSession(
            history=QuietFileHistory(str(path)), completer=CommandCompleter(shell),
            complete_while_typing=False, key_bindings=keys)

    async def read_line(self) -> str | None:
        try:
            return await trio.to_thread.run_sync(self.session.prompt, PROMPT)
        except EOFError:
            return None


class QuietFileHistory(FileHistory):
    """A FileHistory that keeps going (unsaved) if its file cannot be written."""

    def store_string(self, string: str) -> None:
        try:
            Path(os.fsdecode(self.filename)).parent.mkdir(parents=True, exist_ok=True)
            super().store_string(string)
        except OSError:
            pass


class CommandCompleter(Completer):
    """Tab completion: command names, job specs (``%1``), signal names after ``kill -``."""

    def __init__(self, shell: Shell) -> None:
        self.shell = shell

    def candidates(self, before_cursor: str) -> tuple[str, list[str]]:
        """The word being typed and what it may become."""
        segment = re.split(r"[;|&]", before_cursor)[-1]
        words = segment.split()
        current = words[-1] if words and not segment[-1].isspace() else ""
        previous = words[:-1] if current else words
        if not previous:
            options = list(self.shell.commands)
        elif current.startswith("%"):
            options = [f"%{job.number}" for job in self.shell.jobs]
        elif previous[0] == "kill" and current.startswith("-"):
            options = ["-" + name.removeprefix("SIG") for name in SIGNAL_NUMBERS]
        elif previous[0] == "help":
            options = list(self.shell.commands)
        else:
            options = []
        return current, [option for option in options if option.startswith(current)]

    def get_completions(self, document: Document, complete_event: CompleteEvent) -> Iterator[Completion]:
        current, options = self.candidates(document.text_before_cursor)
        for option in options:
            yield Completion(option, start_position=-len(current))


# -- the loop ------------------------------------------------------------------------------------


async def interact(shell: Shell, reader: LineReader) -> int:
    """Read and run lines until exit or end of input; returns the shell's exit status."""
    warned = False  # about stopped jobs, once, as sh does
    while True:
        if reader.tty:
            await shell.notify_finished_jobs()
        try:
            line = await reader.read_line()
        except KeyboardInterrupt:  # Ctrl-C at the prompt cancels the line
            shell.status = STATUS_INTERRUPTED
            continue
        status = None
        if line is None:
            if reader.tty:
                shell.terminal.write("exit\n")
            status = shell.status
        elif line.strip():
            if reader.records_history:
                shell.history.append(line)
            try:
                await shell.run_line(line)
            except ShellExit as leave:
                status = leave.status
            except KeyboardInterrupt:  # between two commands, outside their signal handling
                shell.status = STATUS_INTERRUPTED
        if status is None:
            continue
        if reader.tty and not warned and await shell.stopped_jobs():
            shell.error("there are stopped jobs; exit again to end them")
            warned = True
            continue
        return status


@asynccontextmanager
async def connect(args: argparse.Namespace) -> AsyncIterator[tuple[libllm.Client, str]]:
    """A connection to the kernel at ``--socket``, or to one booted in-process; and its name."""
    if args.socket:
        async with libllm.open_client(args.socket) as llm:
            yield llm, args.socket
        return
    async with open_kernel(build_config(options_from_args(args))) as kernel, libllm.open_client(kernel) as llm:
        yield llm, "an in-process kernel"


async def main_async(args: argparse.Namespace, make_reader: Callable[[Shell], LineReader]) -> int:
    """Connect (or boot) and run the shell."""
    async with connect(args) as (llm, where):
        shell = Shell(llm, sys.stdout, tty=False)
        reader = make_reader(shell)
        shell.tty = reader.tty
        shell.history = load_history(history_path())
        if reader.tty:
            info = await llm.uname()
            devices = ", ".join(f"{d['name']} ({d['model']})" for d in info["devices"])
            shell.say(f"LLMOS {info['version']} on {where}: {devices}. help lists the commands.")
        return await interact(shell, reader)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``llmsh`` console script."""
    parser = argparse.ArgumentParser(prog="llmsh", description="A shell for LLM processes.")
    parser.add_argument("-c", dest="command", help="run these ;-separated commands and exit")
    parser.add_argument("script", nargs="?", help="a file of commands, one line each")
    parser.add_argument("--socket", default=None, help="attach to the kernel serving this socket")
    add_system_arguments(parser)
    args = parser.parse_args(argv)
    if args.command is not None:
        lines: list[str] | None = [args.command]
    elif args.script is not None:
        try:
            with open(args.script, encoding="utf-8") as file:
                lines = file.read().splitlines()
        except OSError as exc:
            print(f"llmsh: {args.script}: {exc.strerror} (ENOENT)", file=sys.stderr)
            return NOT_FOUND
    else:
        lines = None
    terminal = lines is None and sys.stdin.isatty() and sys.stdout.isatty()

    def make_reader(shell: Shell) -> LineReader:
        if lines is not None:
            return ScriptReader(lines)
        return TerminalReader(shell, history_path()) if terminal else PlainReader()

    # On a terminal the shell itself is never stopped by Ctrl-Z (sh ignores SIGTSTP too);
    # while a job runs in the foreground the shell catches it and stops the job instead.
    previous = signal.signal(signal.SIGTSTP, signal.SIG_IGN) if terminal else None
    try:
        return trio.run(main_async, args, make_reader)
    except ValueError as exc:
        print(f"llmsh: {exc} (EINVAL)", file=sys.stderr)
        return USAGE
    except libllm.LLMOSError as exc:
        print(f"llmsh: {exc.message} ({exc.errno})", file=sys.stderr)
        return FAILED
    except KeyboardInterrupt:
        return STATUS_INTERRUPTED
    finally:
        if previous is not None:
            signal.signal(signal.SIGTSTP, previous)
        try:
            sys.stdout.flush()
        except BrokenPipeError:  # nobody reads stdout any more; keep Python from complaining at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


if __name__ == "__main__":
    sys.exit(main())
