"""llmsh's job control: the job table, how a process's end reads, and run, jobs, fg, bg, kill, wait.

A job is a process this shell started (or stopped with Ctrl-Z) and numbers for ``%N``. The
kernel keeps the truth about each process; the table keeps only what the shell adds: the
number, the command line, and how much of the output the terminal has already shown, so that
``fg`` streams the rest. Invariant: a job stays in the table until its process is reaped
(``fg`` to the end, or ``wait``); an ended job shows as Done until then.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

import trio

from . import libllm
from .errors import ESRCH
from .llmsh_parse import ShellError, UsageError, parse_run_args

if TYPE_CHECKING:
    from .llmsh_shell import Shell

SIGNAL_NUMBERS = {"SIGKILL": 9, "SIGTERM": 15, "SIGCONT": 18, "SIGSTOP": 19}  # the kernel's signals
STATUS_STOPPED = 128 + 20  # a job stopped by Ctrl-Z (SIGTSTP), as sh reports it
STATUS_INTERRUPTED = 128 + 2  # a foreground job ended by Ctrl-C (SIGINT)
PAST_THE_END = 2**31  # a read offset no output reaches: the read returns when the process ends
ANY_CHILD_POLL_S = 0.05  # how often a plain wait without jobs looks for an ended child


@dataclass
class Job:
    """A process under this shell's job control."""

    pid: int
    command: str  # the command line that started it, as ``jobs`` shows it
    text: bool  # its prompt was text: show its output as text, else as token ids
    redirect: tuple[str, str] | None = None  # its "> FILE": fg goes on writing there
    number: int = 0  # its %N; 0 until it enters the job table
    offset: int = 0  # output tokens the terminal has shown; fg streams from here
    done_reported: bool = False  # the "Done" notice was printed


class JobTable:
    """Jobs by number; the current job (``%+``) is the one most recently started or stopped."""

    def __init__(self) -> None:
        self._jobs: dict[int, Job] = {}
        self._recent: list[int] = []  # job numbers, most recently touched last

    def add(self, job: Job) -> Job:
        """Give ``job`` the next number (one past the highest in use) and make it current."""
        if not job.number:
            job.number = max(self._jobs, default=0) + 1
            self._jobs[job.number] = job
        self.touch(job)
        return job

    def touch(self, job: Job) -> None:
        """Make ``job`` the current job."""
        if job.number in self._recent:
            self._recent.remove(job.number)
        self._recent.append(job.number)

    def remove(self, pid: int) -> None:
        """Forget the job of process ``pid`` (it was reaped)."""
        for number, job in list(self._jobs.items()):
            if job.pid == pid:
                del self._jobs[number]
                self._recent.remove(number)

    def by_pid(self, pid: int) -> Job | None:
        return next((job for job in self._jobs.values() if job.pid == pid), None)

    def find(self, spec: str) -> Job:
        """The job ``%N``, ``%+``/``%%``/``%`` (current) or ``%-`` (previous) names."""
        key = spec[1:]
        if key in ("", "+", "%", "-"):
            index = -2 if key == "-" else -1
            if len(self._recent) >= -index:
                return self._jobs[self._recent[index]]
        elif key.isdigit() and int(key) in self._jobs:
            return self._jobs[int(key)]
        raise ShellError(f"{spec}: no such job")

    def mark(self, job: Job) -> str:
        """'+' for the current job, '-' for the previous one, else ' '."""
        if self._recent and self._recent[-1] == job.number:
            return "+"
        return "-" if len(self._recent) > 1 and self._recent[-2] == job.number else " "

    def line(self, job: Job, state: str) -> str:
        """The notice line of a job: ``[1]+ Stopped  run --ids 1 hello``."""
        return f"[{job.number}]{self.mark(job)} {state:<8} {job.command}"

    def __iter__(self) -> Iterator[Job]:
        return iter([self._jobs[n] for n in sorted(self._jobs)])

    def __len__(self) -> int:
        return len(self._jobs)


def exit_status(exit: dict[str, Any]) -> int:
    """A shell status for a process's end: 0, 1 for an errno, 128 + N for signal N."""
    if exit["reason"] in ("stop", "length"):
        return 0
    if exit["reason"] == "signal":
        return 128 + SIGNAL_NUMBERS.get(exit.get("signal") or "", 0)
    return 1


def describe_exit(exit: dict[str, Any]) -> str:
    """How ``jobs`` shows an ended process: Done, Killed, Terminated or Exit 1 (ERRNO)."""
    if exit["reason"] in ("stop", "length"):
        return "Done"
    if exit["reason"] == "signal":
        return {"SIGKILL": "Killed", "SIGTERM": "Terminated"}.get(exit.get("signal") or "", "Signalled")
    return f"Exit 1 ({exit.get('errno')})"


def describe_state(stat: dict[str, Any]) -> str:
    """Running, Stopped, or how it ended, from a ``stat`` reply."""
    if stat["state"] == "ZOMBIE":
        return describe_exit(stat["exit"])
    return "Stopped" if stat["state"] == "STOPPED" else "Running"


@contextmanager
def about(target: str) -> Iterator[None]:
    """Name ``target`` in a syscall error's report: ``llmsh: kill: 999: no such process (ESRCH)``."""
    try:
        yield
    except libllm.LLMOSError as exc:
        exc.target = target  # type: ignore[attr-defined]  # read by Shell.report
        raise


class OutputWriter:
    """Writes a job's token batches as they come: text (through the tokenizer) or token ids.

    Byte-level tokenizers can split one character across tokens; a batch whose text ends in
    an incomplete character (U+FFFD) waits for the next batch, up to a few tokens.
    """

    MAX_PENDING = 8  # tokens held back waiting for the rest of a character

    def __init__(self, llm: libllm.Client, text: bool, out: TextIO) -> None:
        self.llm, self.text, self.out = llm, text, out
        self.pending: list[int] = []
        self.last_char = "\n"  # the last character written ("\n": nothing written yet)

    async def write(self, tokens: list[int]) -> None:
        if not tokens:
            return
        if not self.text:
            self._put((" " if self.last_char != "\n" else "") + " ".join(map(str, tokens)))
            return
        self.pending += tokens
        text = await self.llm.detokenize(self.pending)
        if text.endswith("\ufffd") and len(self.pending) < self.MAX_PENDING:
            return
        self.pending = []
        self._put(text)

    async def flush(self) -> None:
        """Write what was held back, and end the line so the prompt starts on a new one."""
        if self.pending:
            text, self.pending = await self.llm.detokenize(self.pending), []
            self._put(text)
        if self.last_char != "\n":
            self._put("\n")

    def _put(self, text: str) -> None:
        if text:
            self.out.write(text)
            self.out.flush()
            self.last_char = text[-1]


# -- commands ----------------------------------------------------------------------------------


async def cmd_run(sh: Shell, args: list[str]) -> int:
    """run [OPTIONS] PROMPT | --ids 1,2,3 [&]: start a process; stream its output (Ctrl-C ends it, Ctrl-Z stops it)

    Options: --max-tokens N (64; at most 65536), --temperature T (0.8; 0 is greedy), --top-k K,
    --top-p P, --seed S, --nice N, --model M, --device D, --ignore-eos, and -v for a summary
    (tokens, tokens/s, time to first token) on stderr. A prompt of text needs a model with a
    tokenizer; --ids gives token ids. CMD | run ... appends CMD's output to the prompt.
    """
    request = parse_run_args(args, piped=sh.io.piped is not None)
    options = await _with_piped_input(sh, request.options)
    pid = await sh.llm.spawn(**options)
    job = Job(pid, sh.io.text, text="prompt" in options, redirect=sh.io.redirect)
    if sh.io.background:
        sh.jobs.add(job)
        sh.say(f"[{job.number}] {pid}")
        return 0
    return await sh.foreground(job, verbose=request.verbose)


async def _with_piped_input(sh: Shell, options: dict[str, Any]) -> dict[str, Any]:
    """Append the previous stage's output to the prompt: as token ids after --ids, else as text
    (a run stage's output detokenized, another command's output as it printed it)."""
    piped = sh.io.piped
    if piped is None:
        return options
    model = options.get("model")
    if "prompt_ids" in options:
        ids = piped.ids if piped.ids is not None else await sh.llm.tokenize(piped.text, model)
        return {**options, "prompt_ids": options["prompt_ids"] + ids}
    text = await sh.llm.detokenize(piped.ids, model) if piped.ids is not None else piped.text
    given = options.get("prompt", "")
    separator = "\n" if given and not given[-1].isspace() else ""
    return {**options, "prompt": given + separator + text}


async def cmd_jobs(sh: Shell, args: list[str]) -> None:
    """jobs: this shell's jobs, their states and tokens so far"""
    if args:
        raise UsageError("usage: jobs")
    for job in list(sh.jobs):
        try:
            stat = await sh.llm.stat(job.pid)
        except ESRCH:
            sh.jobs.remove(job.pid)
            continue
        state = describe_state(stat)
        sh.say(f"[{job.number}]{sh.jobs.mark(job)} {state:<10} {job.pid:>6}  "
               f"{stat['generated_tokens']}/{stat['max_tokens']} tokens  {job.command}")
        job.done_reported = job.done_reported or stat["state"] == "ZOMBIE"


async def resolve_job(sh: Shell, name: str, args: list[str]) -> Job:
    """The job ``fg``/``bg`` mean: %JOB, a pid (a job or another process of this session), or the current job."""
    if len(args) > 1:
        raise UsageError(f"usage: {name} [%JOB|PID]")
    spec = args[0] if args else "%+"
    if spec.startswith("%"):
        try:
            return sh.jobs.find(spec)
        except ShellError:
            raise ShellError(f"{'current' if not args else spec}: no such job") from None
    if not spec.isdigit():
        raise UsageError(f"{spec}: expected %JOB or a process id")
    job = sh.jobs.by_pid(int(spec))
    if job is None:
        with about(spec):
            await sh.llm.stat(int(spec))
        job = Job(int(spec), f"pid {spec}", text=await sh.has_tokenizer())
    return job


async def cmd_fg(sh: Shell, args: list[str]) -> int:
    """fg [%JOB|PID]: continue a job in the foreground, streaming the rest of its output"""
    job = await resolve_job(sh, "fg", args)
    sh.notice(job.command.removesuffix(" &"))
    with about(args[0] if args else str(job.pid)):
        await sh.llm.kill(job.pid, "SIGCONT")
    if job.number:
        sh.jobs.touch(job)
    if job.redirect is None or sh.io.out is not sh.terminal:
        return await sh.foreground(job)
    with open(job.redirect[1], "a", encoding="utf-8") as out:  # where its output went before
        return await sh.foreground(job, out=out)


async def cmd_bg(sh: Shell, args: list[str]) -> None:
    """bg [%JOB|PID]: let a stopped job run on in the background"""
    job = sh.jobs.add(await resolve_job(sh, "bg", args))
    with about(args[0] if args else str(job.pid)):
        await sh.llm.kill(job.pid, "SIGCONT")
    sh.notice(f"[{job.number}]{sh.jobs.mark(job)} {job.command.removesuffix(' &')} &")


def parse_signal(word: str) -> str | int:
    """``-9``, ``-KILL``, ``-SIGKILL`` -> what the kernel takes; UsageError for others."""
    name = word.lstrip("-").upper()
    if name.isdigit():
        return int(name)
    name = name if name.startswith("SIG") else "SIG" + name
    if name not in SIGNAL_NUMBERS:
        raise UsageError(f"{word.lstrip('-')}: invalid signal specification; use one of {', '.join(SIGNAL_NUMBERS)}")
    return name


async def cmd_kill(sh: Shell, args: list[str]) -> int:
    """kill [-SIGNAL] PID|%JOB ...: send SIGTERM (default), SIGKILL, SIGSTOP or SIGCONT; kill -l lists them"""
    if args == ["-l"]:
        sh.say(" ".join(f"{number}) {name}" for name, number in SIGNAL_NUMBERS.items()))
        return 0
    signal: str | int = "SIGTERM"
    if args and args[0] == "-s" and len(args) > 1:
        signal, args = parse_signal(args[1]), args[2:]
    elif args and args[0].startswith("-"):
        signal, args = parse_signal(args[0]), args[1:]
    if not args:
        raise UsageError("usage: kill [-SIGNAL] PID|%JOB ...")
    status = 0
    for target in args:
        try:
            pid = sh.jobs.find(target).pid if target.startswith("%") else _pid(target)
            with about(target):
                await sh.llm.kill(pid, signal)
        except (ShellError, libllm.LLMOSError) as exc:
            sh.report("kill", exc)
            status = max(status, getattr(exc, "status", 1))
    return status


def _pid(word: str) -> int:
    if not word.isdigit():
        raise UsageError(f"{word}: arguments must be process or job IDs")
    return int(word)


async def cmd_wait(sh: Shell, args: list[str]) -> int:
    """wait [PID|%JOB ...]: wait for processes of this shell to end (all running jobs if none named); print how each ended"""
    if args:
        targets: list[tuple[str, int | None]] = [
            (word, sh.jobs.find(word).pid if word.startswith("%") else _pid(word)) for word in args]
    else:
        running = [job for job in sh.jobs if (await _state(sh, job.pid)) != "STOPPED"]
        targets = [(f"%{job.number}", job.pid) for job in running] or [("", None)]  # none: any child
    status = 0
    for word, pid in targets:
        with about(word) if word else _no_target():
            result = await reap(sh.llm, pid)
        sh.jobs.remove(result.pid)
        status = exit_status(result.exit)
        sh.say(f"[{result.pid}] {result.finish_reason}: {result.exit['message']} ({len(result.output_ids)} tokens)")
    return status if args else 0  # sh: a plain wait succeeds once every job has ended


async def reap(llm: libllm.Client, pid: int | None) -> libllm.WaitResult:
    """Wait for child ``pid`` (None: any child) to end and reap it; ECHILD or ESRCH if there is none.

    Never a blocking ``wait`` syscall: one the shell gives up on (Ctrl-C) would go on in the
    kernel and reap the process later, its status lost. A blocked ``read`` past the end of
    the output returns at the process's exit and reaps nothing; then ``wait`` does not block.
    """
    while True:
        result = await llm.wait(pid, nohang=True)
        if result is not None:
            return result
        if pid is None:  # some child runs; which one ends first only wait could tell
            await trio.sleep(ANY_CHILD_POLL_S)
        else:
            await llm.read(pid, PAST_THE_END)


async def _state(sh: Shell, pid: int) -> str:
    try:
        return (await sh.llm.stat(pid))["state"]
    except ESRCH:
        return "GONE"


@contextmanager
def _no_target() -> Iterator[None]:
    yield


JOB_COMMANDS = {"run": cmd_run, "jobs": cmd_jobs, "fg": cmd_fg, "bg": cmd_bg, "kill": cmd_kill, "wait": cmd_wait}
