"""A small kernel configuration on the sim driver, for tests that boot their own kernel."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from llmos.kernel.kernel import Kernel, open_kernel
from llmos.userland import libllm
from llmos.userland.system import SystemOptions, add_services, build_config


def sim_config(**overrides):
    """A small sim kernel: 64 blocks of 4 tokens unless overridden."""
    options = SystemOptions(kv_blocks=64, block_size=4, max_batch_tokens=64, max_seqs=8)
    services = overrides.pop("services", None)
    overrides.setdefault("device", "sim")
    for key, value in overrides.items():
        setattr(options, key, value)
    config = build_config(options)
    if services is not None:
        config.services = services
    return config


@asynccontextmanager
async def open_system(home: Path, security: Any = None, **options: Any) -> AsyncIterator[tuple[Kernel, libllm.Client]]:
    """A sim kernel with the security, models and resources services of ``home``, and a uid 0
    client. ``security``: another security server class (a slow one, say) to run instead."""
    config = sim_config(**options)
    add_services(config, home)
    if security is not None:
        config.services["security"] = lambda: security(home)
    async with open_kernel(config) as kernel, libllm.open_client(kernel, uid=0, tenant="system") as root:
        yield kernel, root


async def fork_after_first_token(llm: libllm.Client, prompt_ids: list[int], max_tokens: int, n: int) -> tuple[int, list[int]]:
    """Spawn a process, wait until it has sampled its first token, fork ``n`` children from it."""
    pid = await llm.spawn(prompt_ids=prompt_ids, max_tokens=max_tokens, ignore_eos=True)
    offset = 0
    while offset < 1:
        offset = (await llm.read(pid, offset)).offset
    return pid, await llm.fork(pid, n)
