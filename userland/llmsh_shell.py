"""The shell proper: runs parsed lines against one kernel connection.

A line is pipelines (llmsh_parse.py); a pipeline's stages run one after another, each stage's
output captured for the next (``run`` appends it to its prompt); the last stage writes to the
terminal or to a ``>``/``>>`` file. While a command runs, the shell holds SIGINT and SIGTSTP
(``trio.open_signal_receiver``, restored after): a foreground job turns them into kill
syscalls (Ctrl-C: SIGTERM, a second one SIGKILL; Ctrl-Z: SIGSTOP), any other command is
cancelled by Ctrl-C.

Status, as in sh: the last command's; 1 when a syscall failed, 2 for a usage error, 127 for
an unknown command, 130 after Ctrl-C, 128 + N for a process ended by signal N.
"""

from __future__ import annotations

import errno
import io
import re
import shlex
import signal
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, TextIO

import trio

from llmos.kernel.errors import ERRNO_NAMES

from . import libllm
from .errors import ESRCH
from .llmsh_builtins import COMMANDS
from .llmsh_jobs import (
    STATUS_INTERRUPTED,
    STATUS_STOPPED,
    Job,
    JobTable,
    OutputWriter,
    describe_exit,
    exit_status,
    reap,
)
from .llmsh_parse import Pipeline, ShellError, UsageError, parse_line

OK, FAILED, USAGE, NOT_FOUND = 0, 1, 2, 127
STATUS_BROKEN_PIPE = 128 + 13  # SIGPIPE

SignalHandler = Callable[[int], Awaitable[None]]
Command = Callable[["Shell", list[str]], Awaitable["int | None"]]


@dataclass
class Piped:
    """A pipeline stage's output, for the next stage."""

    text: str  # what it printed
    ids: list[int] | None  # a run stage's generated token ids (None for other commands)


@dataclass
class CommandIO:
    """Where the running command writes, what it reads, and how it was started."""

    out: TextIO
    piped: Piped | None = None
    background: bool = False  # the pipeline ended with "&"
    text: str = ""  # the command as typed, for ``jobs``
    redirect: tuple[str, str] | None = None  # the pipeline's "> FILE", if this is its last stage
    ids: list[int] | None = None  # set by run: the output ids of its process


class Shell:
    """Runs command lines against one kernel connection.

    Args:
        llm: the kernel connection; processes this shell starts belong to its session.
        out: the terminal (or stdout): command output goes here unless redirected.
        tty: stdin and ``out`` are a terminal (``top`` refreshes in place; reads keys).
    """

    def __init__(self, llm: libllm.Client, out: TextIO, tty: bool = False) -> None:
        self.llm = llm
        self.terminal = out
        self.tty = tty
        self.io = CommandIO(out)
        self.jobs = JobTable()
        self.history: list[str] = []  # lines typed, oldest first (filled by the line reader)
        self.status = OK
        self.commands: dict[str, Command] = COMMANDS
        self._on_signal: SignalHandler | None = None
        self._tokenizer: bool | None = None

    # -- lines and pipelines -------------------------------------------------------------------

    async def run_line(self, line: str) -> int:
        """Run every pipeline of a line; returns (and keeps as ``status``) the last status."""
        try:
            pipelines = parse_line(line)
        except UsageError as exc:
            self.error(str(exc))
            self.status = USAGE
            return self.status
        for pipeline in pipelines:
            self.status = await self.guarded(partial(self.run_pipeline, pipeline))
        return self.status

    async def run_pipeline(self, pipeline: Pipeline) -> int:
        """Run the stages in order, feeding each one's output to the next; stop at a failure."""
        first = pipeline.commands[0][0]
        if pipeline.background and (len(pipeline.commands) > 1 or first != "run" or pipeline.redirect):
            self.error(f"{first}: only a plain run goes to the background (&)")
            return USAGE
        try:
            out = self._open_redirect(pipeline.redirect) if pipeline.redirect else self.terminal
        except OSError as exc:
            self.error(f"{exc.filename}: {exc.strerror} ({errno.errorcode.get(exc.errno or 0, 'EIO')})")
            return FAILED
        try:
            piped: Piped | None = None
            status = OK
            for index, words in enumerate(pipeline.commands):
                last = index == len(pipeline.commands) - 1
                capture = io.StringIO()
                text = pipeline.text if len(pipeline.commands) == 1 else shlex.join(words)  # for jobs
                self.io = CommandIO(out if last else capture, piped, pipeline.background, text,
                                    pipeline.redirect if last else None)
                status = await self.run_command(words)
                if not last:
                    if status != OK:
                        return status
                    piped = Piped(capture.getvalue(), self.io.ids)
            return status
        finally:
            self.io = CommandIO(self.terminal)
            if out is not self.terminal:
                out.close()

    @staticmethod
    def _open_redirect(redirect: tuple[str, str]) -> TextIO:
        operator, path = redirect
        return open(path, "a" if operator == ">>" else "w", encoding="utf-8")

    async def run_command(self, words: list[str]) -> int:
        """Run one command; errors are printed like a shell's and become the status."""
        name, args = words[0], words[1:]
        command = self.commands.get(name)
        if command is None:
            self.error(f"{name}: command not found")
            return NOT_FOUND
        if self.io.piped is not None and name != "run":
            self.error(f"{name}: reads no input; only run takes a pipe")
            return USAGE
        try:
            return await command(self, args) or OK
        except ShellError as exc:
            self.error(f"{name}: {exc}")
            return exc.status
        except libllm.LLMOSError as exc:
            self.report(name, exc)
            return FAILED
        except BrokenPipeError:  # stdout's reader went away (llmsh -c ... | head): quietly, as sh
            return STATUS_BROKEN_PIPE
        except OSError as exc:  # writing a redirection's file
            self.error(f"{name}: {exc.strerror or exc} ({errno.errorcode.get(exc.errno or 0, 'EIO')})")
            return FAILED

    # -- signals and the foreground ------------------------------------------------------------

    async def guarded(self, body: Callable[[], Awaitable[int]]) -> int:
        """Run ``body`` holding SIGINT and SIGTSTP: the foreground job's handler gets them,
        else Ctrl-C cancels ``body`` (status 130) and Ctrl-Z is ignored."""
        if threading.current_thread() is not threading.main_thread():
            return await body()  # signals reach only the main thread
        outcome: list[Any] = []
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTSTP) as signals:
            async with trio.open_nursery() as nursery:

                async def run_body() -> None:
                    try:
                        outcome.append(await body())
                    except Exception as exc:  # ShellExit too: re-raised below, outside the nursery
                        outcome.append(exc)
                    nursery.cancel_scope.cancel()

                nursery.start_soon(run_body)
                async for signum in signals:
                    if self._on_signal is not None:
                        await self._on_signal(signum)
                    elif signum == signal.SIGINT:
                        nursery.cancel_scope.cancel()
        if not outcome:  # cancelled by Ctrl-C
            self.terminal.write("\n")
            return STATUS_INTERRUPTED
        if isinstance(outcome[0], BaseException):
            raise outcome[0]
        return outcome[0]

    @contextmanager
    def signal_handler(self, handler: SignalHandler) -> Iterator[None]:
        """Route SIGINT and SIGTSTP to ``handler`` for the duration of the block."""
        previous, self._on_signal = self._on_signal, handler
        try:
            yield
        finally:
            self._on_signal = previous

    async def foreground(self, job: Job, verbose: bool = False, out: TextIO | None = None) -> int:
        """Stream ``job``'s output (to ``out``, else the command's output) from where it was
        left off until the process ends, then reap it.

        Ctrl-C sends SIGTERM (SIGKILL if pressed again) and the stream runs to the process's
        end; Ctrl-Z sends SIGSTOP and puts the job in the table as Stopped (status 148).
        """
        writer = OutputWriter(self.llm, job.text, out or self.io.out)
        interrupts, stopped = 0, False
        with trio.CancelScope() as scope:

            async def on_signal(signum: int) -> None:
                nonlocal interrupts, stopped
                try:
                    if signum == signal.SIGTSTP:
                        await self.llm.kill(job.pid, "SIGSTOP")
                        stopped = True
                        scope.cancel()
                    else:
                        interrupts += 1
                        await self.llm.kill(job.pid, "SIGTERM" if interrupts == 1 else "SIGKILL")
                except libllm.LLMOSError:
                    pass  # it ended meanwhile: the stream reaches EOF by itself

            with self.signal_handler(on_signal):
                while True:
                    result = await self.llm.read(job.pid, job.offset)
                    await writer.write(result.tokens)
                    job.offset = result.offset
                    if result.eof:
                        break
        await writer.flush()
        if stopped:
            self.jobs.add(job)
            self.notice(self.jobs.line(job, "Stopped"))
            return STATUS_STOPPED
        waited = await reap(self.llm, job.pid)
        self.jobs.remove(job.pid)
        self.io.ids = waited.output_ids
        if verbose:
            self._summarize(waited)
        if interrupts:
            return STATUS_INTERRUPTED
        if waited.exit.get("errno"):
            error = libllm.ERRORS[waited.exit["errno"]](waited.exit["errno"], waited.exit["message"])
            error.target = f"pid {job.pid}"  # type: ignore[attr-defined]
            self.report("run", error)
        elif waited.finish_reason == "signal":
            self.notice(f"{describe_exit(waited.exit)}  {job.command}")
        return exit_status(waited.exit)

    def _summarize(self, waited: libllm.WaitResult) -> None:
        stat, acct = waited.stat, waited.stat["accounting"]
        running = acct["time_running_s"] or 0.0
        rate = f"{len(waited.output_ids) / running:.1f} tokens/s" if running > 0 else "- tokens/s"
        ttft = f"ttft {1000 * stat['ttft_s']:.1f} ms" if stat["ttft_s"] is not None else "no tokens"
        print(f"[{waited.pid}] {waited.finish_reason}: {stat['prompt_tokens']} prompt + "
              f"{len(waited.output_ids)} generated tokens, {rate}, {ttft}", file=sys.stderr, flush=True)

    async def notify_finished_jobs(self) -> None:
        """Before a prompt: say once that each job that ended is Done (or Killed, ...)."""
        for job in list(self.jobs):
            if job.done_reported:
                continue
            try:
                stat = await self.llm.stat(job.pid)
            except ESRCH:
                self.jobs.remove(job.pid)
                continue
            if stat["state"] == "ZOMBIE":
                job.done_reported = True
                self.notice(self.jobs.line(job, describe_exit(stat["exit"])))

    async def stopped_jobs(self) -> list[Job]:
        """Jobs whose processes are stopped now (the shell warns before leaving them)."""
        stopped = []
        for job in list(self.jobs):
            try:
                if (await self.llm.stat(job.pid))["state"] == "STOPPED":
                    stopped.append(job)
            except ESRCH:
                self.jobs.remove(job.pid)
        return stopped

    # -- output and errors ---------------------------------------------------------------------

    def say(self, text: str = "", end: str = "\n") -> None:
        """Write command output (to the terminal, a pipe or a redirection's file)."""
        self.io.out.write(text + end)
        self.io.out.flush()

    def notice(self, text: str) -> None:
        """Write a job notice to the terminal, never to a redirection."""
        self.terminal.write(text + "\n")
        self.terminal.flush()

    def error(self, text: str) -> None:
        print(f"llmsh: {text}", file=sys.stderr, flush=True)

    def report(self, name: str, exc: Exception) -> None:
        """``llmsh: NAME: [TARGET: ]what went wrong (ERRNO)``."""
        if isinstance(exc, ShellError):
            self.error(f"{name}: {exc}")
            return
        assert isinstance(exc, libllm.LLMOSError)
        target = getattr(exc, "target", None)
        if exc.errno in ("ESRCH", "ECHILD"):
            detail = ERRNO_NAMES[exc.errno]
        else:
            detail = re.sub(r"^[a-z_]+: ", "", exc.message)  # the syscall's own "op: " prefix
        self.error(f"{name}: {target + ': ' if target else ''}{detail} ({exc.errno})")

    async def has_tokenizer(self) -> bool:
        """Whether the kernel's default model has a tokenizer (then output shows as text)."""
        if self._tokenizer is None:
            try:
                await self.llm.detokenize([0])
                self._tokenizer = True
            except libllm.LLMOSError:
                self._tokenizer = False
        return self._tokenizer
