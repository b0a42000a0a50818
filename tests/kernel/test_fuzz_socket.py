"""Fuzzing a live kernel's Unix socket: every frame gets a well-formed reply, and the kernel lives.

A real ``llmos boot --device sim`` runs as a subprocess for the whole module; hypothesis drives it
with plain blocking sockets. Each example opens one connection and sends a batch of frames in
lock-step (send one, read its reply), so every reply can be checked against the frame that caused
it. A batch may end with broken framing (an oversize length, a truncated frame, a length that lies
about its payload); after that the kernel may answer once more and must then close the connection.

DESIGN.md, IPC: "Every malformed input gets an error reply or a closed connection, never a crash."
An EIO reply counts as a failure here: it is how the RPC loop reports a handler that raised
something other than ``KernelError``, i.e. a kernel bug that only the catch-all contained.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from llmos.kernel import params
from llmos.kernel.errors import ERRNO_NAMES
from llmos.kernel.rpc import CANCEL_OP
from llmos.kernel.syscalls import SYSCALLS

FRAMES_PER_CONNECTION = 25  # frames in one example's batch, before its optional broken ending
NUM_CONNECTIONS = 420  # hypothesis examples; 420 * 25 > the 10,000 frames the test promises
MIN_FRAMES = 10_000
REPLY_TIMEOUT_S = 10.0  # a reply slower than this is a hang, not a slow machine
INT64_MIN, UINT64_MAX = -(2**63), 2**64 - 1  # what msgpack can carry

ANY = object()  # an expectation that accepts any value


# -- the kernel under test ---------------------------------------------------------------------


@dataclass
class LiveKernel:
    process: subprocess.Popen
    path: str
    stderr_path: str

    def stderr(self) -> str:
        with open(self.stderr_path, errors="replace") as f:
            return f.read()


def accepts_connections(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except OSError:
            return False
    return True


@pytest.fixture(scope="module")
def live_kernel(tmp_path_factory):
    directory = tmp_path_factory.mktemp("fuzz")
    path = str(directory / "k.sock")
    assert len(path) < 100, f"socket path too long for AF_UNIX: {path}"
    stdout = open(directory / "stdout.txt", "w")
    stderr = open(directory / "stderr.txt", "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "llmos.userland.cli", "boot", "--device", "sim", "--socket", path],
        stdout=stdout, stderr=stderr,
    )
    try:
        deadline = time.monotonic() + 30
        while not accepts_connections(path):  # the file appears at bind(), a moment before listen()
            assert process.poll() is None, f"the kernel exited at boot: {open(stderr.name).read()}"
            assert time.monotonic() < deadline, "the kernel did not serve its socket within 30 s"
            time.sleep(0.02)
        yield LiveKernel(process, path, stderr.name)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        stdout.close()
        stderr.close()


# -- a blocking client that sends anything -----------------------------------------------------


class Closed(Exception):
    """The kernel closed the connection (EOF or reset)."""


class RawConnection:
    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(REPLY_TIMEOUT_S)
        self.sock.connect(path)

    def send_bytes(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise Closed from exc

    def _receive_exactly(self, n: int) -> bytes:
        chunks, got = [], 0
        while got < n:
            try:
                chunk = self.sock.recv(n - got)
            except ConnectionResetError as exc:
                raise Closed from exc
            except TimeoutError:
                pytest.fail(f"no reply from the kernel within {REPLY_TIMEOUT_S} s (a hang)")
            if not chunk:
                if got:
                    pytest.fail(f"the kernel closed the connection inside a reply frame ({got}/{n} bytes)")
                raise Closed
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    def receive_reply(self) -> dict[str, Any]:
        (length,) = struct.unpack(">I", self._receive_exactly(4))
        assert 0 < length <= params.MAX_FRAME_BYTES, f"reply frame of {length} bytes"
        reply = msgpack.unpackb(self._receive_exactly(length), raw=False)
        assert isinstance(reply, dict), f"a reply must be a map: {reply!r:.300}"
        return reply

    def close(self) -> None:
        self.sock.close()


def frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


# -- what a reply must look like -----------------------------------------------------------------


@dataclass
class Expect:
    """What the kernel must answer to one frame."""

    errnos: frozenset[str] | None  # the error must be one of these; None: any (or success)
    request_id: Any = None  # the reply's id: the request's int id, else None
    may_succeed: bool = False


def check_reply(reply: dict[str, Any], expect: Expect, sent: Any) -> None:
    context = f"reply {reply!r:.400} to {sent!r:.400}"
    assert reply.get("v") == params.PROTOCOL_VERSION, context
    if expect.request_id is not ANY:
        assert reply.get("id") == expect.request_id and type(reply.get("id")) is type(expect.request_id), context
    if reply.get("ok") is True:
        assert expect.may_succeed, "success for a request that must fail: " + context
        assert "result" in reply, context
        return
    assert reply.get("ok") is False, context
    error = reply.get("error")
    assert isinstance(error, dict) and isinstance(error.get("message"), str), context
    assert error.get("errno") in ERRNO_NAMES, context
    assert error["errno"] != "EIO", "internal error (a kernel bug caught by the catch-all): " + context
    if expect.errnos is not None:
        assert error["errno"] in expect.errnos, context


def structure(value: Any) -> tuple[int, bool]:
    """(nesting depth of maps and lists, whether every map key is a str); no recursion."""
    max_depth, keys_ok = 0, True
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            keys_ok = keys_ok and all(type(k) is str for k in item)
            children = list(item.values())
        elif isinstance(item, list):
            children = item
        else:
            continue
        max_depth = max(max_depth, depth)
        stack += [(child, depth + 1) for child in children]
    return max_depth, keys_ok


def expect_for_message(message: Any) -> Expect:
    """The spec of DESIGN.md, IPC, applied to one decoded message (mirrors codec.parse_request)."""
    if not isinstance(message, dict):
        return Expect(frozenset({"EINVAL"}))
    depth, keys_ok = structure(message)
    if depth > params.MAX_MESSAGE_DEPTH or not keys_ok:
        return Expect(frozenset({"EINVAL"}))
    request_id = message.get("id") if type(message.get("id")) is int else None
    op, args = message.get("op"), message.get("args", {})
    envelope_ok = (
        message.get("v") == params.PROTOCOL_VERSION
        and type(message.get("id")) is int
        and isinstance(op, str) and 0 < len(op) <= params.MAX_OP_NAME
        and isinstance(args, dict)
    )
    if not envelope_ok:
        return Expect(frozenset({"EINVAL"}), request_id)
    if op == CANCEL_OP:  # served by the RPC layer itself: cancel a request in flight, by id
        if type(args.get("id")) is not int:
            return Expect(frozenset({"EINVAL"}), request_id)
        return Expect(None, request_id, may_succeed=True)
    if op not in SYSCALLS and op != "hello":
        return Expect(frozenset({"ENOSYS"}), request_id)
    return Expect(None, request_id, may_succeed=True)


# -- strategies ----------------------------------------------------------------------------------
# One example draws its whole batch up front (a list of frame plans), which is many times cheaper
# than drawing frame by frame through st.data(). Pids are only known at run time, so a plan names
# "one of the pids this connection spawned" with PID_REF and the client fills it in.

PID_REF = object()

scalars = (
    st.none() | st.booleans() | st.integers(INT64_MIN, UINT64_MAX) | st.integers(-3, 40)
    | st.floats() | st.text(max_size=12) | st.binary(max_size=12)
)
keys = st.text(max_size=8) | st.binary(max_size=4)  # bin keys: msgpack lets them through
json_like = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(keys, children, max_size=3),
    max_leaves=6,
)
not_a_map = scalars | st.lists(json_like, max_size=3)
garbage_id = st.text(max_size=6) | st.floats() | st.booleans() | st.none() | st.lists(st.integers(-5, 5), max_size=2)
valid_id = st.integers(INT64_MIN, UINT64_MAX)
garbage_op = (
    st.integers(INT64_MIN, UINT64_MAX) | st.none() | st.just("") | st.just("x" * 10_000)
    | st.text(min_size=params.MAX_OP_NAME + 1, max_size=params.MAX_OP_NAME + 8) | st.binary(max_size=8)
)
unknown_op = st.text(min_size=1, max_size=params.MAX_OP_NAME).filter(lambda s: s not in SYSCALLS and s != "hello")
garbage_version = st.none() | st.integers(-2, 5).filter(lambda v: v != 1) | st.text(max_size=3) | st.just("1")

# Values that bound how long a valid blocking call can wait, or invalid ones (never None, which
# means "absent"): a fuzzed read or wait must not hold up the lock-step client for long.
short_timeout = st.floats(0.0, 0.01) | st.just(0) | st.text(max_size=3) | st.lists(st.integers(-5, 5), max_size=2) | st.booleans()
safe_nohang = st.just(True) | st.integers(0, 3) | st.text(max_size=3) | st.floats()
few_tokens = st.integers(1, 8) | st.integers(-5, 0) | st.text(max_size=3) | st.floats() | st.booleans()

PLAUSIBLE = {
    "pid": st.just(PID_REF) | st.integers(0, 60),
    "offset": st.integers(0, 10),
    "signal": st.sampled_from(["SIGKILL", "SIGTERM", "SIGSTOP", "SIGCONT", "kill", "stop", 9, 15, 19, 18, "SIGHUP", 0]),
    "n": st.integers(0, 3),
    "value": st.integers(-25, 25),
    "prompt_ids": st.lists(st.integers(0, 32_000), max_size=12),
    "stop_ids": st.lists(st.integers(0, 40), max_size=3),
    "model": st.sampled_from(["sim", "gpt-9", ""]),
    "token": st.builds(lambda a, b: f"{a}.{b}", st.text(max_size=8), st.text(max_size=8)),
    "ids": st.lists(st.integers(0, 100), max_size=4),
    "tenant": st.text(max_size=8),
}
ARG_NAMES = {
    "getpid": (), "ps": (), "uname": (), "hello": ("token",), "token": ("tenant",),
    "spawn": ("model", "prompt", "prompt_ids", "temperature", "top_k", "top_p", "seed", "stop_ids",
              "ignore_eos", "nice", "deadline_s", "detach"),
    "read": ("pid", "offset"), "wait": ("pid",), "kill": ("pid", "signal"), "fork": ("pid", "n"),
    "nice": ("pid", "value"), "stat": ("pid",), "tokenize": ("model", "text"), "detokenize": ("model", "ids"),
}
GUARDS = {"read": ("timeout", short_timeout), "wait": ("nohang", safe_nohang), "spawn": ("max_tokens", few_tokens)}
# Strategies are built once: building one per draw makes hypothesis redo its analysis each time.
ARG_VALUES = {name: PLAUSIBLE.get(name, json_like) | json_like for names in ARG_NAMES.values() for name in names}
ARG_SUBSETS = {op: st.lists(st.sampled_from(names), unique=True) if names else st.just([]) for op, names in ARG_NAMES.items()}
SYSCALL_OPS = st.sampled_from(sorted(ARG_NAMES))
one_in_ten = st.integers(0, 9)


@st.composite
def syscall_messages(draw):
    """A request for a real syscall: known arguments with plausible or junk values, maybe a stray."""
    op = draw(SYSCALL_OPS)
    args: dict[Any, Any] = {name: draw(ARG_VALUES[name]) for name in draw(ARG_SUBSETS[op])}
    if draw(one_in_ten) == 0:
        args[draw(keys)] = draw(json_like)
    if op in GUARDS:  # keeps a valid call from blocking for long (see short_timeout)
        name, values = GUARDS[op]
        args[name] = draw(values)
    return {"v": 1, "id": draw(valid_id), "op": op, "args": args}


ENVELOPE_FIELDS = (  # (field, strategy of its value, odds of leaving it out)
    ("v", st.just(1) | garbage_version, st.integers(0, 4)),
    ("id", valid_id | garbage_id, st.integers(0, 4)),
    ("op", st.sampled_from(["ps", "getpid", "uname"]) | unknown_op | garbage_op, st.integers(0, 4)),
    ("args", st.just({}) | not_a_map | st.dictionaries(keys, json_like, max_size=3), st.integers(0, 3)),
)


@st.composite
def envelopes(draw):
    """A map with each request field present or not, right or wrong."""
    message: dict[Any, Any] = {}
    for name, values, odds in ENVELOPE_FIELDS:
        if draw(odds):
            message[name] = draw(values)
    if draw(one_in_ten) == 0:
        message[draw(keys)] = draw(json_like)
    return message


def nested(depth: int, leaf: Any, maps: bool) -> Any:
    value = leaf
    for level in range(depth):
        value = {"k": value} if maps and level % 2 else [value]
    return value


@st.composite
def deep_messages(draw):
    """A tower of lists (and maps) 10..500 deep, as an argument, a field or the whole payload."""
    tower = nested(draw(st.integers(10, 500)), draw(scalars), draw(st.booleans()))
    where = draw(st.sampled_from(["arg", "payload", "id", "args"]))
    if where == "payload":
        return tower
    message: dict[str, Any] = {"v": 1, "id": 7, "op": "ps", "args": {}}
    if where == "arg":
        message["args"] = {"x": tower}
    else:
        message[where] = tower
    return message


unknown_op_messages = st.fixed_dictionaries({
    "v": st.just(1), "id": valid_id, "op": unknown_op,
    "args": st.dictionaries(st.text(max_size=6), scalars, max_size=3),
})
bad_payloads = st.sampled_from([
    b"",  # a zero-length frame
    b"\xc1",  # never used in msgpack
    pack({"v": 1, "id": 1, "op": "ps", "args": {}})[:-1],  # truncated inside the map
    pack({"v": 1, "id": 1, "op": "ps", "args": {}}) + b"\x00",  # trailing bytes
    b"\xd4\x01\x02",  # ext type, refused
    b"\xdf\xff\xff\xff\xff",  # map of 2**32-1 entries, then nothing
    b"\xdd\xff\xff\xff\xff",  # array of 2**32-1 items, then nothing
    b"\xdb\x00\x00\x10\x00",  # a 1 MiB str that is not there
]) | st.binary(min_size=1, max_size=40) | st.integers(500, 5000).map(lambda n: b"\x91" * n + b"\xc0")  # deeper than msgpack's stack

# ("message", a map or value to pack, with PID_REF placeholders) or ("raw", payload bytes)
frame_plans = st.one_of(
    syscall_messages().map(lambda m: ("message", m)),
    syscall_messages().map(lambda m: ("message", m)),
    envelopes().map(lambda m: ("message", m)),
    unknown_op_messages.map(lambda m: ("message", m)),
    not_a_map.map(lambda m: ("message", m)),
    deep_messages().map(lambda m: ("message", m)),
    bad_payloads.map(lambda b: ("raw", b)),
)
# Frames that break the framing; the client half-closes the connection after them.
PS_REQUEST = pack({"v": 1, "id": 1, "op": "ps", "args": {}})
broken_endings = st.one_of(
    st.just(("none", b"")),
    st.just(("none", b"")),
    st.tuples(st.integers(params.MAX_FRAME_BYTES + 1, 2**32 - 1), st.binary(max_size=64)).map(
        lambda t: ("oversize", struct.pack(">I", t[0]) + t[1])),
    st.integers(0, len(PS_REQUEST) - 1).map(lambda cut: ("truncated", frame(PS_REQUEST)[: 4 + cut])),
    st.integers(1, 3).map(lambda n: ("header_only", b"\x00\x00\x00\x10"[:n])),
    st.tuples(st.dictionaries(st.text(max_size=4), scalars, max_size=3), st.integers(0, 100), st.binary(max_size=16)).map(
        lambda t: ("lying", lying_frame(*t))),
)


ENDING_REPLIES = {
    "oversize": Expect(frozenset({"E2BIG"}), None),
    "truncated": Expect(frozenset({"EINVAL"}), None),
    "header_only": Expect(frozenset({"EINVAL"}), None),
    "lying": Expect(None, ANY, may_succeed=True),  # the misread bytes may even make a request
}


def lying_frame(args: dict[str, Any], shortfall: int, tail: bytes) -> bytes:
    """A length smaller than its payload: the rest of the bytes are read as further frames."""
    body = pack({"v": 1, "id": 1, "op": "ps", "args": args})
    return struct.pack(">I", max(0, len(body) - 1 - shortfall % len(body))) + body + tail


def materialize(plan: tuple[str, Any], pids: list[int], counter: int) -> tuple[bytes, Expect, Any]:
    """The frame's bytes and the reply it must get, with PID_REF filled from this connection."""
    kind, value = plan
    if kind == "raw":
        try:
            decoded = msgpack.unpackb(value, raw=False, strict_map_key=True, max_ext_len=0)
        except Exception:
            return frame(value), Expect(frozenset({"EINVAL"})), value
        return frame(value), expect_for_message(decoded), value
    if isinstance(value, dict) and isinstance(value.get("args"), dict) and value["args"].get("pid") is PID_REF:
        value = {**value, "args": {**value["args"], "pid": pids[counter % len(pids)] if pids else 2}}
    return frame(pack(value)), expect_for_message(value), value


# -- the test ------------------------------------------------------------------------------------

FRAMES_SENT = 0


def run_connection(path: str, plans: list[tuple[str, Any]], ending: tuple[str, bytes]) -> None:
    global FRAMES_SENT
    conn = RawConnection(path)
    try:
        pids: list[int] = []
        for index, plan in enumerate(plans):
            wire, expect, sent = materialize(plan, pids, index)
            conn.send_bytes(wire)
            FRAMES_SENT += 1
            try:
                reply = conn.receive_reply()
            except Closed:
                pytest.fail(f"the kernel closed a well-framed connection after {sent!r:.300}")
            check_reply(reply, expect, sent)
            result = reply.get("result")
            if reply["ok"] and isinstance(result, dict):
                pids += [p for p in [result.get("pid"), *result.get("pids", [])] if type(p) is int]
        kind, wire = ending
        if kind == "none":
            return
        conn.send_bytes(wire)
        FRAMES_SENT += 1
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:  # the kernel may already have closed (oversize length)
            return
        # Until EOF: error replies (one for the broken frame; a lying length may make a few more
        # frames out of the remaining bytes, and any of those may even be a valid request).
        for _ in range(64):
            try:
                reply = conn.receive_reply()
            except Closed:
                return
            check_reply(reply, ENDING_REPLIES[kind], wire)
        pytest.fail(f"the kernel kept answering after a broken frame ({kind}) and EOF")
    finally:
        conn.close()


def kernel_answers_ps(path: str) -> list[dict[str, Any]]:
    conn = RawConnection(path)
    try:
        conn.send_bytes(frame(pack({"v": 1, "id": 42, "op": "ps", "args": {}})))
        reply = conn.receive_reply()
    finally:
        conn.close()
    assert reply["ok"] is True and reply["id"] == 42, reply
    return reply["result"]["processes"]


def test_kernel_survives_random_and_malformed_frames(live_kernel):
    # No shrink phase: shrinking replays batches against the live kernel for minutes, and a
    # failure already names the exact frame and reply.
    @settings(
        max_examples=NUM_CONNECTIONS,
        deadline=None,
        phases=[Phase.explicit, Phase.reuse, Phase.generate],
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )
    @given(st.lists(frame_plans, min_size=FRAMES_PER_CONNECTION, max_size=FRAMES_PER_CONNECTION), broken_endings)
    def fuzz_one_connection(plans, ending):
        run_connection(live_kernel.path, plans, ending)

    fuzz_one_connection()

    assert FRAMES_SENT >= MIN_FRAMES
    assert live_kernel.process.poll() is None, "the kernel process died"
    kernel_answers_ps(live_kernel.path)
    # Closed sessions' processes were killed; detached ones end within their few tokens, except
    # those the fuzzer stopped with SIGSTOP, which wait for a SIGCONT that cannot come.
    deadline = time.monotonic() + 5
    while True:
        running = [p for p in kernel_answers_ps(live_kernel.path) if p["state"] != "STOPPED"]
        if not running or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert running == []
    stderr = live_kernel.stderr()
    assert "Traceback" not in stderr and "internal error" not in stderr, stderr[-3000:]


def test_kernel_still_shuts_down_cleanly_after_fuzzing(live_kernel):
    kernel_answers_ps(live_kernel.path)
    live_kernel.process.send_signal(signal.SIGTERM)
    assert live_kernel.process.wait(10) == 0
    assert not os.path.exists(live_kernel.path)
