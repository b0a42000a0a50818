"""Supervised security and models servers over one home, and calls to the models server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from llmos.kernel.errors import KernelError
from llmos.kernel.names import NameServer
from llmos.kernel.supervisor import Supervisor
from llmos.services.models import ModelServer
from llmos.services.security import SecurityServer


@asynccontextmanager
async def open_services(home: Path, security_call: Any = None) -> AsyncIterator[tuple[Supervisor, NameServer]]:
    """Supervised security and models servers sharing ``home``; stopped when the block ends.

    ``security_call``: what the models server calls the security service through (default:
    the name server), for tests that interpose on it.
    """
    names = NameServer()

    async def to_security(op: str, args: dict[str, Any]) -> Any:
        return await names.call("security", op, args)

    async with trio.open_nursery() as nursery:
        supervisor = Supervisor(names, nursery)
        await supervisor.start("security", lambda: SecurityServer(home))
        await supervisor.start("models", lambda: ModelServer(home, security_call or to_security))
        try:
            yield supervisor, names
        finally:
            supervisor.stop_all()


async def call(names: NameServer, op: str, **args: Any) -> Any:
    """Call ``op`` on the models server."""
    return await names.call("models", op, args)


async def fails(names: NameServer, errno: str, op: str, **args: Any) -> str:
    """Call ``op`` expecting ``errno``; return the error's message."""
    with pytest.raises(KernelError) as err:
        await call(names, op, **args)
    assert err.value.errno == errno, err.value.message
    return err.value.message
