"""Load a Hugging Face-format checkpoint directory into a ``ModelConfig`` and a state dict.

A checkpoint directory looks like::

    config.json                      architecture, sizes, rope parameters
    model.safetensors                one shard, or
    model.safetensors.index.json     {"weight_map": {tensor name: shard file}} plus the shards
    generation_config.json           optional: eos_token_id
    tokenizer.json                   optional: handed back as a path, never parsed here

Files are read through a ``ModelFiles`` (drivers/sealed.py): as they are, or, for a version of an
encrypted model store, decrypted and checked against the signed manifest in memory, so loading
one never writes its plaintext anywhere.

Only the decoder families whose tensors follow the Llama naming are accepted: LlamaForCausalLM,
MistralForCausalLM and Qwen2ForCausalLM. Every failure is a ``KernelError`` whose message names
the file, and for a bad tensor its name and both shapes, so a user can fix the checkpoint without
reading this code.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from llmos.kernel.errors import KernelError

from .safetensors_buffer import load_buffer
from .sealed import ModelFiles

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")
ROPE_TYPES = ("default", "linear", "dynamic", "llama3", "yarn")


@dataclass(frozen=True)
class RopeConfig:
    """Rotary position embedding parameters, normalised from either config.json spelling."""

    theta: float = 10000.0  # base of the inverse frequencies
    type: str = "default"  # one of ROPE_TYPES
    factor: float = 1.0  # context extension factor (linear, dynamic, llama3, yarn)
    # The remaining rope_scaling keys (low_freq_factor, beta_fast, ...), kept verbatim.
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelConfig:
    """The fields of config.json the model needs, with Hugging Face defaults applied."""

    architecture: str
    vocab_size: int
    hidden_size: int  # C
    intermediate_size: int  # width of the SwiGLU MLP
    num_layers: int
    num_heads: int  # query heads (nh)
    num_kv_heads: int  # key/value heads; < num_heads is GQA, 1 is MQA
    head_dim: int  # hs; not always hidden_size // num_heads
    rms_norm_eps: float
    rope: RopeConfig
    max_position_embeddings: int
    tie_word_embeddings: bool
    qkv_bias: bool  # Qwen2 always has q/k/v bias; Llama has it when attention_bias is set
    o_bias: bool  # Llama's attention_bias also biases o_proj; Qwen2's never does
    mlp_bias: bool
    # Per layer: attend to at most this many most recent keys, or None for full causal attention.
    sliding_windows: tuple[int | None, ...] = ()
    eos_token_ids: tuple[int, ...] = ()
    bos_token_id: int | None = None

    def summary(self) -> dict[str, Any]:
        """A msgpack-friendly dict for ``info`` replies and ``ps`` output."""
        return {
            "architecture": self.architecture,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "num_kv_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "rope_type": self.rope.type,
            "rope_theta": self.rope.theta,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
        }


@dataclass
class Checkpoint:
    """What ``load_checkpoint`` returns: config, tensors named as in the file, optional tokenizer."""

    config: ModelConfig
    state_dict: dict[str, torch.Tensor]
    tokenizer_path: Path | None  # sealed if the checkpoint was: read it through the same ModelFiles


# ---------------------------------------------------------------------------------------------
# config.json


def _read_json(files: ModelFiles, rel: str) -> dict[str, Any]:
    path = files.path(rel)
    if not files.is_file(rel):
        raise KernelError("ENOENT", f"{path}: no such file")
    try:
        data = json.loads(files.read_bytes(rel).decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise KernelError("EINVAL", f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise KernelError("EINVAL", f"{path}: expected a JSON object")
    return data


def _parse_rope(raw: dict[str, Any], where: Path) -> RopeConfig:
    """Accept both spellings: transformers 4 (rope_theta + rope_scaling) and 5 (rope_parameters)."""
    params = raw.get("rope_parameters") or raw.get("rope_scaling") or {}
    if not isinstance(params, dict):
        raise KernelError("EINVAL", f"{where}: rope_scaling must be an object or null")
    theta = float(params.get("rope_theta", raw.get("rope_theta", 10000.0)))
    rope_type = str(params.get("rope_type", params.get("type", "default")))
    if rope_type not in ROPE_TYPES:
        raise KernelError("EINVAL", f"{where}: unsupported rope type {rope_type!r}")
    if params.get("partial_rotary_factor", raw.get("partial_rotary_factor", 1.0)) != 1.0:
        raise KernelError("EINVAL", f"{where}: partial_rotary_factor is not supported")
    extra = {
        k: v for k, v in params.items() if k not in ("rope_theta", "rope_type", "type", "factor")
    }
    if rope_type in ("llama3", "yarn"):
        extra.setdefault(
            "original_max_position_embeddings",
            raw.get("original_max_position_embeddings", raw.get("max_position_embeddings", 2048)),
        )
    factor = params.get("factor")
    if rope_type != "default" and factor is None and rope_type != "yarn":
        raise KernelError("EINVAL", f"{where}: rope type {rope_type!r} needs a factor")
    if factor is None and rope_type == "yarn":
        # YaRN may derive the factor from the two context lengths, like transformers does.
        factor = (
            raw.get("max_position_embeddings", 2048) / extra["original_max_position_embeddings"]
        )
    return RopeConfig(theta=theta, type=rope_type, factor=float(factor or 1.0), extra=extra)


def _sliding_windows(raw: dict[str, Any], arch: str, num_layers: int) -> tuple[int | None, ...]:
    """Which layers attend through a sliding window, following each family's rule."""
    window = raw.get("sliding_window")
    if arch == "LlamaForCausalLM" or window is None:
        return (None,) * num_layers
    if arch == "MistralForCausalLM":
        return (int(window),) * num_layers
    # Qwen2: only with use_sliding_window, and then per layer_types (or from max_window_layers).
    if not raw.get("use_sliding_window", False):
        return (None,) * num_layers
    layer_types = raw.get("layer_types")
    if layer_types is None:
        first = int(raw.get("max_window_layers", num_layers))
        layer_types = [
            "sliding_attention" if i >= first else "full_attention" for i in range(num_layers)
        ]
    return tuple(int(window) if t == "sliding_attention" else None for t in layer_types)


def _eos_ids(*values: Any) -> tuple[int, ...]:
    ids: list[int] = []
    for value in values:
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, int) and item not in ids:
                ids.append(item)
    return tuple(ids)


def parse_config(
    raw: dict[str, Any], where: Path, generation: dict[str, Any] | None = None
) -> ModelConfig:
    """Build a ``ModelConfig`` from a parsed config.json.

    Raises:
        KernelError: EINVAL for an unsupported architecture, activation or rope type, or a
            missing or inconsistent size field; the message names ``where``.
    """
    archs = raw.get("architectures") or []
    arch = archs[0] if archs else None
    if arch not in SUPPORTED_ARCHITECTURES:
        raise KernelError(
            "EINVAL",
            f"{where}: unsupported architecture {arch!r}; supported: {', '.join(SUPPORTED_ARCHITECTURES)}",
        )
    if raw.get("hidden_act", "silu") != "silu":
        raise KernelError("EINVAL", f"{where}: unsupported hidden_act {raw['hidden_act']!r}")
    try:
        hidden = int(raw["hidden_size"])
        num_heads = int(raw["num_attention_heads"])
        num_layers = int(raw["num_hidden_layers"])
        num_kv_heads = int(raw.get("num_key_value_heads") or num_heads)
        head_dim = int(raw.get("head_dim") or hidden // num_heads)
        intermediate = int(raw["intermediate_size"])
        vocab = int(raw["vocab_size"])
    except KeyError as exc:
        raise KernelError("EINVAL", f"{where}: missing field {exc.args[0]!r}") from exc
    except (TypeError, ValueError) as exc:
        raise KernelError("EINVAL", f"{where}: bad size field ({exc})") from exc
    if min(hidden, num_heads, num_layers, num_kv_heads, head_dim, intermediate, vocab) <= 0:
        raise KernelError("EINVAL", f"{where}: sizes must be positive")
    if num_heads % num_kv_heads or head_dim % 2:
        raise KernelError(
            "EINVAL",
            f"{where}: num_attention_heads={num_heads} must be a multiple of "
            f"num_key_value_heads={num_kv_heads}, and head_dim={head_dim} even",
        )
    is_qwen = arch == "Qwen2ForCausalLM"
    attention_bias = bool(raw.get("attention_bias", False))
    generation = generation or {}
    return ModelConfig(
        architecture=arch,
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
        rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
        rope=_parse_rope(raw, where),
        max_position_embeddings=int(raw.get("max_position_embeddings", 2048)),
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
        qkv_bias=is_qwen or attention_bias,
        o_bias=attention_bias and not is_qwen,
        mlp_bias=bool(raw.get("mlp_bias", False)),
        sliding_windows=_sliding_windows(raw, arch, num_layers),
        eos_token_ids=_eos_ids(generation.get("eos_token_id"), raw.get("eos_token_id")),
        bos_token_id=raw.get("bos_token_id") if isinstance(raw.get("bos_token_id"), int) else None,
    )


# ---------------------------------------------------------------------------------------------
# tensors


def expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor the model needs, by its Hugging Face name, with its shape."""
    C, hs, V = cfg.hidden_size, cfg.head_dim, cfg.vocab_size
    q_out, kv_out = cfg.num_heads * hs, cfg.num_kv_heads * hs
    shapes: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (V, C),
        "model.norm.weight": (C,),
    }
    if not cfg.tie_word_embeddings:
        shapes["lm_head.weight"] = (V, C)
    for i in range(cfg.num_layers):
        p = f"model.layers.{i}."
        shapes[p + "input_layernorm.weight"] = (C,)
        shapes[p + "post_attention_layernorm.weight"] = (C,)
        for name, out in (("q_proj", q_out), ("k_proj", kv_out), ("v_proj", kv_out)):
            shapes[p + f"self_attn.{name}.weight"] = (out, C)
            if cfg.qkv_bias:
                shapes[p + f"self_attn.{name}.bias"] = (out,)
        shapes[p + "self_attn.o_proj.weight"] = (C, q_out)
        if cfg.o_bias:
            shapes[p + "self_attn.o_proj.bias"] = (C,)
        for name, shape in (
            ("gate_proj", (cfg.intermediate_size, C)),
            ("up_proj", (cfg.intermediate_size, C)),
            ("down_proj", (C, cfg.intermediate_size)),
        ):
            shapes[p + f"mlp.{name}.weight"] = shape
            if cfg.mlp_bias:
                shapes[p + f"mlp.{name}.bias"] = (shape[0],)
    return shapes


def _shard_files(files: ModelFiles) -> list[str]:
    """The weight shards' paths inside the checkpoint directory, sorted."""
    root = files.root
    index = "model.safetensors.index.json"
    if files.is_file(index):
        weight_map = _read_json(files, index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise KernelError("EINVAL", f"{root / index}: missing or empty weight_map")
        shards = sorted({str(name) for name in weight_map.values()})
        for shard in shards:
            if not files.is_file(shard):
                raise KernelError("ENOENT", f"{root / index}: shard {Path(shard).name} not found in {root}")
        return shards
    shards = ["model.safetensors"] if files.is_file("model.safetensors") else files.top_level(".safetensors")
    if not shards:
        raise KernelError("ENOENT", f"{root}: no model.safetensors or safetensors index")
    return shards


def _read_shard(files: ModelFiles, rel: str) -> dict[str, torch.Tensor]:
    if not files.sealed:
        return load_file(str(files.path(rel)))  # memory-mapped
    # Decrypted in memory, once, into one buffer the tensors are views of: a sealed shard's
    # plaintext never touches disk, and is held once while it loads.
    return load_buffer(files.read_buffer(rel), f"{files.root / rel}")


def _read_tensors(files: ModelFiles, shards: list[str]) -> tuple[dict[str, torch.Tensor], dict[str, Path]]:
    tensors: dict[str, torch.Tensor] = {}
    origin: dict[str, Path] = {}
    for rel in shards:
        file = files.path(rel)
        try:
            shard = _read_shard(files, rel)
        except (SafetensorError, OSError, ValueError) as exc:
            raise KernelError("EINVAL", f"{file}: not a readable safetensors file ({exc})") from exc
        for name, tensor in shard.items():
            tensors[name] = tensor
            origin[name] = file
    return tensors, origin


def load_checkpoint(path: str | Path | ModelFiles) -> Checkpoint:
    """Read config and weights of a checkpoint directory and check every tensor's shape.

    Tensors the model does not use (e.g. ``rotary_emb.inv_freq``) are dropped. With tied
    embeddings, a present ``lm_head.weight`` is ignored: the embedding matrix is the head.

    Args:
        path: the directory, or a ``ModelFiles`` reader of it (one that unseals an encrypted
            store's version in memory).

    Raises:
        KernelError: ENOENT for a missing directory, config or shard; EINVAL for a bad config,
            an unreadable shard, or a missing or misshapen tensor (named, with both shapes);
            EACCES naming a sealed file that fails authentication or its manifest's sha256.
    """
    files = path if isinstance(path, ModelFiles) else ModelFiles(Path(path))
    root = files.root
    if not root.is_dir():
        raise KernelError("ENOENT", f"{root}: no such checkpoint directory")
    config_path = root / "config.json"
    raw = _read_json(files, "config.json")
    has_generation = files.is_file("generation_config.json")
    generation = _read_json(files, "generation_config.json") if has_generation else None
    cfg = parse_config(raw, config_path, generation)
    shards = _shard_files(files)
    tensors, origin = _read_tensors(files, shards)
    state: dict[str, torch.Tensor] = {}
    for name, shape in expected_shapes(cfg).items():
        if name not in tensors:
            raise KernelError(
                "EINVAL",
                f"{root}: tensor {name} (expected shape {list(shape)}) not found in "
                f"{', '.join(Path(rel).name for rel in shards)}",
            )
        got = tuple(tensors[name].shape)
        if got != shape:
            raise KernelError(
                "EINVAL",
                f"{origin[name]}: tensor {name} has shape {list(got)}, expected {list(shape)}",
            )
        state[name] = tensors[name]
    tokenizer = root / "tokenizer.json"
    return Checkpoint(cfg, state, tokenizer if files.is_file("tokenizer.json") else None)


def num_parameters(state: dict[str, torch.Tensor]) -> int:
    """Count of scalar parameters (a tied head is counted once, as it is stored once)."""
    return sum(math.prod(t.shape) for t in state.values())
