"""Cost-model specs: the three kinds from plain data, the Protocol, and every bad spec."""

from __future__ import annotations

import json

import msgpack
import pytest

from llmos.sim.costmodel import CostModel, LinearCost, cost_model_spec, make_cost_model
from llmos.sim.errors import SimError
from llmos.sim.models import load_model_shape
from llmos.sim.profile import ProfileCost, Sample, fit_profile
from llmos.sim.roofline import RooflineCost

COEFFS = {
    "step_s": 1e-3,
    "token_s": 2e-5,
    "context_token_s": 1e-7,
    "attention_pair_s": 1e-9,
    "seq_s": 3e-4,
}


def test_linear_is_the_old_sim_driver_model() -> None:
    c = LinearCost(0.005, 0.0001)
    assert c.step_seconds(3, 40, 999, 12345) == 0.005 + 0.0001 * 40
    assert c.decode_steps_seconds(8, 100, 3) == [
        c.step_seconds(8, 8, 100 + 8 * i, 100 + 8 * i) for i in range(3)
    ]
    assert c.decode_steps_seconds(8, 100, 0) == []
    assert make_cost_model(c.describe()).describe() == c.describe()


@pytest.mark.parametrize(
    "spec",
    [
        {"kind": "linear", "step_s": 0.005, "token_s": 0.0001},
        {"kind": "roofline", "model": "llama-2-7b", "device": "a100"},
        {
            "kind": "roofline",
            "model": load_model_shape("mistral-7b").to_dict(),
            "device": "h100",
            "dtype_bytes": 1,
        },
        {"kind": "profile", "coefficients": COEFFS},
        {"kind": "profile", "coefficients": {"step_s": 0.01}, "metadata": {"note": "by hand"}},
    ],
)
def test_every_kind_builds_from_plain_data(spec) -> None:
    model = make_cost_model(msgpack.unpackb(msgpack.packb(spec)))
    assert isinstance(model, CostModel)
    t = model.step_seconds(2, 65, 300, 2200)
    assert t > 0
    assert model.decode_steps_seconds(4, 400, 5) == [
        model.step_seconds(4, 4, 400 + 4 * i, 400 + 4 * i) for i in range(5)
    ]
    msgpack.packb(model.describe())  # plain data
    assert make_cost_model(model.describe()).step_seconds(2, 65, 300, 2200) == t


def test_roofline_spec_kinds() -> None:
    assert isinstance(
        make_cost_model({"kind": "roofline", "model": "default", "device": "cpu"}), RooflineCost
    )
    assert (
        make_cost_model(
            {"kind": "roofline", "model": "llama-2-7b", "device": "a100", "dtype_bytes": 1}
        ).model.dtype_bytes
        == 1
    )


def test_profile_spec_from_path(tmp_path) -> None:
    path = tmp_path / "p.json"
    ProfileCost(COEFFS, {"device": "cpu"}).save(path)
    model = make_cost_model({"kind": "profile", "path": str(path)})
    assert isinstance(model, ProfileCost) and model.coefficients == COEFFS


@pytest.mark.parametrize(
    ("spec", "errno", "word"),
    [
        ("linear", "EINVAL", "map"),
        ({}, "EINVAL", "kind"),
        ({"kind": "quadratic"}, "EINVAL", "quadratic"),
        ({"kind": "linear", "step_s": 0.1}, "EINVAL", "token_s"),
        ({"kind": "linear", "step_s": -1, "token_s": 0}, "EINVAL", "step_s"),
        ({"kind": "linear", "step_s": "1", "token_s": 0}, "EINVAL", "step_s"),
        ({"kind": "linear", "step_s": 1, "token_s": 0, "toke_s": 1}, "EINVAL", "toke_s"),
        ({"kind": "roofline", "model": "llama-2-7b"}, "EINVAL", "device"),
        ({"kind": "roofline", "model": 7, "device": "a100"}, "EINVAL", "model"),
        ({"kind": "roofline", "model": "llama-2-7b", "device": ["a100"]}, "EINVAL", "device"),
        (
            {"kind": "roofline", "model": "llama-2-7b", "device": "a100", "dtype_bytes": 3},
            "EINVAL",
            "dtype_bytes",
        ),
        ({"kind": "roofline", "model": {"name": "x"}, "device": "a100"}, "EINVAL", "num_layers"),
        ({"kind": "roofline", "model": "gpt-5", "device": "a100"}, "ENOENT", "gpt-5"),
        ({"kind": "roofline", "model": "llama-2-7b", "device": "tpu-v9"}, "ENOENT", "tpu-v9"),
        ({"kind": "profile"}, "EINVAL", "exactly one"),
        ({"kind": "profile", "path": "x.json", "coefficients": {}}, "EINVAL", "exactly one"),
        ({"kind": "profile", "path": "/nonexistent/p.json"}, "ENOENT", "p.json"),
        ({"kind": "profile", "coefficients": {"step_s": -1.0}}, "EINVAL", "step_s"),
        ({"kind": "profile", "coefficients": {"per_token": 1.0}}, "EINVAL", "per_token"),
        ({"kind": "profile", "coefficients": [1, 2]}, "EINVAL", "coefficients"),
        ({"kind": "profile", "coefficients": {}, "metadata": 3}, "EINVAL", "metadata"),
    ],
)
def test_bad_specs_raise_with_errno_and_a_sentence(spec, errno: str, word: str) -> None:
    with pytest.raises(SimError) as info:
        make_cost_model(spec)
    assert info.value.errno == errno
    assert word in info.value.message


def test_spec_for_presets_keeps_names() -> None:
    assert cost_model_spec("llama-2-7b", "a100") == {
        "kind": "roofline",
        "model": "llama-2-7b",
        "device": "a100",
    }
    assert cost_model_spec("default", "cpu")["model"] == "default"


def test_spec_for_files_inlines_them(tmp_path) -> None:
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "hidden_size": 64,
                "num_attention_heads": 4,
                "num_hidden_layers": 2,
                "intermediate_size": 128,
                "vocab_size": 100,
            }
        )
    )
    device = tmp_path / "gpu.json"
    device.write_text(
        json.dumps({"kind": "gpu", "memory_bytes": 1 << 34, "mem_bandwidth": 1e12, "flops": 1e14})
    )
    spec = cost_model_spec(str(tmp_path), str(device))
    assert spec["kind"] == "roofline"
    assert spec["model"]["num_layers"] == 2 and spec["device"]["name"] == "gpu"
    assert isinstance(make_cost_model(msgpack.unpackb(msgpack.packb(spec))), RooflineCost)


def _profile_file(tmp_path, model_shape: dict | None) -> str:
    samples = [
        Sample(n, n, 100 * n, 100 * n, 0.001 + 1e-4 * n + 1e-7 * 100 * n) for n in range(1, 8)
    ]
    meta = {"model": "default"}
    if model_shape is not None:
        meta["model_shape"] = model_shape
    path = tmp_path / "cpu-profile.json"
    fit_profile(samples, meta).save(path)
    return str(path)


def test_spec_for_a_profile_inlines_coefficients(tmp_path) -> None:
    shape = {**load_model_shape("default").to_dict(), "dtype_bytes": 4}  # calibrated in fp32
    path = _profile_file(tmp_path, shape)
    spec = cost_model_spec("default", path)
    assert spec["kind"] == "profile" and set(spec) == {"kind", "coefficients", "metadata"}
    assert spec["metadata"]["model_shape"] == shape
    model = make_cost_model(msgpack.unpackb(msgpack.packb(spec)))
    assert model.step_seconds(1, 1, 100, 100) == pytest.approx(0.001 + 1e-4 + 1e-5, rel=1e-6)


def test_spec_refuses_a_profile_of_another_model(tmp_path) -> None:
    path = _profile_file(tmp_path, load_model_shape("default").to_dict())
    with pytest.raises(SimError) as info:
        cost_model_spec("llama-2-7b", path)
    assert info.value.errno == "EINVAL" and "llama-2-7b" in info.value.message


def test_spec_unknown_device_is_enoent(tmp_path) -> None:
    with pytest.raises(SimError) as info:
        cost_model_spec("llama-2-7b", "v100")
    assert info.value.errno == "ENOENT" and "a100" in info.value.message
    bad = tmp_path / "bad.json"
    bad.write_text("[]")
    with pytest.raises(SimError) as info:
        cost_model_spec("llama-2-7b", str(bad))
    assert info.value.errno == "EINVAL"
