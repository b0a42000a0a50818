"""TorchEngine: the synchronous compute engine that the cpu and cuda drivers wrap.

It holds one model and one paged KV pool, and runs one ``StepBatch`` at a time::

    batch --build_metadata--> slots, masks      (once per step)
          --embed + L x block--> hidden (T, C)   (one matmul per linear layer for all T tokens)
          --last token of each sampled seq--> lm_head (N, V) --sampling--> N tokens

The driver server (IPC, grants, threads) lives elsewhere; this class knows nothing of messages.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from llmos.drivers.checkpoint import load_checkpoint, num_parameters
from llmos.drivers.kv_cache import PagedKVCache
from llmos.drivers.model import DenseCausalAttend, RotaryEmbedding, Transformer
from llmos.drivers.paged_attention import PagedAttend, build_metadata
from llmos.drivers.sampling import check_params, sample_batch
from llmos.drivers.sealed import ModelFiles
from llmos.kernel.batch import StepBatch, StepResult
from llmos.kernel.errors import KernelError


@dataclass
class StepOutput:
    """A step's result plus the logits it sampled from (for tests and oracles)."""

    result: StepResult
    logits: torch.Tensor  # (N, V) float32: one row per sampled sequence, or per token if asked


class TorchEngine:
    """A model, its rotary tables and a paged KV pool on one torch device.

    Args:
        device: a torch device string ("cpu", "cuda", "cuda:1").
        dtype: weight, activation and KV dtype; logits and sampling are always float32 or wider.
    """

    def __init__(self, device: str = "cpu", dtype: torch.dtype = torch.float32) -> None:
        self.device = torch.device(device)
        self.dtype = dtype
        self.model: Transformer | None = None
        self.rope: RotaryEmbedding | None = None
        self.kv: PagedKVCache | None = None
        self.info: dict[str, Any] = {}

    # -- model ---------------------------------------------------------------------------------

    def load_model(self, path: str | Path | ModelFiles) -> dict[str, Any]:
        """Load a Hugging Face-format checkpoint directory; replaces any loaded model and KV pool.

        ``path`` may be a ``ModelFiles`` reader, which decrypts a sealed (encrypted) version of
        the model store in memory; the tokenizer path it reports is then of a sealed file.

        Returns:
            A msgpack-friendly dict: num_params, weight_bytes, vocab_size, eos_token_ids,
            kv_bytes_per_token, tokenizer (path or None) and config (a summary).

        Raises:
            KernelError: ENOENT, EINVAL or EACCES (a sealed file refused) from ``load_checkpoint``;
                ENOMEM if the weights do not fit on the device.
        """
        ckpt = load_checkpoint(path)
        self.unload_model()
        try:
            model = Transformer.from_checkpoint(ckpt, self.device, self.dtype)
        except torch.OutOfMemoryError as exc:
            raise KernelError("ENOMEM", f"{path}: weights do not fit on {self.device}") from exc
        cfg = ckpt.config
        self.model = model
        self.rope = RotaryEmbedding(cfg, self.device)
        element = torch.empty((), dtype=self.dtype).element_size()
        num_params = num_parameters(ckpt.state_dict)
        self.info = {
            "num_params": num_params,
            "weight_bytes": num_params * element,
            "vocab_size": cfg.vocab_size,
            "eos_token_ids": list(cfg.eos_token_ids),
            "kv_bytes_per_token": 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * element,
            "tokenizer": str(ckpt.tokenizer_path) if ckpt.tokenizer_path else None,
            "config": cfg.summary(),
        }
        return dict(self.info)

    def unload_model(self) -> None:
        """Drop the model and its KV pool (the pool's layout depends on the model)."""
        self.model = self.rope = self.kv = None
        self.info = {}
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _require_model(self, op: str) -> Transformer:
        if self.model is None:
            raise KernelError("ENOENT", f"{op}: no model loaded")
        return self.model

    def _require_kv(self, op: str) -> PagedKVCache:
        self._require_model(op)
        if self.kv is None:
            raise KernelError("EINVAL", f"{op}: KV cache not initialised (call init_kv first)")
        return self.kv

    # -- KV pool -------------------------------------------------------------------------------

    def init_kv(self, num_blocks: int, block_size: int) -> dict[str, Any]:
        """Allocate (or reallocate, discarding contents) the KV pool for the loaded model.

        Returns:
            {"num_blocks", "block_size", "bytes", "bytes_per_block"}.
        """
        model = self._require_model("init_kv")
        cfg = model.cfg
        self.kv = None  # free the old pool before allocating the new one
        self.kv = PagedKVCache(
            cfg.num_layers,
            cfg.num_kv_heads,
            cfg.head_dim,
            num_blocks,
            block_size,
            self.device,
            self.dtype,
        )
        return {
            "num_blocks": num_blocks,
            "block_size": block_size,
            "bytes": self.kv.nbytes,
            "bytes_per_block": self.kv.bytes_per_block,
        }

    def copy_blocks(self, pairs: list[tuple[int, int]]) -> None:
        """Copy KV block src onto dst for each (src, dst) pair (copy-on-write)."""
        self._require_kv("copy_blocks").copy_blocks(pairs)

    def zero_blocks(self, block_ids: list[int]) -> None:
        """Zero KV blocks."""
        self._require_kv("zero_blocks").zero_blocks(block_ids)

    def swap_out(self, block_ids: list[int]) -> list[torch.Tensor]:
        """Copy KV blocks to host memory, one tensor per block."""
        return self._require_kv("swap_out").swap_out(block_ids)

    def swap_in(self, block_ids: list[int], tensors: list[torch.Tensor]) -> None:
        """Write host copies from ``swap_out`` into device blocks."""
        self._require_kv("swap_in").swap_in(block_ids, tensors)

    # -- compute -------------------------------------------------------------------------------

    def step(self, batch: StepBatch) -> StepResult:
        """Run one mixed prefill/decode step and sample a token for each ``sample`` sequence."""
        return self.step_with_logits(batch).result

    def step_with_logits(self, batch: StepBatch, all_positions: bool = False) -> StepOutput:
        """``step``, also returning logits: of sampled sequences, or of every token if asked.

        ``all_positions`` computes the head on every token, which the normal path avoids; it
        exists so tests can compare each prefill position against a reference model.

        Raises:
            KernelError: ENOENT without a model; EINVAL without a KV pool, for a block_size that
                differs from the pool's, a token id outside the vocabulary, or a bad block table.
        """
        kv = self._require_kv("step")
        model, rope = self._require_model("step"), self.rope
        assert rope is not None  # set together with the model
        if batch.block_size != kv.block_size:
            raise KernelError(
                "EINVAL", f"step: block_size {batch.block_size} != pool's {kv.block_size}"
            )
        t0 = time.perf_counter()
        if not batch.seqs:
            return StepOutput(StepResult([], 0.0, 0.0), torch.empty(0, model.cfg.vocab_size))
        flat = [t for s in batch.seqs for t in s.token_ids]
        if min(flat) < 0 or max(flat) >= model.cfg.vocab_size:
            raise KernelError("EINVAL", f"step: token id outside [0, {model.cfg.vocab_size})")
        for s in batch.seqs:
            check_params(
                s.sampling
            )  # before the KV pool is written: a refused step changes nothing
        with torch.inference_mode():
            meta = build_metadata(batch, kv.num_blocks, self.device)
            token_ids = torch.tensor(flat, dtype=torch.long).to(self.device)  # (T,)
            cos, sin = rope.cos_sin(meta.positions, meta.seq_lens)  # (T, hs)
            hidden = model(token_ids, cos, sin, PagedAttend(kv, meta))  # (T, C)
            ends = []  # flat index of the last token of each sampled sequence
            end = 0
            for s in batch.seqs:
                end += len(s.token_ids)
                if s.sample:
                    ends.append(end - 1)
            picked = hidden[torch.tensor(ends, dtype=torch.long, device=self.device)]  # (N, C)
            logits = model.logits(picked)  # (N, V)
            sampled = sample_batch(logits, [s.sampling for s in batch.seqs if s.sample])
            if all_positions:
                logits = model.logits(hidden)  # (T, V), for tests only
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # elapsed must cover the kernels, not their launch
        elapsed = time.perf_counter() - t0
        it = iter(sampled)
        tokens = [next(it) if s.sample else None for s in batch.seqs]
        return StepOutput(StepResult(tokens, elapsed, elapsed), logits)

    def forward_dense(self, token_ids: list[int]) -> torch.Tensor:
        """Logits (T, V) of one sequence by plain causal attention, no cache: the test oracle."""
        model, rope = self._require_model("forward_dense"), self.rope
        assert rope is not None
        if not token_ids:
            raise KernelError("EINVAL", "forward_dense: no tokens")
        with torch.inference_mode():
            ids = torch.tensor(token_ids, dtype=torch.long, device=self.device)  # (T,)
            positions = torch.arange(len(token_ids), device=self.device)
            seq_lens = torch.full_like(positions, len(token_ids))
            cos, sin = rope.cos_sin(positions, seq_lens)
            return model.logits(model(ids, cos, sin, DenseCausalAttend()))
