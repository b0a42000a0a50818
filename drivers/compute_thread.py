"""One long-lived worker thread per torch driver, joined when the driver stops.

Why not ``trio.to_thread``: its worker threads are daemons cached past their use, and a daemon
thread that has run torch kernels can still be alive when the interpreter exits; torch's C++
runtime then aborts the process ("terminate called without an active exception", exit 134)
after all output was printed. A thread we own and join on shutdown never outlives the driver.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import outcome
import trio

T = TypeVar("T")


class ComputeThread:
    """Runs blocking calls one at a time on a dedicated thread, awaitable from trio."""

    def __init__(self, name: str = "llmos-compute") -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while (job := self._jobs.get()) is not None:
            job()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the thread and return its result (or raise its exception).

        Cancellation waits for the call to finish: a torch kernel cannot be interrupted, and
        the driver's state must not change behind the caller's back.
        """
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()
        box: list[outcome.Outcome] = []

        def job() -> None:
            box.append(outcome.capture(fn, *args))
            token.run_sync_soon(done.set)

        self._jobs.put(job)
        with trio.CancelScope(shield=True):
            await done.wait()
        return box[0].unwrap()

    def close(self) -> None:
        """Finish the queued calls and join the thread (idempotent)."""
        if self._thread.is_alive():
            self._jobs.put(None)
            self._thread.join()
