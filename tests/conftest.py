"""Shared fixtures: a kernel on the sim driver, and clients of it.

pytest-trio takes the clock only from a test's own arguments, so a test that wants virtual
time names ``autojump_clock`` itself: ``async def test_x(autojump_clock, llm): ...``.
"""

from __future__ import annotations

import pytest
from sim_fixtures import sim_config

from llmos.kernel.kernel import open_kernel
from llmos.userland import libllm


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
