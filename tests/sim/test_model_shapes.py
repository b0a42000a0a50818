"""Model shapes and device specs: presets against published sizes, config.json parsing, errors."""

from __future__ import annotations

import json

import pytest

from llmos.drivers.checkpoint import load_checkpoint, num_parameters
from llmos.sim.devices import PRESETS as DEVICES
from llmos.sim.devices import DeviceSpec, load_device
from llmos.sim.errors import SimError
from llmos.sim.models import (
    PRESETS,
    ModelShape,
    default_model_dir,
    load_model_shape,
    preset_names,
)

# Published parameter counts (model cards / papers), to within 3%.
KNOWN_PARAMS = {
    "llama-2-7b": 6.7e9,
    "llama-2-70b": 69e9,
    "llama-3-8b": 8.0e9,
    "mistral-7b": 7.2e9,
    "qwen2.5-0.5b": 0.49e9,
}


@pytest.mark.parametrize("name", sorted(KNOWN_PARAMS))
def test_preset_param_counts_match_published_sizes(name: str) -> None:
    shape = load_model_shape(name)
    assert shape.num_params == pytest.approx(KNOWN_PARAMS[name], rel=0.03)
    assert shape.weight_bytes == 2 * shape.num_params  # presets are bf16/fp16


def test_every_known_preset_is_listed() -> None:
    assert sorted(PRESETS) == sorted(KNOWN_PARAMS)
    assert set(preset_names()) == set(KNOWN_PARAMS) | {"default"}


def test_llama_2_7b_exact_figures() -> None:
    s = load_model_shape("llama-2-7b")
    assert s.num_params == 6_738_415_616  # the count transformers reports
    assert s.kv_bytes_per_token == 2 * 32 * 32 * 128 * 2 == 524288
    per_layer = 4 * 4096 * 4096 + 3 * 4096 * 11008
    assert s.layer_matmul_params == per_layer
    assert s.flops_per_token == 2 * (32 * per_layer + 32000 * 4096)
    assert s.attention_flops_per_pair == 4 * 32 * 32 * 128


def test_gqa_shrinks_kv_not_heads() -> None:
    s = load_model_shape("llama-2-70b")
    assert (s.num_heads, s.num_kv_heads, s.head_dim) == (64, 8, 128)
    assert s.kv_bytes_per_token == 2 * 80 * 8 * 128 * 2
    q = load_model_shape("qwen2.5-0.5b")
    assert (q.num_layers, q.hidden_size, q.num_heads, q.num_kv_heads, q.head_dim) == (
        24,
        896,
        14,
        2,
        64,
    )
    assert q.tie_word_embeddings and q.qkv_bias


def test_default_matches_the_embedded_checkpoint() -> None:
    shape = load_model_shape("default")
    ckpt = load_checkpoint(default_model_dir())
    assert shape.name == "default"
    assert shape.num_params == num_parameters(ckpt.state_dict)
    cfg = ckpt.config
    assert (shape.num_layers, shape.num_kv_heads, shape.head_dim) == (
        cfg.num_layers,
        cfg.num_kv_heads,
        cfg.head_dim,
    )
    assert shape.tie_word_embeddings == cfg.tie_word_embeddings
    assert shape.dtype_bytes == 2  # its config.json says float16


def _write_config(tmp_path, **fields) -> None:
    base = {
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": 64,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "intermediate_size": 128,
        "vocab_size": 100,
    }
    base.update(fields)
    (tmp_path / "config.json").write_text(
        json.dumps({k: v for k, v in base.items() if v is not ...})
    )


def test_hf_config_defaults(tmp_path) -> None:
    _write_config(tmp_path)
    shape = load_model_shape(str(tmp_path))  # a directory
    assert shape.name == tmp_path.name
    assert shape.num_kv_heads == 4  # absent: one per query head
    assert shape.head_dim == 16  # absent: hidden / heads
    assert shape.dtype_bytes == 2
    assert not shape.tie_word_embeddings
    assert load_model_shape(str(tmp_path / "config.json")) == shape  # the file itself


@pytest.mark.parametrize(
    ("fields", "dtype_bytes"),
    [
        ({"torch_dtype": "float32"}, 4),
        ({"dtype": "float32"}, 4),
        ({"torch_dtype": "bfloat16"}, 2),
        ({"num_key_value_heads": None, "head_dim": None}, 2),  # null means absent too
    ],
)
def test_hf_config_dtype_and_nulls(tmp_path, fields, dtype_bytes) -> None:
    _write_config(tmp_path, **fields)
    shape = load_model_shape(str(tmp_path))
    assert shape.dtype_bytes == dtype_bytes
    assert shape.weight_bytes == shape.num_params * dtype_bytes


def test_hf_config_explicit_gqa_and_head_dim(tmp_path) -> None:
    _write_config(tmp_path, num_key_value_heads=2, head_dim=32, tie_word_embeddings=True)
    shape = load_model_shape(str(tmp_path))
    assert (shape.num_kv_heads, shape.head_dim, shape.tie_word_embeddings) == (2, 32, True)


@pytest.mark.parametrize(
    "key",
    ["hidden_size", "num_attention_heads", "num_hidden_layers", "intermediate_size", "vocab_size"],
)
def test_missing_key_is_einval_naming_it(tmp_path, key: str) -> None:
    _write_config(tmp_path, **{key: ...})
    with pytest.raises(SimError) as info:
        load_model_shape(str(tmp_path))
    assert info.value.errno == "EINVAL"
    assert key in info.value.message


@pytest.mark.parametrize(
    ("fields", "word"),
    [
        ({"hidden_size": "64"}, "integer"),
        ({"torch_dtype": "float9"}, "dtype"),
        ({"num_key_value_heads": 3}, "multiple"),
        ({"vocab_size": 0}, "positive"),
    ],
)
def test_malformed_config_is_einval(tmp_path, fields, word: str) -> None:
    _write_config(tmp_path, **fields)
    with pytest.raises(SimError) as info:
        load_model_shape(str(tmp_path))
    assert info.value.errno == "EINVAL"
    assert word in info.value.message


def test_not_json_is_einval(tmp_path) -> None:
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(SimError) as info:
        load_model_shape(str(tmp_path))
    assert info.value.errno == "EINVAL"


def test_unknown_name_is_enoent_listing_presets(tmp_path) -> None:
    with pytest.raises(SimError) as info:
        load_model_shape("llama-9-1b")
    assert info.value.errno == "ENOENT"
    assert all(name in info.value.message for name in preset_names())
    with pytest.raises(SimError) as info:
        load_model_shape(str(tmp_path))  # a directory without config.json
    assert info.value.errno == "ENOENT"


def test_shape_dict_round_trip_and_checks() -> None:
    shape = load_model_shape("mistral-7b")
    assert ModelShape.from_dict(shape.to_dict()) == shape
    for bad in (
        {**shape.to_dict(), "layers": 3},
        {k: v for k, v in shape.to_dict().items() if k != "vocab_size"},
        {**shape.to_dict(), "num_layers": "32"},
        {**shape.to_dict(), "num_layers": True},
        [1, 2],
    ):
        with pytest.raises(SimError) as info:
            ModelShape.from_dict(bad)
        assert info.value.errno == "EINVAL"


# -- devices -----------------------------------------------------------------------------------


def test_device_presets() -> None:
    a100, h100, h200 = DEVICES["a100"], DEVICES["h100"], DEVICES["h200"]
    assert (a100.mem_bandwidth, a100.flops) == (2.039e12, 312e12)
    assert (h100.mem_bandwidth, h100.flops) == (3.35e12, 989e12)
    assert (h200.mem_bandwidth, h200.memory_bytes) == (4.8e12, 141e9)
    npu = load_device("npu-phone")
    assert npu.kind == "npu" and npu.emulated and npu.int8_ops == 45e12
    assert not a100.emulated
    assert load_device("cpu").kind == "cpu"
    assert npu.peak_ops(1) == 45e12 and npu.peak_ops(2) == npu.flops


def test_device_from_json_file(tmp_path) -> None:
    path = tmp_path / "mygpu.json"
    path.write_text(
        json.dumps(
            {
                "kind": "gpu",
                "memory_bytes": 24 << 30,
                "mem_bandwidth": 1008e9,
                "flops": 165e12,
                "mem_efficiency": 0.7,
            }
        )
    )
    spec = load_device(str(path))
    assert spec.name == "mygpu" and spec.mem_efficiency == 0.7 and spec.compute_efficiency == 0.6
    assert DeviceSpec.from_dict(spec.to_dict()) == spec


@pytest.mark.parametrize(
    ("fields", "word"),
    [
        ({"kind": "tpu"}, "kind"),
        ({"mem_bandwidth": 0}, "mem_bandwidth"),
        ({"mem_efficiency": 1.5}, "mem_efficiency"),
        ({"flops": "lots"}, "flops"),
        ({"bandwidth": 1e9}, "bandwidth"),
    ],
)
def test_bad_device_file_is_einval(tmp_path, fields, word: str) -> None:
    data = {"kind": "gpu", "memory_bytes": 1 << 30, "mem_bandwidth": 1e11, "flops": 1e13, **fields}
    path = tmp_path / "d.json"
    path.write_text(json.dumps(data))
    with pytest.raises(SimError) as info:
        load_device(str(path))
    assert info.value.errno == "EINVAL"
    assert word in info.value.message


def test_device_missing_field_and_unknown_name() -> None:
    with pytest.raises(SimError) as info:
        DeviceSpec.from_dict({"name": "x", "kind": "gpu", "memory_bytes": 1, "flops": 1.0})
    assert info.value.errno == "EINVAL" and "mem_bandwidth" in info.value.message
    with pytest.raises(SimError) as info:
        load_device("b200")
    assert info.value.errno == "ENOENT"
    assert all(name in info.value.message for name in DEVICES)
