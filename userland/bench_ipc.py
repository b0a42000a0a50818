"""``llmos bench ipc``: the round trip of a no-op syscall (getpid), by transport.

- in-process: libllm's async client over trio memory channels, kernel in the same trio loop;
- socket: libllm's blocking client (``libllm.connect``) over a Unix socket to a kernel in another
  process (`llmos boot`): what a plain Python program uses;
- socket_async: libllm's async (trio) client to the same kernel: a trio wait per reply on top;
- socket_raw: a bare blocking socket speaking the wire format, to the same kernel: the floor of
  the two above (no libllm at all);
- floor_codec: msgpack encode + decode of the same request and reply, no transport at all;
- floor_trio: two bare trio tasks passing an int over memory channels: the scheduler's part.

In-process cannot beat floor_codec + floor_trio; ``in_process_over_floor`` says how close it is.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial

import trio

from llmos.kernel import codec
from llmos.kernel.kernel import open_kernel

from . import libllm
from .system import SystemOptions, build_config


def percentiles_us(samples_ns: list[int]) -> dict[str, float]:
    """p50, p99 and mean of samples in nanoseconds, as microseconds."""
    ordered = sorted(samples_ns)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1000  # noqa: E731
    return {"p50_us": round(pick(0.50), 2), "p99_us": round(pick(0.99), 2), "mean_us": round(statistics.fmean(ordered) / 1000, 2)}


async def _time_calls(llm: libllm.Client, n: int) -> list[int]:
    for _ in range(min(500, n)):
        await llm.getpid()  # warm up
    samples = []
    for _ in range(n):
        start = time.perf_counter_ns()
        await llm.getpid()
        samples.append(time.perf_counter_ns() - start)
    return samples


async def bench_in_process(n: int) -> list[int]:
    """Round trips through an in-process kernel."""
    async with open_kernel(build_config(SystemOptions(device="sim"))) as kernel, libllm.open_client(kernel) as llm:
        return await _time_calls(llm, n)


async def bench_socket_async(path: str, n: int) -> list[int]:
    """Round trips through libllm's async client over a Unix socket."""
    async with libllm.open_client(path) as llm:
        return await _time_calls(llm, n)


def bench_socket_blocking(path: str, n: int) -> list[int]:
    """Round trips through libllm's blocking client over a Unix socket."""
    with libllm.connect(path) as llm:
        for _ in range(min(500, n)):
            llm.getpid()  # warm up
        samples = []
        for _ in range(n):
            start = time.perf_counter_ns()
            llm.getpid()
            samples.append(time.perf_counter_ns() - start)
        return samples


def bench_socket_raw(path: str, n: int) -> list[int]:
    """Round trips through a bare blocking socket: frame, send, receive, decode."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    samples = []
    try:
        for i in range(n + min(500, n)):
            start = time.perf_counter_ns()
            sock.sendall(codec.frame(codec.encode(codec.make_request(i, "getpid", {}))))
            header = _recv_exact(sock, codec.HEADER_BYTES)
            reply = codec.decode(_recv_exact(sock, int.from_bytes(header, "big")))
            assert reply["ok"], reply
            if i >= min(500, n):
                samples.append(time.perf_counter_ns() - start)
    finally:
        sock.close()
    return samples


SOCKET_ROUNDS = 4  # the socket clients take turns this many times: a VM's speed drifts in seconds


def bench_socket_rounds(path: str, n: int) -> dict[str, dict[str, float]]:
    """The three socket clients against one kernel, ``n`` round trips each, in rounds that
    rotate their order, so that a drift of the machine's speed (or the kernel warming up)
    favours none of them."""
    clients = {
        "socket": partial(bench_socket_blocking, path),
        "socket_async": partial(trio.run, bench_socket_async, path),
        "socket_raw": partial(bench_socket_raw, path),
    }
    samples: dict[str, list[int]] = {name: [] for name in clients}
    names = list(clients)
    per_round = -(-n // SOCKET_ROUNDS)
    for round_index in range(SOCKET_ROUNDS):
        for name in names[round_index % 3:] + names[: round_index % 3]:
            samples[name] += clients[name](per_round)
    return {name: percentiles_us(values) for name, values in samples.items()}


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("kernel closed the connection")
        data += chunk
    return bytes(data)


async def bench_trio_floor(n: int) -> list[int]:
    """Two trio tasks passing a token over memory channels: the scheduler's own round trip."""
    to_server, server_inbox = trio.open_memory_channel[int](1)
    to_client, client_inbox = trio.open_memory_channel[int](1)

    async def echo() -> None:
        async for item in server_inbox:
            to_client.send_nowait(item)

    samples = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(echo)
        for i in range(n + min(500, n)):
            start = time.perf_counter_ns()
            to_server.send_nowait(i)
            await client_inbox.receive()
            if i >= min(500, n):
                samples.append(time.perf_counter_ns() - start)
        nursery.cancel_scope.cancel()
    return samples


def bench_codec_floor(n: int) -> list[int]:
    """msgpack encode + decode of one request and its reply."""
    request = codec.make_request(1, "getpid", {})
    reply = codec.make_reply(1, {"pid": 2, "uid": 0, "tenant": "default"})
    samples = []
    for _ in range(n):
        start = time.perf_counter_ns()
        codec.decode(codec.encode(request))
        codec.decode(codec.encode(reply))
        samples.append(time.perf_counter_ns() - start)
    return samples


def run_bench_ipc(args: argparse.Namespace) -> int:
    """Entry point of ``llmos bench ipc``."""
    n = max(100, args.n)
    results = {"floor_codec": percentiles_us(bench_codec_floor(n)), "floor_trio": percentiles_us(trio.run(bench_trio_floor, n))}
    results["in_process"] = percentiles_us(trio.run(bench_in_process, n))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "llmos.sock")
        kernel = subprocess.Popen([sys.executable, "-m", "llmos.userland.cli", "boot", "--device", "sim", "--socket", path],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 60
            while not os.path.exists(path):
                if kernel.poll() is not None or time.monotonic() > deadline:
                    print(f"llmos bench ipc: the kernel did not start: {kernel.stderr.read().decode()}", file=sys.stderr)
                    return 1
                time.sleep(0.05)
            results.update(bench_socket_rounds(path, n))
        finally:
            kernel.send_signal(signal.SIGTERM)
            kernel.wait(timeout=30)
    floor = results["floor_codec"]["p50_us"] + results["floor_trio"]["p50_us"]
    results["in_process_over_floor"] = round(results["in_process"]["p50_us"] / floor, 2)
    results["n"] = n
    results["targets"] = {"in_process_p50_us": 50, "socket_p50_us": 150}
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for name in ("floor_codec", "floor_trio", "in_process", "socket", "socket_async", "socket_raw"):
            r = results[name]
            print(f"{name:12s}  p50 {r['p50_us']:8.1f} us   p99 {r['p99_us']:8.1f} us   mean {r['mean_us']:8.1f} us")
    return 0
