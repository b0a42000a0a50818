"""checkpoint.py: config parsing, sharded safetensors, and errors a user can act on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from llmos.drivers.checkpoint import expected_shapes, load_checkpoint, parse_config
from llmos.drivers.engine import TorchEngine
from llmos.kernel.errors import KernelError

RAW: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 128,
    "max_position_embeddings": 128,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
}


def random_state(raw: dict[str, Any], seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors with the names and shapes the config implies."""
    gen = torch.Generator().manual_seed(seed)
    shapes = expected_shapes(parse_config(raw, Path("config.json")))
    return {name: torch.randn(shape, generator=gen) * 0.3 for name, shape in shapes.items()}


def write(path: Path, raw: dict[str, Any], state: dict[str, torch.Tensor], shards: int = 1) -> None:
    """Write config.json and the tensors, as one file or as shards with an index."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(raw))
    if shards == 1:
        save_file(state, str(path / "model.safetensors"))
        return
    names = sorted(state)
    weight_map = {}
    for i in range(shards):
        file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: state[n] for n in names[i::shards]}
        save_file(part, str(path / file))
        weight_map.update(dict.fromkeys(part, file))
    (path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))


def expect_error(path: Path, errno: str, *fragments: str) -> None:
    with pytest.raises(KernelError) as info:
        load_checkpoint(path)
    assert info.value.errno == errno
    for fragment in fragments:
        assert fragment in info.value.message


def test_sharded_checkpoint_gives_the_same_logits(tmp_path: Path) -> None:
    state = random_state(RAW)
    write(tmp_path / "one", RAW, state)
    write(tmp_path / "three", RAW, state, shards=3)
    tokens = [5, 17, 99, 3, 64]
    logits = []
    for name in ("one", "three"):
        engine = TorchEngine()
        info = engine.load_model(tmp_path / name)
        assert info["num_params"] == sum(t.numel() for t in state.values())
        assert info["weight_bytes"] == 4 * info["num_params"]
        logits.append(engine.forward_dense(tokens))
    assert torch.equal(logits[0], logits[1])


def test_info_reports_eos_tokenizer_and_config(tmp_path: Path) -> None:
    raw = {**RAW, "eos_token_id": 2, "tie_word_embeddings": True}
    write(tmp_path, raw, random_state(raw))
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [7, 2]}))
    (tmp_path / "tokenizer.json").write_text("{}")
    info = TorchEngine().load_model(tmp_path)
    assert info["eos_token_ids"] == [7, 2]
    assert info["tokenizer"] == str(tmp_path / "tokenizer.json")
    assert info["vocab_size"] == 128
    assert info["config"]["num_kv_heads"] == 2
    assert info["kv_bytes_per_token"] == 2 * 2 * 2 * 16 * 4


def test_tied_checkpoint_ignores_a_stored_head(tmp_path: Path) -> None:
    raw = {**RAW, "tie_word_embeddings": True}
    state = random_state(raw)
    state["lm_head.weight"] = torch.zeros(128, 64)
    write(tmp_path, raw, state)
    ckpt = load_checkpoint(tmp_path)
    assert "lm_head.weight" not in ckpt.state_dict


def test_both_rope_spellings_parse_alike() -> None:
    old = {**RAW, "rope_theta": 5e5, "rope_scaling": {"type": "linear", "factor": 4.0}}
    new = {k: v for k, v in RAW.items() if k != "rope_theta"}
    new["rope_parameters"] = {"rope_type": "linear", "factor": 4.0, "rope_theta": 5e5}
    a, b = parse_config(old, Path("a")), parse_config(new, Path("b"))
    assert a.rope == b.rope
    assert (a.rope.type, a.rope.factor, a.rope.theta) == ("linear", 4.0, 5e5)


def test_qwen2_has_qkv_bias_but_no_o_bias() -> None:
    cfg = parse_config({**RAW, "architectures": ["Qwen2ForCausalLM"]}, Path("c"))
    assert cfg.qkv_bias and not cfg.o_bias
    assert "model.layers.0.self_attn.q_proj.bias" in expected_shapes(cfg)


def test_missing_directory_and_config_are_enoent(tmp_path: Path) -> None:
    expect_error(tmp_path / "nope", "ENOENT", "nope")
    expect_error(tmp_path, "ENOENT", "config.json")


def test_unsupported_architecture_is_einval_and_named(tmp_path: Path) -> None:
    write(tmp_path, {**RAW, "architectures": ["GPT2LMHeadModel"]}, {"x": torch.zeros(1)})
    expect_error(tmp_path, "EINVAL", "GPT2LMHeadModel", "config.json")


@pytest.mark.parametrize(
    "change, fragment",
    [
        ({"rope_scaling": {"rope_type": "longrope", "factor": 2.0}}, "longrope"),
        ({"hidden_act": "gelu"}, "gelu"),
        ({"num_key_value_heads": 3}, "num_key_value_heads"),
        ({"hidden_size": None}, "hidden_size"),
    ],
)
def test_bad_config_is_einval(tmp_path: Path, change: dict[str, Any], fragment: str) -> None:
    raw = {k: v for k, v in {**RAW, **change}.items() if v is not None}
    write(tmp_path, raw, {"x": torch.zeros(1)})
    expect_error(tmp_path, "EINVAL", fragment, "config.json")


def test_bad_json_is_einval(tmp_path: Path) -> None:
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "config.json").write_text("{not json")
    expect_error(tmp_path, "EINVAL", "config.json")


def test_shape_mismatch_names_file_tensor_and_both_shapes(tmp_path: Path) -> None:
    state = random_state(RAW)
    state["model.layers.1.self_attn.k_proj.weight"] = torch.zeros(64, 64)
    write(tmp_path, RAW, state)
    expect_error(
        tmp_path,
        "EINVAL",
        "model.safetensors",
        "model.layers.1.self_attn.k_proj.weight",
        "[64, 64]",
        "[32, 64]",
    )


def test_missing_tensor_is_named(tmp_path: Path) -> None:
    state = random_state(RAW)
    del state["lm_head.weight"]  # untied, so the head is required
    write(tmp_path, RAW, state)
    expect_error(tmp_path, "EINVAL", "lm_head.weight", "[128, 64]")


def test_missing_shard_is_enoent(tmp_path: Path) -> None:
    write(tmp_path, RAW, random_state(RAW), shards=2)
    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    expect_error(tmp_path, "ENOENT", "model-00002-of-00002.safetensors")


def test_no_weights_is_enoent_and_corrupt_weights_einval(tmp_path: Path) -> None:
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "config.json").write_text(json.dumps(RAW))
    expect_error(tmp_path, "ENOENT", "safetensors")
    (tmp_path / "model.safetensors").write_bytes(b"\x00garbage")
    expect_error(tmp_path, "EINVAL", "model.safetensors")
