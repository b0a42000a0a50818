"""The process table: pids, sessions, state changes with accounting, exit, wait and reaping.

A *session* is a client connection. It has a pid of its own (drawn from the same space, like a
shell's) and owns the processes it spawns or forks: only it may ``wait`` for them. When a
session closes, its processes are killed (like SIGHUP) unless spawned detached; orphans are
reparented to init (``params.PID_INIT``), which reaps them as they exit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import trio

from . import params
from .errors import KernelError
from .process import ExitStatus, Process, ProcState

_WAITING_STATES = (ProcState.NEW, ProcState.READY, ProcState.SWAPPED)


@dataclass
class Session:
    """A connected client: who it is, attached by the kernel when it connected."""

    pid: int
    uid: int
    tenant: str


class ProcessTable:
    """All live and zombie processes, and the sessions that own them."""

    def __init__(self, clock: Callable[[], float], max_processes: int = params.MAX_PROCESSES) -> None:
        self._clock = clock
        self.max_processes = max_processes
        self._next_pid = params.PID_INIT + 1
        self.procs: dict[int, Process] = {}
        self.sessions: dict[int, Session] = {params.PID_INIT: Session(params.PID_INIT, 0, "system")}
        self._exited = trio.Event()  # set (and replaced) whenever a process exits
        self.on_exit: Callable[[Process], None] | None = None  # told of each exit (capability revocation)

    # -- pids and sessions ---------------------------------------------------------------

    def allocate_pid(self) -> int:
        """A fresh pid; pids are never reused within one kernel's life."""
        pid = self._next_pid
        self._next_pid += 1
        return pid

    def open_session(self, uid: int, tenant: str) -> Session:
        """Register a new connection."""
        session = Session(self.allocate_pid(), uid, tenant)
        self.sessions[session.pid] = session
        return session

    def close_session(self, session_pid: int) -> list[Process]:
        """Forget a connection; return its live, non-detached processes for the caller to kill.

        Every process it owned now belongs to init, which reaps zombies as they appear.
        """
        self.sessions.pop(session_pid, None)
        doomed = []
        for proc in list(self.procs.values()):
            if proc.session != session_pid:
                continue
            proc.session = params.PID_INIT
            if proc.state is ProcState.ZOMBIE:
                self.reap(proc)
            elif not proc.detached:
                doomed.append(proc)
        return doomed

    # -- lookup ----------------------------------------------------------------------------

    def add(self, proc: Process) -> None:
        """Enter a new process (state NEW)."""
        if self.num_live() >= self.max_processes:
            raise KernelError("EAGAIN", f"the process table is full ({self.max_processes} processes)")
        proc.state_since = self._clock()
        self.procs[proc.pid] = proc

    def num_live(self) -> int:
        return len(self.procs)

    def get(self, pid: int) -> Process:
        """The process with this pid, or ESRCH."""
        proc = self.procs.get(pid)
        if proc is None:
            raise KernelError("ESRCH", f"no process with pid {pid}")
        return proc

    def __iter__(self) -> Iterator[Process]:
        return iter(self.procs.values())

    # -- state changes ---------------------------------------------------------------------

    def set_state(self, proc: Process, state: ProcState) -> None:
        """Move ``proc`` to ``state``, charging the time it waited to its accounting."""
        now = self._clock()
        if proc.state in _WAITING_STATES:
            proc.acct.time_queued_s += now - proc.state_since
        proc.state = state
        proc.state_since = now

    def exit(self, proc: Process, status: ExitStatus, at: float | None = None) -> None:
        """Make ``proc`` a zombie with ``status`` and wake its readers and waiters.

        ``at`` is when it ended, if that was before now (a step of a multi-step run).
        """
        if proc.state is ProcState.ZOMBIE:
            return
        self.set_state(proc, ProcState.ZOMBIE)
        proc.exit_status = status
        proc.finished_at = self._clock() if at is None else at
        proc.notify()
        if self.on_exit is not None:
            self.on_exit(proc)
        self._exited.set()
        self._exited = trio.Event()
        if proc.session == params.PID_INIT:
            self.reap(proc)

    def reap(self, proc: Process) -> None:
        """Remove a zombie from the table; its children pass to init."""
        self.procs.pop(proc.pid, None)
        for child in self.procs.values():
            if child.ppid == proc.pid:
                child.ppid = params.PID_INIT

    # -- wait ------------------------------------------------------------------------------

    async def wait(self, session_pid: int, pid: int | None, nohang: bool = False) -> Process | None:
        """Wait for a process of this session to exit, reap it and return it.

        Args:
            pid: the process to wait for, or None for any of the session's processes.
            nohang: return None at once if none has exited yet (WNOHANG).

        Raises:
            KernelError: ESRCH for an unknown pid, ECHILD if the session owns no such process.
        """
        while True:
            if pid is not None:
                proc = self.get(pid)
                if proc.session != session_pid:
                    raise KernelError("ECHILD", f"process {pid} is not a child of this session")
                candidates = [proc]
            else:
                candidates = [p for p in self.procs.values() if p.session == session_pid]
                if not candidates:
                    raise KernelError("ECHILD", "this session has no child processes to wait for")
            for proc in candidates:
                if proc.state is ProcState.ZOMBIE:
                    self.reap(proc)
                    return proc
            if nohang:
                return None
            await self._exited.wait()
