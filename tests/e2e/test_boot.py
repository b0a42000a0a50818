"""``llmos boot`` end to end, through userland only: the llmos command and libllm's blocking client.

Each kernel here is a real ``llmos boot --device sim`` subprocess serving a Unix socket; tests
talk to it as a user's program would and never import the kernel.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from llmos.userland import libllm

LLMOS = [sys.executable, "-m", "llmos.userland.cli"]
BOOT_TIMEOUT_S = 30.0
SHUTDOWN_TIMEOUT_S = 10.0


def llmos(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess:
    """Run one ``llmos`` command to completion."""
    return subprocess.run([*LLMOS, *args], capture_output=True, text=True, timeout=timeout)


def accepts_connections(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


@contextmanager
def booted_kernel(path: Path, *options: str) -> Iterator[subprocess.Popen]:
    """``llmos boot --device sim --socket path [options]`` until the block ends (then SIGTERM, or kill)."""
    assert len(str(path)) < 100, f"socket path too long for AF_UNIX: {path}"
    process = subprocess.Popen([*LLMOS, "boot", "--device", "sim", "--socket", str(path), *options],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + BOOT_TIMEOUT_S
        while not accepts_connections(path):  # the file appears at bind(), a moment before listen()
            if process.poll() is not None:
                pytest.fail(f"llmos boot exited with {process.returncode}: {process.communicate()}")
            if time.monotonic() > deadline:
                pytest.fail(f"llmos boot did not serve {path} within {BOOT_TIMEOUT_S} s")
            time.sleep(0.02)
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.communicate(timeout=SHUTDOWN_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.communicate()


@pytest.fixture(scope="module")
def socket_path(tmp_path_factory) -> Iterator[str]:
    """One kernel for the tests that only use it; each test's connections end its processes."""
    path = tmp_path_factory.mktemp("e2e") / "k.sock"
    with booted_kernel(path):
        yield str(path)


@pytest.fixture
def client(socket_path) -> Iterator[libllm.SyncClient]:
    with libllm.connect(socket_path) as llm:
        yield llm


def wait_for_state(llm: libllm.SyncClient, pid: int, state: str, timeout: float = 5.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while (info := llm.stat(pid))["state"] != state:
        assert time.monotonic() < deadline, f"process {pid} stayed {info['state']}, never {state}"
        time.sleep(0.01)
    return info


# -- programs ------------------------------------------------------------------------------------


def test_spawn_stream_and_wait_several_processes(client):
    me = client.getpid()
    assert me["uid"] == os.getuid()  # from SO_PEERCRED, not from anything the client said
    lengths = {client.spawn(prompt_ids=[1, 2, 3], max_tokens=n, seed=n): n for n in (3, 5, 8, 13)}
    streamed_pid = next(iter(lengths))
    streamed = [token for batch in client.stream(streamed_pid) for token in batch]
    assert len(streamed) == lengths[streamed_pid]

    results = {pid: client.wait(pid) for pid in lengths}
    assert results[streamed_pid].output_ids == streamed
    for pid, result in results.items():
        assert result.pid == pid
        assert result.finish_reason == "length"
        assert len(result.output_ids) == lengths[pid]
        assert result.stat["accounting"]["num_steps"] == lengths[pid]
        with pytest.raises(libllm.ESRCH):  # reaped by wait
            client.stat(pid)
    with pytest.raises(libllm.ECHILD):
        client.wait()


def test_ps_stat_and_uname_describe_a_running_process(client):
    pid = client.spawn(prompt_ids=[7, 8], max_tokens=60_000, nice=3)
    info = client.stat(pid)
    assert info["pid"] == pid and info["nice"] == 3 and info["prompt_tokens"] == 2
    assert info["uid"] == os.getuid() and info["max_tokens"] == 60_000
    assert [row["pid"] for row in client.ps() if row["pid"] == pid] == [pid]

    kernel = client.uname()
    assert kernel["policy"] == "fcfs" and kernel["num_processes"] >= 1
    [device] = kernel["devices"]
    assert device["kind"] == "sim" and device["emulated"] is True and device["model"] == kernel["default_model"]

    client.kill(pid, "SIGKILL")
    result = client.wait(pid)
    assert result.finish_reason == "signal" and result.exit["signal"] == "SIGKILL"


def test_errors_arrive_as_errno_exceptions(client):
    with pytest.raises(libllm.EINVAL):
        client.spawn(prompt="text needs a tokenizer, which the sim model has not")
    with pytest.raises(libllm.ESRCH):
        client.stat(999_999)
    with pytest.raises(libllm.EPERM):
        client.kill(1)
    with pytest.raises(libllm.ENOSYS):
        client.call("no_such_syscall")


def test_a_closed_connection_takes_its_processes_with_it(socket_path, client):
    with libllm.connect(socket_path) as other:
        pid = other.spawn(prompt_ids=[1], max_tokens=60_000)
        assert client.stat(pid)["state"] != "ZOMBIE"
    deadline = time.monotonic() + 5
    while any(row["pid"] == pid for row in client.ps()):
        assert time.monotonic() < deadline, "the closed session's process still runs"
        time.sleep(0.01)


class Interrupted(Exception):
    """What the test's SIGINT handler raises in place of KeyboardInterrupt (which would end pytest)."""


def test_an_interrupted_blocking_wait_is_cancelled_and_the_connection_goes_on(client):
    # A stopped child makes the wait block for certain until the signal interrupts it.
    pid = client.spawn(prompt_ids=[1, 2], max_tokens=60_000)
    client.kill(pid, "SIGSTOP")
    wait_for_state(client, pid, "STOPPED")

    def interrupt(signum: int, frame: Any) -> None:
        raise Interrupted

    previous = signal.signal(signal.SIGINT, interrupt)
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(Interrupted):
            client.wait(pid)
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, previous)
    # The kernel was told to cancel the wait: it did not reap the child behind our back, and its
    # late reply (ECANCELED) is skipped, not taken for the next call's.
    assert client.getpid()["pid"] > 0
    assert client.stat(pid)["state"] == "STOPPED"
    client.kill(pid, "SIGKILL")
    assert client.wait(pid).exit["signal"] == "SIGKILL"


def test_closing_a_blocking_connection_wakes_a_thread_blocked_on_it(socket_path):
    llm = libllm.connect(socket_path)
    pid = llm.spawn(prompt_ids=[1], max_tokens=60_000)
    llm.kill(pid, "SIGSTOP")
    offset = wait_for_state(llm, pid, "STOPPED")["generated_tokens"]
    thread, outcome = call_in_thread(llm.read, pid, offset)
    time.sleep(0.2)
    assert thread.is_alive()
    llm.close()
    thread.join(5)
    assert not thread.is_alive() and isinstance(outcome.get("error"), libllm.EIO), outcome
    with pytest.raises(libllm.EIO):
        llm.getpid()


def test_a_thread_may_kill_what_another_waits_for_on_the_same_connection(client):
    pid = client.spawn(prompt_ids=[1, 2], max_tokens=60_000)
    waiter, outcome = call_in_thread(client.wait, pid)
    time.sleep(0.2)
    assert waiter.is_alive()
    killer, killed = call_in_thread(client.kill, pid, "SIGKILL")
    killer.join(5)
    waiter.join(5)
    assert "error" not in killed and not waiter.is_alive(), (killed, outcome)
    assert outcome["result"].exit["signal"] == "SIGKILL"


def test_a_blocking_connection_is_shared_by_threads(client):
    pids = [client.spawn(prompt_ids=[1, 2, 3], max_tokens=n) for n in (4, 6, 8, 10)]
    calls = [call_in_thread(client.wait, pid) for pid in pids]
    for thread, _ in calls:
        thread.join(10)
    results = [outcome["result"] for _, outcome in calls]
    assert [(r.pid, len(r.output_ids)) for r in results] == list(zip(pids, (4, 6, 8, 10), strict=True))


# -- the llmos command ---------------------------------------------------------------------------


def test_llmos_ps_prints_a_table_of_the_live_kernel(socket_path, client):
    pid = client.spawn(prompt_ids=[1, 2], max_tokens=60_000)
    done = llmos("ps", "--socket", socket_path)
    assert done.returncode == 0, done.stderr
    header, *rows = done.stdout.splitlines()
    assert header.split()[:3] == ["PID", "PPID", "UID"]
    assert any(row.split()[0] == str(pid) for row in rows), done.stdout


def test_llmos_free_shows_the_kv_memory_of_the_live_kernel(socket_path, client):
    pid = client.spawn(prompt_ids=[1] * 40, max_tokens=60_000)
    wait_for_state(client, pid, "RUNNING")
    table = llmos("free", "--socket", socket_path)
    assert table.returncode == 0, table.stderr
    header, row = table.stdout.splitlines()[:2]
    assert header.split()[:3] == ["device", "total", "used"] and row.split()[0] == "sim0"
    data = json.loads(llmos("meminfo", "--socket", socket_path, "--json").stdout)
    assert data[0]["blocks_used"] >= 3 and data[0]["blocks_total"] == int(row.split()[1])
    client.kill(pid, "SIGKILL")


def test_llmos_ps_without_a_kernel_says_enoent(tmp_path):
    done = llmos("ps", "--socket", str(tmp_path / "nonexistent.sock"))
    assert done.returncode == 1
    assert "ENOENT" in done.stderr and "nonexistent.sock" in done.stderr
    assert done.stdout == ""


def test_boot_refuses_a_path_that_exists(tmp_path):
    path = tmp_path / "taken.sock"
    path.write_text("not a socket")
    done = llmos("boot", "--device", "sim", "--socket", str(path))
    assert done.returncode != 0
    assert "EEXIST" in done.stderr and str(path) in done.stderr
    assert path.read_text() == "not a socket"  # left alone, not removed on the way out


def test_a_second_kernel_on_a_live_socket_fails_and_leaves_the_first_serving(socket_path, client):
    done = llmos("boot", "--device", "sim", "--socket", socket_path)
    assert done.returncode != 0 and "EEXIST" in done.stderr
    assert os.path.exists(socket_path)
    with libllm.connect(socket_path) as fresh:  # a new connection still reaches the first kernel
        assert fresh.getpid()["pid"] != client.getpid()["pid"]


def test_tenant_token_from_llmos_token_sets_the_tenant(socket_path):
    done = llmos("token", "--tenant", "acme", "--socket", socket_path)
    if os.getuid() != 0:  # only uid 0 issues tokens
        assert done.returncode == 1 and "EPERM" in done.stderr
        return
    assert done.returncode == 0, done.stderr
    token = done.stdout.strip()
    with libllm.connect(socket_path, token=token) as tenant_client:
        assert tenant_client.getpid()["tenant"] == "acme"
        pid = tenant_client.spawn(prompt_ids=[1], max_tokens=60_000)
        assert tenant_client.stat(pid)["tenant"] == "acme"
    with libllm.connect(socket_path) as plain:
        assert plain.getpid()["tenant"] == "default"
    with pytest.raises(libllm.EACCES):
        libllm.connect(socket_path, token=token[:-1] + ("0" if token[-1] != "0" else "1"))


def test_with_a_home_processes_hold_capabilities_bound_to_their_pid(tmp_path):
    path = tmp_path / "k.sock"
    with booted_kernel(path, "--home", str(tmp_path / "home")), libllm.connect(str(path)) as llm:
        first = llm.spawn(prompt_ids=[1, 2, 3], max_tokens=60_000)
        second = llm.spawn(prompt_ids=[1, 2, 3], max_tokens=60_000)
        mine, theirs = llm.caps(first), llm.caps(second)
        assert set(mine) == {"model", "device", "priority"} and mine["priority"] != theirs["priority"]
        with pytest.raises(libllm.EPERM) as err:  # checked even for uid 0, who needs none
            llm.nice(second, 0, cap=mine["priority"])
        assert f"belongs to pid {first}" in err.value.message
        assert llm.cap_revoke(theirs["model"]) == {"pid": second, "kind": "model", "ended": True}
        ended = llm.wait(second)
        assert ended.exit["errno"] == "EPERM" and "model capability was revoked" in ended.exit["message"]
        assert llm.stat(first)["state"] != "zombie"


# -- shutdown ------------------------------------------------------------------------------------


def call_in_thread(fn: Any, *args: Any) -> tuple[threading.Thread, dict[str, Any]]:
    """Run a blocking call in a thread; its result or exception lands in the returned dict."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = fn(*args)
        except Exception as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def test_sigterm_ends_every_process_with_a_status_and_removes_the_socket(tmp_path):
    path = tmp_path / "k.sock"
    with booted_kernel(path) as kernel, libllm.connect(str(path)) as reader, libllm.connect(str(path)) as waiter:
        # Stopped processes produce nothing, so the read and the wait below block for certain
        # until the kernel shuts down; the kernel promises them a final status (open_kernel).
        read_pid = reader.spawn(prompt_ids=[1, 2, 3], max_tokens=60_000)
        reader.kill(read_pid, "SIGSTOP")
        offset = wait_for_state(reader, read_pid, "STOPPED")["generated_tokens"]
        wait_pid = waiter.spawn(prompt_ids=[4], max_tokens=60_000)
        waiter.kill(wait_pid, "SIGSTOP")
        wait_for_state(waiter, wait_pid, "STOPPED")
        read_thread, read_outcome = call_in_thread(reader.read, read_pid, offset)
        wait_thread, wait_outcome = call_in_thread(waiter.wait, wait_pid)
        time.sleep(0.3)  # let both requests reach the kernel and block there
        assert read_thread.is_alive() and wait_thread.is_alive()

        started = time.monotonic()
        kernel.send_signal(signal.SIGTERM)
        stdout, stderr = kernel.communicate(timeout=SHUTDOWN_TIMEOUT_S)
        assert kernel.returncode == 0, stderr
        assert time.monotonic() - started < 5.0
        read_thread.join(5)
        wait_thread.join(5)

        assert "SIGTERM received; shutting down" in stdout
        assert "kernel stopped" in stdout
        assert "Traceback" not in stderr, stderr
        assert not path.exists()

        shutdown = {"reason": "signal", "signal": "SIGKILL", "message": "the kernel is shutting down"}
        assert "error" not in read_outcome, read_outcome
        result = read_outcome["result"]
        assert result.eof and result.tokens == [] and result.offset == offset
        assert shutdown.items() <= result.exit.items()
        assert "error" not in wait_outcome, wait_outcome
        waited = wait_outcome["result"]
        assert waited.pid == wait_pid and shutdown.items() <= waited.exit.items()

        with pytest.raises(libllm.EIO):  # the connection is gone now
            reader.getpid()
