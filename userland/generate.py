"""``llmos generate``: run prompts as concurrent processes and print one JSON line each.

    llmos generate --prompt "def fib(n):" --max-tokens 32 --temperature 0
    llmos generate --prompts requests.jsonl --json
    llmos generate --socket /tmp/llmos.sock --prompt-ids 1,2,3

Each line of a prompts file is an object with ``prompt`` or ``prompt_ids`` and optionally
``max_tokens``, ``temperature``, ``seed``, ``nice`` and ``tenant``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from contextlib import AsyncExitStack
from typing import Any

import trio

from llmos.kernel.kernel import open_kernel

from . import libllm
from .command import EXIT_FAILURE, run_trio_command
from .system import build_config, options_from_args

LINE_FIELDS = {"prompt", "prompt_ids", "max_tokens", "temperature", "seed", "nice", "tenant"}


class UsageError(Exception):
    """A problem with the command line or the prompts file (exit status 2)."""


def parse_prompt_ids(text: str) -> list[int]:
    """'1,2,3' -> [1, 2, 3]."""
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UsageError(f"--prompt-ids {text!r}: expected comma-separated integers such as 1,2,3") from None


def read_requests(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The requests to run, from --prompt, --prompt-ids or --prompts, with defaults filled in."""
    defaults = {"max_tokens": args.max_tokens, "temperature": args.temperature, "seed": args.seed}
    if args.prompt is not None:
        return [{**defaults, "prompt": args.prompt}]
    if args.prompt_ids is not None:
        return [{**defaults, "prompt_ids": parse_prompt_ids(args.prompt_ids)}]
    requests = []
    try:
        with open(args.prompts, encoding="utf-8") as file:
            lines = file.readlines()
    except OSError as exc:
        raise UsageError(f"--prompts {args.prompts}: {exc.strerror} (ENOENT)") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{args.prompts} line {number}: not JSON ({exc.msg}) (EINVAL)") from None
        if not isinstance(item, dict) or ("prompt" in item) == ("prompt_ids" in item):
            raise UsageError(f"{args.prompts} line {number}: need an object with exactly one of 'prompt' or 'prompt_ids' (EINVAL)")
        unknown = sorted(set(item) - LINE_FIELDS)
        if unknown:
            raise UsageError(f"{args.prompts} line {number}: unknown field {unknown[0]!r}; accepted: {', '.join(sorted(LINE_FIELDS))} (EINVAL)")
        requests.append({**defaults, **item, "line": number})
    if not requests:
        raise UsageError(f"{args.prompts}: no requests in the file (EINVAL)")
    return requests


async def run_requests(target: Any, requests: list[dict[str, Any]], emit: Any) -> int:
    """Spawn every request, then report each as it finishes; returns how many failed."""
    failures = 0
    async with AsyncExitStack() as stack:
        clients: dict[str, libllm.Client] = {}
        for tenant in sorted({r.get("tenant", "default") for r in requests}):
            clients[tenant] = await stack.enter_async_context(libllm.open_client(target, uid=os.getuid(), tenant=tenant))
        running = []
        for request in requests:
            client = clients[request.get("tenant", "default")]
            options = {k: v for k, v in request.items() if k not in ("tenant", "line")}
            try:
                running.append((request, client, await client.spawn(**options)))
            except libllm.LLMOSError as error:
                failures += 1
                emit(_error_line(request, error))
        async with trio.open_nursery() as nursery:
            for request, client, pid in running:
                nursery.start_soon(_report, request, client, pid, emit)
    return failures


async def _report(request: dict[str, Any], client: libllm.Client, pid: int, emit: Any) -> None:
    result = await client.wait(pid)
    stat = result.stat
    line = {
        "pid": pid,
        "tokens": result.output_ids,
        "finish_reason": result.finish_reason,
        "ttft_s": stat["ttft_s"],
        "e2e_s": stat["finished_at"] - stat["created_at"],
    }
    if "prompt" in request:
        line["text"] = await client.detokenize(result.output_ids, stat["model"])
    if result.exit.get("errno"):
        line["error"] = {"errno": result.exit["errno"], "message": result.exit["message"]}
    if "line" in request:
        line["line"] = request["line"]
    emit(line)


def _error_line(request: dict[str, Any], error: libllm.LLMOSError) -> dict[str, Any]:
    line: dict[str, Any] = {"pid": None, "error": {"errno": error.errno, "message": error.message}}
    if "line" in request:
        line["line"] = request["line"]
    return line


def run_generate(args: argparse.Namespace) -> int:
    """Entry point of ``llmos generate``."""
    try:
        requests = read_requests(args)
    except UsageError as exc:
        print(f"llmos generate: {exc}", file=sys.stderr)
        return 2

    def emit(line: dict[str, Any]) -> None:
        if args.json:
            print(json.dumps(line), flush=True)
        elif "error" in line and not line.get("tokens"):
            where = f"line {line['line']}" if "line" in line else "spawn"
            print(f"llmos generate: {where}: {line['error']['message']} ({line['error']['errno']})", file=sys.stderr, flush=True)
        else:
            body = line.get("text", " ".join(map(str, line["tokens"])))
            print(f"[pid {line['pid']}] ({line['finish_reason']}, {len(line['tokens'])} tokens, "
                  f"ttft {line['ttft_s'] * 1000:.0f} ms, e2e {line['e2e_s'] * 1000:.0f} ms)\n{body}\n", flush=True)

    async def main() -> int:
        if args.socket:
            return await run_requests(args.socket, requests, emit)
        async with open_kernel(build_config(options_from_args(args))) as kernel:
            return await run_requests(kernel, requests, emit)

    status, failures = run_trio_command("generate", main)
    return status or (EXIT_FAILURE if failures else 0)
