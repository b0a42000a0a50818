"""The wire format: framing, decoding limits, request validation."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmos.kernel import codec, params
from llmos.kernel.errors import KernelError

json_like = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False) | st.text(max_size=20) | st.binary(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@given(st.dictionaries(st.text(max_size=8), json_like, max_size=6))
def test_encode_decode_round_trip(message):
    try:
        codec.check_depth(message)
    except KernelError:
        return
    assert codec.decode(codec.encode(message)) == message


@given(st.lists(st.binary(max_size=300), max_size=8), st.integers(1, 50))
def test_frame_reader_reassembles_frames_split_anywhere(payloads, chunk):
    stream = b"".join(codec.frame(p) for p in payloads)
    reader = codec.FrameReader()
    out = []
    for i in range(0, len(stream), chunk):
        reader.feed(stream[i : i + chunk])
        while (payload := reader.next_payload()) is not None:
            out.append(payload)
    assert out == payloads
    assert reader.buffered == 0


def test_oversize_frame_is_refused_from_its_header():
    reader = codec.FrameReader(max_bytes=100)
    reader.feed((101).to_bytes(4, "big"))
    with pytest.raises(KernelError) as err:
        reader.next_payload()
    assert err.value.errno == "E2BIG"


@pytest.mark.parametrize(
    "payload, fragment",
    [
        (b"\xc1", "not valid msgpack"),
        (msgpack.packb([1, 2, 3]), "must be a msgpack map"),
        (msgpack.packb("hello"), "must be a msgpack map"),
        (msgpack.packb({1: 2}), "not valid msgpack"),  # non-string keys are refused
        (msgpack.packb({"a": 1}) + b"\x00", "not valid msgpack"),  # trailing bytes
    ],
)
def test_bad_payloads_are_einval(payload, fragment):
    with pytest.raises(KernelError) as err:
        codec.decode(payload)
    assert err.value.errno == "EINVAL"
    assert fragment in err.value.message


def test_deep_nesting_is_einval():
    deep: dict = {}
    node = deep
    for _ in range(params.MAX_MESSAGE_DEPTH + 2):
        node["x"] = {}
        node = node["x"]
    with pytest.raises(KernelError, match="deeper"):
        codec.decode(codec.encode(deep))


@pytest.mark.parametrize(
    "message, field",
    [
        ({"id": 1, "op": "ps", "args": {}}, "version"),
        ({"v": 1, "op": "ps", "args": {}}, "'id'"),
        ({"v": 1, "id": "1", "op": "ps", "args": {}}, "'id'"),
        ({"v": 1, "id": True, "op": "ps", "args": {}}, "'id'"),
        ({"v": 1, "id": 1, "args": {}}, "'op'"),
        ({"v": 1, "id": 1, "op": "", "args": {}}, "'op'"),
        ({"v": 1, "id": 1, "op": "x" * 65, "args": {}}, "'op'"),
        ({"v": 1, "id": 1, "op": "ps", "args": [1]}, "'args'"),
    ],
)
def test_parse_request_names_the_bad_field(message, field):
    with pytest.raises(KernelError) as err:
        codec.parse_request(message)
    assert err.value.errno == "EINVAL"
    assert field in err.value.message


def test_parse_reply_returns_the_error_it_carries():
    _, outcome = codec.parse_reply(codec.make_error(7, KernelError("ESRCH", "no process 7")))
    assert isinstance(outcome, KernelError) and outcome.errno == "ESRCH"
    _, outcome = codec.parse_reply({"v": 1, "id": 7, "ok": False, "error": "boom"})
    assert outcome.errno == "EIO"
