"""The wire format: msgpack maps, framed on byte streams by a 4-byte big-endian length.

::

    +----------------+---------------------------+
    | length (u32 BE)|  msgpack map (length bytes)|
    +----------------+---------------------------+

Request: ``{"v": 1, "id": int, "op": str, "args": map}``.
Reply:   ``{"v": 1, "id": int, "ok": true, "result": any}``
      or ``{"v": 1, "id": int, "ok": false, "error": {"errno": str, "message": str}}``.

Decoding never trusts its input: sizes, nesting and types are all checked here, and every
failure is a ``KernelError`` that the caller turns into an error reply or a closed connection.
"""

from __future__ import annotations

import struct
import threading
from typing import Any, NamedTuple

import msgpack

from . import params
from .errors import ERRNO_NAMES, KernelError

_LENGTH = struct.Struct(">I")
HEADER_BYTES = _LENGTH.size


# One reused Packer per thread: packb builds a new one per call, which costs more than the
# packing of a small message; a Packer is not safe to share between threads (two SyncClients).
_local = threading.local()


def encode(message: dict[str, Any]) -> bytes:
    """Encode one message as a msgpack payload (no frame header)."""
    packer = getattr(_local, "packer", None)
    if packer is None:
        packer = _local.packer = msgpack.Packer(use_bin_type=True, autoreset=True)
    try:
        return packer.pack(message)
    except BaseException:
        packer.reset()  # a failed pack may leave bytes buffered; never let them reach the next one
        raise


def decode(payload: bytes, max_bytes: int = params.MAX_FRAME_BYTES) -> dict[str, Any]:
    """Decode one msgpack payload into a message map.

    Raises:
        KernelError: E2BIG if the payload is too large, EINVAL if it is not valid msgpack,
            is nested deeper than ``params.MAX_MESSAGE_DEPTH``, or is not a map.
    """
    if len(payload) > max_bytes:
        raise KernelError("E2BIG", f"message of {len(payload)} bytes exceeds the {max_bytes}-byte limit")
    try:
        message = msgpack.unpackb(
            payload,
            raw=False,
            strict_map_key=True,
            max_str_len=params.MAX_STRING_BYTES,
            max_bin_len=params.MAX_STRING_BYTES,
            max_array_len=params.MAX_ARRAY_LEN,
            max_map_len=params.MAX_MAP_LEN,
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises many types (ValueError, ExtraData, FormatError...)
        raise KernelError("EINVAL", f"payload is not valid msgpack ({type(exc).__name__})") from None
    if not isinstance(message, dict):
        raise KernelError("EINVAL", f"a message must be a msgpack map, not {type(message).__name__}")
    check_depth(message)
    return message


def check_depth(value: Any, limit: int = params.MAX_MESSAGE_DEPTH) -> None:
    """Raise EINVAL if ``value`` nests lists/maps deeper than ``limit``.

    Also EINVAL for a map key that is not a str: msgpack's ``strict_map_key`` still lets bin keys
    through, and a map mixing str and bytes keys breaks code that sorts or formats its keys.
    Recursion is bounded by ``limit``; this runs on every message, so it is kept lean.
    """
    if type(value) is dict:
        _check_map(value, limit - 1)
    elif type(value) is list:
        _check_list(value, limit - 1)


def _check_map(item: dict[Any, Any], budget: int) -> None:
    for key, child in item.items():
        if type(key) is not str:
            raise KernelError("EINVAL", "message map keys must be strings")
        kind = type(child)
        if kind is dict or kind is list:
            if budget <= 0:
                raise KernelError("EINVAL", f"message nests deeper than {params.MAX_MESSAGE_DEPTH} levels")
            (_check_map if kind is dict else _check_list)(child, budget - 1)


def _check_list(item: list[Any], budget: int) -> None:
    for child in item:
        kind = type(child)
        if kind is dict or kind is list:
            if budget <= 0:
                raise KernelError("EINVAL", f"message nests deeper than {params.MAX_MESSAGE_DEPTH} levels")
            (_check_map if kind is dict else _check_list)(child, budget - 1)


def frame(payload: bytes) -> bytes:
    """Prefix a payload with its 4-byte big-endian length."""
    return _LENGTH.pack(len(payload)) + payload


class FrameReader:
    """Splits a byte stream into payloads; feed bytes in, take whole frames out.

    A frame whose declared length exceeds the maximum raises E2BIG as soon as its header is
    seen, without buffering the body: the stream's framing is then lost and the caller must
    close the connection.
    """

    def __init__(self, max_bytes: int = params.MAX_FRAME_BYTES) -> None:
        self._buffer = bytearray()
        self._max_bytes = max_bytes

    def feed(self, data: bytes) -> None:
        """Append received bytes."""
        self._buffer += data

    def next_payload(self) -> bytes | None:
        """Return the next complete payload, or None until more bytes arrive."""
        if len(self._buffer) < HEADER_BYTES:
            return None
        (length,) = _LENGTH.unpack_from(self._buffer)
        if length > self._max_bytes:
            raise KernelError("E2BIG", f"frame of {length} bytes exceeds the {self._max_bytes}-byte limit")
        end = HEADER_BYTES + length
        if len(self._buffer) < end:
            return None
        payload = bytes(self._buffer[HEADER_BYTES:end])
        del self._buffer[:end]
        return payload

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as a payload (a truncated frame at EOF)."""
        return len(self._buffer)


class Request(NamedTuple):
    """A request that passed validation (a named tuple: built for every message, so cheap)."""

    id: int
    op: str
    args: dict[str, Any]


def parse_request(message: dict[str, Any]) -> Request:
    """Validate a decoded message as a request.

    Raises:
        KernelError: EINVAL naming the first field that is missing or of the wrong type.
    """
    version = message.get("v")
    if type(version) is not int or version != params.PROTOCOL_VERSION:
        raise KernelError("EINVAL", f"unsupported protocol version {version!r}; expected {params.PROTOCOL_VERSION}")
    request_id = message.get("id")
    if type(request_id) is not int:
        raise KernelError("EINVAL", "request field 'id' must be an integer")
    op = message.get("op")
    if not isinstance(op, str) or not op or len(op) > params.MAX_OP_NAME:
        raise KernelError("EINVAL", f"request field 'op' must be a name of 1..{params.MAX_OP_NAME} characters")
    args = message.get("args", {})
    if not isinstance(args, dict):
        raise KernelError("EINVAL", "request field 'args' must be a map")
    return Request(request_id, op, args)


def request_id_of(message: Any) -> int | None:
    """The id of a (possibly invalid) message, so an error reply can still name it."""
    if isinstance(message, dict) and type(message.get("id")) is int:
        return message["id"]
    return None


def make_request(request_id: int, op: str, args: dict[str, Any]) -> dict[str, Any]:
    """Build a request map."""
    return {"v": params.PROTOCOL_VERSION, "id": request_id, "op": op, "args": args}


def make_reply(request_id: int | None, result: Any) -> dict[str, Any]:
    """Build a success reply."""
    return {"v": params.PROTOCOL_VERSION, "id": request_id, "ok": True, "result": result}


def make_error(request_id: int | None, error: KernelError) -> dict[str, Any]:
    """Build an error reply."""
    return {"v": params.PROTOCOL_VERSION, "id": request_id, "ok": False, "error": error.to_wire()}


def parse_reply(message: dict[str, Any]) -> tuple[Any, Any]:
    """Split a reply into ``(id, outcome)``: the result, or the ``KernelError`` it carries."""
    request_id = message.get("id")
    if message.get("ok") is True:
        return request_id, message.get("result")
    error = message.get("error")
    if isinstance(error, dict) and error.get("errno") in ERRNO_NAMES and isinstance(error.get("message"), str):
        return request_id, KernelError(error["errno"], error["message"])
    return request_id, KernelError("EIO", f"malformed reply from peer: {message!r:.200}")
