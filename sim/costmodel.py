"""Cost models: how long a device step takes, as a function of the batch's shape.

Every cost model implements ``CostModel``. Three kinds exist, each built from plain data (a
msgpack-able spec, so it can travel to the sim driver over IPC and be stored in a result)::

    {"kind": "linear",   "step_s": 0.005, "token_s": 0.0001}       the first sim driver's model
    {"kind": "roofline", "model": "llama-2-7b", "device": "a100"}  roofline.py; model and device
                                                                   may also be dicts of fields
    {"kind": "profile",  "coefficients": {...}}  or  {"kind": "profile", "path": "cpu.json"}
                                                                   profile.py, from calibrate

``cost_model_spec(model, device)`` turns command-line words (a preset, a path) into such a spec.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from .devices import PRESETS as DEVICE_PRESETS
from .devices import DeviceSpec, load_device
from .errors import SimError, read_json_object
from .models import ModelShape, load_model_shape, preset_names
from .profile import ProfileCost, is_profile_data, load_profile, profile_from_data
from .roofline import RooflineCost


@runtime_checkable
class CostModel(Protocol):
    """The contract between the sim driver and whatever models device time."""

    def step_seconds(
        self, num_seqs: int, num_tokens: int, context_tokens: int, attention_pairs: int
    ) -> float:
        """Seconds of one step of a batch.

        Args:
            num_seqs: sequences in the batch.
            num_tokens: tokens computed, over all sequences (1 per decoding sequence, the chunk
                length for a prefill chunk).
            context_tokens: sum over sequences of the context length *after* the step (KV
                entries attention reads, the new ones included).
            attention_pairs: sum over sequences of ``q*s + q*(q+1)//2`` for a chunk of ``q`` new
                tokens starting at position ``s``: the query-key pairs under a causal mask.
        """
        ...

    def decode_steps_seconds(
        self, num_seqs: int, context_tokens: int, num_steps: int
    ) -> list[float]:
        """Seconds of ``num_steps`` consecutive pure-decode steps of the same sequences.

        ``context_tokens`` is the sum of context lengths after the first step; each later step
        adds ``num_seqs``. The result equals, float for float,
        ``[step_seconds(n, n, C + i*n, C + i*n) for i in range(num_steps)]``.
        It runs on the simulator's hot path, so implementations keep it lean.
        """
        ...

    def describe(self) -> dict[str, Any]:
        """Plain data for reports; ``make_cost_model`` accepts it back."""
        ...


class LinearCost:
    """A fixed cost per step plus a cost per token computed (the first sim driver's model).

    Args:
        step_s: seconds every step costs (kernel launch, weight read at batch 1).
        token_s: seconds added per token computed.
    """

    def __init__(self, step_s: float, token_s: float) -> None:
        for key, value in (("step_s", step_s), ("token_s", token_s)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise SimError(
                    "EINVAL", f"linear cost model: {key} must be a number >= 0, not {value!r}"
                )
        self.step_s = float(step_s)
        self.token_s = float(token_s)

    def step_seconds(
        self, num_seqs: int, num_tokens: int, context_tokens: int, attention_pairs: int
    ) -> float:
        """``step_s + token_s * num_tokens``."""
        return self.step_s + self.token_s * num_tokens

    def decode_steps_seconds(
        self, num_seqs: int, context_tokens: int, num_steps: int
    ) -> list[float]:
        """Every decode step of the same batch costs the same."""
        return [self.step_s + self.token_s * num_seqs] * num_steps

    def describe(self) -> dict[str, Any]:
        """The spec that rebuilds this model."""
        return {"kind": "linear", "step_s": self.step_s, "token_s": self.token_s}


# ---------------------------------------------------------------------------------------------
# specs

KINDS = ("linear", "roofline", "profile")
# The keys each kind accepts (describe() output included), so a typo is an error, not a default.
SPEC_KEYS = {
    "linear": {"kind", "step_s", "token_s"},
    "roofline": {"kind", "model", "device", "dtype_bytes", "derived"},
    "profile": {"kind", "path", "coefficients", "metadata"},
}


def _model_of(value: Any) -> ModelShape:
    if isinstance(value, str):
        return load_model_shape(value)
    if isinstance(value, dict):
        return ModelShape.from_dict(value)
    raise SimError(
        "EINVAL",
        "roofline spec: 'model' must be a preset name, a config.json path or "
        f"a map of ModelShape fields, not {type(value).__name__}",
    )


def _device_of(value: Any) -> DeviceSpec:
    if isinstance(value, str):
        return load_device(value)
    if isinstance(value, dict):
        return DeviceSpec.from_dict(value)
    raise SimError(
        "EINVAL",
        "roofline spec: 'device' must be a preset name, a JSON path or a "
        f"map of DeviceSpec fields, not {type(value).__name__}",
    )


def make_cost_model(spec: Any) -> CostModel:
    """Build a cost model from its plain-data spec (module docstring).

    Raises:
        SimError: EINVAL for a spec that is not a map, an unknown kind, or a missing, unknown or
            bad key; ENOENT for an unknown preset or a missing file it names.
    """
    if not isinstance(spec, dict):
        raise SimError("EINVAL", f"cost model spec must be a map, not {type(spec).__name__}")
    kind = spec.get("kind")
    if kind not in KINDS:
        raise SimError("EINVAL", f"cost model spec: kind {kind!r} is not one of {', '.join(KINDS)}")
    unknown = sorted(set(spec) - SPEC_KEYS[kind])
    if unknown:
        raise SimError(
            "EINVAL",
            f"{kind} cost model spec: unknown key(s) {', '.join(map(repr, unknown))}; "
            f"known: {', '.join(sorted(SPEC_KEYS[kind]))}",
        )
    if kind == "linear":
        for key in ("step_s", "token_s"):
            if key not in spec:
                raise SimError("EINVAL", f"linear cost model spec: missing key {key!r}")
        return LinearCost(spec["step_s"], spec["token_s"])
    if kind == "roofline":
        for key in ("model", "device"):
            if key not in spec:
                raise SimError("EINVAL", f"roofline cost model spec: missing key {key!r}")
        dtype_bytes = spec.get("dtype_bytes")
        if dtype_bytes is not None and (
            isinstance(dtype_bytes, bool) or dtype_bytes not in (1, 2, 4)
        ):
            raise SimError(
                "EINVAL",
                f"roofline cost model spec: dtype_bytes must be 1, 2 or 4, not {dtype_bytes!r}",
            )
        return RooflineCost(_model_of(spec["model"]), _device_of(spec["device"]), dtype_bytes)
    if ("path" in spec) == ("coefficients" in spec):
        raise SimError(
            "EINVAL", "profile cost model spec: give exactly one of 'path' and 'coefficients'"
        )
    if "path" in spec:
        if not isinstance(spec["path"], str):
            raise SimError("EINVAL", "profile cost model spec: 'path' must be a string")
        return load_profile(spec["path"])
    metadata = spec.get("metadata", {})
    if not isinstance(metadata, dict):
        raise SimError("EINVAL", "profile cost model spec: 'metadata' must be a map")
    return ProfileCost(spec["coefficients"], metadata)


def _same_architecture(a: ModelShape, b: ModelShape) -> bool:
    keys = (
        "num_layers",
        "hidden_size",
        "num_heads",
        "num_kv_heads",
        "head_dim",
        "intermediate_size",
        "vocab_size",
    )
    return all(getattr(a, k) == getattr(b, k) for k in keys)


def cost_model_spec(model: str, device: str) -> dict[str, Any]:
    """The cost-model spec for a command line's ``--model`` and ``--device`` words.

    Args:
        model: a model preset name, or a path to a config.json or a checkpoint directory.
        device: a device preset name (a roofline), a device spec JSON file (a roofline), or a
            profile JSON file written by ``llmos sim calibrate`` (that profile).

    Returns:
        A self-contained spec: presets stay names, files are read now and inlined, so the spec
        means the same thing wherever it is sent or stored.

    Raises:
        SimError: ENOENT for an unknown preset or missing file; EINVAL for a malformed file, or
            a profile calibrated on a model of a different architecture than ``model``.
    """
    shape = load_model_shape(model)
    model_spec: Any = model if model in preset_names() else shape.to_dict()
    if device in DEVICE_PRESETS:
        return {"kind": "roofline", "model": model_spec, "device": device}
    path = Path(device)
    if not path.is_file():
        raise SimError(
            "ENOENT",
            f"unknown device {device!r}: not a preset ({', '.join(DEVICE_PRESETS)}) "
            "nor a device spec or profile JSON file",
        )
    data = read_json_object(path, "device spec or profile")
    if not is_profile_data(data):
        return {"kind": "roofline", "model": model_spec, "device": load_device(path).to_dict()}
    profile = profile_from_data(data, str(path))
    fitted = profile.metadata.get("model_shape")
    if isinstance(fitted, dict):
        fitted_shape = ModelShape.from_dict(fitted)
        if not _same_architecture(fitted_shape, shape):
            raise SimError(
                "EINVAL",
                f"{path}: profile was calibrated on model "
                f"{profile.metadata.get('model', fitted_shape.name)!r}, "
                f"whose shape differs from {model!r}",
            )
    return {"kind": "profile", "coefficients": profile.coefficients, "metadata": profile.metadata}
