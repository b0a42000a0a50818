"""Tiny random checkpoints for tests: real files in Hugging Face format, built in milliseconds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from llmos.drivers.checkpoint import expected_shapes, parse_config


def write_checkpoint(path: Path, seed: int = 0, **overrides: Any) -> None:
    """A random tiny Llama-family checkpoint (config.json + model.safetensors) in ``path``."""
    raw = {
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 128,
        "max_position_embeddings": 256,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        **overrides,
    }
    gen = torch.Generator().manual_seed(seed)
    shapes = expected_shapes(parse_config(raw, path / "config.json"))
    tensors = {
        name: torch.randn(shape, generator=gen) * (0.3 if len(shape) == 2 else 0.05)
        + (len(shape) == 1)
        for name, shape in shapes.items()
    }
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(raw))
    save_file(tensors, str(path / "model.safetensors"))


def write_tokenizer(path: Path, vocab_size: int = 128) -> None:
    """Train a tiny byte-level BPE tokenizer on a few lines of Python into ``path/tokenizer.json``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|eos|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus = ["def main():\n    return 0\n", "import os\nimport sys\n", "class Stack:\n    pass\n"] * 10
    tokenizer.train_from_iterator(corpus, trainer)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(path / "tokenizer.json"))
