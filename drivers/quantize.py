"""int8 weights: per-output-channel min-max (asymmetric) quantization, for the emulated npu.

Each output channel (row) of a weight matrix ``W (out, in)`` is quantized on its own range::

    Q(x)  = round((x - x_min) / (x_max - x_min) * (2^b - 1))     b = 8, stored as uint8 in [0, 255]
    scale = (x_max - x_min) / (2^b - 1)                           float32, one per row
    zero  = x_min                                                 float32, one per row
    x    ~= Q * scale + zero                                      |error| <= scale / 2

A constant row (x_max == x_min) has scale 0: every Q is 0 and ``zero`` alone restores it exactly,
so nothing is ever divided by zero.

Only weights are quantized (W8A32: activations and the KV cache stay in the engine's dtype).
``QuantizedLinear`` keeps uint8 storage and dequantizes its matrix for each matmul: correctness
first, and the host is only emulating the device, so the extra host work is not device time.
The embedding table is quantized the same way (one channel per token row); with tied
embeddings the head shares that storage, as it shares the float matrix in the unquantized model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from llmos.kernel.errors import KernelError

BITS = 8
QMAX = 2**BITS - 1  # the largest code: 255


@dataclass(frozen=True)
class QuantizedTensor:
    """A (out, in) matrix as uint8 codes with a scale and a zero point per output row."""

    q: torch.Tensor  # (out, in) uint8 codes in [0, QMAX]
    scale: torch.Tensor  # (out,) float32: (x_max - x_min) / QMAX; 0 for a constant row
    zero: torch.Tensor  # (out,) float32: x_min of each row

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The (out, in) matrix ``Q * scale + zero`` in ``dtype``."""
        w = self.q.float() * self.scale[:, None] + self.zero[:, None]  # (out, in)
        return w.to(dtype)

    def rows(self, ids: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Rows ``ids`` (T,) dequantized -> (T, in): an embedding lookup without the full table."""
        w = self.q[ids].float() * self.scale[ids, None] + self.zero[ids, None]  # (T, in)
        return w.to(dtype)

    @property
    def nbytes(self) -> int:
        """Bytes the device stores: the codes plus the float32 scale and zero of each row."""
        return sum(t.numel() * t.element_size() for t in (self.q, self.scale, self.zero))


def quantize_per_channel(weight: torch.Tensor) -> QuantizedTensor:
    """Quantize a (out, in) matrix row by row with the min-max rule of this module's docstring.

    Raises:
        KernelError: EINVAL for a tensor that is not 2-D or holds NaN or infinity.
    """
    if weight.dim() != 2:
        raise KernelError("EINVAL", f"quantize: expected a 2-D weight, got shape {tuple(weight.shape)}")
    w = weight.detach().float()  # (out, in)
    if not torch.isfinite(w).all():
        raise KernelError("EINVAL", "quantize: the weight holds NaN or infinity")
    x_min = w.amin(dim=1)  # (out,)
    x_max = w.amax(dim=1)
    span = x_max - x_min
    # A constant row has span 0: divide by 1 instead, which maps every element to code 0.
    safe = torch.where(span > 0, span, torch.ones_like(span))
    codes = torch.round((w - x_min[:, None]) / safe[:, None] * QMAX)
    q = codes.clamp_(0, QMAX).to(torch.uint8)  # clamp: float rounding may land a hair past QMAX
    return QuantizedTensor(q, span / QMAX, x_min)


class QuantizedLinear(nn.Module):
    """``nn.Linear`` over int8 weights: the matrix is dequantized for each matmul."""

    def __init__(self, weight: QuantizedTensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.weight_q = weight
        self.out_features, self.in_features = weight.q.shape
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in) -> (..., out)."""
        return F.linear(x, self.weight_q.dequantize(x.dtype), None if self.bias is None else self.bias.to(x.dtype))


class QuantizedEmbedding(nn.Module):
    """``nn.Embedding`` over int8 rows: only the looked-up rows are dequantized."""

    def __init__(self, weight: QuantizedTensor, dtype: torch.dtype) -> None:
        super().__init__()
        self.weight_q = weight
        self.dtype = dtype  # the activation dtype the rest of the model computes in

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (T,) -> (T, C)."""
        return self.weight_q.rows(ids, self.dtype)


def quantize_model(model: nn.Module) -> nn.Module:
    """Replace every ``nn.Linear`` and ``nn.Embedding`` of ``model`` in place by its int8 form.

    A matrix shared by two modules (tied embeddings: ``lm_head.weight is embed_tokens.weight``)
    is quantized once and shared, so it is stored once. Returns ``model``.
    """
    # id of a float weight -> (that weight, its quantized form); holding the weight keeps its
    # id from being reused by a new object while the loop replaces modules.
    done: dict[int, tuple[torch.Tensor, QuantizedTensor]] = {}

    def quantized(weight: torch.Tensor) -> QuantizedTensor:
        if id(weight) not in done:
            done[id(weight)] = (weight, quantize_per_channel(weight))
        return done[id(weight)][1]

    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                setattr(parent, name, QuantizedLinear(quantized(child.weight), child.bias))
            elif isinstance(child, nn.Embedding):
                setattr(parent, name, QuantizedEmbedding(quantized(child.weight), child.weight.dtype))
    return model


def stored_bytes(model: nn.Module) -> int:
    """Bytes of every distinct tensor the model holds: int8 codes, scales, zeros, float params.

    Shared storage (a tied head) is counted once, as the device would hold it once.
    """
    tensors: list[torch.Tensor] = list(model.parameters()) + list(model.buffers())
    for module in model.modules():
        weight_q = getattr(module, "weight_q", None)
        if isinstance(weight_q, QuantizedTensor):
            tensors += [weight_q.q, weight_q.scale, weight_q.zero]
    seen: dict[int, int] = {}
    for t in tensors:
        seen[t.data_ptr()] = max(seen.get(t.data_ptr(), 0), t.numel() * t.element_size())
    return sum(seen.values())
