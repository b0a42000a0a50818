"""Choosing next tokens from logits: greedy, temperature, top-k, top-p. Stateless by design.

The random draw for one token is derived from ``(seed, sample_index)`` alone: a fresh
``torch.Generator`` is seeded from a 64-bit mix of both, and one uniform number is drawn and
inverted through the filtered distribution's CDF. So a process's tokens are the same whether it
ran alone or in a batch of 64, on the first try or after preemption and recompute. The draw
happens on the CPU in float64, so the same logits give the same token on every device.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from llmos.kernel.batch import SamplingParams
from llmos.kernel.errors import KernelError

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    # SplitMix64's finaliser: neighbouring inputs map to unrelated outputs.
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def draw_seed(seed: int, sample_index: int) -> int:
    """The generator seed of the token at ``sample_index`` of a process seeded with ``seed``."""
    return _splitmix64(_splitmix64(seed & _MASK64) ^ (sample_index & _MASK64))


def uniform_draw(seed: int, sample_index: int) -> float:
    """The one uniform number in [0, 1) that decides this token."""
    gen = torch.Generator(device="cpu")
    gen.manual_seed(draw_seed(seed, sample_index))
    return float(torch.rand((), generator=gen, dtype=torch.float64))


def check_params(params: SamplingParams) -> None:
    """Raise KernelError EINVAL for out-of-range sampling parameters."""
    if not params.temperature >= 0.0:  # also rejects NaN
        raise KernelError("EINVAL", f"sampling: temperature {params.temperature} must be >= 0")
    if params.top_k < 0:
        raise KernelError("EINVAL", f"sampling: top_k {params.top_k} must be >= 0")
    if not 0.0 < params.top_p <= 1.0:
        raise KernelError("EINVAL", f"sampling: top_p {params.top_p} must be in (0, 1]")
    if params.sample_index < 0:
        raise KernelError("EINVAL", f"sampling: sample_index {params.sample_index} must be >= 0")


def filtered_probs(
    logits: torch.Tensor, params: SamplingParams
) -> tuple[torch.Tensor, torch.Tensor]:
    """The distribution sampled from: (probs, token ids), both (K,), most likely first.

    Temperature scales logits; top-k keeps the k largest; top-p keeps the smallest prefix whose
    probability reaches top_p (at least one token). Ties are broken by the lower token id, so
    the order, and therefore the draw, is reproducible.
    """
    scaled = logits.double() / params.temperature  # (V,)
    order = torch.argsort(-scaled, stable=True)  # (V,) descending, lower id first on ties
    sorted_logits = scaled[order]
    if 0 < params.top_k < sorted_logits.shape[0]:
        sorted_logits, order = sorted_logits[: params.top_k], order[: params.top_k]
    probs = torch.softmax(sorted_logits, dim=0)  # (K,)
    if params.top_p < 1.0:
        before = torch.cumsum(probs, dim=0) - probs  # mass strictly before each token
        keep = int((before < params.top_p).sum())  # >= 1, since before[0] == 0
        probs, order = probs[:keep], order[:keep]
        probs = probs / probs.sum()
    return probs, order


def sample_one(logits: torch.Tensor, params: SamplingParams) -> int:
    """Choose the next token from logits (V,) of one sequence.

    Temperature 0 is greedy: the argmax, lowest id on ties, with no randomness at all.
    """
    check_params(params)
    if params.temperature == 0.0:
        return int(torch.argmax(logits))
    probs, ids = filtered_probs(logits.detach().to("cpu"), params)
    u = uniform_draw(params.seed, params.sample_index)
    cdf = torch.cumsum(probs, dim=0)
    # The first token whose cumulative mass exceeds u; clamp guards a cdf that ends below 1.
    index = min(
        int(torch.searchsorted(cdf, torch.tensor([u], dtype=cdf.dtype), right=True)), len(ids) - 1
    )
    return int(ids[index])


def sample_batch(logits: torch.Tensor, params: Sequence[SamplingParams]) -> list[int]:
    """Choose one token per row of logits (N, V), each row with its own parameters.

    Greedy rows share one argmax on the device (one transfer for the whole group); random rows
    are sampled one by one, because each has its own generator.
    """
    if logits.shape[0] != len(params):
        raise KernelError(
            "EINVAL", f"sampling: {logits.shape[0]} rows of logits, {len(params)} params"
        )
    for p in params:
        check_params(p)
    tokens: list[int] = [0] * len(params)
    greedy = [i for i, p in enumerate(params) if p.temperature == 0.0]
    if greedy:
        picks = torch.argmax(logits[greedy], dim=-1).tolist()
        for i, token in zip(greedy, picks, strict=True):
            tokens[i] = int(token)
    rest = [i for i, p in enumerate(params) if p.temperature != 0.0]
    if rest:
        host = logits[rest].to("cpu")  # one transfer for all random rows
        for row, i in enumerate(rest):
            tokens[i] = sample_one(host[row], params[i])
    return tokens
