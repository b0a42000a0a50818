"""A Llama-family decoder (Llama, Mistral, Qwen2) in plain torch, nanoGPT-style.

The model computes over a flat list of tokens, ``(T, C)``, that may belong to many sequences:
the linear layers see the whole step's tokens as one matrix (one big matmul per layer is where
batched throughput comes from), and only attention needs to know which token belongs to which
sequence. That knowledge lives outside the model, in an ``Attend`` callable: the paged backend
(``paged_attention.py``) for engine steps, or ``DenseCausalAttend`` for the no-cache oracle.

Names of modules follow Hugging Face's (``model.layers.0.self_attn.q_proj``, with the ``model.``
prefix dropped), so a checkpoint's state dict loads without a renaming table.
Shapes: T tokens, C hidden, nh query heads, nkv key/value heads, hs head dim, V vocabulary.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from llmos.drivers.checkpoint import Checkpoint, ModelConfig

# ---------------------------------------------------------------------------------------------
# Rotary position embeddings


def rope_inv_freq(cfg: ModelConfig, seq_len: int | None = None) -> tuple[torch.Tensor, float]:
    """Inverse frequencies (hs/2,) and the cos/sin scale for the config's rope type.

    ``seq_len`` matters only for "dynamic" (NTK) scaling, whose base grows with the sequence once
    it passes max_position_embeddings. The formulas follow transformers' modeling_rope_utils so
    that logits match a Hugging Face model of the same weights.
    """
    rope, dim, mpe = cfg.rope, cfg.head_dim, cfg.max_position_embeddings
    base = rope.theta
    if rope.type == "dynamic":
        seq_len = max(seq_len or mpe, mpe)
        base = base * ((rope.factor * seq_len / mpe) - (rope.factor - 1)) ** (dim / (dim - 2))
    exponents = torch.arange(0, dim, 2, dtype=torch.int64).float() / dim  # (hs/2,)
    inv_freq = 1.0 / (base**exponents)
    if rope.type == "linear":
        inv_freq = inv_freq / rope.factor
    elif rope.type == "llama3":
        inv_freq = _llama3_inv_freq(inv_freq, rope.factor, rope.extra)
    elif rope.type == "yarn":
        return _yarn_inv_freq(cfg)
    return inv_freq, 1.0


def _llama3_inv_freq(inv_freq: torch.Tensor, factor: float, extra: dict) -> torch.Tensor:
    # Llama 3.1: long wavelengths are slowed by `factor`, short ones kept, the middle blended.
    low, high = float(extra["low_freq_factor"]), float(extra["high_freq_factor"])
    old_len = float(extra["original_max_position_embeddings"])
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < old_len / high) * ~(wavelen > old_len / low)
    return torch.where(is_medium, smoothed, scaled)


def _yarn_inv_freq(cfg: ModelConfig) -> tuple[torch.Tensor, float]:
    # YaRN: interpolate low frequencies, extrapolate high ones, ramp between; scale attention.
    rope, dim = cfg.rope, cfg.head_dim
    extra, factor, base = rope.extra, rope.factor, rope.theta
    old_len = float(extra["original_max_position_embeddings"])

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attention_factor = extra.get("attention_factor")
    if attention_factor is None:
        ms, ms_all = extra.get("mscale"), extra.get("mscale_all_dim")
        attention_factor = (
            mscale(factor, ms) / mscale(factor, ms_all) if ms and ms_all else mscale(factor)
        )
    beta_fast, beta_slow = extra.get("beta_fast") or 32, extra.get("beta_slow") or 1

    def correction_dim(rotations: float) -> float:
        return (dim * math.log(old_len / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if extra.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # a zero-width ramp would divide by zero
    pos_freqs = base ** (torch.arange(0, dim, 2).float() / dim)  # (hs/2,)
    ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
    extrapolation = 1 - ramp
    inv_freq = (1.0 / (factor * pos_freqs)) * (1 - extrapolation) + (
        1.0 / pos_freqs
    ) * extrapolation
    return inv_freq, float(attention_factor)


class RotaryEmbedding:
    """cos/sin tables for arbitrary positions; per-sequence for dynamic NTK scaling."""

    def __init__(self, cfg: ModelConfig, device: torch.device) -> None:
        self.cfg = cfg
        self.device = device
        inv_freq, self.scale = rope_inv_freq(cfg)
        self.inv_freq = inv_freq.to(device)  # (hs/2,)

    def cos_sin(
        self, positions: torch.Tensor, seq_lens: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin (T, hs) in float32 for token positions (T,).

        ``seq_lens`` (T,) is each token's sequence length after this step; dynamic NTK derives its
        base from it per sequence (as transformers does for one sequence), so a sequence's
        numerics never depend on what else shares the batch.
        """
        inv_freq = self.inv_freq[None, :].expand(positions.shape[0], -1)  # (T, hs/2)
        if self.cfg.rope.type == "dynamic" and seq_lens is not None:
            inv_freq = inv_freq.clone()
            for n in torch.unique(seq_lens).tolist():
                if n > self.cfg.max_position_embeddings:
                    grown, _ = rope_inv_freq(self.cfg, int(n))
                    inv_freq[seq_lens == n] = grown.to(self.device)
        freqs = positions[:, None].float() * inv_freq  # (T, hs/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (T, hs)
        return emb.cos() * self.scale, emb.sin() * self.scale


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (T, heads, hs) by per-token cos/sin (T, hs), in Hugging Face's half-split layout."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos[:, None, :].to(x.dtype) + rotated * sin[:, None, :].to(x.dtype)


# ---------------------------------------------------------------------------------------------
# Layers


# enable_gqa arrived in torch 2.5; before it, K/V heads are repeated to match the query heads.
_HAS_ENABLE_GQA = tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 5)


def sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    causal: bool = False,
) -> torch.Tensor:
    """Scaled dot-product attention with grouped K/V heads.

    q (B, nh, Tq, hs), k and v (B, nkv, Tk, hs), mask broadcastable to (B, nh, Tq, Tk) with True
    where a query may attend -> (B, nh, Tq, hs).
    """
    nh, nkv = q.shape[1], k.shape[1]
    if nh == nkv:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
    if _HAS_ENABLE_GQA:
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=True
        )
    k = k.repeat_interleave(nh // nkv, dim=1)  # (B, nh, Tk, hs)
    v = v.repeat_interleave(nh // nkv, dim=1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)


class Attend(Protocol):
    """Attention over whatever context a token may see: the seam between model and KV cache."""

    def __call__(
        self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int | None
    ) -> torch.Tensor:
        """q (T, nh, hs), k and v (T, nkv, hs) of this step's tokens -> output (T, nh, hs)."""
        ...


class DenseCausalAttend:
    """The oracle: every token is in one sequence at positions 0..T-1, no cache at all."""

    def __call__(
        self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int | None
    ) -> torch.Tensor:
        """Causal (optionally sliding-window) attention of one sequence over itself."""
        T = q.shape[0]
        pos = torch.arange(T, device=q.device)
        mask = pos[None, :] <= pos[:, None]  # (T, T): query row sees key column
        if window is not None:
            mask &= pos[None, :] > pos[:, None] - window
        out = sdpa(
            q.transpose(0, 1)[None],  # (1, nh, T, hs)
            k.transpose(0, 1)[None],  # (1, nkv, T, hs)
            v.transpose(0, 1)[None],
            mask,
        )  # (1, nh, T, hs)
        return out[0].transpose(0, 1)  # (T, nh, hs)


class RMSNorm(nn.Module):
    """Root-mean-square norm, computed in float32 as Llama does."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise the last dimension of x."""
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


class SelfAttention(nn.Module):
    """q/k/v projections, rotary embedding, attention through ``attend``, output projection."""

    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.nh, self.nkv, self.hs = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.window = cfg.sliding_windows[layer] if cfg.sliding_windows else None
        C = cfg.hidden_size
        self.q_proj = nn.Linear(C, self.nh * self.hs, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(C, self.nkv * self.hs, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(C, self.nkv * self.hs, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(self.nh * self.hs, C, bias=cfg.o_bias)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attend: Attend
    ) -> torch.Tensor:
        """x (T, C) -> (T, C)."""
        T = x.shape[0]
        q = self.q_proj(x).view(T, self.nh, self.hs)  # (T, nh, hs)
        k = self.k_proj(x).view(T, self.nkv, self.hs)  # (T, nkv, hs)
        v = self.v_proj(x).view(T, self.nkv, self.hs)  # (T, nkv, hs)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        y = attend(self.layer, q, k, v, self.window)  # (T, nh, hs)
        return self.o_proj(y.reshape(T, self.nh * self.hs))


class MLP(nn.Module):
    """SwiGLU feed-forward: down(silu(gate(x)) * up(x))."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        C, H = cfg.hidden_size, cfg.intermediate_size
        self.gate_proj = nn.Linear(C, H, bias=cfg.mlp_bias)
        self.up_proj = nn.Linear(C, H, bias=cfg.mlp_bias)
        self.down_proj = nn.Linear(H, C, bias=cfg.mlp_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (T, C) -> (T, C)."""
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    """Pre-norm residual block: attention, then MLP."""

    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = SelfAttention(cfg, layer)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attend: Attend
    ) -> torch.Tensor:
        """x (T, C) -> (T, C)."""
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, attend)
        return x + self.mlp(self.post_attention_layernorm(x))


# ---------------------------------------------------------------------------------------------
# The model


class Transformer(nn.Module):
    """Embedding, decoder blocks, final norm and (possibly tied) language-model head."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight

    @classmethod
    def from_checkpoint(
        cls, ckpt: Checkpoint, device: torch.device, dtype: torch.dtype
    ) -> Transformer:
        """Build the model on ``device`` holding the checkpoint's weights in ``dtype``.

        It is built on the meta device first so that no time is spent on random init of weights
        that are overwritten at once.
        """
        with torch.device("meta"):
            model = cls(ckpt.config)
        state = {}
        for name, tensor in ckpt.state_dict.items():
            key = name.removeprefix("model.")
            state[key] = tensor.to(device=device, dtype=dtype)
        if ckpt.config.tie_word_embeddings:
            state["lm_head.weight"] = state["embed_tokens.weight"]
        model.load_state_dict(state, strict=True, assign=True)
        if ckpt.config.tie_word_embeddings:
            model.lm_head.weight = (
                model.embed_tokens.weight
            )  # assign=True split the tie; restore it
        return model.eval()

    def forward(
        self, token_ids: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attend: Attend
    ) -> torch.Tensor:
        """token_ids (T,) of any number of sequences -> final hidden states (T, C).

        The head is applied separately (``logits``) so a caller computes it only for the tokens
        it samples from, never for every prefill token.
        """
        x = self.embed_tokens(token_ids)  # (T, C)
        for block in self.layers:
            x = block(x, cos, sin, attend)
        return self.norm(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden (N, C) -> logits (N, V), in float32 so sampling sees full precision."""
        return self.lm_head(hidden).float()
