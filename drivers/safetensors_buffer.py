"""Tensors that are views of a safetensors file held in memory: a decrypted shard, loaded once.

``safetensors.torch.load`` takes ``bytes`` and copies every tensor out of them, so a shard
decrypted in memory (drivers/sealed.py) would be held twice, three times counting the decrypted
chunks, while it loads. The format is simple enough to read in place::

    +-----------------+---------------------------+-------------------------------------+
    | N: u64 (LE)     | header: N bytes of JSON   | tensor data, little-endian, packed  |
    +-----------------+---------------------------+-------------------------------------+
    header = {"name": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}, ...,
              "__metadata__": {...}}          offsets are relative to the start of the data

``load_buffer`` checks the header against the buffer (offsets inside the data, sizes equal to
shape x dtype) and returns ``torch.frombuffer`` views: the tensors share the buffer's memory
and keep it alive. A tensor whose offset is not aligned to its dtype is copied instead; on a
big-endian host the whole file goes through ``safetensors.torch.load``.
"""

from __future__ import annotations

import json
import math
import sys
from typing import Any

import torch

from llmos.kernel.errors import KernelError

MAX_HEADER_BYTES = 100 << 20  # safetensors' own limit: a larger header is a damaged file
DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


def load_buffer(buffer: bytearray, name: str = "safetensors data") -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file held in ``buffer``, as views of it where possible.

    Raises:
        KernelError: EINVAL naming ``name`` and what is wrong, for a buffer that is not a valid
            safetensors file (a short or oversized header, bad JSON, an unknown dtype, a shape
            that does not match its byte range, a range outside the data).
    """
    def invalid(why: str) -> KernelError:
        return KernelError("EINVAL", f"{name} is not a valid safetensors file: {why}")

    if sys.byteorder != "little":
        return _load_copy(buffer, invalid)
    if len(buffer) < 8:
        raise invalid(f"{len(buffer)} bytes, fewer than its 8-byte header length")
    header_bytes = int.from_bytes(buffer[:8], "little")
    if header_bytes > min(MAX_HEADER_BYTES, len(buffer) - 8):
        raise invalid(f"its header length {header_bytes} runs past the {len(buffer)} bytes")
    try:
        header = json.loads(bytes(buffer[8 : 8 + header_bytes]))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise invalid(f"its header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise invalid("its header is not a JSON object")
    start = 8 + header_bytes
    data_bytes = len(buffer) - start
    view = memoryview(buffer)
    tensors: dict[str, torch.Tensor] = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        dtype, shape, begin, end = _entry(key, info, invalid)
        if not 0 <= begin <= end <= data_bytes:
            raise invalid(f"tensor {key!r} spans bytes {begin}..{end} of {data_bytes} bytes of data")
        itemsize = torch.empty((), dtype=dtype).element_size()
        count = math.prod(shape)
        if (end - begin) != count * itemsize:
            raise invalid(f"tensor {key!r} has shape {shape} of {dtype} ({count * itemsize} bytes) "
                          f"but {end - begin} bytes of data")
        tensors[key] = _tensor(view, start + begin, count, dtype, itemsize).reshape(shape)
    return tensors


def _entry(key: str, info: Any, invalid: Any) -> tuple[torch.dtype, list[int], int, int]:
    if not isinstance(info, dict):
        raise invalid(f"tensor {key!r} is described by {type(info).__name__}, not an object")
    dtype = DTYPES.get(info.get("dtype"))  # type: ignore[arg-type]
    if dtype is None:
        raise invalid(f"tensor {key!r} has dtype {info.get('dtype')!r}; known: {', '.join(DTYPES)}")
    shape, offsets = info.get("shape"), info.get("data_offsets")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise invalid(f"tensor {key!r} has shape {shape!r}, not a list of sizes")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(type(o) is int for o in offsets):
        raise invalid(f"tensor {key!r} has data_offsets {offsets!r}, not [begin, end]")
    return dtype, shape, offsets[0], offsets[1]


def _tensor(view: memoryview, offset: int, count: int, dtype: torch.dtype, itemsize: int) -> torch.Tensor:
    if count == 0:
        return torch.empty(0, dtype=dtype)
    if offset % itemsize:  # misaligned: a copy of its own
        return torch.frombuffer(bytearray(view[offset : offset + count * itemsize]), dtype=dtype, count=count)
    return torch.frombuffer(view, dtype=dtype, count=count, offset=offset)  # a view: no copy


def _load_copy(buffer: bytearray, invalid: Any) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        return load(bytes(buffer))
    except SafetensorError as exc:
        raise invalid(str(exc)) from None
