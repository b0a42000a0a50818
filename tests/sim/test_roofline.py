"""The roofline cost model: the issue's hand check, regimes, and the exact decode fast path."""

from __future__ import annotations

import itertools

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmos.sim.costmodel import CostModel, make_cost_model
from llmos.sim.devices import PRESETS as DEVICES
from llmos.sim.devices import load_device
from llmos.sim.models import PRESETS as MODELS
from llmos.sim.models import load_model_shape
from llmos.sim.roofline import RooflineCost


def pairs(start: int, num_new: int) -> int:
    """Causal query-key pairs of a chunk of num_new tokens starting at position start."""
    return num_new * start + num_new * (num_new + 1) // 2


def cost(model: str = "llama-2-7b", device: str = "a100", **kw) -> RooflineCost:
    return RooflineCost(load_model_shape(model), load_device(device), **kw)


def test_decode_batch_1_is_weight_bytes_over_effective_bandwidth() -> None:
    """The issue's hand check: llama-2-7b on an A100, one decode step at batch 1, within 5%."""
    c = cost()
    formula = c.model.weight_bytes / (c.device.mem_efficiency * c.device.mem_bandwidth)
    modeled = c.step_seconds(1, 1, 1, 1)
    assert formula == pytest.approx(8.262e-3, rel=1e-3)
    assert modeled == pytest.approx(formula, rel=0.05)
    assert modeled > formula  # overhead and the KV entry only add


def test_module_docstring_worked_example() -> None:
    c = cost()
    assert c.step_seconds(1, 1, 1, 1) == pytest.approx(8.36e-3, rel=2e-3)
    q = 2048
    assert c.step_seconds(1, q, q, pairs(0, q)) == pytest.approx(0.148, rel=5e-3)
    assert c.memory_seconds(q, q) == pytest.approx(9.6e-3, rel=5e-3)


def test_decode_is_memory_bound_and_long_prefill_compute_bound() -> None:
    c = cost()
    assert c.memory_seconds(1, 1) > 50 * c.compute_seconds(1, 1, 1)
    ctx = 32 * 1024  # batch 32, 1024 tokens of context each: still memory-bound, KV now matters
    assert c.memory_seconds(32, ctx) > c.compute_seconds(32, 32, ctx)
    assert c.memory_seconds(32, ctx) > 1.5 * c.memory_seconds(1, 1)
    q = 2048
    assert c.compute_seconds(1, q, pairs(0, q)) > 10 * c.memory_seconds(q, q)
    step = c.step_seconds(1, q, q, pairs(0, q))
    assert step == c.device.step_overhead_s + c.compute_seconds(1, q, pairs(0, q))


def test_ridge_point_between_decode_and_prefill() -> None:
    """An A100 turns compute-bound at ~115 tokens per step (its effective FLOP:byte ratio)."""
    c = cost()
    bound = [c.compute_seconds(1, n, pairs(0, n)) > c.memory_seconds(n, n) for n in range(1, 1024)]
    ridge = bound.index(True) + 1
    assert 50 < ridge < 300
    assert all(bound[ridge - 1 :])


def test_faster_device_is_faster() -> None:
    for args in ((1, 1, 1, 1), (32, 32, 32 * 1024, 32 * 1024), (1, 2048, 2048, pairs(0, 2048))):
        a100, h100, h200 = (cost(device=d).step_seconds(*args) for d in ("a100", "h100", "h200"))
        assert h200 <= h100 < a100


def test_more_work_never_takes_less_time() -> None:
    c = cost("llama-3-8b", "h100")
    base = (8, 100, 5000, 20000)
    for i in range(4):
        more = list(base)
        more[i] *= 2
        assert c.step_seconds(*more) >= c.step_seconds(*base)


def test_int8_override_uses_the_int8_rate_and_halves_bytes() -> None:
    fp16 = cost("qwen2.5-0.5b", "npu-phone")
    int8 = cost("qwen2.5-0.5b", "npu-phone", dtype_bytes=1)
    assert int8.model.weight_bytes * 2 == fp16.model.weight_bytes
    assert int8.model.kv_bytes_per_token * 2 == fp16.model.kv_bytes_per_token
    q = 512
    assert int8.compute_seconds(1, q, pairs(0, q)) * 2 == pytest.approx(
        fp16.compute_seconds(1, q, pairs(0, q))
    )
    assert int8.memory_seconds(1, 1) < fp16.memory_seconds(1, 1)


CASES = [
    (1, 1, 1),
    (1, 1, 200),
    (32, 32 * 1024, 64),
    (7, 12345, 333),
    (256, 256 * 3000, 10),
    (3, 5, 0),
]


@pytest.mark.parametrize(("model", "device"), list(itertools.product(MODELS, DEVICES)))
def test_decode_steps_equal_step_loop_exactly(model: str, device: str) -> None:
    c = cost(model, device)
    for n, ctx, steps in CASES:
        loop = [c.step_seconds(n, n, ctx + i * n, ctx + i * n) for i in range(steps)]
        assert c.decode_steps_seconds(n, ctx, steps) == loop  # exact, float for float


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(1, 512),
    ctx=st.integers(1, 1 << 22),
    steps=st.integers(0, 40),
    model=st.sampled_from(sorted(MODELS)),
    device=st.sampled_from(sorted(DEVICES)),
    dtype_bytes=st.sampled_from([None, 1, 4]),
)
def test_decode_steps_equal_step_loop_property(n, ctx, steps, model, device, dtype_bytes) -> None:
    c = cost(model, device, dtype_bytes=dtype_bytes)
    loop = [c.step_seconds(n, n, ctx + i * n, ctx + i * n) for i in range(steps)]
    assert c.decode_steps_seconds(n, ctx, steps) == loop


def test_describe_is_a_spec_that_rebuilds_the_model() -> None:
    c = cost("llama-2-70b", "h200")
    spec = c.describe()
    assert spec["kind"] == "roofline" and spec["derived"]["weights_fit"]
    assert not cost("llama-2-70b", "a100").describe()["derived"]["weights_fit"]  # 138 GB > 80 GiB
    wire = msgpack.unpackb(msgpack.packb(spec))
    again = make_cost_model(wire)
    assert isinstance(again, CostModel)
    assert again.step_seconds(4, 100, 9000, 30000) == c.step_seconds(4, 100, 9000, 30000)
