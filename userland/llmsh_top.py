"""``top``: processes and devices, refreshed in place (rich.live) until q or Ctrl-C.

    top              # live, on a terminal; q or Ctrl-C leaves it
    top -n 1         # one frame, printed (also what a script or a redirection gets)
    top -n 3 -d 0.5  # three frames, half a second apart

Rates are differences between two samples over the kernel's clock (``uname``'s uptime), so
they read the same under virtual time: tokens/s per process, busy time over wall time per
device. The first frame comes after a short first interval.
"""

from __future__ import annotations

import os
import signal
import sys
import termios
import tty
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio
from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from .llmsh_parse import UsageError

if TYPE_CHECKING:
    from .llmsh_shell import Shell

DEFAULT_DELAY_S = 1.0  # between frames
FIRST_FRAME_S = 0.25  # the first interval, so that ``top -n 1`` answers quickly
QUIT_KEYS = b"qQ\x03"


@dataclass
class Sample:
    """What the kernel said at one moment."""

    uptime_s: float  # the kernel's clock
    kernel: dict[str, Any]  # uname
    processes: list[dict[str, Any]]  # ps
    devices: list[dict[str, Any]]  # lsdev


async def take_sample(llm: Any) -> Sample:
    kernel = await llm.uname()
    return Sample(kernel["uptime_s"], kernel, await llm.ps(), await llm.lsdev())


def render(before: Sample, now: Sample) -> Group:
    """One frame: a header line, the process table and the device table."""
    elapsed = max(now.uptime_s - before.uptime_s, 1e-9)
    tokens_before = {row["pid"]: row["generated_tokens"] for row in before.processes}
    busy_before = {d["name"]: d["busy_s"] for d in before.devices}
    states = [row["state"] for row in now.processes]
    header = (f"top - LLMOS {now.kernel['version']}, up {now.uptime_s:.1f} s, policy {now.kernel['policy']}\n"
              f"{len(states)} processes: {states.count('RUNNING')} running, "
              f"{sum(s in ('NEW', 'READY', 'SWAPPED') for s in states)} waiting, {states.count('STOPPED')} stopped")
    processes = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for column in ("PID", "UID", "STATE", "NICE", "TOKENS", "TOK/S", "KV", "DEVICE"):
        processes.add_column(column, justify="right" if column not in ("STATE", "DEVICE") else "left", no_wrap=True)
    for row in now.processes:
        rate = (row["generated_tokens"] - tokens_before.get(row["pid"], 0)) / elapsed
        processes.add_row(str(row["pid"]), str(row["uid"]), row["state"], str(row["nice"]),
                          f"{row['generated_tokens']}/{row['max_tokens']}", f"{rate:.1f}",
                          str(row.get("kv_blocks", "")), row.get("device", ""))
    devices = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for column in ("DEVICE", "KIND", "MODEL", "UTIL", "KV BLOCKS", "RUNNING", "WAITING"):
        devices.add_column(column, no_wrap=True)
    for d in now.devices:
        util = min(1.0, max(0.0, (d["busy_s"] - busy_before.get(d["name"], 0.0)) / elapsed))
        kind = d["kind"] + (", emulated" if d["emulated"] else "")
        devices.add_row(d["name"], kind, d["model"], f"{util:.0%}", f"{d['kv_blocks_used']}/{d['kv_blocks_total']}",
                        str(d["running"]), str(d["waiting"]))
    return Group(Text(header), Text(), processes, Text(), devices)


def parse_top_args(args: list[str]) -> tuple[int | None, float]:
    """``-n FRAMES`` and ``-d SECONDS``; UsageError otherwise."""
    frames, delay = None, DEFAULT_DELAY_S
    words = list(args)
    try:
        while words:
            flag = words.pop(0)
            if flag == "-n":
                frames = int(words.pop(0))
                if frames < 1:
                    raise ValueError
            elif flag == "-d":
                delay = float(words.pop(0))
                if delay <= 0:
                    raise ValueError
            else:
                raise ValueError
    except (ValueError, IndexError):
        raise UsageError("usage: top [-n FRAMES] [-d SECONDS]") from None
    return frames, delay


async def cmd_top(sh: Shell, args: list[str]) -> None:
    """top [-n FRAMES] [-d SECONDS]: processes (tokens/s, KV blocks) and device utilization, live; q leaves"""
    frames, delay = parse_top_args(args)
    live = frames is None and sh.tty and sh.io.out is sh.terminal
    console = Console(file=sh.io.out, highlight=False, soft_wrap=False)
    before = await take_sample(sh.llm)
    if not live:
        for index in range(frames or 1):
            await trio.sleep(min(delay, FIRST_FRAME_S) if index == 0 else delay)
            now = await take_sample(sh.llm)
            console.print(render(before, now))
            before = now
        return
    with trio.CancelScope() as scope:

        async def on_signal(signum: int) -> None:
            if signum == signal.SIGINT:
                scope.cancel()

        with sh.signal_handler(on_signal), _keys_unbuffered(sys.stdin), Live(console=console, auto_refresh=False) as view:
            interval = FIRST_FRAME_S
            while not await _quit_key_within(sys.stdin, min(delay, interval)):
                now = await take_sample(sh.llm)
                view.update(render(before, now), refresh=True)
                before, interval = now, delay


@contextmanager
def _keys_unbuffered(stdin: Any) -> Iterator[None]:
    """Deliver key presses one at a time, unechoed (cbreak; Ctrl-C still signals)."""
    fd = stdin.fileno()
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


async def _quit_key_within(stdin: Any, seconds: float) -> bool:
    """True if q was pressed within ``seconds``; other keys are ignored."""
    fd = stdin.fileno()
    with trio.move_on_after(seconds):
        while True:
            await trio.lowlevel.wait_readable(fd)
            if any(key in QUIT_KEYS for key in os.read(fd, 64)):
                return True
    return False
