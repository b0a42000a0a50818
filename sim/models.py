"""Model shapes: the few numbers of a decoder-only transformer that a cost model needs.

A ``ModelShape`` is not a model: it has no weights, only sizes, so the simulator can model a
70B-parameter model on a laptop. The sizes follow the Hugging Face Llama family (Llama, Mistral,
Qwen2): per layer, attention with q/k/v/o projections (GQA when ``num_kv_heads < num_heads``)
and a SwiGLU MLP (gate, up, down), two RMSNorms; then a final norm and the LM head::

    per layer   q: C x (nh*hs)   k, v: C x (nkv*hs)   o: (nh*hs) x C   gate, up: C x I   down: I x C
    once        embedding V x C, final norm C, head V x C (shared with the embedding when tied)

Presets come from the models' public config.json files; ``load_model_shape`` also reads any such
config.json, and ``"default"`` is the small model embedded in ``llmos.drivers``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import SimError, dataclass_from_dict, read_json_object

# Bytes per element of each config.json dtype spelling (``torch_dtype`` or, newer, ``dtype``).
DTYPE_BYTES: dict[str, int] = {
    "float32": 4,
    "fp32": 4,
    "float": 4,
    "float16": 2,
    "fp16": 2,
    "half": 2,
    "bfloat16": 2,
    "bf16": 2,
    "int8": 1,
    "float8_e4m3fn": 1,
    "float8_e5m2": 1,
}
DEFAULT_DTYPE_BYTES = 2  # checkpoints on the Hub ship fp16/bf16 unless config.json says otherwise


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a Llama-family decoder, and what follows from them.

    Raises:
        SimError: EINVAL for a non-positive size, or heads that GQA cannot group.
    """

    name: str  # preset name, or the checkpoint directory's name
    num_layers: int  # L, decoder blocks
    hidden_size: int  # C, the residual stream width
    num_heads: int  # nh, query heads
    num_kv_heads: int  # nkv, key/value heads; < nh is GQA, 1 is MQA
    head_dim: int  # hs, not always C // nh
    intermediate_size: int  # I, the SwiGLU MLP's inner width
    vocab_size: int  # V
    tie_word_embeddings: bool  # the LM head reuses the embedding matrix (stored, and read, once)
    dtype_bytes: int = 2  # bytes per weight and per KV element (2: fp16/bf16, 1: int8, 4: fp32)
    qkv_bias: bool = False  # q/k/v projections carry a bias (Qwen2); counted in num_params

    def __post_init__(self) -> None:
        sizes = (
            self.num_layers,
            self.hidden_size,
            self.num_heads,
            self.num_kv_heads,
            self.head_dim,
            self.intermediate_size,
            self.vocab_size,
            self.dtype_bytes,
        )
        if min(sizes) <= 0:
            raise SimError(
                "EINVAL", f"model {self.name!r}: every size must be positive, got {sizes}"
            )
        if self.num_heads % self.num_kv_heads:
            raise SimError(
                "EINVAL",
                f"model {self.name!r}: num_heads={self.num_heads} is not a "
                f"multiple of num_kv_heads={self.num_kv_heads}",
            )

    # -- parameters ----------------------------------------------------------------------------

    @property
    def layer_matmul_params(self) -> int:
        """Weights of one decoder block's seven linear layers (no norms, no biases)."""
        C, inter = self.hidden_size, self.intermediate_size
        q, kv = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        return C * q + 2 * C * kv + q * C + 3 * C * inter

    @property
    def num_params(self) -> int:
        """Every stored parameter: blocks, norms, biases, embedding, and an untied head."""
        C, V = self.hidden_size, self.vocab_size
        bias = (self.num_heads + 2 * self.num_kv_heads) * self.head_dim if self.qkv_bias else 0
        per_layer = self.layer_matmul_params + bias + 2 * C  # 2 RMSNorm weight vectors
        head = 0 if self.tie_word_embeddings else V * C
        return self.num_layers * per_layer + V * C + head + C  # + the final norm

    @property
    def weight_bytes(self) -> int:
        """Bytes of the weights at ``dtype_bytes`` per parameter."""
        return self.num_params * self.dtype_bytes

    @property
    def kv_bytes_per_token(self) -> int:
        """Bytes of K and V one token adds to the cache, over all layers."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * self.dtype_bytes

    # -- FLOPs ---------------------------------------------------------------------------------

    @property
    def layer_flops_per_token(self) -> int:
        """FLOPs of the decoder blocks' linear layers for one token (2 per weight: mul + add)."""
        return 2 * self.num_layers * self.layer_matmul_params

    @property
    def head_flops_per_token(self) -> int:
        """FLOPs of the LM head for one token; engines run it only where a token is sampled."""
        return 2 * self.vocab_size * self.hidden_size

    @property
    def flops_per_token(self) -> int:
        """FLOPs of every linear layer for one token, LM head included (attention excluded)."""
        return self.layer_flops_per_token + self.head_flops_per_token

    @property
    def attention_flops_per_pair(self) -> int:
        """FLOPs of one query-key pair over all layers and heads: q.k and p*v, 2*hs each."""
        return 4 * self.num_layers * self.num_heads * self.head_dim

    # -- plain data ----------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The fields as a msgpack-friendly dict (``from_dict`` reads it back)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> ModelShape:
        """A shape from ``to_dict``'s output, checked field by field.

        Raises:
            SimError: EINVAL naming a missing, unknown or mistyped field.
        """
        name = data.get("name", "?") if isinstance(data, dict) else "?"
        return dataclass_from_dict(cls, data, f"model shape {name!r}")


# ---------------------------------------------------------------------------------------------
# presets


def _preset(
    name: str,
    L: int,
    C: int,
    nh: int,
    nkv: int,
    inter: int,
    V: int,
    tied: bool,
    qkv_bias: bool = False,
) -> ModelShape:
    return ModelShape(name, L, C, nh, nkv, C // nh, inter, V, tied, 2, qkv_bias)


# From each model's config.json on the Hugging Face Hub (bf16/fp16 weights).
PRESETS: dict[str, ModelShape] = {
    s.name: s
    for s in (
        _preset("llama-2-7b", 32, 4096, 32, 32, 11008, 32000, False),  # 6.74e9 params
        _preset("llama-2-70b", 80, 8192, 64, 8, 28672, 32000, False),  # 68.98e9, GQA 64/8
        _preset("llama-3-8b", 32, 4096, 32, 8, 14336, 128256, False),  # 8.03e9, GQA 32/8
        _preset("mistral-7b", 32, 4096, 32, 8, 14336, 32000, False),  # 7.24e9 (v0.1), GQA 32/8
        _preset("qwen2.5-0.5b", 24, 896, 14, 2, 4864, 151936, True, qkv_bias=True),  # 0.49e9
    )
}
DEFAULT_NAME = "default"  # the embedded model of llmos.drivers, read from its config.json


def default_model_dir() -> Path:
    """The embedded default checkpoint directory (package data of ``llmos.drivers``)."""
    import llmos.drivers

    return Path(llmos.drivers.__file__).parent / "default_model"


def preset_names() -> list[str]:
    """Every name ``load_model_shape`` accepts besides a path."""
    return [*PRESETS, DEFAULT_NAME]


def shape_from_hf_config(raw: dict[str, Any], name: str, where: str) -> ModelShape:
    """A shape from a parsed Hugging Face config.json.

    Hugging Face defaults apply: ``num_key_value_heads`` absent or null means one per query head
    (no GQA), ``head_dim`` absent or null means ``hidden_size // num_attention_heads``, and the
    dtype comes from ``torch_dtype`` (or the newer ``dtype``), fp16/bf16 when neither is given.

    Raises:
        SimError: EINVAL naming ``where`` and the missing or malformed key.
    """

    def size(key: str, fallback: int | None = None) -> int:
        value = raw.get(key)
        if value is None:
            if fallback is None:
                raise SimError("EINVAL", f"{where}: missing key {key!r}")
            return fallback
        if isinstance(value, bool) or not isinstance(value, int):
            raise SimError("EINVAL", f"{where}: {key!r} must be an integer, not {value!r}")
        return value

    hidden, heads = size("hidden_size"), size("num_attention_heads")
    if heads <= 0:
        raise SimError("EINVAL", f"{where}: 'num_attention_heads' must be positive")
    dtype = raw.get("torch_dtype") or raw.get("dtype")
    if dtype is None:
        dtype_bytes = DEFAULT_DTYPE_BYTES
    elif dtype in DTYPE_BYTES:
        dtype_bytes = DTYPE_BYTES[dtype]
    else:
        raise SimError(
            "EINVAL", f"{where}: unknown dtype {dtype!r}; known: {', '.join(DTYPE_BYTES)}"
        )
    archs = raw.get("architectures") or []
    is_qwen2 = bool(archs) and archs[0] == "Qwen2ForCausalLM"  # Qwen2 always biases q/k/v
    return ModelShape(
        name=name,
        num_layers=size("num_hidden_layers"),
        hidden_size=hidden,
        num_heads=heads,
        num_kv_heads=size("num_key_value_heads", heads),
        head_dim=size("head_dim", hidden // heads),
        intermediate_size=size("intermediate_size"),
        vocab_size=size("vocab_size"),
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
        dtype_bytes=dtype_bytes,
        qkv_bias=is_qwen2 or bool(raw.get("attention_bias", False)),
    )


def load_model_shape(name_or_path: str | Path) -> ModelShape:
    """A model shape by preset name, or from a config.json (or a directory holding one).

    Raises:
        SimError: ENOENT for a name that is neither a preset nor an existing path, or a directory
            without config.json; EINVAL for a config.json that is not JSON or lacks a size key.
    """
    text = str(name_or_path)
    if text in PRESETS:
        return PRESETS[text]
    if text == DEFAULT_NAME:
        path = default_model_dir() / "config.json"
        return shape_from_hf_config(read_json_object(path, "model config"), DEFAULT_NAME, str(path))
    path = Path(text)
    if path.is_dir():
        name, path = path.resolve().name, path / "config.json"
    elif path.is_file():
        name = path.resolve().parent.name
    else:
        raise SimError(
            "ENOENT",
            f"unknown model {text!r}: not a preset ({', '.join(preset_names())}) "
            "nor a path to a config.json or a checkpoint directory",
        )
    return shape_from_hf_config(read_json_object(path, "model config"), name, str(path))
