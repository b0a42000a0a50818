"""The roofline cost model: a step takes as long as its memory traffic or its math, the larger.

For one step of a batch (argument names as in ``CostModel.step_seconds``)::

    bytes  = weight_bytes                              every weight is read once per step
           + context_tokens * kv_bytes_per_token       KV entries read by attention
           + num_tokens     * kv_bytes_per_token       KV entries written for the new tokens
    flops  = num_tokens * layer_flops_per_token        the blocks' linear layers (2 per weight)
           + num_seqs   * head_flops_per_token         the LM head, once per sampled sequence
           + attention_pairs * 4 * L * nh * hs         q.k and p*v for every causal query-key pair
    memory_s  = bytes / (mem_efficiency * mem_bandwidth)
    compute_s = flops / (compute_efficiency * peak)    peak: int8 ops/s for 1-byte weights
    step_s    = step_overhead_s + max(memory_s, compute_s)

The LM head counts once per sequence, not per token, because engines (ours included) compute
logits only where a token is sampled; for a decode step the two are the same.

Worked example, llama-2-7b (6.74e9 params, bf16) on an A100 (2.039e12 B/s, 312e12 FLOP/s, 0.8
and 0.6 efficiency, 0.1 ms overhead), one decode step at batch 1 with a context of 1 token:
memory moves 13.48e9 B in 13.48e9 / 1.63e12 = 8.26 ms; compute is 13.2e9 FLOP in
13.2e9 / 187e12 = 0.07 ms; so the step is memory-bound at 0.1 + 8.26 = 8.36 ms. A 2048-token
prefill (2048 * 2049 / 2 = 2.1e6 causal pairs) does 2048 * 12.95e9 + 2.1e6 * 524288 = 2.76e13
FLOP, 148 ms of compute against 9.6 ms of memory: compute-bound.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .devices import DeviceSpec
from .models import ModelShape


class RooflineCost:
    """Step times of ``model`` on ``device`` by the roofline above.

    Args:
        model: the model's shape; its ``dtype_bytes`` sizes weights and KV entries.
        device: the device's peaks, efficiencies and per-step overhead.
        dtype_bytes: overrides ``model.dtype_bytes`` (say 1 for int8 weights on an NPU).
    """

    def __init__(
        self, model: ModelShape, device: DeviceSpec, dtype_bytes: int | None = None
    ) -> None:
        if dtype_bytes is not None:
            model = dataclasses.replace(model, dtype_bytes=dtype_bytes)
        self.model = model
        self.device = device
        # Integer numerators, float rates: the numerators are exact whatever the grouping, so
        # decode_steps_seconds can fold constants and still match step_seconds bit for bit.
        self._weight_bytes = model.weight_bytes
        self._kv_bytes = model.kv_bytes_per_token
        self._layer_flops = model.layer_flops_per_token
        self._head_flops = model.head_flops_per_token
        self._pair_flops = model.attention_flops_per_pair
        self._mem_rate = device.mem_efficiency * device.mem_bandwidth  # bytes/s reached
        self._compute_rate = device.compute_efficiency * device.peak_ops(
            model.dtype_bytes
        )  # FLOP/s
        self._overhead = device.step_overhead_s

    def memory_seconds(self, num_tokens: int, context_tokens: int) -> float:
        """The memory side of the roofline for one step (no overhead)."""
        return (
            self._weight_bytes + (context_tokens + num_tokens) * self._kv_bytes
        ) / self._mem_rate

    def compute_seconds(self, num_seqs: int, num_tokens: int, attention_pairs: int) -> float:
        """The compute side of the roofline for one step (no overhead)."""
        flops = (
            num_tokens * self._layer_flops
            + num_seqs * self._head_flops
            + attention_pairs * self._pair_flops
        )
        return flops / self._compute_rate

    def step_seconds(
        self, num_seqs: int, num_tokens: int, context_tokens: int, attention_pairs: int
    ) -> float:
        """Modeled seconds of one step; see ``CostModel.step_seconds`` for the arguments."""
        memory = (
            self._weight_bytes + (context_tokens + num_tokens) * self._kv_bytes
        ) / self._mem_rate
        flops = (
            num_tokens * self._layer_flops
            + num_seqs * self._head_flops
            + attention_pairs * self._pair_flops
        )
        compute = flops / self._compute_rate
        return self._overhead + (memory if memory >= compute else compute)

    def decode_steps_seconds(
        self, num_seqs: int, context_tokens: int, num_steps: int
    ) -> list[float]:
        """Seconds of ``num_steps`` pure-decode steps; see ``CostModel.decode_steps_seconds``.

        Equal, float for float, to ``step_seconds(n, n, C + i*n, C + i*n)`` for each step i:
        every numerator below is an exact integer (the same integer step_seconds computes), then
        divided and combined exactly as there.
        """
        n = num_seqs
        kv, weight, mem_rate = self._kv_bytes, self._weight_bytes, self._mem_rate
        pair_flops, comp_rate, overhead = self._pair_flops, self._compute_rate, self._overhead
        linear = n * self._layer_flops + n * self._head_flops  # flops that do not grow with context
        out: list[float] = []
        append = out.append
        ctx = context_tokens
        for _ in range(num_steps):
            memory = (weight + (ctx + n) * kv) / mem_rate
            compute = (linear + ctx * pair_flops) / comp_rate
            append(overhead + (memory if memory >= compute else compute))
            ctx += n
        return out

    def describe(self) -> dict[str, Any]:
        """A spec ``make_cost_model`` accepts, plus derived figures for reports."""
        return {
            "kind": "roofline",
            "model": self.model.to_dict(),
            "device": self.device.to_dict(),
            "dtype_bytes": self.model.dtype_bytes,
            "derived": {
                "weight_bytes": self._weight_bytes,
                "kv_bytes_per_token": self._kv_bytes,
                "weights_fit": self._weight_bytes <= self.device.memory_bytes,
                "mem_rate_bytes_per_s": self._mem_rate,
                "compute_rate_flops_per_s": self._compute_rate,
            },
        }
