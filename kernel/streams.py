"""Message streams: the same encoded messages over trio memory channels or a byte stream.

Both kinds carry msgpack bytes, never Python objects, so a component that talks over a memory
stream today can move behind a socket tomorrow without a change (DESIGN.md, IPC).

``receive`` returns a decoded map, raises ``trio.EndOfChannel`` when the peer has closed, and
raises ``KernelError`` for input that fails to decode. After an error the stream may still be
usable (a well-framed but bad payload) or not (``stream.broken``: the framing itself is lost).
"""

from __future__ import annotations

import os
import socket
import struct
from typing import Any, Protocol

import trio

from . import codec, params
from .errors import KernelError


class MessageStream(Protocol):
    """A bidirectional stream of messages."""

    broken: bool

    async def send(self, message: dict[str, Any]) -> None: ...

    async def receive(self) -> dict[str, Any]: ...

    async def aclose(self) -> None: ...

    def close(self) -> None: ...


class MemoryMessageStream:
    """One end of an in-process pair; see ``memory_stream_pair``."""

    broken = False

    def __init__(self, send_channel: trio.MemorySendChannel, receive_channel: trio.MemoryReceiveChannel):
        self._send_channel = send_channel
        self._receive_channel = receive_channel

    async def send(self, message: dict[str, Any]) -> None:
        """Encode and send; raises ``trio.BrokenResourceError`` if the peer has closed."""
        await self.send_raw(codec.encode(message))

    async def send_raw(self, payload: bytes) -> None:
        """Send an encoded payload (tests also use this to deliver malformed input)."""
        # Fast path: skip the scheduling round when the buffer has room. The receiver still
        # runs only when we next block, so this changes latency, not ordering.
        try:
            self._send_channel.send_nowait(payload)
        except trio.WouldBlock:
            await self._send_channel.send(payload)

    async def receive(self) -> dict[str, Any]:
        """Receive and decode the next message."""
        try:
            try:
                payload = self._receive_channel.receive_nowait()
            except trio.WouldBlock:
                payload = await self._receive_channel.receive()
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise trio.EndOfChannel from None
        return codec.decode(payload)

    async def aclose(self) -> None:
        """Close both directions; the peer's receive then raises EndOfChannel."""
        self.close()
        await trio.lowlevel.checkpoint()

    def close(self) -> None:
        """Close at once, without waiting; a task blocked in ``receive`` wakes with EndOfChannel."""
        self._send_channel.close()
        self._receive_channel.close()


def memory_stream_pair(buffer: int = params.MAX_PENDING_PER_CONNECTION) -> tuple[MemoryMessageStream, MemoryMessageStream]:
    """Two connected in-process message streams."""
    a_send, b_receive = trio.open_memory_channel[bytes](buffer)
    b_send, a_receive = trio.open_memory_channel[bytes](buffer)
    return MemoryMessageStream(a_send, a_receive), MemoryMessageStream(b_send, b_receive)


class FramedMessageStream:
    """Messages over a trio byte stream (a Unix or TCP socket), framed by ``codec``."""

    def __init__(self, stream: trio.abc.Stream, max_frame_bytes: int = params.MAX_FRAME_BYTES):
        self.stream = stream
        self.broken = False
        self._reader = codec.FrameReader(max_frame_bytes)
        self._send_lock = trio.Lock()  # handler tasks reply concurrently; frames must not interleave

    async def send(self, message: dict[str, Any]) -> None:
        """Encode, frame and send one message."""
        data = codec.frame(codec.encode(message))
        await trio.lowlevel.checkpoint_if_cancelled()  # a cancelled caller sends nothing (no yield otherwise)
        if not self._send_lock.locked():
            # Fast path: a small frame nearly always fits the socket buffer at once. Writing
            # it directly skips the scheduling round trio's send_all takes after a successful
            # send (a whole loop tick per message, a good part of a socket round trip). The
            # peer still runs only when we next block: latency changes, ordering does not.
            sent = self._write_now(data)
            if sent == len(data):
                return
            if sent:
                await self._send_rest(data[sent:])
                return
        async with self._send_lock:
            await self.stream.send_all(data)

    async def _send_rest(self, rest: bytes) -> None:
        """Finish a frame begun by a direct write; if cancelled now, the framing is lost."""
        try:
            async with self._send_lock:
                await self.stream.send_all(rest)
        except trio.Cancelled:
            self.broken = True  # half a frame went out: the peer can never find the next one
            self.close()
            raise

    async def _read_some(self) -> bytes:
        """The next bytes from the peer (b"" at EOF).

        On a socket, read directly and wait for readability only when nothing is there:
        trio's receive_some tries the read, and after a successful one takes a scheduling
        round more, which a round trip pays on both ends. Waiting is the checkpoint.
        """
        sock = getattr(self.stream, "socket", None)
        if sock is None:
            return await self.stream.receive_some(65536)
        await trio.lowlevel.checkpoint_if_cancelled()  # a cancelled reader takes nothing
        while True:
            try:
                return os.read(sock.fileno(), 65536)
            except BlockingIOError:
                pass
            except OSError as exc:  # ECONNRESET; EBADF once this end was closed
                raise trio.BrokenResourceError(f"the connection failed ({exc.strerror})") from None
            await trio.lowlevel.wait_readable(sock)

    def _write_now(self, data: bytes) -> int:
        """Write what the socket takes without blocking; 0 if it is not a socket or is full."""
        sock = getattr(self.stream, "socket", None)
        if sock is None:
            return 0
        try:
            return os.write(sock.fileno(), data)
        except BlockingIOError:
            return 0
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise trio.BrokenResourceError(f"the peer closed the connection ({exc.strerror})") from None
        except OSError as exc:  # EBADF: this end was closed (fileno() is -1)
            raise trio.ClosedResourceError(f"the connection is closed ({exc.strerror})") from None

    async def receive(self) -> dict[str, Any]:
        """Read bytes until a whole frame is buffered, then decode it."""
        while True:
            try:
                payload = self._reader.next_payload()
            except KernelError:
                self.broken = True  # the declared length is refused: we cannot find the next frame
                raise
            if payload is not None:
                return codec.decode(payload)
            data = await self._read_some()
            if not data:
                if self._reader.buffered:
                    self.broken = True
                    raise KernelError("EINVAL", f"connection closed inside a frame ({self._reader.buffered} bytes)")
                raise trio.EndOfChannel
            self._reader.feed(data)

    async def aclose(self) -> None:
        """Close the underlying byte stream."""
        await self.stream.aclose()

    def close(self) -> None:
        """Close at once, without waiting; a task blocked in ``receive`` wakes with an error."""
        socket_stream = getattr(self.stream, "socket", None)
        if socket_stream is not None:
            socket_stream.close()  # trio wakes any task waiting on this socket


def peer_credentials(stream: trio.SocketStream) -> tuple[int, int, int] | None:
    """The (pid, uid, gid) of a Unix-socket peer from SO_PEERCRED, or None where unavailable."""
    if not hasattr(socket, "SO_PEERCRED"):
        return None
    try:
        raw = stream.socket.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
    except OSError:
        return None
    return struct.unpack("3i", raw)
