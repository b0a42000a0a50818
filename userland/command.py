"""What every ``llmos`` subcommand does with errors: a message on stderr and an exit status."""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from llmos.kernel.errors import KernelError

EXIT_USAGE = 2  # a bad option or input file, like a shell builtin's usage error
EXIT_FAILURE = 1  # a syscall or the kernel refused


def run_trio_command(name: str, main: Callable[..., Awaitable[Any]], *args: Any) -> tuple[int, Any]:
    """``trio.run(main, *args)``; returns ``(status, result)``.

    A ValueError (bad options) prints ``llmos NAME: message (EINVAL)`` and gives status 2;
    a KernelError (libllm's LLMOSError too) prints its message and errno and gives status 1.
    """
    try:
        return 0, trio.run(main, *args)
    except ValueError as exc:
        print(f"llmos {name}: {exc} (EINVAL)", file=sys.stderr)
        return EXIT_USAGE, None
    except KernelError as exc:
        print(f"llmos {name}: {exc.message} ({exc.errno})", file=sys.stderr)
        return EXIT_FAILURE, None
