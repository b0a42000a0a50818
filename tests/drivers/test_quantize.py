"""int8 per-output-channel min-max quantization: codes in range, error within half a step,
constant rows exact, and a quantized model that stores each matrix once in a quarter of the bytes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from model_fixtures import write_checkpoint

from llmos.drivers.checkpoint import load_checkpoint
from llmos.drivers.model import Transformer
from llmos.drivers.quantize import (
    QMAX,
    QuantizedEmbedding,
    QuantizedLinear,
    quantize_model,
    quantize_per_channel,
    stored_bytes,
)
from llmos.kernel.errors import KernelError

FLOAT32_EPS = float(np.finfo(np.float32).eps)

matrices = st.tuples(st.integers(1, 8), st.integers(1, 24)).flatmap(
    lambda shape: arrays(np.float32, shape, elements=st.floats(-1e3, 1e3, width=32, allow_subnormal=False))
)


@settings(max_examples=300, deadline=None)
@given(matrices)
def test_codes_are_in_range_and_error_is_at_most_half_a_step(matrix):
    w = torch.from_numpy(matrix)
    qt = quantize_per_channel(w)
    assert qt.q.dtype == torch.uint8 and qt.q.shape == w.shape
    assert int(qt.q.min()) >= 0 and int(qt.q.max()) <= QMAX
    error = (qt.dequantize() - w).abs()  # (out, in)
    row_max = w.abs().amax(dim=1, keepdim=True)
    # Half a step, plus float32 rounding: of the code (a few ulps of 255) and of Q * scale + zero.
    bound = qt.scale[:, None] * (0.5 + 1e-4) + 4 * FLOAT32_EPS * row_max
    assert bool((error <= bound).all()), float((error - bound).max())


@given(arrays(np.float32, st.integers(1, 16), elements=st.floats(-1e3, 1e3, width=32)))
def test_a_constant_row_has_scale_zero_and_comes_back_exactly(row):
    w = torch.from_numpy(row)[None, :].expand(3, -1).clone()
    w[1] = float(row[0])  # one row constant whatever the draw
    qt = quantize_per_channel(w)
    assert float(qt.scale[1]) == 0.0 and int(qt.q[1].max()) == 0
    assert torch.equal(qt.dequantize()[1], w[1])


def test_min_and_max_of_each_row_map_to_codes_0_and_255():
    w = torch.tensor([[-2.0, 0.0, 6.0], [1.0, 3.0, 2.0]])
    qt = quantize_per_channel(w)
    assert qt.q.tolist() == [[0, 64, 255], [0, 255, 128]]  # round(2/8*255)=64, round(127.5)=128
    assert torch.allclose(qt.scale, torch.tensor([8 / 255, 2 / 255]))
    assert qt.zero.tolist() == [-2.0, 1.0]


@pytest.mark.parametrize("bad", [torch.tensor([[1.0, float("nan")]]), torch.tensor([[float("inf"), 0.0]]), torch.ones(3)])
def test_non_finite_or_non_matrix_weights_are_einval(bad):
    with pytest.raises(KernelError) as err:
        quantize_per_channel(bad)
    assert err.value.errno == "EINVAL"


def test_quantized_linear_is_the_float_matmul_of_the_dequantized_weight():
    gen = torch.Generator().manual_seed(0)
    linear = torch.nn.Linear(16, 8)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(8, 16, generator=gen))
    x = torch.randn(5, 16, generator=gen)
    qt = quantize_per_channel(linear.weight)
    quantized = QuantizedLinear(qt, linear.bias)
    assert torch.allclose(quantized(x), F.linear(x, qt.dequantize(), linear.bias))
    # Each weight is off by at most scale/2, so each output by at most sum |x| * scale / 2.
    bound = x.abs().sum(dim=1, keepdim=True) * qt.scale[None, :] / 2 + 1e-4
    assert bool(((quantized(x) - linear(x)).abs() <= bound).all())


def test_quantize_model_shares_a_tied_head_and_stores_a_quarter_of_the_bytes(tmp_path):
    write_checkpoint(tmp_path, tie_word_embeddings=True)
    model = Transformer.from_checkpoint(load_checkpoint(tmp_path), torch.device("cpu"), torch.float32)
    float_bytes = stored_bytes(model)
    quantize_model(model)
    assert isinstance(model.embed_tokens, QuantizedEmbedding) and isinstance(model.lm_head, QuantizedLinear)
    assert model.lm_head.weight_q is model.embed_tokens.weight_q  # one int8 table, as one float table
    assert not any(isinstance(m, torch.nn.Linear) for m in model.modules())
    assert float_bytes / 4 < stored_bytes(model) < float_bytes / 3  # int8 codes plus scales, norms
