"""Replaying an arrivals trace against a kernel: each request spawned at its arrival time.

Shared by the benchmarks that run in virtual time. Requests are spread over several
connections, because one connection may have at most ``params.MAX_PENDING_PER_CONNECTION``
blocking calls in flight and a queueing workload keeps hundreds of ``wait``s open.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Any

import trio

from llmos.kernel import params

from . import libllm

REQUESTS_PER_CONNECTION = params.MAX_PENDING_PER_CONNECTION // 2  # spawn + wait each hold a slot


async def replay_trace(
    kernel: Any,
    requests: list[tuple[float, int, int]],
    seed: int,
    on_spawn: Callable[[int, int], None] | None = None,
) -> list[libllm.WaitResult]:
    """Spawn each ``(arrival s, prompt length, output length)`` at its time; wait for them all.

    Prompts are seeded random token ids; outputs run to their length (``ignore_eos``).
    ``on_spawn(pid, output_length)`` is called after each spawn (an oracle predictor uses it).
    Returns the wait results in request order.
    """
    rng = random.Random(seed)
    prompts = [[rng.randrange(1, 32000) for _ in range(prompt_len)] for _, prompt_len, _ in requests]
    results: list[libllm.WaitResult | None] = [None] * len(requests)
    async with AsyncExitStack() as stack:
        num_clients = max(1, -(-len(requests) // REQUESTS_PER_CONNECTION))
        clients = [await stack.enter_async_context(libllm.open_client(kernel)) for _ in range(num_clients)]
        start = trio.current_time()

        async def one(index: int) -> None:
            arrived_at, _, output_len = requests[index]
            llm = clients[index % num_clients]
            await trio.sleep_until(start + arrived_at)
            pid = await llm.spawn(prompt_ids=prompts[index], max_tokens=max(1, output_len), ignore_eos=True)
            if on_spawn is not None:
                on_spawn(pid, max(1, output_len))
            results[index] = await llm.wait(pid)

        async with trio.open_nursery() as nursery:
            for index in range(len(requests)):
                nursery.start_soon(one, index)
    return [r for r in results if r is not None]
