"""Tensors read in place from a safetensors file in memory (drivers/safetensors_buffer.py)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load, save

from llmos.drivers.safetensors_buffer import load_buffer
from llmos.kernel.errors import KernelError

TENSORS = {
    "f32": torch.randn(3, 5), "f16": torch.randn(7).half(), "bf16": torch.randn(2, 2, 3).bfloat16(),
    "i64": torch.arange(11), "i8": torch.tensor([-3, 0, 7], dtype=torch.int8), "flag": torch.tensor([True, False]),
    "scalar": torch.tensor(2.5), "empty": torch.empty(0, 4),
}


def test_every_dtype_and_shape_reads_as_safetensors_reads_it():
    data = save(TENSORS, metadata={"format": "pt"})
    got, expected = load_buffer(bytearray(data)), load(data)
    assert got.keys() == expected.keys()
    for name, tensor in expected.items():
        assert got[name].dtype == tensor.dtype and got[name].shape == tensor.shape
        assert torch.equal(got[name], tensor), name


def test_tensors_are_views_of_the_buffer_not_copies():
    buffer = bytearray(save({"w": torch.zeros(64)}))
    tensor = load_buffer(buffer)["w"]
    base = torch.frombuffer(buffer, dtype=torch.uint8).data_ptr()
    assert base <= tensor.data_ptr() < base + len(buffer)
    buffer[-4:] = torch.tensor([1.5]).numpy().tobytes()  # the last float of the data
    assert tensor[-1].item() == 1.5


def malformed(header: object, data: bytes = b"\0" * 16, length: int | None = None) -> bytearray:
    raw = json.dumps(header).encode() if not isinstance(header, bytes) else header
    return bytearray((len(raw) if length is None else length).to_bytes(8, "little") + raw + data)


@pytest.mark.parametrize(("buffer", "why"), [
    (bytearray(b"\1\0\0"), "fewer than its 8-byte header length"),
    (malformed({}, length=1 << 40), "runs past"),
    (malformed(b"{not json"), "not JSON"),
    (malformed([1, 2]), "not a JSON object"),
    (malformed({"t": {"dtype": "F8", "shape": [1], "data_offsets": [0, 1]}}), "dtype 'F8'"),
    (malformed({"t": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}), "shape [-1]"),
    (malformed({"t": {"dtype": "F32", "shape": [1], "data_offsets": [0]}}), "data_offsets"),
    (malformed({"t": {"dtype": "F32", "shape": [8], "data_offsets": [0, 32]}}), "spans bytes 0..32 of 16"),
    (malformed({"t": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}), "(12 bytes) but 8 bytes"),
    (malformed({"t": "F32"}), "not an object"),
])
def test_a_malformed_file_is_einval_naming_what_is_wrong(buffer, why):
    with pytest.raises(KernelError) as err:
        load_buffer(buffer, "shard.safetensors")
    assert err.value.errno == "EINVAL" and "shard.safetensors" in err.value.message and why in err.value.message


def test_a_misaligned_tensor_is_copied_rather_than_refused():
    header = {"a": {"dtype": "I8", "shape": [1], "data_offsets": [0, 1]},
              "b": {"dtype": "F32", "shape": [2], "data_offsets": [1, 9]}}
    data = b"\x05" + torch.tensor([1.0, -2.0]).numpy().tobytes()
    raw = json.dumps(header).encode()
    raw += b" " * (-(8 + len(raw)) % 8)  # the data starts aligned; "b" inside it does not
    got = load_buffer(bytearray(len(raw).to_bytes(8, "little") + raw + data))
    assert got["a"].tolist() == [5] and got["b"].tolist() == [1.0, -2.0]
