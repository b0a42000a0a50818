"""Shared fixtures: a kernel on the sim driver, and clients of it.

pytest-trio takes the clock only from a test's own arguments, so a test that wants virtual
time names ``autojump_clock`` itself: ``async def test_x(autojump_clock, llm): ...``.
"""

from __future__ import annotations

import pytest

from llmos.kernel.kernel import open_kernel
from llmos.userland import libllm
from llmos.userland.system import SystemOptions, build_config


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


@pytest.fixture
async def kernel():
    async with open_kernel(sim_config()) as k:
        yield k


@pytest.fixture
async def llm(kernel):
    async with libllm.open_client(kernel, uid=1000, tenant="alice") as client:
        yield client


@pytest.fixture
async def root(kernel):
    async with libllm.open_client(kernel, uid=0, tenant="system") as client:
        yield client
