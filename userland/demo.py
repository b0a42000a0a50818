"""``llmos demo``: the README's main job.

Boots a kernel with the embedded default model on the CPU, spawns eight processes with
different prompts and priorities through libllm, streams their output into a live process
table, and ends with a summary: throughput, time to first token, KV-cache use.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass, field

import trio
from rich.console import Console
from rich.live import Live
from rich.table import Table

from llmos.kernel.kernel import open_kernel

from . import libllm
from .command import run_trio_command
from .system import build_config, options_from_args

# (prompt, nice): a spread of priorities; negative nice needs uid 0, which the demo's owner has.
DEMO_PROMPTS = [
    ("def fibonacci(n):\n", 0),
    ("import os\nimport sys\n\n\ndef main(", 5),
    ("class Stack:\n    def __init__(self):\n", -5),
    ("def read_config(path):\n    with open(path", 0),
    ("    for index, item in enumerate(", 10),
    ("if __name__ == '__main__':\n", 19),
    ('"""Utilities for parsing', 0),
    ("    raise ValueError(", -10),
]


@dataclass
class Job:
    """One demo process and what has been seen of it."""

    prompt: str
    nice: int
    pid: int = 0
    ids: list[int] = field(default_factory=list)
    text: str = ""
    exit: dict | None = None
    stat: dict | None = None


async def _follow(llm: libllm.Client, job: Job) -> None:
    async for tokens in llm.stream(job.pid):
        job.ids += tokens
        job.text = await llm.detokenize(job.ids)
    result = await llm.wait(job.pid)
    job.exit, job.stat = result.exit, result.stat


def _table(jobs: list[Job], rows: dict[int, dict], device: dict, started: float) -> Table:
    elapsed = time.perf_counter() - started
    title = (f"llmos demo: {device['model']} on {device['name']} ({device['kind']})  "
             f"KV {device['kv_blocks_used']}/{device['kv_blocks_total']} blocks  {elapsed:5.1f} s")
    table = Table(title=title, expand=True)
    for column in ("PID", "NICE", "STATE", "TOKENS", "KV", "OUTPUT"):
        table.add_column(column, no_wrap=column != "OUTPUT", overflow="ellipsis")
    for job in jobs:
        row = rows.get(job.pid, {})
        state = row.get("state", "DONE" if job.exit else "?")
        tail = (job.prompt + job.text).replace("\n", "⏎")[-70:]
        table.add_row(str(job.pid), str(job.nice), state, str(len(job.ids)), str(row.get("kv_blocks", 0)), tail)
    return table


async def run_demo_async(args: argparse.Namespace, console: Console) -> dict:
    """Run the demo; returns the summary it printed."""
    jobs = [Job(prompt, nice) for prompt, nice in DEMO_PROMPTS]
    async with open_kernel(build_config(options_from_args(args))) as kernel, libllm.open_client(kernel, tenant="demo") as llm:
        device = (await llm.uname())["devices"][0]
        console.print(f"Booted LLMOS: device {device['name']} ({device['kind']}), model {device['model']}, "
                      f"{device['kv_blocks_total']} KV blocks of {device['block_size']} tokens, policy {args.policy}")
        started = time.perf_counter()
        for index, job in enumerate(jobs):
            job.pid = await llm.spawn(job.prompt, max_tokens=args.max_tokens, temperature=0.8, top_p=0.95,
                                      seed=index, nice=job.nice)
        peak_blocks = 0
        async with trio.open_nursery() as nursery:
            for job in jobs:
                nursery.start_soon(_follow, llm, job)
            with Live(console=console, refresh_per_second=8, transient=not console.is_terminal) as live:
                while not all(job.exit for job in jobs):
                    rows = {row["pid"]: row for row in await llm.ps()}
                    device = (await llm.uname())["devices"][0]
                    peak_blocks = max(peak_blocks, device["kv_blocks_used"])
                    live.update(_table(jobs, rows, device, started))
                    await trio.sleep(0.125)
                live.update(_table(jobs, {}, device, started))
        wall = time.perf_counter() - started
    return _summarize(jobs, wall, peak_blocks, device, console)


def _summarize(jobs: list[Job], wall: float, peak_blocks: int, device: dict, console: Console) -> dict:
    for job in jobs:
        console.rule(f"pid {job.pid}  nice {job.nice}  {job.exit['reason']}")
        console.print(job.prompt + job.text, markup=False, highlight=False)
    generated = sum(len(job.ids) for job in jobs)
    ttfts = [job.stat["ttft_s"] for job in jobs if job.stat and job.stat["ttft_s"] is not None]
    summary = {
        "processes": len(jobs),
        "generated_tokens": generated,
        "wall_s": round(wall, 3),
        "tokens_per_s": round(generated / wall, 1),
        "ttft_mean_ms": round(1000 * statistics.fmean(ttfts), 1),
        "ttft_max_ms": round(1000 * max(ttfts), 1),
        "kv_peak_blocks": peak_blocks,
        "kv_total_blocks": device["kv_blocks_total"],
        "preemptions": device["preemptions"],
    }
    table = Table(title="Summary")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in summary.items():
        table.add_row(key, str(value))
    console.print(table)
    return summary


def run_demo(args: argparse.Namespace) -> int:
    """Entry point of ``llmos demo``."""
    status, _ = run_trio_command("demo", run_demo_async, args, Console())
    return status
